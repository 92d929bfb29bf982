"""Cycle-billed usage pricing: graduated, volume and package prices of a quantity.

For usage rated at invoice time (API calls, seats, ...), not real-time call
rating. Pure functions over integers: quantities are whole units, prices are
micro-units per unit, so every result is an exact integer of micro-units and
the invoice line built from it is rounded once (``currency.round_line``).

- **graduated**: each unit is priced in its own tier (units 1-100 at the first
  price, 101-1000 at the second, ...), plus each reached tier's flat fee;
- **volume**: every unit is priced at the tier the total reaches, plus that
  tier's flat fee;
- **package**: a price per started block of N units (101 units in blocks of
  100 are 2 blocks).

With unit prices that fall from tier to tier (no flat fees), volume is never
above graduated: volume prices all units at the reached tier's price, which
is the lowest so far (decision 0023).
"""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: units up to ``up_to`` (inclusive; None: no bound, the last tier)."""

    up_to: int | None
    unit_price: int  # micro-units per unit
    flat: int = 0  # micro-units, once when the tier is reached


def _check(quantity: int, tiers: Sequence[Tier]) -> None:
    """Refuse a negative quantity and a table that is not strictly ascending and open-ended."""
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    if not tiers:
        raise ValueError("a tier table needs at least one tier")
    if tiers[-1].up_to is not None:
        raise ValueError("the last tier must be unbounded (up_to None)")
    previous = 0
    for tier in tiers[:-1]:
        if tier.up_to is None or tier.up_to <= previous:
            raise ValueError("tier bounds must be positive and strictly ascending")
        previous = tier.up_to
    if any(t.unit_price < 0 or t.flat < 0 for t in tiers):
        raise ValueError("tier prices must be >= 0")


def graduated(quantity: int, tiers: Sequence[Tier]) -> int:
    """Each unit at its own tier's price, plus the flat fee of every tier reached.

    Tiers 1-100 at 0.10, then 0.05: 150 units = 100 x 0.10 + 50 x 0.05 = 12.50.
    """
    _check(quantity, tiers)
    total, below = 0, 0
    for tier in tiers:
        if quantity <= below:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total += (top - below) * tier.unit_price + tier.flat
        below = top
    return total


def volume(quantity: int, tiers: Sequence[Tier]) -> int:
    """Every unit at the price of the tier the total reaches, plus that tier's flat fee.

    Tiers 1-100 at 0.10, then 0.05: 150 units = 150 x 0.05 = 7.50; 0 units cost 0.
    """
    _check(quantity, tiers)
    if quantity == 0:
        return 0
    reached = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
    return quantity * reached.unit_price + reached.flat


def package(quantity: int, block: int, block_price: int) -> int:
    """``block_price`` per started block of ``block`` units: 101 units in 100s = 2 blocks."""
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    if block < 1:
        raise ValueError(f"a block has at least one unit, got {block}")
    if block_price < 0:
        raise ValueError("a block price must be >= 0")
    return -(-quantity // block) * block_price
