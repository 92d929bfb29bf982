"""Rating beyond the simple shape: graduated tiers, max cost, quantities other than time."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from ocs.rating.rates import (
    CounterSplit,
    Rate,
    Tier,
    billed_seconds,
    cost,
    cost_with_counter,
    increment_at,
    max_duration,
    max_duration_with_counter,
)

# "First 15 minutes 1.00 flat, then 0.10 a minute."
FLAT_THEN_PER_MINUTE = Rate(
    connect_fee=1_000_000,
    first_block=0,
    increment=1,
    price_per_minute=0,
    tiers=(Tier(start=900, price_per_minute=100_000, increment=60),),
)


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [(10, 1_000_000), (15, 1_000_000), (16, 1_100_000), (40, 3_500_000)],
)
def test_first_15_minutes_flat_then_per_minute(minutes: int, expected: int) -> None:
    assert cost(FLAT_THEN_PER_MINUTE, minutes * 60) == expected


def test_one_second_into_the_next_tier_bills_its_whole_increment() -> None:
    assert cost(FLAT_THEN_PER_MINUTE, 901) == 1_100_000
    assert billed_seconds(FLAT_THEN_PER_MINUTE, 901) == 900 + 60


def test_a_tier_with_a_flat_amount_is_charged_once_when_reached() -> None:
    rate = Rate(
        0,
        60,
        60,
        10_000,
        tiers=(Tier(start=600, price_per_minute=5_000, increment=60, flat=250_000),),
    )
    assert cost(rate, 600) == 100_000  # ten minutes at 0.01
    assert cost(rate, 601) == 100_000 + 250_000 + 5_000
    assert cost(rate, 1200) == 100_000 + 250_000 + 50_000


def test_base_increments_never_spill_into_the_next_tier() -> None:
    # 60/60 base with a tier from second 90: a 95 s call bills 90 s in the base.
    rate = Rate(0, 60, 60, 60_000, tiers=(Tier(start=90, price_per_minute=0, increment=1),))
    assert billed_seconds(rate, 95) == 95
    assert cost(rate, 95) == 90_000


def test_data_is_rated_like_time_per_unit() -> None:
    # 350 MB at 0.01 per MB in 10 MB increments.
    data = Rate(connect_fee=0, first_block=0, increment=10, price_per_minute=10_000, per=1)
    assert cost(data, 350) == 3_500_000
    assert cost(data, 351) == 3_600_000


@pytest.mark.parametrize(
    ("price_per_kwh", "expected"), [(390_000, 9_126_000), (590_000, 13_806_000)]
)
def test_energy_in_tenths_of_a_kwh(price_per_kwh: int, expected: int) -> None:
    # 23.4 kWh, metered in Wh, billed per 100 Wh, priced per kWh (1000 Wh).
    rate = Rate(0, 0, 100, price_per_kwh, per=1000)
    assert cost(rate, 23_400) == expected


def test_max_cost_makes_the_rest_of_the_call_free() -> None:
    rate = Rate(0, 1, 1, 60_000, max_cost=1_000_000)
    assert cost(rate, 600) == 600_000
    assert cost(rate, 7200) == 1_000_000
    assert max_duration(rate, 1_000_000, 14_400) == 14_400


def test_max_cost_can_cut_the_call_instead() -> None:
    rate = Rate(0, 1, 1, 60_000, max_cost=1_000_000, cut_at_max_cost=True)
    assert max_duration(rate, 5_000_000, 14_400) == 1000
    assert max_duration(rate, 300_000, 14_400) == 300


def test_a_call_a_counter_covers_in_part_is_cut_at_the_max_cost_too() -> None:
    # 0.06 a minute, capped at 1.00 with the call cut there (1,000 s); a bundle covers
    # the first 300 s free. The capped cost stops growing at 1,000 s, so the funds alone
    # granted the plan's longest call: four hours, the last three of them free.
    rate = Rate(0, 1, 1, 60_000, max_cost=1_000_000, cut_at_max_cost=True)
    bundle = CounterSplit(Rate(0, 1, 1, 0), 300)
    assert max_duration_with_counter(rate, 5_000_000, 14_400, bundle) == 1000
    assert cost_with_counter(rate, 1000, bundle) == 700_000
    # Funds that run out first still bind: 0.30 pays 300 s past the bundle.
    assert max_duration_with_counter(rate, 300_000, 14_400, bundle) == 600
    # Without the cut, the call runs on, free past the cap.
    free_past = replace(rate, cut_at_max_cost=False)
    assert max_duration_with_counter(free_past, 5_000_000, 14_400, bundle) == 14_400


tiers = st.lists(
    st.builds(
        Tier,
        start=st.integers(1, 3000),
        price_per_minute=st.integers(0, 500_000),
        increment=st.integers(1, 120),
        flat=st.integers(0, 500_000),
    ),
    max_size=3,
    unique_by=lambda t: t.start,
).map(lambda ts: tuple(sorted(ts, key=lambda t: t.start)))

shaped_rates = st.builds(
    Rate,
    connect_fee=st.integers(0, 1_000_000),
    first_block=st.integers(0, 120),
    increment=st.integers(1, 120),
    price_per_minute=st.integers(0, 2_000_000),
    tiers=tiers,
    max_cost=st.one_of(st.just(0), st.integers(1, 20_000_000)),
    cut_at_max_cost=st.booleans(),
    per=st.sampled_from([60, 1, 1000]),
)


@given(
    rate=shaped_rates,
    covered=st.integers(1, 3000),
    counter_price=st.integers(0, 200_000),
    funds=st.integers(0, 50_000_000),
    cap=st.integers(1, 14_400),
)
def test_a_counter_never_lets_a_call_run_past_its_cut(
    rate: Rate, covered: int, counter_price: int, funds: int, cap: int
) -> None:
    split = CounterSplit(Rate(0, 1, 1, counter_price), covered)
    longest = max_duration_with_counter(rate, funds, cap, split)
    assert longest == 0 or cost_with_counter(rate, longest, split) <= funds
    if rate.max_cost and rate.cut_at_max_cost:
        # No longer than the same call without the counter may run with all the funds
        # it could need: where its cost would pass the cap.
        assert longest <= max_duration(rate, 10**12, cap)


@given(rate=shaped_rates, a=st.integers(0, 20_000), b=st.integers(0, 20_000))
def test_cost_never_decreases(rate: Rate, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert cost(rate, low) <= cost(rate, high)


@given(rate=shaped_rates, funds=st.integers(0, 50_000_000), cap=st.integers(1, 14_400))
def test_max_duration_is_the_exact_inverse(rate: Rate, funds: int, cap: int) -> None:
    longest = max_duration(rate, funds, cap)
    uncapped = replace(rate, max_cost=0)
    if longest == 0:
        # Not even one second fits the funds, or (cut mode) passes the cap.
        assert cost(rate, 1) > funds or (
            rate.max_cost and rate.cut_at_max_cost and cost(uncapped, 1) > rate.max_cost
        )
        return
    assert cost(rate, longest) <= funds
    cut = rate.max_cost and rate.cut_at_max_cost and cost(uncapped, longest + 1) > rate.max_cost
    if longest < cap and not cut:
        assert cost(rate, longest + increment_at(rate, longest)) > funds
        assert cost(rate, longest + 1) > funds


def test_a_live_call_keeps_its_whole_rate_shape() -> None:
    from ocs.charging.values import CallRecord

    for rate in (
        FLAT_THEN_PER_MINUTE,
        Rate(1, 2, 3, 4),
        Rate(0, 0, 10, 10_000, per=1),
        Rate(0, 1, 1, 60_000, max_cost=1_000_000, cut_at_max_cost=True),
        Rate(0, 60, 60, 10_000, surcharge_percent_bp=250, band_prices=(("peak", 20_000),)),
    ):
        record = CallRecord("a", "c", "p", "z", "44", "4420", None, "EUR", rate, 600, 1)
        assert CallRecord.unpack(record.pack()).rate == rate


def test_a_record_written_before_the_struct_still_reads() -> None:
    # The map the hand-written packer kept in Redis (short keys, the rate as a list
    # of 4, 8, 10 or 11 numbers): a live call across an upgrade is charged the same.
    import msgpack

    from ocs.charging.values import CallRecord

    old = {
        "a": "1001", "c": "c-1", "p": "retail", "z": "UK", "x": "44", "d": "4420",
        "o": None, "cur": "EUR", "r": [0, 60, 60, 198_000, [[61, 100_000, 1, 0]], 0, False, 60],
        "cap": 14_400, "t": 1_764_000_000_000, "n": None, "cr": [0, 1], "q": 30,
    }  # fmt: skip
    record = CallRecord.unpack(msgpack.packb(old))
    assert record.rate == Rate(0, 60, 60, 198_000, tiers=(Tier(61, 100_000),))
    assert (record.account_id, record.cap, record.quota, record.counter_rate) == (
        "1001", 14_400, 30, (0, 1),
    )  # fmt: skip


def test_surcharges_are_part_of_the_cost_and_rounded_once() -> None:
    # 0.01/min 1/1, 2.5% surcharge and 0.02 per answered call: 61 s.
    rate = Rate(0, 1, 1, 10_000, surcharge_percent_bp=250, surcharge_flat=20_000)
    # 61 s at 0.01/min = 10166.67 micro; +2.5% = 10420.83 -> 10421; + 20000.
    assert cost(rate, 61) == 30_421
    assert cost(rate, 0) == 0
    assert max_duration(rate, 30_421, 14_400) == 61


@given(
    rate=shaped_rates,
    percent=st.integers(0, 5000),
    flat=st.integers(0, 100_000),
    funds=st.integers(0, 50_000_000),
)
def test_the_inverse_holds_with_surcharges(rate: Rate, percent: int, flat: int, funds: int) -> None:
    rate = replace(rate, surcharge_percent_bp=percent, surcharge_flat=flat, max_cost=0)
    longest = max_duration(rate, funds, 14_400)
    if longest == 0:
        assert cost(rate, 1) > funds
        return
    assert cost(rate, longest) <= funds
    if longest < 14_400:
        assert cost(rate, longest + 1) > funds
