"""The itemised call list of an invoice: one row per call, per member or caller id, and its CSV.

The calls are the invoice's own: the CDRs of its account stopped in its
statement window (``invoices.window_start/window_end``, the window its usage
lines sum), usage events left out (they have their own lines). ``call_rows``
answers the API listing and ``calls_csv`` the CSV attachment; amounts are the
exact micro-units each call was charged (the invoice rounds per usage line,
not per call), written with six decimals.
"""

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ocs.billing.csv_cells import safe_row
from ocs.errors import OcsError, Reason
from ocs.money import format_amount

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

_ROWS_SQL = """
SELECT c.entry_id, c.stopped_at, c.caller, c.member, c.destination, c.zone, c.direction,
       c.duration, c.billed_seconds, c.charged, c.currency
FROM cdrs c
WHERE c.account_id = $1 AND c.stopped_at >= $2 AND c.stopped_at < $3
  AND c.termination_cause <> 'usage'
  AND ($4::text IS NULL OR c.member = $4 OR c.caller = $4)
ORDER BY c.stopped_at, c.entry_id
"""


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


async def call_rows(
    pool: asyncpg.Pool, invoice_id: int, member: str | None = None
) -> list[CallRow]:
    """The invoice's calls in time order; ``member``: only that member's or caller id's.

    NOT_FOUND for no such invoice; an invoice drafted before statements had a
    window (none) lists its whole period.
    """
    async with pool.acquire() as conn:
        invoice = await conn.fetchrow(
            "SELECT account_id, COALESCE(window_start, period_start) AS start,"
            ' COALESCE(window_end, period_end) AS "end" FROM invoices WHERE id = $1',
            invoice_id,
        )
        if invoice is None:
            raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}")
        rows = await conn.fetch(
            _ROWS_SQL, invoice["account_id"], invoice["start"], invoice["end"], member
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


def calls_csv(rows: list[CallRow]) -> str:
    """The rows as a CSV attachment (header first; times in ISO 8601 UTC, amounts exact;
    a caller id or zone a spreadsheet would run as a formula written as text)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
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
