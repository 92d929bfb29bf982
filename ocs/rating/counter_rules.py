"""Counter definitions as the catalog holds them, and the choice of a call's counter.

A counter belongs to a plan: ``seconds`` per cycle for calls to its ``zones``,
rated at its own price (often 0.00) until used up; then the zone's tariff
applies, or, with ``reject_on_threshold``, calls to those zones are refused.
Mandatory counters apply to every account of the plan; optional ones only to
accounts that bought them.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from ocs.rating.rates import Rate

# A counter as the chooser's caller holds it (its definition, or more beside it).
_Counter = TypeVar("_Counter")


@dataclass(frozen=True, slots=True)
class CounterDef:
    """A plan's counter: free (or discounted) seconds per cycle for calls to some zones."""

    id: str
    plan_id: str
    seconds: int
    zones: frozenset[str]
    price_per_minute: int = 0
    increment: int = 1
    reject_on_threshold: bool = False
    carryover: bool = False
    mandatory: bool = True
    recurring_fee: int = 0
    active: bool = True
    taxes_follow_counter: bool = False

    @property
    def rate(self) -> Rate:
        """The counter's own tariff: no connect fee, no first block."""
        return Rate(0, 0, self.increment, self.price_per_minute)


def counters_for_zone(counters: Iterable[CounterDef], zone: str) -> tuple[CounterDef, ...]:
    """The active counters covering ``zone``, by id: a call uses the first of them that
    applies to its account (a mandatory one, or an optional one the account bought) and
    has seconds free (``counter_to_draw``)."""
    return tuple(c for c in counters if c.active and zone in c.zones)


def counter_to_draw(applicable: Iterable[tuple[_Counter, int]]) -> tuple[_Counter, int] | None:
    """The counter a call draws on, of those that apply to its account (in the order
    ``counters_for_zone`` gives, each with its free seconds): the first with seconds free,
    so an add-on bought beside a used-up bundle applies; when none has any, the first
    (the call draws nothing on it, and is refused ``counter_exhausted`` if that counter
    refuses calls once used up); None when none applies. authorize.lua chooses alike
    (decision 0008, addendum of 2026-12-07)."""
    first: tuple[_Counter, int] | None = None
    for counter, free in applicable:
        if free > 0:
            return counter, free
        if first is None:
            first = (counter, 0)
    return first


def counter_from_row(row: asyncpg.Record) -> CounterDef:
    """The counter of a ``counters`` table row."""
    return CounterDef(
        id=row["id"],
        plan_id=row["plan_id"],
        seconds=row["seconds"],
        zones=frozenset(row["zones"]),
        price_per_minute=row["price_per_minute"],
        increment=row["increment"],
        reject_on_threshold=row["reject_on_threshold"],
        carryover=row["carryover"],
        mandatory=row["mandatory"],
        recurring_fee=row["recurring_fee"],
        active=row["active"],
        taxes_follow_counter=row["taxes_follow_counter"],
    )


async def read_counters(conn: asyncpg.Connection) -> dict[str, tuple[CounterDef, ...]]:
    """Every plan's counters, ordered by id (the order ``counter_for_zone`` picks in)."""
    by_plan: dict[str, list[CounterDef]] = {}
    for row in await conn.fetch("SELECT * FROM counters ORDER BY plan_id, id"):
        by_plan.setdefault(row["plan_id"], []).append(counter_from_row(row))
    return {plan: tuple(found) for plan, found in by_plan.items()}
