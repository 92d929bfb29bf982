"""The balance-forward statement of an invoice, computed set-based from the ledger.

Every invoice says: previous balance, payments, new charges, closing balance
(decision 0020, migration 0021). The figures are the ledger's exact
micro-units for the statement window (the invoice's usage window):

- ``previous_balance``: the ledger's sum before the window, with the money of
  earlier invoices' lines counted whenever it moved (posting comes after a
  period ends; it belongs to the invoice that billed it);
- ``payments``: opening balance and top-ups in the window;
- ``debited``: what the real-time path took in the window (calls, usage
  events, counter fees, less any other credit), the invoice's own reporting
  lines show it;
- ``posting_charges``: what posting this invoice moves (its lines with
  ``moves_money``);
- ``new_charges`` = ``debited + posting_charges``; ``closing_balance`` =
  previous + payments - new charges; ``amount_due`` = what the account owes
  after posting, ``max(-closing, 0)``.

A prepaid account (no credit limit) reads it as what was debited in real
time plus what posting moves now; a postpaid account's amount due is what it
owes after posting. One statement of a group of drafts is one query.
"""

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.errors import OcsError, Reason

# Ledger kinds that bring money in from outside (the rest, not invoice money, is debited).
PAYMENT_KINDS = ("opening", "topup")

_STATEMENT_SQL = """
WITH d AS (
    SELECT i.id, i.account_id, i.period_start, a.credit_limit = 0 AS prepaid
    FROM invoices i JOIN accounts a ON a.id = i.account_id
    WHERE i.id = ANY($1::bigint[])
),
g AS (
    SELECT e.account_id, e.kind, e.amount, e.occurred_at,
           CASE WHEN e.reference ~ '^inv:[0-9]{1,18}$'
                THEN substr(e.reference, 5)::bigint END AS line_id
    FROM ledger e
    WHERE e.account_id IN (SELECT account_id FROM d)
      AND (e.occurred_at < $3 OR e.reference LIKE 'inv:%')
),
-- An invoice line's money belongs to the line's invoice, whenever it moved.
gi AS (
    SELECT g.account_id, g.kind, g.amount, g.occurred_at, i.id AS invoice_id,
           i.period_start AS invoice_start
    FROM g LEFT JOIN invoice_lines l ON l.id = g.line_id
    LEFT JOIN invoices i ON i.id = l.invoice_id
),
s AS (
    SELECT d.id, d.prepaid,
           COALESCE(sum(gi.amount) FILTER (
               WHERE (gi.invoice_id IS NULL AND gi.occurred_at < $2)
                  OR (gi.invoice_id <> d.id AND gi.invoice_start < d.period_start)), 0)
             AS previous,
           COALESCE(sum(gi.amount) FILTER (
               WHERE gi.invoice_id IS NULL AND gi.occurred_at >= $2 AND gi.occurred_at < $3
                 AND gi.kind = ANY($4::text[])), 0) AS payments,
           COALESCE(-sum(gi.amount) FILTER (
               WHERE gi.invoice_id IS NULL AND gi.occurred_at >= $2 AND gi.occurred_at < $3
                 AND gi.kind <> ALL($4::text[])), 0) AS debited,
           COALESCE((SELECT sum(l.amount) FROM invoice_lines l
                     WHERE l.invoice_id = d.id AND l.moves_money), 0) AS posting
    FROM d LEFT JOIN gi ON gi.account_id = d.account_id
    GROUP BY d.id, d.prepaid
)
UPDATE invoices i
SET window_start = $2, window_end = $3, prepaid = s.prepaid,
    previous_balance = s.previous, payments = s.payments, debited = s.debited,
    posting_charges = s.posting, new_charges = s.debited + s.posting,
    closing_balance = s.previous + s.payments - s.debited - s.posting,
    amount_due = GREATEST(-(s.previous + s.payments - s.debited - s.posting), 0)
FROM s WHERE i.id = s.id
"""


@dataclass(frozen=True, slots=True)
class Statement:
    """An invoice's balance-forward statement, in exact micro-units."""

    window_start: datetime | None
    window_end: datetime | None
    prepaid: bool
    previous_balance: int
    payments: int
    debited: int
    posting_charges: int
    new_charges: int
    closing_balance: int
    amount_due: int

    def figures(self) -> tuple[bool, int, int, int, int, int, int, int]:
        """Its figures as ``invoices`` stores them, prepaid to amount due (the window aside)."""
        return (
            self.prepaid,
            self.previous_balance,
            self.payments,
            self.debited,
            self.posting_charges,
            self.new_charges,
            self.closing_balance,
            self.amount_due,
        )


# The ledger figures of a group of accounts' statements, before their drafts are written:
# the same sums as _STATEMENT_SQL, by account. A draft's own lines never moved money
# (only a posted invoice's do), so no invoice needs leaving out of "previous".
_FIGURES_SQL = """
WITH d AS (
    SELECT a.id AS account_id, a.credit_limit = 0 AS prepaid
    FROM accounts a WHERE a.id = ANY($1::text[])
),
g AS (
    SELECT e.account_id, e.kind, e.amount, e.occurred_at,
           CASE WHEN e.reference ~ '^inv:[0-9]{1,18}$'
                THEN substr(e.reference, 5)::bigint END AS line_id
    FROM ledger e
    WHERE e.account_id = ANY($1::text[])
      AND (e.occurred_at < $3 OR e.reference LIKE 'inv:%')
),
gi AS (
    SELECT g.account_id, g.kind, g.amount, g.occurred_at, i.id AS invoice_id,
           i.period_start AS invoice_start
    FROM g LEFT JOIN invoice_lines l ON l.id = g.line_id
    LEFT JOIN invoices i ON i.id = l.invoice_id
)
SELECT d.account_id, d.prepaid,
       COALESCE(sum(gi.amount) FILTER (
           WHERE (gi.invoice_id IS NULL AND gi.occurred_at < $2)
              OR (gi.invoice_id IS NOT NULL AND gi.invoice_start < $5)), 0)::bigint AS previous,
       COALESCE(sum(gi.amount) FILTER (
           WHERE gi.invoice_id IS NULL AND gi.occurred_at >= $2 AND gi.occurred_at < $3
             AND gi.kind = ANY($4::text[])), 0)::bigint AS payments,
       COALESCE(-sum(gi.amount) FILTER (
           WHERE gi.invoice_id IS NULL AND gi.occurred_at >= $2 AND gi.occurred_at < $3
             AND gi.kind <> ALL($4::text[])), 0)::bigint AS debited
FROM d LEFT JOIN gi ON gi.account_id = d.account_id
GROUP BY d.account_id, d.prepaid
"""


def statement_of(
    window: tuple[datetime, datetime],
    prepaid: bool,
    previous: int,
    payments: int,
    debited: int,
    posting: int,
) -> Statement:
    """A statement from its ledger figures and what posting the invoice moves (the rule
    of the module's docstring, as ``_STATEMENT_SQL`` writes it)."""
    new_charges = debited + posting
    closing = previous + payments - new_charges
    return Statement(
        window[0],
        window[1],
        prepaid,
        previous,
        payments,
        debited,
        posting,
        new_charges,
        closing,
        max(-closing, 0),
    )


async def statement_figures(
    conn: asyncpg.Connection,
    account_ids: list[str],
    period_start: datetime,
    window: tuple[datetime, datetime],
) -> dict[str, tuple[bool, int, int, int]]:
    """Account -> (prepaid, previous balance, payments, debited) for drafts of the period
    starting at ``period_start`` over ``window``, in one query: what a draft's statement
    needs besides its own lines, read before the drafts are written (so a new draft is
    inserted whole, not inserted and then updated)."""
    rows = await conn.fetch(
        _FIGURES_SQL, account_ids, window[0], window[1], list(PAYMENT_KINDS), period_start
    )
    return {
        r["account_id"]: (r["prepaid"], r["previous"], r["payments"], r["debited"]) for r in rows
    }


async def write_statements(
    conn: asyncpg.Connection, draft_ids: list[int], window: tuple[datetime, datetime]
) -> None:
    """Compute and store the statements of these drafts over ``window``, in one query.

    Call after their lines are written (``posting_charges`` sums them).
    """
    if draft_ids:
        await conn.execute(_STATEMENT_SQL, draft_ids, window[0], window[1], list(PAYMENT_KINDS))


async def statement(pool: asyncpg.Pool, invoice_id: int) -> Statement:
    """An invoice's stored statement; NOT_FOUND for no such invoice."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT window_start, window_end, prepaid, previous_balance, payments, debited,"
            " posting_charges, new_charges, closing_balance, amount_due"
            " FROM invoices WHERE id = $1",
            invoice_id,
        )
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}")
    return Statement(**dict(row))
