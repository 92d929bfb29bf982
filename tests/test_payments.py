"""Payments by hand (issue 14, decision 0027): a payment pays the account's open invoices
oldest first, what is left stays as credit, the real-time balance is credited at once,
a refund gives back credit only, and a reference is recorded once.

Invoices come from real runs: a postpaid account with a 10.00 monthly rent billed for
January and February; each posted invoice asks 10.00 (its own new charges; the
balance-forward amount due of February also carries January's debt).
"""

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from ocs import api_tokens
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.billing import dunning, dunning_store, payments, posting
from ocs.billing.payments import NewPayment
from ocs.billing.store import Subscription, add_charge, subscribe
from ocs.billing.void import void
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.charging.values import AuthorizeRequest
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    MID_MARCH,
    billed_plan,
    invoice_id,
    ledger_written,
    monthly,
    postpaid_with_two_invoices,
    run,
)
from tests.conftest import RunningApp, bearer
from tests.helpers import ocs_cli


async def balance(services: Services, account: str) -> int:
    """The account's real-time balance (Redis)."""
    state = await services.store.get_account(account)
    assert state is not None
    return state.balance


async def paid(services: Services, *invoice_ids: int) -> list[tuple[int, bool]]:
    """(amount_paid, paid_at set) of each invoice."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, amount_paid, paid_at IS NOT NULL AS done FROM invoices"
            " WHERE id = ANY($1::bigint[])",
            list(invoice_ids),
        )
    found = {r["id"]: (r["amount_paid"], r["done"]) for r in rows}
    return [found[i] for i in invoice_ids]


async def events(services: Services) -> list[dict[str, Any]]:
    """The payment.received events, oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT subject, data::text AS data FROM events WHERE kind = 'payment.received'"
            " ORDER BY id"
        )
    return [{"subject": r["subject"], **json.loads(r["data"])} for r in rows]


def manual(account: str, amount: int, reference: str) -> NewPayment:
    """A payment by hand."""
    return NewPayment(account, amount, "manual", reference, reference=reference)


async def test_a_payment_pays_the_oldest_invoice_first_and_the_next_one_in_part(
    services: Services,
) -> None:
    january, february = await postpaid_with_two_invoices(services)
    async with services.pool.acquire() as conn:
        asks = await conn.fetch(
            f"SELECT {payments.ASKS_SQL} AS asks FROM invoices WHERE id = ANY($1::bigint[])"
            " ORDER BY id",
            [january, february],
        )
    assert [r["asks"] for r in asks] == [10 * EUR, 10 * EUR]
    # Posting debited the two rents: -20.00.
    assert await balance(services, "pp") == -20 * EUR

    first = await payments.record_payment(
        services.pool, services.store, manual("pp", 15 * EUR, "R1")
    )

    # 15.00: January's 10.00 in full, then 5.00 of February's.
    assert first.created
    assert [(a.invoice_id, a.amount) for a in first.payment.allocations] == [
        (january, 10 * EUR),
        (february, 5 * EUR),
    ]
    assert (first.payment.allocated, first.payment.credit) == (15 * EUR, 0)
    assert await paid(services, january, february) == [(10 * EUR, True), (5 * EUR, False)]
    assert first.balance == -5 * EUR == await balance(services, "pp")
    assert first.settled_accounts == ()  # February still asks 5.00

    second = await payments.record_payment(
        services.pool, services.store, manual("pp", 8 * EUR, "R2")
    )

    # 8.00: February's last 5.00, and 3.00 left on the account as credit.
    assert [(a.invoice_id, a.amount) for a in second.payment.allocations] == [(february, 5 * EUR)]
    assert (second.payment.allocated, second.payment.credit) == (5 * EUR, 3 * EUR)
    assert await paid(services, january, february) == [(10 * EUR, True), (10 * EUR, True)]
    assert await balance(services, "pp") == 3 * EUR
    assert second.settled_accounts == ("pp",)
    assert [(e["subject"], e["amount"], e["allocated"]) for e in await events(services)] == [
        ("pp", 15 * EUR, 15 * EUR),
        ("pp", 8 * EUR, 5 * EUR),
    ]


async def test_the_same_reference_is_one_payment_and_credits_once(services: Services) -> None:
    january, _ = await postpaid_with_two_invoices(services)
    first = await payments.record_payment(
        services.pool, services.store, manual("pp", 4 * EUR, "R1")
    )
    again = await payments.record_payment(
        services.pool, services.store, manual("pp", 4 * EUR, "R1")
    )

    assert not again.created and again.payment.id == first.payment.id
    assert await balance(services, "pp") == -16 * EUR  # -20.00 + 4.00, once
    assert await paid(services, january) == [(4 * EUR, False)]
    assert len(await events(services)) == 1
    # The same reference for another amount is a mistake, named.
    with pytest.raises(OcsError, match="payment 1 already") as refused:
        await payments.record_payment(services.pool, services.store, manual("pp", 5 * EUR, "R1"))
    assert refused.value.field == "reference"


async def test_a_crash_before_the_credit_is_made_good_by_the_retry(services: Services) -> None:
    await postpaid_with_two_invoices(services)
    # A payment stored, its credit never made (the process died after the commit).
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO payments (account_id, source, external_id, amount, currency,"
            " received_on) VALUES ('pp', 'manual', 'R9', $1, 'EUR', '2026-04-02')",
            6 * EUR,
        )
    assert await balance(services, "pp") == -20 * EUR

    made = await payments.finish_pending(services.pool, services.store)
    assert (made.made, made.stuck) == (1, 0)
    again = await payments.finish_pending(services.pool, services.store)
    assert (again.made, again.stuck) == (0, 0)

    assert await balance(services, "pp") == -14 * EUR
    found = await payments.get_payment(services.pool, 1)
    assert found.credited and found.ledger_entry


async def test_the_billing_worker_makes_the_credits_and_refund_debits_a_crash_left(
    services: Services,
) -> None:
    # A payment and a refund stored two minutes ago, their balance moves never made (the
    # process died after the commits). Nothing called ``credit_pending`` but a test, and
    # refunds had no sweep at all: the balance kept -20.00 and the refunded 4.00.
    await postpaid_with_two_invoices(services)
    await services.accounts.create(AccountSpec("gone", plan_id="retail"))
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO payments (account_id, source, external_id, amount, currency,"
            " received_on, created_at) VALUES ('pp', 'manual', 'R7', $1, 'EUR', '2026-04-02',"
            " now() - interval '2 minutes'), ('gone', 'manual', 'G1', $2, 'EUR', '2026-04-02',"
            " now() - interval '2 minutes')",
            26 * EUR,
            6 * EUR,
        )
        await conn.execute(
            "INSERT INTO payment_refunds (payment_id, source, external_id, amount, created_at)"
            " VALUES (1, 'manual', 'F1', $1, now() - interval '2 minutes')",
            4 * EUR,
        )
    # The real-time balance of "gone" is closed: its credit cannot be made.
    await services.redis.delete(keys.account("gone"))
    worker = BillingWorker(services.pool, WorkerSettings(run_delay=0), store=services.store)

    pending = await worker.finish_payments()

    assert (pending.made, pending.stuck) == (2, 1)
    assert await balance(services, "pp") == 2 * EUR  # -20.00 + 26.00 - 4.00
    async with services.pool.acquire() as conn:
        moved = await conn.fetch(
            "SELECT external_id, credited_at IS NOT NULL AS done FROM payments ORDER BY id"
        )
        refunds = await conn.fetch("SELECT debited_at IS NOT NULL AS done FROM payment_refunds")
    assert [tuple(r) for r in moved] == [("R7", True), ("G1", False)]
    assert [r["done"] for r in refunds] == [True]
    # Made once: the next pass finds only the one it cannot make.
    again = await worker.finish_payments()
    assert (again.made, again.stuck) == (0, 1)
    assert await balance(services, "pp") == 2 * EUR


async def test_an_over_payment_stays_as_credit_and_a_refund_gives_back_only_credit(
    app: RunningApp,
) -> None:
    services = app.services
    january, february = await postpaid_with_two_invoices(services)

    status, body = await app.post(
        "/v1/payments", {"account": "pp", "amount": "27.50", "reference": "CHQ-1"}
    )

    assert status == 201, body
    assert body["payment"]["allocated"] == "20.000000"
    assert body["payment"]["credit"] == "7.500000"
    assert body["balance"] == "7.500000"
    assert body["settled_accounts"] == ["pp"]
    payment_id = body["payment"]["id"]

    # More than the credit: refused, nothing moves.
    status, body = await app.post(f"/v1/payments/{payment_id}/refund", {"amount": "8"})
    assert status == 400 and body["error"]["field"] == "amount", body
    assert "7.500000" in body["error"]["message"]

    status, body = await app.post(
        f"/v1/payments/{payment_id}/refund", {"amount": "5.00", "reference": "RF-1"}
    )
    assert status == 201, body
    assert (body["amount"], body["reopened"], body["balance"]) == (
        "5.000000",
        "0.000000",
        "2.500000",
    )
    assert body["payment"]["credit"] == "2.500000"
    assert body["payment"]["refunded"] == "5.000000"
    # The same refund again: 200, nothing moves.
    status, body = await app.post(
        f"/v1/payments/{payment_id}/refund", {"amount": "5.00", "reference": "RF-1"}
    )
    assert status == 200, body
    assert await balance(services, "pp") == 2_500_000
    # The invoices stay paid.
    assert await paid(services, january, february) == [(10 * EUR, True), (10 * EUR, True)]
    async with services.pool.acquire() as conn:
        refunds = await conn.fetch(
            "SELECT amount, reopened, ledger_entry IS NOT NULL AS debited FROM payment_refunds"
        )
    assert [tuple(r) for r in refunds] == [(5 * EUR, 0, True)]


async def test_a_voided_invoice_gives_its_payment_back_as_credit(services: Services) -> None:
    # January and February (10.00 each) paid by one payment, then January voided: the
    # credit note gave 10.00 back to the balance, but the payment stayed allocated to
    # the void invoice, so that money could not be refunded ("at most 0.000000").
    january, february = await postpaid_with_two_invoices(services)
    applied = await payments.record_payment(
        services.pool, services.store, manual("pp", 20 * EUR, "V1")
    )
    assert applied.payment.allocated == 20 * EUR

    await void(services.pool, services.store, january)

    found = await payments.get_payment(services.pool, applied.payment.id)
    assert (found.allocated, found.credit) == (10 * EUR, 10 * EUR)
    assert await paid(services, january, february) == [(0, False), (10 * EUR, True)]
    assert await balance(services, "pp") == 10 * EUR  # -20.00 + 20.00 + 10.00 back
    refunded = await payments.refund_payment(
        services.pool, services.store, applied.payment.id, 10 * EUR, "V1-back"
    )
    assert refunded.refund.amount == 10 * EUR
    assert await balance(services, "pp") == 0


async def test_a_void_pays_the_accounts_next_invoice_with_what_its_payment_paid(
    services: Services,
) -> None:
    # January paid by P1, February unpaid, dunning on (no notice, no grace): February is
    # overdue and the account suspended for it. Voiding January gave P1's 10.00 back to
    # the balance (0.00: nothing owed) but left it as P1's credit, refundable by no one
    # (402, the balance holds nothing), while February still asked 10.00 and kept the
    # account suspended, and dunned, for money it did not owe.
    january, february = await postpaid_with_two_invoices(services, on_time=True)
    await dunning_store.set_plan_settings(services.pool, "retail", 0, 1, grace_days=0)
    p1 = await payments.record_payment(services.pool, services.store, manual("pp", 10 * EUR, "P1"))
    assert await paid(services, january, february) == [(10 * EUR, True), (0, False)]
    suspended = await dunning.run_dunning(
        services.pool, services.store, services.settings, datetime.now(UTC)
    )
    assert suspended.suspended == ["pp"]  # February's 10.00 is owed: rightly

    await void(services.pool, services.store, january)

    assert await paid(services, january, february) == [(0, False), (10 * EUR, True)]
    found = await payments.get_payment(services.pool, p1.payment.id)
    assert [(a.invoice_id, a.amount) for a in found.allocations] == [
        (january, 0),
        (february, 10 * EUR),
    ]
    assert (found.allocated, found.credit) == (10 * EUR, 0)
    assert await balance(services, "pp") == 0  # -20.00 + 10.00 paid + 10.00 credit note
    async with services.pool.acquire() as conn:
        assert await payments.open_amount(conn, "pp") == 0
        assert await payments.settled(conn, ["pp"]) == ("pp",)
        status = await conn.fetchval("SELECT status FROM accounts WHERE id = 'pp'")
    assert status == "active"  # reactivated by the void, not by a later dunning run
    live = await services.store.get_account("pp")
    assert live is not None and live.status == "active"
    later = await dunning.run_dunning(
        services.pool, services.store, services.settings, datetime.now(UTC)
    )
    assert (later.steps, later.suspended) == ([], [])
    # Voided again: refused, nothing paid twice.
    with pytest.raises(OcsError, match="only a posted invoice"):
        await void(services.pool, services.store, january)
    assert await paid(services, january, february) == [(0, False), (10 * EUR, True)]
    assert (await payments.get_payment(services.pool, p1.payment.id)).credit == 0


async def test_what_a_void_frees_beyond_the_open_invoices_stays_refundable_credit(
    services: Services,
) -> None:
    # January paid by P1 (10.00), February 4.00 of 10.00 by P2. Voiding January frees
    # P1's 10.00: 6.00 pays the rest of February, 4.00 stays P1's credit, on the balance,
    # and can be refunded; not a cent more.
    january, february = await postpaid_with_two_invoices(services)
    p1 = await payments.record_payment(services.pool, services.store, manual("pp", 10 * EUR, "P1"))
    p2 = await payments.record_payment(services.pool, services.store, manual("pp", 4 * EUR, "P2"))

    await void(services.pool, services.store, january)

    assert await paid(services, january, february) == [(0, False), (10 * EUR, True)]
    first = await payments.get_payment(services.pool, p1.payment.id)
    second = await payments.get_payment(services.pool, p2.payment.id)
    assert [(a.invoice_id, a.amount) for a in first.allocations] == [
        (january, 0),
        (february, 6 * EUR),
    ]
    assert (first.allocated, first.credit) == (6 * EUR, 4 * EUR)
    assert (second.allocated, second.credit) == (4 * EUR, 0)
    assert await balance(services, "pp") == 4 * EUR  # -20.00 + 14.00 + 10.00 back
    with pytest.raises(OcsError) as too_much:
        await payments.refund_payment(services.pool, services.store, p1.payment.id, 5 * EUR)
    assert too_much.value.field == "amount"
    refunded = await payments.refund_payment(
        services.pool, services.store, p1.payment.id, 4 * EUR, "P1-back"
    )
    assert (refunded.balance, refunded.payment.credit) == (0, 0)
    assert await paid(services, january, february) == [(0, False), (10 * EUR, True)]


async def test_credit_spent_on_calls_cannot_be_refunded(services: Services) -> None:
    await billed_plan(services)
    await services.accounts.create(AccountSpec("c1", plan_id="retail"))
    done = await payments.record_payment(services.pool, services.store, manual("c1", 5 * EUR, "R"))
    # No invoice: all credit. Calls then spend 4.00 of it.
    assert (done.payment.credit, done.balance) == (5 * EUR, 5 * EUR)
    await services.store.fee("c1", 4 * EUR, "calls", require_funds=False)

    with pytest.raises(OcsError) as refused:
        await payments.refund_payment(services.pool, services.store, done.payment.id, 2 * EUR)
    assert refused.value.reason is Reason.INSUFFICIENT_FUNDS
    refunded = await payments.refund_payment(services.pool, services.store, done.payment.id, EUR)
    assert refunded.balance == 0
    assert refunded.payment.credit == 4 * EUR


async def test_a_top_up_cannot_take_the_id_of_a_payments_credit(app: RunningApp) -> None:
    # A provisioning system's top-up named "pay:1" was stored under the key of payment
    # 1's credit: the 50.00 payment that came next was answered "credited" as a repeat
    # of that 1.00 top-up, and the balance never got it.
    services = app.services
    await billed_plan(services)
    await services.accounts.create(AccountSpec("a2", plan_id="retail"))
    for reserved in ("pay:1", "inv:7"):
        status, body = await app.post(
            "/v1/accounts/a2/topups", {"amount": "1.00", "topup_id": reserved}
        )
        assert (status, body["error"]["field"]) == (400, "topup_id"), body
    status, body = await app.post("/v1/accounts/a2/topups", {"amount": "1.00", "topup_id": "p1"})
    assert status == 201, body
    status, created = await app.post(
        "/v1/payments", {"account": "a2", "amount": "50.00", "reference": "X"}
    )
    assert status == 201 and created["payment"]["id"] == 1, created
    assert await balance(services, "a2") == 51 * EUR


async def test_payments_api_checks_fields_roles_and_lists(app: RunningApp) -> None:
    services = app.services
    await billed_plan(services)
    await services.accounts.create(AccountSpec("a1", plan_id="retail"))

    status, body = await app.post(
        "/v1/payments", {"account": "nobody", "amount": "1", "reference": "X"}
    )
    assert status == 404 and body["error"]["reason"] == "account_not_found", body
    status, body = await app.post(
        "/v1/payments", {"account": "a1", "amount": "1", "reference": "X", "currency": "USD"}
    )
    assert status == 400 and body["error"]["field"] == "currency", body
    status, body = await app.post(
        "/v1/payments", {"account": "a1", "amount": "0", "reference": "X"}
    )
    assert status == 400 and body["error"]["field"] == "amount", body
    status, body = await app.post("/v1/payments", {"account": "a1", "amount": "2.5"})
    assert status == 400 and body["error"]["field"] == "reference", body

    status, created = await app.post(
        "/v1/payments", {"account": "a1", "amount": "2.5", "reference": "X"}
    )
    assert status == 201, created
    status, again = await app.post(
        "/v1/payments", {"account": "a1", "amount": "2.5", "reference": "X"}
    )
    assert status == 200 and again["payment"]["id"] == created["payment"]["id"]
    assert await balance(services, "a1") == 2_500_000

    viewer = await api_tokens.create(services.pool, "clerk", "viewer")
    status, listed, _ = await app.anonymous(
        "GET", "/v1/payments?account=a1", headers=bearer(viewer)
    )
    assert status == 200
    assert [(p["amount"], p["credit"]) for p in listed["payments"]] == [("2.500000", "2.500000")]
    status, shown, _ = await app.anonymous(
        "GET", f"/v1/payments/{created['payment']['id']}", headers=bearer(viewer)
    )
    assert status == 200 and shown["external_id"] == "X"
    status, refused, _ = await app.anonymous(
        "POST",
        "/v1/payments",
        json={"account": "a1", "amount": "1", "reference": "Y"},
        headers=bearer(viewer),
    )
    assert status == 403, refused
    assert (await app.get("/v1/payments/999"))[0] == 404
    assert (await app.get("/v1/payments/abc"))[0] == 400


async def test_the_cli_adds_lists_and_refunds(services: Services, tmp_path: Path) -> None:
    january, february = await postpaid_with_two_invoices(services)
    settings = services.settings

    code, out, err = await ocs_cli(
        settings, tmp_path, "payments", "add", "pp", "--amount", "12.00", "--reference", "B-7"
    )
    assert code == 0, err
    assert '"allocated": "12.000000"' in out and '"created": true' in out
    code, out, err = await ocs_cli(
        settings, tmp_path, "payments", "add", "pp", "--amount", "12.00", "--reference", "B-7"
    )
    assert code == 0 and '"created": false' in out, err
    code, out, err = await ocs_cli(settings, tmp_path, "payments", "list", "--account", "pp")
    assert code == 0 and out.count('"external_id": "B-7"') == 1, err
    code, out, err = await ocs_cli(settings, tmp_path, "payments", "refund", "1", "--amount", "1")
    assert code != 0 and "amount" in err  # it left no credit
    code, out, err = await ocs_cli(settings, tmp_path, "payments", "add", "pp", "--amount", "x")
    assert code == 2 and "--reference" in err

    assert await paid(services, january, february) == [(10 * EUR, True), (2 * EUR, False)]
    assert await balance(services, "pp") == -8 * EUR


async def _march_after_paying(services: Services, amount: int) -> tuple[int, int]:
    """January and February posted and then paid ``amount`` (above their 20.00: credit),
    March drafted: (the payment's id, March's draft run)."""
    await postpaid_with_two_invoices(services)
    done = await payments.record_payment(
        services.pool, services.store, manual("pp", amount, "R-early")
    )
    assert done.payment.credit == amount - 20 * EUR
    return done.payment.id, await run(services, "2026-03")


async def test_credit_a_later_invoices_statement_did_not_count_pays_it_at_posting(
    services: Services,
) -> None:
    # Paid after March's statement window (its ledger row is later than April 1, or not
    # in PostgreSQL yet): March's statement does not count it, so March asks its 10.00.
    payment_id, march_run = await _march_after_paying(services, 23 * EUR)
    await posting.post(services.pool, services.store, run_id=march_run)
    march = await invoice_id(services, "pp", "2026-03")
    # The 3.00 left over pays 3.00 of it: dunning asks the 7.00 really owed, not 10.00.
    assert await paid(services, march) == [(3 * EUR, False)]
    shown = await payments.get_payment(services.pool, payment_id)
    assert (shown.allocated, shown.credit) == (23 * EUR, 0)
    assert [a.amount for a in shown.allocations if a.invoice_id == march] == [3 * EUR]
    async with services.pool.acquire() as conn:
        assert await payments.open_amount(conn, "pp") == 7 * EUR
    # Posting again moves and pays nothing more.
    await posting.post(services.pool, services.store, run_id=march_run)
    assert await paid(services, march) == [(3 * EUR, False)]


async def test_credit_a_statement_counted_already_does_not_pay_the_invoice_again(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pq", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pq", "retail", date(2026, 3, 1)))
    await add_charge(services.pool, sub, "rent")
    # 3.00 paid before any invoice: all credit.
    done = await payments.record_payment(services.pool, services.store, manual("pq", 3 * EUR, "P"))
    assert done.payment.credit == 3 * EUR
    # Its ledger row as the ledger writer stores it (its id is not the payment's stream id:
    # the writer puts the bucket in front), dated inside March's statement window: March's
    # statement counts it among its payments.
    entry = await ledger_written(services, f"pay:{done.payment.id}", MID_MARCH)
    assert entry != done.payment.ledger_entry
    march_run = await run(services, "2026-03")
    await posting.post(services.pool, services.store, run_id=march_run)
    march = await invoice_id(services, "pq", "2026-03")
    async with services.pool.acquire() as conn:
        asks = await conn.fetchval(f"SELECT {payments.ASKS_SQL} FROM invoices WHERE id = $1", march)
    # 10.00 of rent less the 3.00 the statement counted: it asks 7.00, and the credit,
    # counted there already, pays nothing of it a second time.
    assert asks == 7 * EUR
    assert await paid(services, march) == [(0, False)]
    assert (await payments.get_payment(services.pool, done.payment.id)).credit == 3 * EUR


async def test_a_payment_march_counted_pays_neither_march_nor_april_again(
    services: Services,
) -> None:
    """A 6.00 payment in March before any invoice, 10.00 rent a month: March's statement
    counts it, so March asks 4.00. Its credit's ledger row, as the writer stores it, was
    never found (its id has the bucket in front of the payment's stream id), so posting
    paid 4.00 of March from it again (March shown paid, the balance -4.00, dunning never
    chasing) and April took the 2.00 left."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pr", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pr", "retail", date(2026, 3, 1)))
    await add_charge(services.pool, sub, "rent")
    early = await payments.record_payment(services.pool, services.store, manual("pr", 6 * EUR, "E"))
    assert early.payment.credit == 6 * EUR
    await ledger_written(services, f"pay:{early.payment.id}", MID_MARCH)

    for period in ("2026-03", "2026-04"):
        run_id = await run(services, period, invoice_date=date(2026, 5, 1))
        await posting.post(services.pool, services.store, run_id=run_id)
    march = await invoice_id(services, "pr", "2026-03")
    april = await invoice_id(services, "pr", "2026-04")
    async with services.pool.acquire() as conn:
        asks = await conn.fetch(
            f"SELECT {payments.ASKS_SQL} AS asks FROM invoices WHERE id = ANY($1::bigint[])"
            " ORDER BY period_start",
            [march, april],
        )
        assert [r["asks"] for r in asks] == [4 * EUR, 10 * EUR]
        # Nothing of either was paid: the 6.00 is in March's statement already.
        assert await payments.open_amount(conn, "pr") == 14 * EUR
    assert await paid(services, march, april) == [(0, False), (0, False)]
    assert (await payments.get_payment(services.pool, early.payment.id)).credit == 6 * EUR
    assert await balance(services, "pr") == -14 * EUR

    # A later payment of what is owed pays both, and the early credit pays nothing more.
    later = await payments.record_payment(
        services.pool, services.store, manual("pr", 14 * EUR, "L")
    )
    assert (later.payment.allocated, later.payment.credit) == (14 * EUR, 0)
    assert await paid(services, march, april) == [(4 * EUR, True), (10 * EUR, True)]
    assert (await payments.get_payment(services.pool, early.payment.id)).credit == 6 * EUR
    assert await balance(services, "pr") == 0


async def refund_events(services: Services) -> list[tuple[int, int]]:
    """(refund id, amount) of each payment.refunded event, oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data::text AS data FROM events WHERE kind = 'payment.refunded' ORDER BY id"
        )
    return [(json.loads(r["data"])["refund_id"], json.loads(r["data"])["amount"]) for r in rows]


async def test_a_refund_cannot_take_what_a_live_call_holds(services: Services) -> None:
    """A prepaid account with 10.00, a live call holding it: a refund of the 10.00 was
    allowed (the balance held it), and the call then charged 10.00 more, taking the
    prepaid account to -10.00. Only the account's own money less the holds goes back,
    checked by the script with the debit; a refund refused there is withdrawn."""
    await billed_plan(services)
    await services.accounts.create(AccountSpec("pre", plan_id="retail"))
    done = await payments.record_payment(
        services.pool, services.store, manual("pre", 10 * EUR, "P10")
    )
    assert (done.payment.credit, done.balance) == (10 * EUR, 10 * EUR)
    grant = await services.calls.authorize(AuthorizeRequest("pre", "447700900123", call_id="live"))
    state = await services.store.get_account("pre")
    assert state is not None and state.reserved == 10 * EUR, grant  # all of it held

    with pytest.raises(OcsError) as refused:
        await payments.refund_payment(services.pool, services.store, done.payment.id, 10 * EUR)
    assert (refused.value.reason, refused.value.field) == (Reason.INSUFFICIENT_FUNDS, "amount")
    found = await payments.get_payment(services.pool, done.payment.id)
    assert (found.credit, found.refunded) == (10 * EUR, 0)

    # A refund stored whose debit was left to the billing worker (a crash in between):
    # the script refuses it with the debit, the refund is withdrawn, nothing announced.
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO payment_refunds (payment_id, source, external_id, amount, created_at)"
            " VALUES ($1, 'manual', 'F1', $2, now() - interval '2 minutes')",
            done.payment.id,
            10 * EUR,
        )
        await conn.execute(
            "UPDATE payments SET refunded = $2 WHERE id = $1", done.payment.id, 10 * EUR
        )
    worker = BillingWorker(services.pool, WorkerSettings(run_delay=0), store=services.store)
    pending = await worker.finish_payments()
    assert (pending.made, pending.stuck) == (0, 0)
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payment_refunds") == 0
    found = await payments.get_payment(services.pool, done.payment.id)
    assert (found.credit, found.refunded) == (10 * EUR, 0)
    assert await balance(services, "pre") == 10 * EUR

    # The call ends (a minute to a UK mobile): what it did not use may go back, no more.
    await services.calls.stop("live", 60, "pre")
    left = await balance(services, "pre")
    assert 0 < left < 10 * EUR
    with pytest.raises(OcsError):
        await payments.refund_payment(services.pool, services.store, done.payment.id, left + 1)
    refunded = await payments.refund_payment(
        services.pool, services.store, done.payment.id, left, "RF-left"
    )
    assert refunded.balance == 0
    assert await refund_events(services) == [(refunded.refund.id, left)]
