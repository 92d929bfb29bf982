"""The balance-forward statement of an invoice, computed set-based from the ledger.

Every invoice says: previous balance, payments, new charges, closing balance
(decision 0020, migration 0021). The figures are the ledger's exact
micro-units for the statement window (the invoice's usage window):

- ``previous_balance``: the ledger's sum before the window, invoice lines'
  entries aside (``ledger_before``), plus the money of the account's posted
  invoices of earlier periods and their credit notes, counted from their
  lines that move money, whenever it moves (posting comes after a period
  ends; it belongs to the invoice that billed it). Counted from the lines,
  not from the ledger rows they make: those reach PostgreSQL through the
  ledger writer later. A draft counts the invoices posted when it is written;
  posting completes it in its own transaction with those posted since
  (``complete_statements``), so a period drafted before the one before it was
  posted still starts at that one's closing balance;
- ``payments``: opening balance and top-ups in the window (payments' credits among
  them), less what the window's refunds took back from invoices their payments had
  paid (a gateway's refund reopens them, decision 0027): the reopened invoices ask that
  money again, so it is payments given back, not a new charge of this invoice, which
  would ask it a second time. The statement reads the ledger from the end of the
  account's newest earlier invoice's window where that ended before this window (an
  early run's, a usage cut-off's: decision 0021, addendum 2026-12-07), so no money
  falls between two statements;
- ``debited``: what the real-time path took in the window (calls, usage
  events, counter fees, refunds of a payment's credit, less any other credit), the
  invoice's own reporting lines show it;
- ``posting_charges``: what posting this invoice moves (its lines with
  ``moves_money``);
- ``new_charges`` = ``debited + posting_charges``; ``closing_balance`` =
  previous + payments - new charges; ``amount_due`` = what the account owes
  after posting, ``max(-closing, 0)``.

A prepaid account (no credit limit) reads it as what was debited in real
time plus what posting moves now; a postpaid account's amount due is what it
owes after posting. One statement of a group of drafts is one query, and
so is completing those a posting numbers.
"""

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.errors import OcsError, Reason

# Ledger kinds that bring money in from outside (the rest, not invoice money, is debited).
PAYMENT_KINDS = ("opening", "topup")

# The ledger rows of accounts (``{accounts}``) before an instant (``{until}``), each
# invoice line's row aside: that money is counted from the lines (``_EARLIER_MONEY``).
# ``reopened``: of a refund's debit (a ``fee`` row ``refund:<id>``), what the refund took
# back from invoices it had paid (``payment_refunds.reopened``), 0 for any other row. Those
# invoices ask that money again, so a statement counts it as payments given back, not as
# a new charge the statement's own invoice would ask a second time.
_LEDGER = """
SELECT e.account_id, e.kind, e.amount, e.occurred_at, COALESCE(r.reopened, 0) AS reopened
FROM ledger e
LEFT JOIN invoice_lines l
  ON l.id = CASE WHEN e.reference ~ '^inv:[0-9]{{1,18}}$'
                 THEN substr(e.reference, 5)::bigint END
LEFT JOIN payment_refunds r
  ON r.id = CASE WHEN e.kind = 'fee' AND e.reference ~ '^refund:[0-9]{{1,18}}$'
                 THEN substr(e.reference, 8)::bigint END
WHERE e.account_id {accounts} AND e.occurred_at < {until} AND l.id IS NULL
"""

# The money of each statement's earlier invoices, from their lines: for each row of
# ``t`` (id, account_id, period_start), the lines that move money of the account's
# invoices of an earlier period that are posted ({posted}), and of their credit notes,
# as the ledger records them (a line of amount A moves -A: a charge debits, a credit
# credits). Invoices are found by their (account, period) index, credit notes by the
# invoice they void.
_EARLIER_MONEY = """
SELECT t.id, -sum(l.amount) AS money
FROM t
JOIN invoices j ON j.account_id = t.account_id AND j.kind = 'invoice'
     AND j.period_start < t.period_start AND {posted}
LEFT JOIN invoices c ON c.voids_invoice_id = j.id AND c.state <> 'draft'
CROSS JOIN LATERAL (VALUES (j.id), (c.id)) AS doc(id)
JOIN invoice_lines l ON l.invoice_id = doc.id AND l.moves_money
GROUP BY t.id
"""

# Where an account's statement starts reading the ledger: its window's start ($2), or
# earlier where the usage window of its newest earlier invoice ended before it (an early
# run's, a usage cut-off's): that money is on no earlier statement, and the calls are this
# invoice's late usage (``late_usage``). {account} and {period_start} name the invoice's.
_SINCE = """
LEAST($2::timestamptz, COALESCE((
    SELECT e.window_end FROM invoices e
    WHERE e.account_id = {account} AND e.kind = 'invoice' AND e.period_start < {period_start}
    ORDER BY e.period_start DESC LIMIT 1), $2::timestamptz))
"""

_STATEMENT_SQL = f"""
WITH d AS (
    SELECT i.id, i.account_id, i.period_start, a.credit_limit = 0 AS prepaid,
           {_SINCE.format(account="i.account_id", period_start="i.period_start")} AS since
    FROM invoices i JOIN accounts a ON a.id = i.account_id
    WHERE i.id = ANY($1::bigint[])
),
t AS (SELECT id, account_id, period_start FROM d),
g AS ({_LEDGER.format(accounts="IN (SELECT account_id FROM d)", until="$3")}),
m AS ({_EARLIER_MONEY.format(posted="j.state <> 'draft'")}),
s AS (
    SELECT d.id, d.prepaid,
           COALESCE(sum(g.amount) FILTER (WHERE g.occurred_at < d.since), 0) AS ledger_before,
           COALESCE(sum(g.amount) FILTER (
               WHERE g.occurred_at >= d.since AND g.kind = ANY($4::text[])), 0)
           - COALESCE(sum(g.reopened) FILTER (WHERE g.occurred_at >= d.since), 0) AS payments,
           COALESCE(-sum(g.amount) FILTER (
               WHERE g.occurred_at >= d.since AND g.kind <> ALL($4::text[])), 0)
           - COALESCE(sum(g.reopened) FILTER (WHERE g.occurred_at >= d.since), 0) AS debited,
           COALESCE((SELECT sum(l.amount) FROM invoice_lines l
                     WHERE l.invoice_id = d.id AND l.moves_money), 0) AS posting,
           COALESCE(min(m.money), 0) AS money
    FROM d LEFT JOIN g ON g.account_id = d.account_id LEFT JOIN m ON m.id = d.id
    GROUP BY d.id, d.prepaid, d.since
)
UPDATE invoices i
SET window_start = $2, window_end = $3, prepaid = s.prepaid, ledger_before = s.ledger_before,
    previous_balance = s.ledger_before + s.money, payments = s.payments, debited = s.debited,
    posting_charges = s.posting, new_charges = s.debited + s.posting,
    closing_balance = s.ledger_before + s.money + s.payments - s.debited - s.posting,
    amount_due = GREATEST(-(s.ledger_before + s.money + s.payments - s.debited - s.posting), 0)
FROM s WHERE i.id = s.id
"""

# The statements of drafts about to be posted ($1: the drafts this posting locked),
# completed in the posting's transaction: the previous balance is the ledger part read
# when each was drafted plus the money of the invoices of earlier periods as posted now,
# those this posting numbers included, so a period drafted before the one before it
# was posted follows it. The rest was read when drafted (the window's ledger rows) or
# kept in step with the lines (posting charges: drafting, taxing). Drafted before
# migration 0051 and never recomputed (no ledger_before): left as drafted.
_COMPLETE_SQL = f"""
WITH t AS (
    SELECT i.id, i.account_id, i.period_start, i.ledger_before FROM invoices i
    WHERE i.id = ANY($1::bigint[]) AND i.kind = 'invoice' AND i.state = 'draft'
      AND i.ledger_before IS NOT NULL
),
m AS ({_EARLIER_MONEY.format(posted="(j.state <> 'draft' OR j.id = ANY($1::bigint[]))")}),
s AS (SELECT t.id, t.ledger_before + COALESCE(m.money, 0) AS previous
      FROM t LEFT JOIN m ON m.id = t.id)
UPDATE invoices i
SET previous_balance = s.previous,
    closing_balance = s.previous + i.payments - i.new_charges,
    amount_due = GREATEST(-(s.previous + i.payments - i.new_charges), 0)
FROM s WHERE i.id = s.id AND i.previous_balance <> s.previous
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
# (only a posted invoice's do), so no invoice needs leaving out of the earlier money.
_FIGURES_SQL = f"""
WITH d AS (
    SELECT a.id AS account_id, a.credit_limit = 0 AS prepaid,
           {_SINCE.format(account="a.id", period_start="$5::timestamptz")} AS since
    FROM accounts a WHERE a.id = ANY($1::text[])
),
t AS (SELECT account_id AS id, account_id, $5::timestamptz AS period_start FROM d),
g AS ({_LEDGER.format(accounts="= ANY($1::text[])", until="$3")}),
m AS ({_EARLIER_MONEY.format(posted="j.state <> 'draft'")})
SELECT d.account_id, d.prepaid,
       COALESCE(sum(g.amount) FILTER (WHERE g.occurred_at < d.since), 0)::bigint
           AS ledger_before,
       COALESCE(min(m.money), 0)::bigint AS money,
       (COALESCE(sum(g.amount) FILTER (
           WHERE g.occurred_at >= d.since AND g.kind = ANY($4::text[])), 0)
        - COALESCE(sum(g.reopened) FILTER (WHERE g.occurred_at >= d.since), 0))::bigint
           AS payments,
       (COALESCE(-sum(g.amount) FILTER (
           WHERE g.occurred_at >= d.since AND g.kind <> ALL($4::text[])), 0)
        - COALESCE(sum(g.reopened) FILTER (WHERE g.occurred_at >= d.since), 0))::bigint
           AS debited
FROM d LEFT JOIN g ON g.account_id = d.account_id LEFT JOIN m ON m.id = d.account_id
GROUP BY d.account_id, d.prepaid, d.since
"""


@dataclass(frozen=True, slots=True)
class Figures:
    """What a draft's statement reads besides its own lines, by account.

    ``ledger_before``: the ledger before the window, invoice lines' entries aside;
    ``previous``: that plus the money of the invoices of earlier periods posted when
    the draft is written (posting completes it with those posted since,
    ``complete_statements``); ``payments`` and ``debited``: the window's ledger rows.
    """

    prepaid: bool
    ledger_before: int
    previous: int
    payments: int
    debited: int


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
) -> dict[str, Figures]:
    """Account -> its ``Figures`` for drafts of the period starting at ``period_start``
    over ``window``, in one query: what a draft's statement needs besides its own lines,
    read before the drafts are written (so a new draft is inserted whole, not inserted
    and then updated)."""
    rows = await conn.fetch(
        _FIGURES_SQL, account_ids, window[0], window[1], list(PAYMENT_KINDS), period_start
    )
    return {
        r["account_id"]: Figures(
            r["prepaid"],
            r["ledger_before"],
            r["ledger_before"] + r["money"],
            r["payments"],
            r["debited"],
        )
        for r in rows
    }


async def write_statements(
    conn: asyncpg.Connection, draft_ids: list[int], window: tuple[datetime, datetime]
) -> None:
    """Compute and store the statements of these drafts over ``window``, in one query.

    Call after their lines are written (``posting_charges`` sums them).
    """
    if draft_ids:
        await conn.execute(_STATEMENT_SQL, draft_ids, window[0], window[1], list(PAYMENT_KINDS))


async def complete_statements(conn: asyncpg.Connection, draft_ids: list[int]) -> None:
    """Complete the statements of the drafts being posted, in the posting's transaction,
    after they are locked and before they are numbered (a posted statement is final).

    Their previous balance becomes the ledger part read when each was drafted plus the
    money of the account's invoices of earlier periods as they stand now, the drafts in
    ``draft_ids`` counted as posted: so an invoice drafted before the one before it was
    posted follows it (its previous balance is that invoice's closing balance), however
    late the ledger writer brings those invoices' ledger rows. One query.
    """
    if draft_ids:
        await conn.execute(_COMPLETE_SQL, draft_ids)


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
