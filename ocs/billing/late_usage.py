"""Imported usage recorded after the invoice of its period: billed by the next invoice.

A supplier's file can be imported days after the calls it lists (decision 0032). Their
CDRs are written then, with stops inside a period that may already be invoiced: the
invoice windows calls by their stop, so no invoice ever showed them, nor taxed them,
though the real-time path debited them when they were imported. Decision 0050:

- every invoice keeps the snapshot in which its draft read the window's CDRs
  (``invoices.usage_snapshot``, from ``realtime.cdr_totals``);
- an invoice bills, besides its window, the account's imported CDRs stopped before its
  window that its newest earlier invoice (any state) could not see in that snapshot,
  and that its own snapshot sees. So each imported CDR is on exactly one invoice: the
  first whose draft could see it among those its stop reaches.

The lines are the window's usage lines (``lines.Usage``, by zone, direction and rate
type), marked late: their period runs from the earliest such call's stop to the window's
start. They are reporting lines like every usage line (the debit was made at import) and
carry their rate type's tax code. Bundles and commitments are the window's own and do not
count them. Only imported CDRs are read: the real-time path's reach PostgreSQL before a
run drafts their period (decision 0021).
"""

from collections import defaultdict
from datetime import datetime

import asyncpg

from ocs.billing.lines import Usage

# Per account, the snapshot of its newest invoice before this one (a void one too: what it
# saw was invoiced, then voided by an operator, and is not billed again behind their back),
# and the account's imported CDRs written since that snapshot's xmin that it did not see
# and this draft's snapshot ($3) does. recorded_xid is NULL for a CDR written before
# migration 0046: no comparison holds for it. Served by cdrs_imported_recorded_idx.
_LATE_SQL = """
SELECT c.account_id COLLATE "C" AS account_id, c.zone COLLATE "C" AS zone,
       c.direction COLLATE "C" AS direction, c.rate_type COLLATE "C" AS rate_type,
       count(*) AS calls, sum(c.duration)::bigint AS seconds,
       sum(c.billed_seconds)::bigint AS billed, sum(c.charged)::bigint AS amount,
       min(c.entry_id COLLATE "C") AS first_cdr, max(c.entry_id COLLATE "C") AS last_cdr,
       min(c.stopped_at) AS since
FROM (SELECT DISTINCT ON (account_id) account_id, usage_snapshot FROM invoices
      WHERE account_id = ANY($1::text[]) AND kind = 'invoice' AND period_start < $2
      ORDER BY account_id, period_start DESC) p
JOIN cdrs c ON c.account_id = p.account_id AND c.supplier IS NOT NULL
           AND c.recorded_xid >= pg_snapshot_xmin(p.usage_snapshot)
WHERE NOT pg_visible_in_snapshot(c.recorded_xid, p.usage_snapshot)
  AND pg_visible_in_snapshot(c.recorded_xid, $3::text::pg_snapshot)
  AND c.stopped_at < $4
GROUP BY 1, 2, 3, 4
"""


async def late_usage(
    conn: asyncpg.Connection,
    account_ids: list[str],
    period_start: datetime,
    window_start: datetime,
    snapshot: str,
) -> dict[str, list[Usage]]:
    """Account -> its late imported calls, summed like the window's (``Usage.since`` set).

    ``period_start``: the invoice's period (earlier invoices are those before it);
    ``window_start``: its usage window's start (late calls stopped before it);
    ``snapshot``: the snapshot the invoice's window was read in.
    """
    found: dict[str, list[Usage]] = defaultdict(list)
    rows = await conn.fetch(_LATE_SQL, account_ids, period_start, snapshot, window_start)
    for r in sorted(
        rows, key=lambda r: (r["account_id"], r["zone"], r["direction"], r["rate_type"] or "")
    ):
        found[r["account_id"]].append(
            Usage(
                r["zone"],
                r["direction"],
                r["calls"],
                r["seconds"],
                r["billed"],
                r["amount"],
                r["first_cdr"],
                r["last_cdr"],
                r["rate_type"],
                since=r["since"],
            )
        )
    return found
