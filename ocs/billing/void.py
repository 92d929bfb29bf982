"""Voiding a posted invoice: a credit note with its own number that reverses its money.

The invoice's own money is finished first (a posting that crashed midway
moved only part of it), so the credit note reverses exactly what moved. Then,
in one transaction: the invoice is locked, a credit note is written with one
``reversal`` line per line whose money moved (amount negated, pointing at the line it
reverses), numbered from the credit-note sequence (``CN-2026-000001``) and posted, and
the invoice becomes ``void``. Last, the credit note's money moves like any posted
invoice's, keyed by its own lines: a positive charge comes back as a credit. What
payments paid of the invoice is theirs again, and pays the account's other open
invoices, oldest first, in the void's transaction, as a new payment would
(``credit.allocate``); what no invoice asks stays on the payments as credit
(refundable, like any credit). Dunning then reactivates an account it suspended that
now owes nothing overdue.

Lines that moved no money (usage, usage events, counter fees and counter usage: the
real-time path debited them when they happened) are not reversed: voiding an invoice
gives back what its posting took, not the calls, so the credit note's total is exactly
the money it returns to the balance (decision 0020).
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import dunning
from ocs.billing.credit import allocate
from ocs.billing.owed import asks_sql
from ocs.billing.posting import assign_numbers, move_money
from ocs.errors import OcsError, Reason

log = logging.getLogger("ocs.billing.void")

CREDIT_NOTE_ISSUER = "CN"

# The payments that paid the invoice ($1), locked first, in id order: every writer of
# payments locks a payment's row before its invoices' (a new payment, a refund reopening
# the invoices it paid), and the void releases these payments' allocations and pays
# other invoices from them. Locked after the invoices, as it was, a gateway refund of one
# of them (holding its payment, waiting for the void's invoices) and the void (holding
# the invoices, waiting for the payment) each waited for the other: PostgreSQL broke the
# deadlock by failing one of them (a 500).
_LOCK_PAYMENTS_SQL = """
SELECT p.id FROM payments p JOIN payment_allocations a ON a.payment_id = p.id
WHERE a.invoice_id = $1 AND a.amount > 0
ORDER BY p.id
FOR UPDATE OF p
"""

# Then the invoice ($1) and its account's open invoices, locked oldest first, the order
# a payment locks them in (``credit.allocate``): the void pays those from what it frees,
# and a payment paying them at the same time waits for the void, or the void for it,
# never each for the other.
_LOCK_SQL = f"""
SELECT i.id FROM invoices i JOIN invoices v ON v.account_id = i.account_id
WHERE v.id = $1
  AND (i.id = $1 OR (i.state = 'posted' AND i.kind = 'invoice'
                     AND i.amount_paid < {asks_sql("i")}))
ORDER BY i.period_start, i.id
FOR UPDATE OF i
"""

# The allocations of the invoice ($1) set to nothing, and their payments' ``allocated``
# lowered by them (locked: a refund or an allocation of the payment waits); what each
# payment got back, to pay the account's other open invoices.
_RELEASE_PAYMENTS_SQL = """
WITH freed AS (
  SELECT payment_id, amount FROM payment_allocations
  WHERE invoice_id = $1 AND amount > 0 FOR UPDATE
), zeroed AS (
  UPDATE payment_allocations a SET amount = 0 FROM freed f
  WHERE a.payment_id = f.payment_id AND a.invoice_id = $1
)
UPDATE payments p SET allocated = p.allocated - f.amount FROM freed f WHERE p.id = f.payment_id
RETURNING p.id AS payment_id, p.currency, f.amount
"""


# The credit note of the invoice ($1): its totals are those of the lines whose money
# moved (charges, discounts, surcharges, taxes), negated; the lines that only report
# what the real-time path debited are not reversed, so they count in none of them. It
# carries no message: the plan's invoice message is an invoice's (how to pay it), and
# a credit note asks for nothing. Nor a statement: its columns keep their zeros, which
# no view shows (decision 0026). It is dated today where the plan bills, as its
# invoices are: the database server's ``current_date`` dated a void at 16:00 in Los
# Angeles on 31 December 1 January, in the next year's number series and revenue month.
_CREDIT_NOTE_SQL = """
WITH moved AS (
  SELECT COALESCE(sum(amount) FILTER (WHERE kind <> 'tax'), 0) AS subtotal,
         COALESCE(sum(amount) FILTER (WHERE kind = 'tax'), 0) AS tax_total
  FROM invoice_lines WHERE invoice_id = $1 AND moves_money
)
INSERT INTO invoices (account_id, plan_id, kind, period_start, period_end, period_label,
                      currency, invoice_date, issuer, subtotal, tax_total, total,
                      taxes_calculated, message, voids_invoice_id)
SELECT i.account_id, i.plan_id, 'credit_note', i.period_start, i.period_end, i.period_label,
       i.currency, (now() AT TIME ZONE COALESCE(pb.time_zone, 'UTC'))::date, $2, -m.subtotal,
       -m.tax_total, -(m.subtotal + m.tax_total), i.taxes_calculated, '', i.id
FROM invoices i CROSS JOIN moved m LEFT JOIN plan_billing pb ON pb.plan_id = i.plan_id
WHERE i.id = $1
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class Voided:
    """The credit note that voided an invoice: its id, number and total (negative)."""

    credit_note_id: int
    number: str
    total: int


async def _pay_other_invoices(
    conn: asyncpg.Connection, invoice_id: int, account_id: str, freed: list[asyncpg.Record]
) -> int:
    """Pay the account's open invoices, oldest first, from what the void gave back to
    each payment (oldest payment first); what was paid. In the void's transaction.

    The money is the payments': the credit note returns it to the balance, where the
    account's other debt takes it, so an invoice left asking for it would be dunned for
    money the account does not owe. Not ``credit.apply_credit``: its statement-window
    filter keeps a payment a later statement counted from paying that invoice again,
    but what paid the void invoice was counted by no later invoice as its payment."""
    paid = 0
    for row in sorted(freed, key=lambda r: int(r["payment_id"])):
        paid += await allocate(
            conn, int(row["payment_id"]), account_id, row["currency"].strip(), int(row["amount"])
        )
    if freed:
        log.info(
            "void invoice's payments given back and paid to open invoices",
            extra={
                "invoice_id": invoice_id,
                "account_id": account_id,
                "payments": sorted(int(r["payment_id"]) for r in freed),
                "freed": sum(int(r["amount"]) for r in freed),
                "paid": paid,
            },
        )
    return paid


async def void(pool: asyncpg.Pool, store: BalanceStore, invoice_id: int) -> Voided:
    """Void a posted invoice with a credit note; refused for a draft, a void or a credit note.

    What payments paid of it pays the account's other open invoices, oldest first; the
    rest is their credit."""
    await move_money(pool, store, [invoice_id])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_PAYMENTS_SQL, invoice_id)
        await conn.execute(_LOCK_SQL, invoice_id)
        row = await conn.fetchrow(
            "SELECT kind, state, account_id FROM invoices WHERE id = $1 FOR UPDATE", invoice_id
        )
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}")
        if row["kind"] != "invoice" or row["state"] != "posted":
            raise OcsError(
                Reason.INVALID_FIELD,
                f"invoice {invoice_id} is a {row['state']} {row['kind']}: only a posted"
                " invoice can be voided",
            )
        account_id = str(row["account_id"])
        note_id = int(await conn.fetchval(_CREDIT_NOTE_SQL, invoice_id, CREDIT_NOTE_ISSUER))
        await _reverse_lines(conn, invoice_id, note_id)
        numbers = await assign_numbers(conn, [note_id])
        # What payments paid of it is theirs again: the credit note gives the money back
        # to the balance, and a payment left allocated to a void invoice could be neither
        # refunded nor counted as credit.
        freed = await conn.fetch(_RELEASE_PAYMENTS_SQL, invoice_id)
        await conn.execute(
            "UPDATE invoices SET state = 'void', voided_at = now(), amount_paid = 0,"
            " paid_at = NULL WHERE id = $1",
            invoice_id,
        )
        # Void first: it asks nothing now, and is not paid again.
        await _pay_other_invoices(conn, invoice_id, account_id, list(freed))
        total = int(await conn.fetchval("SELECT total FROM invoices WHERE id = $1", note_id))
    await move_money(pool, store, [note_id])
    # After every void, not only one whose freed money paid other invoices: the void
    # invoice asks nothing any more, so an account dunning suspended for it alone (unpaid,
    # overdue) owes nothing overdue now and is active again, as after a payment, not at
    # the next dunning run. Dunning checks that nothing else is overdue, and records that
    # a void reactivated it, not a payment.
    await dunning.reactivate_paid(pool, store, [account_id], datetime.now(UTC), by="void")
    return Voided(note_id, numbers[note_id], total)


async def _reverse_lines(conn: asyncpg.Connection, invoice_id: int, note_id: int) -> None:
    """The credit note's lines: one reversal of each line of the invoice whose money moved
    (a take-back's or its reversal's keeps what it adjusted, migration 0071)."""
    await conn.execute(
        "INSERT INTO invoice_lines (invoice_id, position, kind, description, period_start,"
        " period_end, quantity, amount, exact_amount, moves_money, charge_id, item_id,"
        " zone, direction, calls, seconds, billed_seconds, first_cdr, last_cdr, number,"
        " counter_id, bundle_seconds, paid_seconds, billed_quantity, source_entry,"
        " reverses_line, tax_code, basis, rate, rate_type, subscription_id,"
        " account_number_id, adjustment)"
        " SELECT $2, position, 'reversal', 'Reversal: ' || description, period_start,"
        " period_end, quantity, -amount, -exact_amount, moves_money, charge_id, item_id,"
        " zone, direction, calls, seconds, billed_seconds, first_cdr, last_cdr, number,"
        " counter_id, bundle_seconds, paid_seconds, billed_quantity, source_entry, id,"
        " tax_code, -basis, rate, rate_type, subscription_id, account_number_id, adjustment"
        " FROM invoice_lines WHERE invoice_id = $1 AND moves_money",
        invoice_id,
        note_id,
    )
