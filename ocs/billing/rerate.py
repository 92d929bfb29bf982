"""Re-rating: a plan's CDRs rated again against the current catalog.

The same rating functions as the paths that rated them, so that a CDR whose catalog
did not change is rated the same (decision 0002, one rating function):

* a call rated by its destination (a live call, or an imported call without a rate
  type): ``cost_with_counter`` over a batch match of every destination at once
  (``PrefixTable.match_many``) in the plan's deck, as authorize and stop rate it;
* a usage event (MB, kWh: its destination is its service) and an imported record
  classified to a rate type: ``ocs.mediation.rating.rate_record``, the function the
  usage import and the usage event endpoint rate them by (the rate type's rate when
  the plan has one, else the service's tariff, else the called number's zone).

It reports what each record would cost now beside what it was rated then, and how
many of them were usage events and rate-typed records; it moves no money: an
operator decides what to do with a difference.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from ocs.catalog.snapshot import CatalogSnapshot
from ocs.charging.lifecycle import call_bands
from ocs.errors import OcsError
from ocs.mediation.rating import rate_record
from ocs.mediation.records import UsageRecord
from ocs.rating.counter_rules import CounterDef
from ocs.rating.rates import CounterSplit, cost_with_counter

# The termination cause of a usage event's CDR (a service's units, not a call).
USAGE_CAUSE = "usage"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


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
    """The outcome of re-rating a plan's calls: counts, totals and the changed calls.

    ``usage_events``: the CDRs of usage events among ``cdrs`` (rated by their service's
    tariff, or their rate type's); ``rate_typed``: the imported records among them rated
    by their rate type's rate.
    """

    plan_id: str
    cdrs: int
    changed: int
    unrated: int  # destinations the current deck no longer prices
    total_then: int
    total_now: int
    lines: list[RerateLine] = field(default_factory=list)  # the changed ones, up to a limit
    usage_events: int = 0
    rate_typed: int = 0


async def rerate(
    pool: asyncpg.Pool,
    snapshot: CatalogSnapshot,
    plan_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    max_lines: int = 100,
) -> RerateReport:
    """Re-rate the plan's CDRs stopped in [since, until) with today's catalog: its
    outbound calls, its usage events and its records imported with a rate type."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT call_id, account_id, destination, duration, zone, rated_cost, authorized_at,"
            " counter_id, counter_seconds, direction, rate_type, termination_cause"
            " FROM cdrs WHERE plan_id = $1"
            " AND ($2::timestamptz IS NULL OR stopped_at >= $2)"
            " AND ($3::timestamptz IS NULL OR stopped_at < $3)"
            " AND termination_cause <> 'late-stop'"
            " AND (direction = 'outbound' OR rate_type IS NOT NULL)"
            " ORDER BY stopped_at",
            plan_id,
            since,
            until,
        )
    plan = snapshot.plan(plan_id)
    counters = {c.id: c for c in snapshot.counters_for(plan_id)}
    # (zone now, cost now) of each row; None: it has no price now.
    now: list[tuple[str, int] | None] = [None] * len(rows)
    by_deck = [
        n
        for n, row in enumerate(rows)
        if row["rate_type"] is None and row["termination_cause"] != USAGE_CAUSE
    ]
    deck = snapshot.decks.get(plan_id)
    if by_deck and plan is not None and deck is not None and len(deck) > 0:
        slots, _ = deck.match_many(np.array([rows[n]["destination"] for n in by_deck]))
        for n, slot in zip(by_deck, slots.tolist(), strict=True):
            if slot >= 0:
                row = rows[n]
                tariff = deck.values[slot]
                start = int(row["authorized_at"].timestamp())
                bands = call_bands(plan, tariff.rate, start, row["duration"])
                split = _split(row, counters)
                now[n] = (
                    tariff.zone,
                    cost_with_counter(tariff.rate, row["duration"], split, bands),
                )
    deck_rows = set(by_deck)
    usage_events = rate_typed = 0
    for n, row in enumerate(rows):
        if n in deck_rows:
            continue
        if row["termination_cause"] == USAGE_CAUSE:
            usage_events += 1
        if row["rate_type"] is not None:
            rate_typed += 1
        now[n] = _rated_as_imported(snapshot, plan_id, row, counters)
    changed = unrated = total_then = total_now = 0
    lines: list[RerateLine] = []
    for row, found in zip(rows, now, strict=True):
        total_then += row["rated_cost"]
        if found is None:
            unrated += 1
            zone, cost_now = None, None
        else:
            zone, cost_now = found
            total_now += cost_now
        if cost_now != row["rated_cost"]:
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
                        rated_now=cost_now,
                    )
                )
    return RerateReport(
        plan_id,
        len(rows),
        changed,
        unrated,
        total_then,
        total_now,
        lines,
        usage_events,
        rate_typed,
    )


def _split(row: asyncpg.Record, counters: dict[str, CounterDef]) -> CounterSplit | None:
    """The usage counter part of a CDR's call, as it was charged (None: none)."""
    counter = counters.get(row["counter_id"]) if row["counter_id"] else None
    if counter is None or not row["counter_seconds"]:
        return None
    return CounterSplit(counter.rate, row["counter_seconds"])


def _rated_as_imported(
    snapshot: CatalogSnapshot, plan_id: str, row: asyncpg.Record, counters: dict[str, CounterDef]
) -> tuple[str, int] | None:
    """(zone, cost) of a usage event or rate-typed record by ``rate_record``, the usage
    import's and the usage event endpoint's rating; None when it has no price now."""
    usage = row["termination_cause"] == USAGE_CAUSE
    record = UsageRecord(
        line=0,
        record_id=row["call_id"],
        account=row["account_id"],
        member=None,
        caller=None,
        called=None if usage else row["destination"],
        service=row["destination"] if usage else None,
        direction=row["direction"],
        start_ms=(row["authorized_at"] - _EPOCH) // _ONE_MS,
        quantity=row["duration"],
        rate_type=row["rate_type"],
        cells=(),
    )
    try:
        rated = rate_record(snapshot, plan_id, record, row["rate_type"])
    except OcsError:
        return None
    split = _split(row, counters)
    return rated.zone, cost_with_counter(rated.tariff.rate, row["duration"], split, rated.bands)
