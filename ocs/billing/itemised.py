"""The itemised call list of an invoice: one row per call, per member or caller id, and its CSV.

The calls are the invoice's own: the CDRs of its account stopped in its
statement window (``invoices.window_start/window_end``, the window its usage
lines sum), usage events left out (they have their own lines); of the imported
calls, those its draft saw, and the late ones it billed (``late_usage``: imported ones
its earlier invoice could not see, and those stopped after that invoice's window ended).
``call_rows`` answers the API listing a page at a time (``page_cursor`` names where the next page
starts) and ``calls_csv`` the CSV attachment, written page by page; amounts are the
exact micro-units each call was charged (the invoice rounds per usage line,
not per call), written with six decimals.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from ocs.billing.csv_cells import safe_row
from ocs.errors import OcsError, Reason, invalid
from ocs.money import format_amount
from ocs.whole_numbers import whole_number

CSV_COLUMNS = (
    "time",
    "caller",
    "member",
    "destination",
    "zone",
    "direction",
    "duration",
    "billed_seconds",
    "amount",
    "currency",
    "cdr",
)

# The window's calls, less the imported ones the invoice's draft could not see (its
# snapshot $8; they are the next invoice's), and the late imported calls it billed
# (``late_usage``, decision 0050): stopped before the window, unseen by the snapshot its
# late usage was compared with ($9), seen by its own; and the calls stopped in the gap from
# that earlier invoice's window end ($14: an early run's, a usage cut-off's) to this window,
# but the imported ones the earlier snapshot missed (the late part has them). Ranges of
# indexes, so the window's part does not read the account's whole history; each is cut at
# the page's size.
#
# A snapshot of another PostgreSQL cluster (a dump restored, a move by logical
# replication: migration 0065) is compared by time, as ``late_usage`` does: $10 is whether
# the invoice's own snapshot is this cluster's and $11 when it was read, $12 and $13 the
# same of the one its late usage was compared with. The late part is two branches, one per
# rule, the other switched off by its parameter; the gap's part leaves out what the late
# part lists, by the same rule.
_SEEN_BY_OWN = """CASE WHEN $10::boolean
     THEN c.recorded_xid IS NULL OR pg_visible_in_snapshot(c.recorded_xid, $8::text::pg_snapshot)
     ELSE c.recorded_at < COALESCE($11::timestamptz, 'infinity') END"""
_MISSED_BEFORE = """CASE WHEN $12::boolean
     THEN c.recorded_xid IS NOT NULL
          AND NOT pg_visible_in_snapshot(c.recorded_xid, $9::text::pg_snapshot)
     ELSE c.recorded_at >= COALESCE($13::timestamptz, 'infinity') END"""
_PAGE = """
     AND ($4::text IS NULL OR c.member = $4 OR c.caller = $4)
     AND ($5::timestamptz IS NULL OR (c.stopped_at, c.entry_id) > ($5, $6::text))
   ORDER BY c.stopped_at, c.entry_id
   LIMIT $7)"""
_COLUMNS = """
  (SELECT c.entry_id, c.stopped_at, c.caller, c.member, c.destination, c.zone, c.direction,
          c.duration, c.billed_seconds, c.charged, c.currency
   FROM cdrs c"""
_ROWS_SQL = f"""
SELECT * FROM ({_COLUMNS}
   WHERE c.account_id = $1 AND c.stopped_at >= $2 AND c.stopped_at < $3
     AND c.termination_cause <> 'usage'
     AND ($8::text IS NULL OR c.supplier IS NULL OR {_SEEN_BY_OWN}){_PAGE}
  UNION ALL{_COLUMNS}
   WHERE $8::text IS NOT NULL AND $9::text IS NOT NULL AND $12::boolean
     AND c.account_id = $1 AND c.supplier IS NOT NULL AND c.termination_cause <> 'usage'
     AND c.recorded_xid IS NOT NULL
     AND c.recorded_xid >= pg_snapshot_xmin($9::text::pg_snapshot)
     AND NOT pg_visible_in_snapshot(c.recorded_xid, $9::text::pg_snapshot)
     AND {_SEEN_BY_OWN}
     AND c.stopped_at < $2{_PAGE}
  UNION ALL{_COLUMNS}
   WHERE $8::text IS NOT NULL AND $9::text IS NOT NULL AND NOT $12::boolean
     AND c.account_id = $1 AND c.supplier IS NOT NULL AND c.termination_cause <> 'usage'
     AND c.recorded_at >= $13::timestamptz AND {_SEEN_BY_OWN}
     AND c.stopped_at < $2{_PAGE}
  UNION ALL{_COLUMNS}
   WHERE $8::text IS NOT NULL AND $9::text IS NOT NULL
     AND c.account_id = $1 AND c.stopped_at >= $14::timestamptz AND c.stopped_at < $2
     AND c.termination_cause <> 'usage'
     AND {_SEEN_BY_OWN}
     AND NOT (c.supplier IS NOT NULL AND {_MISSED_BEFORE}){_PAGE}
) calls
ORDER BY stopped_at, entry_id
LIMIT $7
"""
# An invoice's window, its snapshot and the one its late usage was compared with, each
# with whether it is this cluster's and when it was read, and where the usage window of
# the invoice compared with ended (``late_usage``'s gap).
_INVOICE_SQL = """
SELECT i.account_id, COALESCE(i.window_start, i.period_start) AS start,
       COALESCE(i.window_end, i.period_end) AS "end", i.usage_snapshot::text AS seen,
       i.late_after_snapshot::text AS seen_before,
       COALESCE(i.usage_snapshot_system = here.id, false) AS seen_here,
       i.usage_snapshot_at AS seen_at,
       COALESCE(i.late_after_system = here.id, false) AS seen_before_here,
       i.late_after_at AS seen_before_at,
       (SELECT e.window_end FROM invoices e
        WHERE e.account_id = i.account_id AND e.kind = 'invoice'
          AND e.period_start < i.period_start
        ORDER BY e.period_start DESC LIMIT 1) AS gap_from
FROM invoices i, (SELECT system_identifier AS id FROM pg_control_system()) here
WHERE i.id = $1
"""
# The most calls one page lists: an account's month may hold hundreds of thousands, and
# one answer of them all held the serving loop for seconds.
MAX_PAGE = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last microsecond a datetime holds (9999-12-31): a cursor past it names no call.
_LAST_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class CallRow:
    """One call of an itemised list; ``time`` is when it was answered (stop - duration)."""

    time: datetime
    caller: str | None
    member: str | None
    destination: str
    zone: str
    direction: str
    duration: int
    billed_seconds: int
    amount: int  # micro-units charged
    currency: str
    cdr: str


def position(row: CallRow) -> tuple[datetime, str]:
    """Where ``row`` stands in the list's order: its stop and its CDR (``after``)."""
    return row.time + timedelta(seconds=row.duration), row.cdr


def page_cursor(row: CallRow) -> str:
    """``position`` as the API's ``next``: the stop in microseconds, then the CDR."""
    stopped, cdr = position(row)
    return f"{(stopped - _EPOCH) // timedelta(microseconds=1)}_{cdr}"


def parse_cursor(text: str) -> tuple[datetime, str]:
    """A ``page_cursor``'s stop and CDR; 400 naming ``after`` for anything else."""
    digits, _, cdr = text.partition("_")
    micros = whole_number(digits, _LAST_MICROS)
    if micros is None or not cdr:
        raise invalid("after", "expected the `next` of an earlier page")
    return _EPOCH + timedelta(microseconds=micros), cdr


async def call_rows(
    pool: asyncpg.Pool,
    invoice_id: int,
    member: str | None = None,
    *,
    after: tuple[datetime, str] | None = None,
    limit: int | None = None,
) -> list[CallRow]:
    """The invoice's calls in time order; ``member``: only that member's or caller id's;
    ``after``: from past that call (``parse_cursor``), at most ``limit`` of them.

    NOT_FOUND for no such invoice; an invoice drafted before statements had a
    window (none) lists its whole period.
    """
    async with pool.acquire() as conn:
        invoice = await conn.fetchrow(_INVOICE_SQL, invoice_id)
        if invoice is None:
            raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}")
        stopped, cdr = after or (None, None)
        rows = await conn.fetch(
            _ROWS_SQL,
            invoice["account_id"],
            invoice["start"],
            invoice["end"],
            member,
            stopped,
            cdr,
            limit,
            invoice["seen"],
            invoice["seen_before"],
            invoice["seen_here"],
            invoice["seen_at"],
            invoice["seen_before_here"],
            invoice["seen_before_at"],
            invoice["gap_from"],
        )
    return [
        CallRow(
            r["stopped_at"] - timedelta(seconds=r["duration"]),
            r["caller"],
            r["member"],
            r["destination"],
            r["zone"],
            r["direction"],
            r["duration"],
            r["billed_seconds"],
            r["charged"],
            r["currency"],
            r["entry_id"],
        )
        for r in rows
    ]


def calls_csv(rows: list[CallRow], *, header: bool = True) -> str:
    """The rows as a CSV attachment (header first unless ``header`` is False, for a later
    page; times in ISO 8601 UTC, amounts exact; a caller id or zone a spreadsheet would
    run as a formula written as text)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            safe_row(
                (
                    row.time.isoformat(),
                    row.caller or "",
                    row.member or "",
                    row.destination,
                    row.zone,
                    row.direction,
                    row.duration,
                    row.billed_seconds,
                    format_amount(row.amount),
                    row.currency,
                    row.cdr,
                )
            )
        )
    return out.getvalue()
