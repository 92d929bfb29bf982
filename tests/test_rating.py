"""The rating function: hand-computed amounts and the exact inverse property."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.rating.rates import Rate, billed_seconds, cost, max_duration

UK_MOBILE = Rate(connect_fee=150_000, first_block=30, increment=6, price_per_minute=60_000)


@pytest.mark.parametrize(
    ("rate", "duration", "billed", "expected"),
    [
        # 30/6 at 0.06/min with a 0.15 connect fee: 45 s bills 48 s, 0.198000.
        (UK_MOBILE, 45, 48, 198_000),
        (UK_MOBILE, 1, 30, 180_000),
        (UK_MOBILE, 30, 30, 180_000),
        (UK_MOBILE, 31, 36, 186_000),
        (UK_MOBILE, 0, 0, 0),  # unanswered: no connect fee either
        # 60/60 at 0.01/min: 61 s is two minutes.
        (Rate(0, 60, 60, 10_000), 61, 120, 20_000),
        # 1/1 at 0.01/min: one second is 166.67 micro, rounded up once per call.
        (Rate(0, 1, 1, 10_000), 1, 1, 167),
        (Rate(0, 1, 1, 10_000), 60, 60, 10_000),
        (Rate(0, 1, 1, 10_000), 61, 61, 10_167),
        # free destination with a connect fee
        (Rate(50_000, 0, 1, 0), 300, 300, 50_000),
    ],
)
def test_cost_matches_hand_computed_amounts(
    rate: Rate, duration: int, billed: int, expected: int
) -> None:
    assert billed_seconds(rate, duration) == billed
    assert cost(rate, duration) == expected


def test_max_duration_for_a_known_balance() -> None:
    # 1.00 at UK mobile: 0.15 fee leaves 0.85 = 850 s at 0.06/min -> 846 s on the 30/6 grid.
    assert max_duration(UK_MOBILE, 1_000_000, 14_400) == 846
    assert cost(UK_MOBILE, 846) == 996_000
    assert cost(UK_MOBILE, 852) > 1_000_000


def test_max_duration_is_zero_when_the_first_block_is_not_covered() -> None:
    assert max_duration(UK_MOBILE, 179_999, 14_400) == 0
    assert max_duration(UK_MOBILE, 180_000, 14_400) == 30


def test_max_duration_is_capped() -> None:
    assert max_duration(UK_MOBILE, 10**12, 3600) == 3600
    assert max_duration(Rate(0, 1, 1, 0), 1, 3600) == 3600


rates = st.builds(
    Rate,
    connect_fee=st.integers(0, 2_000_000),
    first_block=st.integers(0, 120),
    increment=st.integers(1, 120),
    price_per_minute=st.integers(0, 5_000_000),
)


@given(rate=rates, funds=st.integers(0, 10**10), cap=st.integers(1, 86_400))
def test_max_duration_is_the_exact_inverse_of_cost(rate: Rate, funds: int, cap: int) -> None:
    longest = max_duration(rate, funds, cap)
    if longest == 0:
        assert cost(rate, 1) > funds
        return
    assert 1 <= longest <= cap
    assert cost(rate, longest) <= funds
    if longest < cap:
        # One more increment would cost more than the funds.
        assert cost(rate, longest + rate.increment) > funds
        assert cost(rate, longest + 1) > funds


@given(rate=rates, a=st.integers(0, 100_000), b=st.integers(0, 100_000))
def test_cost_never_decreases_with_duration(rate: Rate, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert cost(rate, low) <= cost(rate, high)
