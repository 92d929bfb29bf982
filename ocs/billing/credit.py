"""Payments' credit paid to invoices posted after the payment (decision 0027).

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

# Posted invoices among the ids that a statement window bounds and that ask more than
# they were paid, in the order credit pays them (each account's oldest first).
_OPEN_SQL = f"""
SELECT id, account_id, currency, window_end, {asks_sql()} - amount_paid AS open
FROM invoices
WHERE id = ANY($1::bigint[]) AND kind = 'invoice' AND state = 'posted'
  AND window_end IS NOT NULL AND amount_paid < {asks_sql()}
ORDER BY account_id, period_start, id
"""

# An account's payments with credit that the statement ending at $3 did not count: not
# credited yet, or credited at or after the window's end (ledger_entry names the
# ledger row of the credit). Locked in id order: concurrent postings queue here.
_CREDIT_SQL = """
SELECT p.id, p.amount - p.allocated - p.refunded AS credit FROM payments p
WHERE p.account_id = $1 AND p.currency = $2 AND p.allocated + p.refunded < p.amount
  AND NOT EXISTS (SELECT 1 FROM ledger e
                  WHERE e.entry_id = p.ledger_entry AND e.occurred_at < $3)
ORDER BY p.id FOR UPDATE OF p
"""


async def record_allocations(
    conn: asyncpg.Connection, payment_ids: list[int], invoice_ids: list[int], amounts: list[int]
) -> None:
    """Record that payment k paid ``amounts[k]`` of invoice k (pairs not recorded yet):
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
    await conn.execute(
        "INSERT INTO payment_allocations (payment_id, invoice_id, amount)"
        " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
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


async def apply_credit(conn: asyncpg.Connection, invoice_ids: list[int]) -> int:
    """Pay these just-posted invoices from credit their statements did not count; what
    was paid (micro-units). Runs in the posting's transaction."""
    paid = 0
    for invoice in await conn.fetch(_OPEN_SQL, invoice_ids):
        left = int(invoice["open"])
        payments: list[int] = []
        takes: list[int] = []
        for payment in await conn.fetch(
            _CREDIT_SQL, invoice["account_id"], invoice["currency"], invoice["window_end"]
        ):
            if left == 0:
                break
            take = min(left, int(payment["credit"]))
            payments.append(payment["id"])
            takes.append(take)
            left -= take
        if payments:
            await record_allocations(conn, payments, [invoice["id"]] * len(payments), takes)
            paid += sum(takes)
    return paid
