"""Cycle-billed usage pricing: graduated, volume and package, hand-computed (decision 0023)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.billing.pricing import Tier, graduated, package, volume

# API calls: 1-100 at 0.10, 101-1000 at 0.05, then 0.02 (micro-EUR per call).
FALLING = [Tier(100, 100_000), Tier(1000, 50_000), Tier(None, 20_000)]


def test_graduated_at_the_tier_edges() -> None:
    """Each unit in its own tier."""
    assert graduated(0, FALLING) == 0
    assert graduated(100, FALLING) == 10_000_000  # 100 x 0.10 = 10.00
    assert graduated(101, FALLING) == 10_050_000  # 10.00 + 1 x 0.05
    assert graduated(1000, FALLING) == 55_000_000  # 10.00 + 900 x 0.05 = 55.00
    assert graduated(1001, FALLING) == 55_020_000  # 55.00 + 1 x 0.02


def test_volume_at_the_tier_edges() -> None:
    """Every unit at the tier the total reaches: one more unit can lower the bill."""
    assert volume(0, FALLING) == 0
    assert volume(100, FALLING) == 10_000_000  # 100 x 0.10
    assert volume(101, FALLING) == 5_050_000  # 101 x 0.05
    assert volume(1000, FALLING) == 50_000_000  # 1000 x 0.05
    assert volume(1001, FALLING) == 20_020_000  # 1001 x 0.02


def test_flat_fees_of_the_tiers() -> None:
    """Graduated adds every reached tier's flat fee; volume only the reached tier's."""
    seats = [Tier(5, 0, flat=10_000_000), Tier(None, 3_000_000, flat=2_000_000)]
    # 7 seats graduated: 10.00 (first five) + 2 x 3.00 + 2.00 = 18.00
    assert graduated(7, seats) == 18_000_000
    # 7 seats volume: 7 x 3.00 + 2.00 = 23.00; 5 seats: 10.00 flat
    assert volume(7, seats) == 23_000_000
    assert volume(5, seats) == 10_000_000


def test_package_bills_started_blocks() -> None:
    """2.00 per started 100 units."""
    assert package(0, 100, 2_000_000) == 0
    assert package(1, 100, 2_000_000) == 2_000_000
    assert package(100, 100, 2_000_000) == 2_000_000
    assert package(101, 100, 2_000_000) == 4_000_000


def test_bad_tables_are_refused() -> None:
    """A bounded last tier, descending bounds, negative prices or quantities."""
    for tiers in (
        [Tier(100, 1)],
        [Tier(100, 1), Tier(50, 1), Tier(None, 1)],
        [Tier(None, -1)],
        [],
    ):
        with pytest.raises(ValueError):
            graduated(1, tiers)
    with pytest.raises(ValueError):
        volume(-1, FALLING)
    with pytest.raises(ValueError):
        package(1, 0, 1)


@st.composite
def tables(draw: st.DrawFn, falling: bool) -> list[Tier]:
    """Tier tables without flat fees whose unit prices fall (or rise) from tier to tier."""
    widths = draw(st.lists(st.integers(1, 500), min_size=0, max_size=4))
    prices = draw(
        st.lists(st.integers(0, 1_000_000), min_size=len(widths) + 1, max_size=len(widths) + 1)
    )
    prices.sort(reverse=falling)
    bounds: list[int | None] = []
    top = 0
    for width in widths:
        top += width
        bounds.append(top)
    bounds.append(None)
    return [Tier(b, p) for b, p in zip(bounds, prices, strict=True)]


@given(tables(falling=True), st.integers(0, 5000))
def test_volume_is_at_most_graduated_when_prices_fall(tiers: list[Tier], quantity: int) -> None:
    """The issue's "graduated <= volume" is the wrong way round for falling prices:
    volume = q x p_reached, and p_reached <= every earlier tier's price."""
    assert volume(quantity, tiers) <= graduated(quantity, tiers)


@given(tables(falling=False), st.integers(0, 5000))
def test_graduated_is_at_most_volume_when_prices_rise(tiers: list[Tier], quantity: int) -> None:
    """With rising prices the reached tier is the dearest, so graduated <= volume."""
    assert graduated(quantity, tiers) <= volume(quantity, tiers)


@given(tables(falling=True), st.integers(0, 5000))
def test_both_agree_inside_the_first_tier(tiers: list[Tier], quantity: int) -> None:
    """Up to the first bound every unit is in the first tier either way."""
    first = tiers[0].up_to
    if first is None or quantity <= first:
        assert volume(quantity, tiers) == graduated(quantity, tiers)
