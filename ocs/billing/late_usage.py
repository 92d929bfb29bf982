"""Imported usage recorded after the invoice of its period: billed by the next invoice.

A supplier's file can be imported days after the calls it lists (decision 0032). Their
CDRs are written then, with stops inside a period that may already be invoiced: the
invoice windows usage by its stop, so no invoice ever showed it, nor taxed it, though
the real-time path debited it when it was imported. Decision 0050:

- every invoice keeps the snapshot in which its draft read the window's CDRs
  (``invoices.usage_snapshot``, from ``realtime.cdr_totals``);
- an invoice bills, besides its window, the account's imported CDRs stopped before its
  window that its newest earlier invoice (any state) could not see in that snapshot,
  and that its own snapshot sees; it keeps the snapshot it compared with
  (``invoices.late_after_snapshot``), so its itemised list reads the same calls later;
- an invoice drafted for an account that already has a later invoice bills no late
  usage: the later one compared with what existed when it was drafted;
- a snapshot taken in another PostgreSQL cluster (``invoices.usage_snapshot_system``,
  migration 0065: a dump restored, a move by logical replication) is compared by the time
  it was read instead, since transaction ids count per cluster.

Calls come out as the window's usage lines (``lines.Usage``, by zone, direction and rate
type) and service events as its event lines (by service and zone), marked late: their
period runs from the earliest one's stop to the window's start. They are reporting lines
like every usage line (the debit was made at import) and carry their rate type's tax
code. Bundles and commitments are the window's own and do not count them. Of the
real-time path's CDRs, which reach PostgreSQL before a run drafts their period (decision
0021), only those stopped in a gap between the earlier invoice's window and this one are
read: the calls stopped after an early run's creation (or a usage cut-off), which no
window held (decision 0021, addendum 2026-12-07).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import msgspec

from ocs.billing.lines import Line, Usage, late_suffix
from ocs.billing.realtime import Total, event_line

# Per account, the snapshot of its newest invoice before this one (a void one too: what it
# saw was invoiced, then voided by an operator, and is not billed again behind their
# back), and where its usage window ended (the gap's start). The newest is chosen first:
# one drafted before migration 0046 has no snapshot, and nothing is late after it.
#
# With the snapshot, the cluster it was taken in and when (migration 0065), and whether
# that cluster is this one: transaction ids of another cluster (a dump restored, a move by
# logical replication) say nothing of this one's, and such a snapshot is compared by time.
_COMPARED_WITH_SQL = """
SELECT account_id, snapshot, gap_from, system, read_at,
       COALESCE(system = (SELECT system_identifier FROM pg_control_system()), false) AS here
FROM (
  SELECT DISTINCT ON (i.account_id) i.account_id, i.usage_snapshot::text AS snapshot,
         i.window_end AS gap_from, i.usage_snapshot_system AS system,
         i.usage_snapshot_at AS read_at
  FROM invoices i
  WHERE i.account_id = ANY($1::text[]) AND i.kind = 'invoice' AND i.period_start < $2
  ORDER BY i.account_id, i.period_start DESC
) newest
WHERE snapshot IS NOT NULL
"""

# The accounts' late CDRs, summed as ``realtime.cdr_totals`` sums the window's, each once.
# Per account: the earlier snapshot ($2), where the earlier invoice's usage window ended
# ($5), whether that snapshot is this cluster's ($6) and when it was read ($7).
# - imported ones the earlier snapshot did not see and this draft's snapshot ($3) does,
#   stopped before the window ($4). Of this cluster's snapshot: written since its xmin and
#   not visible in it (recorded_xid is NULL for a CDR written before migration 0046: no
#   comparison holds for it; served by cdrs_imported_recorded_idx, 0047). Of another
#   cluster's (migration 0065): recorded (their transaction's start) at or after it was
#   read, a CDR with no transaction id too (the operator's after a move,
#   docs/operations.md). Exact to the transactions open while the earlier draft read: one
#   begun before, committed after, is not billed;
# - any other stopped in the gap between the earlier invoice's usage window end (an early
#   run's or a usage cut-off's) and this window, seen by this draft's snapshot: no window
#   held them. "Other" is by the same rule, ids or time, as the first part, so a CDR is in
#   one part only. Served by cdrs_account_covering_idx; an empty range for an earlier
#   invoice whose window ended where this one starts.
_LATE_SQL = """
WITH compared AS (
  SELECT * FROM unnest($1::text[], $2::text[], $5::timestamptz[], $6::boolean[],
                       $7::timestamptz[]) AS p(account_id, snapshot, gap_from, here, read_at)
), late AS (
  SELECT c.account_id, c.termination_cause, c.zone, c.direction, c.rate_type,
         c.destination, c.duration, c.billed_seconds, c.charged, c.entry_id, c.stopped_at,
         p.gap_from
  FROM compared p
  JOIN cdrs c ON p.here AND c.account_id = p.account_id AND c.supplier IS NOT NULL
             AND c.recorded_xid IS NOT NULL
             AND c.recorded_xid >= pg_snapshot_xmin(p.snapshot::pg_snapshot)
  WHERE NOT pg_visible_in_snapshot(c.recorded_xid, p.snapshot::pg_snapshot)
    AND pg_visible_in_snapshot(c.recorded_xid, $3::text::pg_snapshot)
    AND c.stopped_at < $4
  UNION ALL
  SELECT c.account_id, c.termination_cause, c.zone, c.direction, c.rate_type,
         c.destination, c.duration, c.billed_seconds, c.charged, c.entry_id, c.stopped_at,
         p.gap_from
  FROM compared p
  JOIN cdrs c ON NOT p.here AND c.account_id = p.account_id AND c.supplier IS NOT NULL
             AND c.recorded_at >= p.read_at
  WHERE (c.recorded_xid IS NULL OR pg_visible_in_snapshot(c.recorded_xid, $3::text::pg_snapshot))
    AND c.stopped_at < $4
  UNION ALL
  SELECT c.account_id, c.termination_cause, c.zone, c.direction, c.rate_type,
         c.destination, c.duration, c.billed_seconds, c.charged, c.entry_id, c.stopped_at,
         p.gap_from
  FROM compared p
  JOIN cdrs c ON c.account_id = p.account_id AND c.stopped_at >= p.gap_from
             AND c.stopped_at < $4
  WHERE (c.recorded_xid IS NULL OR pg_visible_in_snapshot(c.recorded_xid, $3::text::pg_snapshot))
    AND NOT (c.supplier IS NOT NULL AND CASE
      WHEN p.here THEN c.recorded_xid IS NOT NULL
                       AND NOT pg_visible_in_snapshot(c.recorded_xid, p.snapshot::pg_snapshot)
      ELSE c.recorded_at >= p.read_at END)
)
SELECT c.account_id COLLATE "C" AS account_id, c.termination_cause = 'usage' AS event,
       c.zone COLLATE "C" AS zone, c.direction COLLATE "C" AS direction,
       c.rate_type COLLATE "C" AS rate_type,
       CASE WHEN c.termination_cause = 'usage' THEN c.destination END COLLATE "C" AS service,
       count(*) AS calls, sum(c.duration)::bigint AS seconds,
       sum(c.billed_seconds)::bigint AS billed, sum(c.charged)::bigint AS amount,
       min(c.entry_id COLLATE "C") AS first_cdr, max(c.entry_id COLLATE "C") AS last_cdr,
       min(c.stopped_at) AS since,
       CASE WHEN c.stopped_at >= c.gap_from THEN c.gap_from END AS gap_from
FROM late c
GROUP BY 1, 2, 3, 4, 5, 6, 14
"""


@dataclass(frozen=True, slots=True)
class Seen:
    """What an invoice's draft saw of the CDRs: its snapshot (``pg_snapshot`` text), the
    cluster it was taken in (None: unknown, read as another's) and when; ``here``: the
    cluster is this one, so transaction ids compare (else the time does)."""

    snapshot: str
    system: int | None
    read_at: datetime | None
    here: bool


@dataclass(frozen=True, slots=True)
class LateEvents:
    """One service's late events in one zone: their sums and the earliest one's stop."""

    service: str
    zone: str
    total: Total
    since: datetime
    gap_from: datetime | None = None  # stopped after the earlier invoice's window ended


@dataclass(slots=True)
class LateUsage:
    """A group's late usage: per account, its calls and events, and what the earlier
    invoice it was compared with saw (stored on its invoice)."""

    calls: dict[str, list[Usage]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, list[LateEvents]] = field(default_factory=lambda: defaultdict(list))
    compared_with: dict[str, Seen] = field(default_factory=dict)

    def event_lines(self, account_id: str, window_start: datetime, currency: str) -> list[Line]:
        """The account's late events as ``usage_event`` lines, marked late."""
        found = []
        for late in self.events.get(account_id, []):
            line = event_line(
                late.service, late.zone, late.total, (late.since, window_start), currency
            )
            late_description = line.description + late_suffix(window_start, late.gap_from)
            found.append(msgspec.structs.replace(line, description=late_description))
        return found


async def late_usage(
    conn: asyncpg.Connection,
    account_ids: list[str],
    period_start: datetime,
    window_start: datetime,
    snapshot: str,
) -> LateUsage:
    """The accounts' late imported usage, summed like the window's.

    ``account_ids``: the invoice's accounts that have no invoice after it (one that has
    bills no late usage); ``period_start``: the invoice's period (earlier invoices are
    those before it);
    ``window_start``: its usage window's start (late usage stopped before it);
    ``snapshot``: the snapshot the invoice's window was read in. Late usage is the
    imported usage the earlier invoice could not see, and every call stopped after the
    earlier invoice's usage window ended (an early run's, or a usage cut-off's) and
    before this window (decision 0021, addendum 2026-12-07).
    """
    found = LateUsage()
    gap_from: dict[str, datetime | None] = {}
    for r in await conn.fetch(_COMPARED_WITH_SQL, account_ids, period_start):
        seen = Seen(r["snapshot"], r["system"], r["read_at"], r["here"])
        if seen.here or seen.read_at is not None:  # else neither ids nor time compare
            found.compared_with[r["account_id"]] = seen
            gap_from[r["account_id"]] = r["gap_from"]
    if not found.compared_with:
        return found
    accounts = list(found.compared_with)
    seen_before = [found.compared_with[a] for a in accounts]
    rows = await conn.fetch(
        _LATE_SQL,
        accounts,
        [s.snapshot for s in seen_before],
        snapshot,
        window_start,
        [gap_from[a] for a in accounts],
        [s.here for s in seen_before],
        [s.read_at for s in seen_before],
    )
    for r in sorted(
        rows,
        key=lambda r: (
            r["account_id"],
            r["event"],
            r["service"] or "",
            r["zone"],
            r["direction"],
            r["rate_type"] or "",
            r["gap_from"] is not None,
        ),
    ):
        account = r["account_id"]
        total = Total(
            r["calls"], r["seconds"], r["billed"], r["amount"], r["first_cdr"], r["last_cdr"]
        )
        if r["event"]:
            found.events[account].append(
                LateEvents(r["service"], r["zone"], total, r["since"], r["gap_from"])
            )
            continue
        found.calls[account].append(
            Usage(
                r["zone"],
                r["direction"],
                total.calls,
                total.seconds,
                total.billed,
                total.amount,
                total.first_cdr,
                total.last_cdr,
                r["rate_type"],
                since=r["since"],
                gap_from=r["gap_from"],
            )
        )
    return found
