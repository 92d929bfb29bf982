"""How payments pay invoices: allocation, oldest first, and credit paid to invoices
posted after the payment (decision 0027).

``allocate`` pays an account's open invoices from a payment, oldest first: a new
payment's amount, or what a void gave back to the payments that had paid the void
invoice. ``record_allocations`` writes what any of these paid.

A payment pays the account's open invoices when it is recorded (``payments``);
what no open invoice asked stays on the payment as credit. An invoice asks what
its statement says is owed, and the statement counts the payments its ledger
window saw. A payment made after that window and before the invoice was posted
is in neither: it found no open invoice to pay, and the invoice, once posted,
would ask for money already paid, and dunning would pursue it. ``apply_credit``
pays newly posted invoices from such payments' credit, oldest payment first, in
the posting's transaction.
"""

import asyncpg

from ocs.billing.owed import asks_sql

# The payments with credit of the accounts (and currencies) of the posted invoices among
# the ids ($1): locked first, in id order, before any invoice. Every other writer of
# payments and invoices locks a payment's row before its invoices' (a new payment, a
# gateway refund reopening the invoices it paid, a void releasing what its payments paid:
# decision 0027, addendum 2026-12-07). Locked pair by pair with the invoices, as they were,
# a credit step holding an invoice and waiting for a payment met a refund of that payment
# waiting for the invoice: PostgreSQL failed one of them as a deadlock (a failed posting,
# or a 500 to the gateway). A few more than the credit pays may be locked (those whose
# credit a statement counted): payments with credit are few.
_LOCK_PAYMENTS_SQL = """
SELECT p.id FROM payments p
WHERE p.allocated + p.refunded < p.amount
  AND (p.account_id, p.currency) IN (
    SELECT i.account_id, i.currency FROM invoices i
    WHERE i.id = ANY($1::bigint[]) AND i.kind = 'invoice' AND i.state = 'posted')
ORDER BY p.id
FOR UPDATE OF p
"""

# Then the invoices among the ids ($1), in the order a new payment, a refund and a void
# lock an account's invoices (oldest first: period start, then id; account by account):
# one a payment is paying now is read once that commits, with what it paid (read before,
# it was paid twice).
_LOCK_INVOICES_SQL = """
SELECT id FROM invoices
WHERE id = ANY($1::bigint[]) AND kind = 'invoice' AND state = 'posted'
ORDER BY account_id, period_start, id
FOR UPDATE
"""

# Each posted invoice among the ids ($1) that asks more than it was paid, beside each
# payment of its account with credit among those locked ($2) that the invoice's
# statement did not count: its credit's ledger row not in PostgreSQL yet, or dated at or
# after the window's end. The row is found by the reference the credit carries
# (``pay:<payment id>``, reserved for payments), not by ``payments.ledger_entry``: that is
# the stream entry's id, and the ledger writer keys the row ``<bucket>-<stream id>``, so a
# lookup by it found nothing and every payment's credit paid invoices whose statements had
# counted it already; an entry set aside and re-inserted by an operator gets a new id, but
# keeps its reference. The literal LIKE lets PostgreSQL use the partial index of payment
# credits (migration 0064). In the order credit pays them: each account's oldest invoice
# first, each invoice by the oldest payment first. Read once both are locked (above), so
# unlocked here. A payment that gained credit after the payments were locked (a void gave
# back what it paid) is left out: the void pays the account's open invoices from it
# itself, and what is left stays credit for the next credit step (a posting's second look
# once it has committed, the next payment). Payments with credit are few, so are these
# pairs.
_CREDIT_SQL = f"""
SELECT i.id AS invoice_id, {asks_sql("i")} - i.amount_paid AS open,
       p.id AS payment_id, p.amount - p.allocated - p.refunded AS credit
FROM invoices i
JOIN payments p ON p.account_id = i.account_id AND p.currency = i.currency
WHERE i.id = ANY($1::bigint[]) AND i.kind = 'invoice' AND i.state = 'posted'
  AND i.window_end IS NOT NULL AND i.amount_paid < {asks_sql("i")}
  AND p.id = ANY($2::bigint[]) AND p.allocated + p.refunded < p.amount
  AND NOT EXISTS (SELECT 1 FROM ledger e
                  WHERE e.reference LIKE 'pay:%' AND e.reference = 'pay:' || p.id
                    AND e.account_id = p.account_id AND e.occurred_at < i.window_end)
ORDER BY i.account_id, i.period_start, i.id, p.id
"""
# An account's posted invoices that still ask for money.
_OPEN_SQL = f"""
SELECT i.id FROM invoices i
WHERE i.account_id = $1 AND i.kind = 'invoice' AND i.state = 'posted'
  AND i.window_end IS NOT NULL AND i.amount_paid < {asks_sql("i")}
ORDER BY i.period_start, i.id
"""


async def record_allocations(
    conn: asyncpg.Connection, payment_ids: list[int], invoice_ids: list[int], amounts: list[int]
) -> None:
    """Record that payment k paid ``amounts[k]`` more of invoice k (each pair once a call):
    the allocation rows, each payment's ``allocated`` and each invoice's ``amount_paid``
    (``paid_at`` once it reaches what the invoice asks)."""
    await conn.execute(
        "UPDATE invoices i SET amount_paid = i.amount_paid + t.take,"
        f" paid_at = CASE WHEN i.amount_paid + t.take >= {asks_sql('i')}"
        " THEN COALESCE(i.paid_at, now()) ELSE i.paid_at END"
        " FROM (SELECT id, sum(take) AS take FROM unnest($1::bigint[], $2::bigint[])"
        " AS u(id, take) GROUP BY id) AS t WHERE i.id = t.id",
        invoice_ids,
        amounts,
    )
    # A pair may have a row already: a refund of another payment reopened an invoice this
    # one paid part of, and its credit now pays the rest.
    await conn.execute(
        "INSERT INTO payment_allocations (payment_id, invoice_id, amount)"
        " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])"
        " ON CONFLICT (payment_id, invoice_id)"
        " DO UPDATE SET amount = payment_allocations.amount + EXCLUDED.amount",
        payment_ids,
        invoice_ids,
        amounts,
    )
    await conn.execute(
        "UPDATE payments p SET allocated = p.allocated + t.take"
        " FROM (SELECT id, sum(take) AS take FROM unnest($1::bigint[], $2::bigint[])"
        " AS u(id, take) GROUP BY id) AS t WHERE p.id = t.id",
        payment_ids,
        amounts,
    )


# The account's ($1) open invoices in the currency ($2), locked oldest first (period
# start, then id): the order every writer of an account's invoices that locks several
# locks them in (the credit step, a void, a gateway refund reopening them), so that none
# waits for another in a circle; concurrent payments queue here, and each sees what the
# one before it paid. An invoice the payment names is paid first (``allocate``), but not
# locked first: locked first, a payment naming February held it and waited for January
# while the credit step or a void held January and waited for February, and PostgreSQL
# failed one of them as a deadlock (a 500 to the API caller or the gateway's webhook).
_ALLOCATE_SQL = f"""
SELECT id, number, {asks_sql()} AS asks, amount_paid FROM invoices
WHERE account_id = $1 AND currency = $2 AND state = 'posted' AND kind = 'invoice'
  AND amount_paid < {asks_sql()}
ORDER BY period_start, id
FOR UPDATE
"""


async def allocate(
    conn: asyncpg.Connection,
    payment_id: int,
    account_id: str,
    currency: str,
    amount: int,
    first_invoice: str | None = None,
) -> int:
    """Pay the account's open invoices from ``amount`` of the payment, oldest first
    (``first_invoice`` before them); what was allocated. Runs in the caller's
    transaction: a new payment's, or a void's, which gives what the payments paid of
    the void invoice to the account's other open invoices (decision 0027)."""
    locked = await conn.fetch(_ALLOCATE_SQL, account_id, currency)
    # The named one put first here, once all are locked in the order every writer takes;
    # the sort is stable, so the rest stay oldest first.
    ordered = sorted(locked, key=lambda r: first_invoice is None or r["number"] != first_invoice)
    left = amount
    ids: list[int] = []
    takes: list[int] = []
    for invoice in ordered:
        if left == 0:
            break
        take = min(left, invoice["asks"] - invoice["amount_paid"])
        ids.append(invoice["id"])
        takes.append(take)
        left -= take
    if ids:
        await record_allocations(conn, [payment_id] * len(ids), ids, takes)
    return amount - left


async def apply_credit(conn: asyncpg.Connection, invoice_ids: list[int]) -> int:
    """Pay these posted invoices from credit their statements did not count; what was
    paid (micro-units). Runs in the posting's transaction, and for an account by
    ``pay_open_invoices``.

    The payments with credit are locked first (id order), then the invoices (oldest
    first), the order every writer of both takes: a refund or a void of one of these
    payments at the same time waits for this step, or it for them, never each for the
    other."""
    locked = [r["id"] for r in await conn.fetch(_LOCK_PAYMENTS_SQL, invoice_ids)]
    if not locked:
        return 0  # no credit to pay with: the invoices are left unlocked
    await conn.execute(_LOCK_INVOICES_SQL, invoice_ids)
    open_of: dict[int, int] = {}
    credit_of: dict[int, int] = {}
    payments: list[int] = []
    invoices: list[int] = []
    takes: list[int] = []
    for pair in await conn.fetch(_CREDIT_SQL, invoice_ids, locked):
        invoice, payment = pair["invoice_id"], pair["payment_id"]
        # A payment may stand beside several invoices, and an invoice beside several
        # payments: each takes what the ones before it left.
        left = open_of.setdefault(invoice, int(pair["open"]))
        credit = credit_of.setdefault(payment, int(pair["credit"]))
        take = min(left, credit)
        if take <= 0:
            continue
        open_of[invoice] = left - take
        credit_of[payment] = credit - take
        payments.append(payment)
        invoices.append(invoice)
        takes.append(take)
    if takes:
        await record_allocations(conn, payments, invoices, takes)
    return sum(takes)


async def pay_open_invoices(conn: asyncpg.Connection, account_id: str) -> int:
    """Pay the account's open posted invoices from its credit; what was paid.

    A payment stored while a posting of the account's invoices ran saw them as drafts,
    and the posting could not see the payment before it committed. Each side calls
    this once it has committed (``payments`` after a payment, ``posting`` for the
    accounts it posted that hold credit), so whichever commits last finds the other
    (decision 0027). In the caller's transaction: a lock of the account's own, held to
    its end, puts two of these in turn, so the second reads what the first paid; the
    payments, then the invoices, are locked before they are read (``apply_credit``).
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"ocs-credit:{account_id}")
    ids = [r["id"] for r in await conn.fetch(_OPEN_SQL, account_id)]
    return await apply_credit(conn, ids) if ids else 0
