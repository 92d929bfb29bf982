"""Re-rating: a plan's CDRs rated again against the current catalog.

The same rating function as authorize and stop (``cost_with_counter``), over a
batch match of every destination at once (``PrefixTable.match_many``). It
reports what each call would cost now beside what it was rated then; it moves
no money: an operator decides what to do with a difference.
"""

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import numpy as np

from ocs.catalog.snapshot import CatalogSnapshot
from ocs.charging.lifecycle import call_bands
from ocs.rating.rates import CounterSplit, cost_with_counter


@dataclass(frozen=True, slots=True)
class RerateLine:
    """One call whose cost changes under the plan's current deck: then and now."""

    call_id: str
    account_id: str
    destination: str
    duration: int
    zone_then: str
    zone_now: str | None  # None: the destination has no tariff now
    rated_then: int
    rated_now: int | None


@dataclass(frozen=True, slots=True)
class RerateReport:
    """The outcome of re-rating a plan's calls: counts, totals and the changed calls."""

    plan_id: str
    cdrs: int
    changed: int
    unrated: int  # destinations the current deck no longer prices
    total_then: int
    total_now: int
    lines: list[RerateLine] = field(default_factory=list)  # the changed ones, up to a limit


async def rerate(
    pool: asyncpg.Pool,
    snapshot: CatalogSnapshot,
    plan_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    max_lines: int = 100,
) -> RerateReport:
    """Re-rate the plan's CDRs stopped in [since, until) with today's catalog."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT call_id, account_id, destination, duration, zone, rated_cost, authorized_at,"
            " counter_id, counter_seconds FROM cdrs WHERE plan_id = $1"
            " AND ($2::timestamptz IS NULL OR stopped_at >= $2)"
            " AND ($3::timestamptz IS NULL OR stopped_at < $3)"
            " AND termination_cause <> 'late-stop' AND direction = 'outbound'"
            " ORDER BY stopped_at",
            plan_id,
            since,
            until,
        )
    plan = snapshot.plan(plan_id)
    deck = snapshot.decks.get(plan_id)
    if not rows or plan is None or deck is None or len(deck) == 0:
        total = sum(r["rated_cost"] for r in rows)
        return RerateReport(plan_id, len(rows), 0, len(rows), total, 0)
    slots, _ = deck.match_many(np.array([r["destination"] for r in rows]))
    counters = {c.id: c for c in snapshot.counters_for(plan_id)}
    changed = unrated = total_then = total_now = 0
    lines: list[RerateLine] = []
    for row, slot in zip(rows, slots.tolist(), strict=True):
        total_then += row["rated_cost"]
        if slot < 0:
            unrated += 1
            now, zone = None, None
        else:
            tariff = deck.values[slot]
            counter = counters.get(row["counter_id"]) if row["counter_id"] else None
            split = (
                CounterSplit(counter.rate, row["counter_seconds"])
                if counter is not None and row["counter_seconds"]
                else None
            )
            start = int(row["authorized_at"].timestamp())
            bands = call_bands(plan, tariff.rate, start, row["duration"])
            now = cost_with_counter(tariff.rate, row["duration"], split, bands)
            zone = tariff.zone
            total_now += now
        if now != row["rated_cost"]:
            changed += 1
            if len(lines) < max_lines:
                lines.append(
                    RerateLine(
                        call_id=row["call_id"],
                        account_id=row["account_id"],
                        destination=row["destination"],
                        duration=row["duration"],
                        zone_then=row["zone"],
                        zone_now=zone,
                        rated_then=row["rated_cost"],
                        rated_now=now,
                    )
                )
    return RerateReport(plan_id, len(rows), changed, unrated, total_then, total_now, lines)
