"""Refunds and the next statement (decision 0027, addendum 2026-12-07): the money the
open invoices ask adds up to what the account owes after a refund.

A gateway's refund (``charge.refunded``) takes back what its payment paid of invoices
and reopens them; those invoices ask that money again. The next statement counts the
reopened part as payments given back, not as a new charge: before, it was both, and the
customer was asked, and dunned for, the refund twice. What a refund takes of a payment's
credit (and every refund by hand, which takes only credit) stays a new charge: the
credit was counted by a statement already and made an invoice ask less.

Invoices come from real runs (``billing_helpers.postpaid_with_two_invoices``: 10.00 rent a
month, postpaid); money's ledger rows are written by the real ledger writer and dated
inside the month whose statement counts them.
"""

from datetime import UTC, date, datetime

from ocs.billing import dunning, dunning_store, payments, posting
from ocs.billing.document_data import load_facts
from ocs.billing.document_layout import Issuer, layout
from ocs.billing.gateway import GatewayEvent
from ocs.billing.payments import NewPayment
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    MID_MARCH,
    ledger_written,
    post_on_time,
    postpaid_with_two_invoices,
    run,
)

MID_APRIL = datetime(2026, 4, 15, 12, tzinfo=UTC)

# (period, asked, paid) of each of an account's invoices, oldest first.
Asked = list[tuple[str, int, int]]


def gateway(event_id: str, kind: str, amount: int) -> GatewayEvent:
    """A Stripe event of account pp's payment intent pi_1: a payment or a refund (the
    refund carries the charge's refunded total)."""
    action = "refund" if kind == "charge.refunded" else "payment"
    return GatewayEvent(event_id, kind, action, 0, "pi_1", amount, "EUR", "pp")


async def asked(services: Services, account: str) -> Asked:
    """(period, amount asked, amount paid) of the account's posted invoices."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT period_label, {payments.ASKS_SQL} AS asks, amount_paid FROM invoices"
            " WHERE account_id = $1 AND kind = 'invoice' AND state = 'posted'"
            " ORDER BY period_start",
            account,
        )
    return [(r["period_label"], r["asks"], r["amount_paid"]) for r in rows]


async def figures(services: Services, account: str, period: str) -> tuple[int, ...]:
    """(previous balance, payments, debited, new charges, closing balance, amount due) of
    the account's invoice of ``period``."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT previous_balance, payments, debited, new_charges, closing_balance,"
            " amount_due FROM invoices WHERE account_id = $1 AND period_label = $2"
            " AND kind = 'invoice'",
            account,
            period,
        )
    assert row is not None
    return tuple(row.values())


async def balance(services: Services, account: str) -> int:
    """The account's real-time balance (Redis)."""
    state = await services.store.get_account(account)
    assert state is not None
    return state.balance


async def status_of(services: Services, account: str) -> tuple[str, str]:
    """(PostgreSQL status, Redis status) of an account."""
    async with services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account)
    live = await services.store.get_account(account)
    assert live is not None
    return str(stored), live.status


async def statement_text(services: Services, account: str, period: str) -> dict[str, str]:
    """The closing block of the invoice's document as printed (en_GB): label -> text."""
    async with services.pool.acquire() as conn:
        invoice = await conn.fetchval(
            "SELECT id FROM invoices WHERE account_id = $1 AND period_label = $2"
            " AND kind = 'invoice'",
            account,
            period,
        )
        facts = await load_facts(conn, invoice)
    content = layout(facts, Issuer("Example Telecom Ltd"), "en_GB")
    return {**dict(content["statement"]), content["due"][0]: content["due"][1]}


async def test_a_gateway_refund_is_asked_once_by_the_invoice_it_reopens(
    services: Services,
) -> None:
    # January and February ask 10.00 each; the gateway's 10.00 pays January; the charge
    # is refunded in full, reopening January; then March is posted. The balance owes
    # 30.00, but March's new charges held the refund too (rent 10.00 + refund 10.00), so
    # the invoices asked 40.00, and a customer paying the 30.00 owed was dunned for 10.00.
    await postpaid_with_two_invoices(services, on_time=True)
    await dunning_store.set_plan_settings(services.pool, "retail", 0, 1, grace_days=0)
    paid = await payments.apply_gateway_event(
        services.pool, services.store, gateway("evt_1", "payment_intent.succeeded", 10 * EUR)
    )
    assert paid.payment is not None
    refunded = await payments.apply_gateway_event(
        services.pool, services.store, gateway("evt_2", "charge.refunded", 10 * EUR)
    )
    assert refunded.refund is not None and refunded.refund.refund.reopened == 10 * EUR
    await ledger_written(services, f"pay:{paid.payment.payment.id}", MID_MARCH)
    await ledger_written(services, f"refund:{refunded.refund.refund.id}", MID_MARCH)
    await post_on_time(services, await run(services, "2026-03"))

    owed = -await balance(services, "pp")
    assert owed == 30 * EUR
    assert await asked(services, "pp") == [
        ("2026-01", 10 * EUR, 0),  # reopened: it asks the refunded 10.00 again
        ("2026-02", 10 * EUR, 0),
        ("2026-03", 10 * EUR, 0),  # its rent only
    ]
    assert sum(a - p for _, a, p in await asked(services, "pp")) == owed
    # March's statement: the 10.00 paid and given back nets to 0.00 of payments; its new
    # charges are the rent; it adds up to the balance owed.
    assert await figures(services, "pp", "2026-03") == (
        -20 * EUR, 0, 0, 10 * EUR, -30 * EUR, 30 * EUR,
    )  # fmt: skip
    assert await statement_text(services, "pp", "2026-03") == {
        "Previous balance": "-€20.00",
        "Payments": "€0.00",
        "New charges": "€10.00",
        "Closing balance": "-€30.00",
        "Amount due": "€10.00",
    }

    # Overdue and unpaid: dunning suspends the account, rightly.
    now = datetime.now(UTC)
    report = await dunning.run_dunning(services.pool, services.store, services.settings, now)
    assert report.suspended == ["pp"]
    assert await status_of(services, "pp") == ("suspended", "suspended")
    # The customer pays the 30.00 owed: every invoice is paid, nothing is left to dun.
    settle = await payments.record_payment(
        services.pool, services.store, NewPayment("pp", 30 * EUR, "manual", "P30")
    )
    assert (settle.payment.allocated, settle.payment.credit) == (30 * EUR, 0)
    assert settle.settled_accounts == ("pp",)
    assert await asked(services, "pp") == [
        ("2026-01", 10 * EUR, 10 * EUR),
        ("2026-02", 10 * EUR, 10 * EUR),
        ("2026-03", 10 * EUR, 10 * EUR),
    ]
    assert await balance(services, "pp") == 0
    # The payment lifted the suspension, and a later run finds nothing to dun.
    assert await status_of(services, "pp") == ("active", "active")
    later = await dunning.run_dunning(services.pool, services.store, services.settings, now)
    assert (later.steps, later.suspended) == ([], [])
    assert await status_of(services, "pp") == ("active", "active")


async def test_a_refund_of_credit_and_paid_invoices_is_counted_once_each(
    services: Services,
) -> None:
    # 25.00 by the gateway in March pays January and February (10.00 each) and leaves
    # 5.00 of credit, which March's statement counts (March asks 5.00 of its 10.00 rent).
    # In April the charge is refunded in full: the 5.00 of credit is April's new charge
    # (March asked less for it), the 20.00 reopen January and February. Before, April's
    # new charges held all 25.00 (asking 35.00: 60.00 asked for 40.00 owed).
    await postpaid_with_two_invoices(services)
    paid = await payments.apply_gateway_event(
        services.pool, services.store, gateway("evt_1", "payment_intent.succeeded", 25 * EUR)
    )
    assert paid.payment is not None and paid.payment.payment.credit == 5 * EUR
    await ledger_written(services, f"pay:{paid.payment.payment.id}", MID_MARCH)
    await posting.post(services.pool, services.store, run_id=await run(services, "2026-03"))
    assert await asked(services, "pp") == [
        ("2026-01", 10 * EUR, 10 * EUR),
        ("2026-02", 10 * EUR, 10 * EUR),
        ("2026-03", 5 * EUR, 0),
    ]

    refunded = await payments.apply_gateway_event(
        services.pool, services.store, gateway("evt_2", "charge.refunded", 25 * EUR)
    )
    assert refunded.refund is not None and refunded.refund.refund.reopened == 20 * EUR
    await ledger_written(services, f"refund:{refunded.refund.refund.id}", MID_APRIL)
    april = await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await posting.post(services.pool, services.store, run_id=april)

    owed = -await balance(services, "pp")
    assert owed == 40 * EUR
    assert await asked(services, "pp") == [
        ("2026-01", 10 * EUR, 0),
        ("2026-02", 10 * EUR, 0),
        ("2026-03", 5 * EUR, 0),
        ("2026-04", 15 * EUR, 0),  # rent 10.00 + the 5.00 of credit given back
    ]
    assert sum(a - p for _, a, p in await asked(services, "pp")) == owed
    assert await figures(services, "pp", "2026-04") == (
        -5 * EUR, -20 * EUR, 5 * EUR, 15 * EUR, -40 * EUR, 40 * EUR,
    )  # fmt: skip
    assert await statement_text(services, "pp", "2026-04") == {
        "Previous balance": "-€5.00",
        "Payments": "-€20.00",
        "New charges": "€15.00",
        "Closing balance": "-€40.00",
        "Amount due": "€15.00",
    }


async def test_a_refund_by_hand_stays_a_new_charge_and_the_asks_add_up(
    services: Services,
) -> None:
    # A refund by hand gives back only credit (it reopens nothing): it stays among the
    # next statement's new charges, as decision 0027 says, and the asks add up.
    await postpaid_with_two_invoices(services)
    paid = await payments.record_payment(
        services.pool, services.store, NewPayment("pp", 25 * EUR, "manual", "P25")
    )
    assert paid.payment.credit == 5 * EUR
    back = await payments.refund_payment(
        services.pool, services.store, paid.payment.id, 5 * EUR, "P25-back"
    )
    assert back.refund.reopened == 0
    await ledger_written(services, f"pay:{paid.payment.id}", MID_MARCH)
    await ledger_written(services, f"refund:{back.refund.id}", MID_MARCH)
    await posting.post(services.pool, services.store, run_id=await run(services, "2026-03"))

    owed = -await balance(services, "pp")
    assert owed == 10 * EUR
    assert await asked(services, "pp") == [
        ("2026-01", 10 * EUR, 10 * EUR),
        ("2026-02", 10 * EUR, 10 * EUR),
        ("2026-03", 10 * EUR, 0),
    ]
    assert await figures(services, "pp", "2026-03") == (
        -20 * EUR, 25 * EUR, 5 * EUR, 15 * EUR, -10 * EUR, 10 * EUR,
    )  # fmt: skip
