"""Re-rating: a plan's CDRs rated again against the current catalog.

The same rating functions as the paths that rated them, so that a CDR whose catalog
did not change is rated the same (decision 0002, one rating function):

* a call rated by its destination (a live call, or an imported call without a rate
  type): ``tariff_of``, authorize's lookup (the On-net zone for an on-net number, else
  the deck), in the deck of the plan that rated it (an access number's, ``rating_plan``;
  a CDR from before migration 0074 has none and is rated in its own plan's deck), and
  ``cost_with_counter`` over the time bands placed from its answer, as stop prices it;
* a usage event (MB, kWh: its destination is its service) and an imported record
  classified to a rate type: ``ocs.mediation.rating.rate_record``, the function the
  usage import and the usage event endpoint rate them by (the rate type's rate when
  the plan has one, else the service's tariff, else the called number's zone).

A call ocs closed by policy whose switch reported it later is one call: its late stop's
row (``late-stop``) is folded into the close's, and the call is rated at the duration
reported, against what the report rated it at. The row holds what the report changed,
or, written by a release before 2ccb9c8 (before migration 0051 was applied), the whole
call (decision 0032, re-rating addendum); where the form is in doubt, the reading that
rates the call as it was rated is taken, so no misread row shows a phantom change.

It reports what each record would cost now beside what it was rated then, and how
many of them were usage events and rate-typed records; it moves no money: an
operator decides what to do with a difference.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from ocs.catalog.snapshot import CatalogSnapshot
from ocs.charging.lifecycle import call_bands, tariff_of
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
        rows = await conn.fetch(_ROWS_SQL, plan_id, since, until)
    counters = {c.id: c for c in snapshot.counters_for(plan_id)}
    # (zone now, cost now) of each row; None: it has no price now.
    now: list[tuple[str, int] | None] = [None] * len(rows)
    # The seconds each row's call is rated at (a late stop's reading may change them).
    durations: list[int] = [row["duration"] for row in rows]
    by_deck = [
        n
        for n, row in enumerate(rows)
        if row["rate_type"] is None and row["termination_cause"] != USAGE_CAUSE
    ]
    if snapshot.plan(plan_id) is not None:
        for n in by_deck:
            now[n], durations[n] = _rated_as_stopped(snapshot, plan_id, rows[n], counters)
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
    for row, found, duration in zip(rows, now, durations, strict=True):
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
                        duration=duration,
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


# A plan's CDRs stopped in [$2, $3): outbound calls and rate-typed records. A call's late
# stop (migration 0009's cause ``late-stop``, stop.lua) is not a call of its own, so it is
# folded into its close, found by the call's account, id and authorization (an id may be
# used again by a later call). At most one late stop settles a close. Its rated_cost is
# the whole call's at the reported duration; its seconds and counter seconds come in two
# forms: since 2ccb9c8 (the release that brought migration 0051) what the report changed
# from the close's, so the call is the two rows' sum; before it the whole call's, so the
# call is the late stop's. The forms agree for a close of no seconds (``start-timeout``);
# a late stop of no or negative seconds, or with ``answered_at`` (migration 0074, written
# by releases since), is the new form. Any other is read by when it was written: before
# migration 0051 was applied, the old form (a release that lacks 0051 wrote it), else the
# new. That reading is ``duration``; ``other_duration`` (NULL when there is no doubt) is
# the other one, which ``rerate`` takes where it alone rates the call as it was rated
# (an old process that wrote on during the upgrade, until it was restarted).
_ROWS_SQL = (
    "WITH marker AS (SELECT applied_at FROM schema_migrations WHERE version = 51)"
    " SELECT c.call_id, c.account_id, c.destination, c.zone, c.authorized_at, c.direction,"
    " c.rate_type, c.termination_cause, c.counter_id, c.rating_plan,"
    " CASE WHEN f.whole THEN l.duration ELSE c.duration + COALESCE(l.duration, 0) END"
    " AS duration,"
    " CASE WHEN f.whole THEN l.counter_seconds"
    " ELSE c.counter_seconds + COALESCE(l.counter_seconds, 0) END AS counter_seconds,"
    " CASE WHEN f.doubt AND f.whole THEN c.duration + l.duration"
    " WHEN f.doubt THEN l.duration END AS other_duration,"
    " CASE WHEN f.doubt AND f.whole THEN c.counter_seconds + l.counter_seconds"
    " WHEN f.doubt THEN l.counter_seconds END AS other_counter_seconds,"
    " COALESCE(l.rated_cost, c.rated_cost) AS rated_cost,"
    # Where the stop placed the call on the time bands (migration 0074); a CDR from
    # before it: its end less its duration (the close's), never before its authorization.
    " COALESCE(c.answered_at, GREATEST(c.authorized_at,"
    " c.stopped_at - make_interval(secs => c.duration))) AS answered_at"
    " FROM cdrs c LEFT JOIN marker m ON true LEFT JOIN LATERAL ("
    " SELECT d.duration, d.counter_seconds, d.rated_cost, d.stopped_at, d.answered_at"
    " FROM cdrs d"
    " WHERE d.account_id = c.account_id AND d.call_id = c.call_id"
    " AND d.authorized_at = c.authorized_at AND d.termination_cause = 'late-stop'"
    " ORDER BY d.stopped_at DESC, d.entry_id DESC LIMIT 1) l ON true"
    # doubt: the late stop may be of either form; whole: it is read as the old one.
    " CROSS JOIN LATERAL (SELECT COALESCE(c.duration > 0 AND l.duration > 0"
    " AND l.answered_at IS NULL, false) AS doubt) x"
    " CROSS JOIN LATERAL (SELECT x.doubt,"
    " x.doubt AND (l.stopped_at < m.applied_at) IS TRUE AS whole) f"
    " WHERE c.plan_id = $1"
    " AND ($2::timestamptz IS NULL OR c.stopped_at >= $2)"
    " AND ($3::timestamptz IS NULL OR c.stopped_at < $3)"
    " AND c.termination_cause <> 'late-stop'"
    " AND (c.direction = 'outbound' OR c.rate_type IS NOT NULL)"
    " ORDER BY c.stopped_at"
)


def _rated_as_stopped(
    snapshot: CatalogSnapshot, plan_id: str, row: asyncpg.Record, counters: dict[str, CounterDef]
) -> tuple[tuple[str, int] | None, int]:
    """((zone, cost) or None, seconds) of a call rated by its destination: at the seconds
    its late stop's reading gives (``duration``), or, where that reading is in doubt and
    only the other one (``other_duration``) rates the call as it was rated, at those. An
    unchanged catalog never shows an unchanged call as changed by a misread late stop."""
    found = _rated_as_called(
        snapshot, plan_id, row, counters, row["duration"], row["counter_seconds"]
    )
    other = row["other_duration"]
    if other is None or (found is not None and found[1] == row["rated_cost"]):
        return found, row["duration"]
    alternative = _rated_as_called(
        snapshot, plan_id, row, counters, other, row["other_counter_seconds"]
    )
    if alternative is not None and alternative[1] == row["rated_cost"]:
        return alternative, other
    return found, row["duration"]


def _rated_as_called(
    snapshot: CatalogSnapshot,
    plan_id: str,
    row: asyncpg.Record,
    counters: dict[str, CounterDef],
    duration: int,
    counter_seconds: int,
) -> tuple[str, int] | None:
    """(zone, cost) of a call of ``duration`` seconds (``counter_seconds`` of them paid by
    its counter) rated by its destination as authorize and stop rated it: ``tariff_of``
    in the deck of the plan that rated it (an access number's, else the account's),
    priced over the bands placed from its answer; None: no price now."""
    rating_plan = row["rating_plan"] or plan_id
    try:
        match = tariff_of(snapshot, rating_plan, row["destination"], None, row["direction"])
    except OcsError:
        return None
    authorized = int(row["authorized_at"].timestamp())
    # As stop places it: from the answer, the authorization for a call that rang none.
    start = max(int(row["answered_at"].timestamp()), authorized)
    rate = match.tariff.rate
    bands = call_bands(snapshot.plan(rating_plan), rate, start, duration)
    split = _split(row["counter_id"], counter_seconds, counters)
    return match.tariff.zone, cost_with_counter(rate, duration, split, bands)


def _split(
    counter_id: str | None, counter_seconds: int, counters: dict[str, CounterDef]
) -> CounterSplit | None:
    """The usage counter part of a CDR's call, as it was charged (None: none)."""
    counter = counters.get(counter_id) if counter_id else None
    if counter is None or not counter_seconds:
        return None
    return CounterSplit(counter.rate, counter_seconds)


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
    split = _split(row["counter_id"], row["counter_seconds"], counters)
    return rated.zone, cost_with_counter(rated.tariff.rate, row["duration"], split, rated.bands)
