"""The payment gateway's webhook (issue 14, decision 0027): Stripe's event format and
signature. It needs no token, only a valid signature within the replay window; an event
id is applied once, and both success events of one payment intent make one payment.

The account ``pp`` (postpaid) owes one posted invoice of 10.00 (INV-2026-000001): its
balance is -10.00 before any payment.
"""

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocs.balances import keys
from ocs.billing import gateway, payments, posting
from ocs.billing.payments import NewPayment
from ocs.config import Settings
from ocs.services import Services
from tests.billing_helpers import EUR, invoice_id, renting
from tests.conftest import RunningApp

SECRET = "whsec_test_0123456789"
PATH = "/v1/payments/webhooks/stripe"


@pytest.fixture
def settings(
    redis_url: str, database_url: str, tmp_path: Path, pepper_file: Path
) -> Iterator[Settings]:
    """The tests' settings with the gateway's signing secret and a 300 s window."""
    yield Settings(
        pepper_file=pepper_file,
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "var",
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
        stripe_webhook_secret=SECRET,
        stripe_webhook_tolerance=300.0,
    )


async def owing_account(services: Services) -> int:
    """``pp`` with January's 10.00 rent posted: the invoice's id."""
    await posting.post(services.pool, services.store, run_id=await renting(services))
    return await invoice_id(services, "pp", "2026-01")


def event(event_id: str, kind: str, obj: dict[str, Any]) -> bytes:
    """A Stripe event's body."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "created": 1775000000,
            "data": {"object": obj},
        }
    ).encode()


def intent(amount: int, **metadata: str) -> dict[str, Any]:
    """A succeeded payment intent of ``amount`` cents."""
    return {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "eur",
        "metadata": metadata,
    }


def charge(amount: int, refunded: int = 0) -> dict[str, Any]:
    """The charge of ``pi_1``: ``amount`` cents, ``refunded`` of them refunded so far."""
    return {
        "id": "ch_1",
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": refunded,
        "currency": "eur",
        "payment_intent": "pi_1",
        "metadata": {},
    }


async def deliver(
    app: RunningApp, body: bytes, *, at: float | None = None, secret: str = SECRET
) -> tuple[int, dict[str, Any]]:
    """POST a signed event without any token, as the gateway does."""
    header = gateway.signature_header(secret, int(time.time() if at is None else at), body)
    status, answer, _ = await app.anonymous(
        "POST",
        PATH,
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    return status, answer


async def state(services: Services, invoice: int) -> tuple[int, int, int, int]:
    """(Redis balance, payments, refunds, the invoice's amount_paid)."""
    account = await services.store.get_account("pp")
    assert account is not None
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM payments) AS payments,"
            " (SELECT count(*) FROM payment_refunds) AS refunds,"
            " (SELECT amount_paid FROM invoices WHERE id = $1) AS paid",
            invoice,
        )
    assert row is not None
    return account.balance, row["payments"], row["refunds"], row["paid"]


async def test_a_signed_payment_pays_once_whatever_is_redelivered(app: RunningApp) -> None:
    services = app.services
    invoice = await owing_account(services)
    assert await state(services, invoice) == (-10 * EUR, 0, 0, 0)

    status, body = await deliver(
        app, event("evt_1", "payment_intent.succeeded", intent(1250, account_id="pp"))
    )

    # 12.50: the invoice's 10.00, and 2.50 of credit.
    assert status == 200, body
    assert body["outcome"] == "payment" and body["payment_id"] == 1
    assert await state(services, invoice) == (2_500_000, 1, 0, 10 * EUR)
    async with services.pool.acquire() as conn:
        stored = await conn.fetchrow("SELECT source, external_id, amount, allocated FROM payments")
    assert tuple(stored) == ("stripe", "pi_1", 12_500_000, 10 * EUR)

    # The same event again: 200, nothing moves.
    status, body = await deliver(
        app, event("evt_1", "payment_intent.succeeded", intent(1250, account_id="pp"))
    )
    assert status == 200 and body["outcome"] == "duplicate", body
    # The charge's own success event of the same intent: the same payment.
    status, body = await deliver(app, event("evt_2", "charge.succeeded", charge(1250)))
    assert status == 200 and body["payment_id"] == 1, body
    assert await state(services, invoice) == (2_500_000, 1, 0, 10 * EUR)

    # A partial refund of 4.00: the 2.50 credit first, then 1.50 taken back from the
    # invoice, which is open again.
    status, body = await deliver(app, event("evt_3", "charge.refunded", charge(1250, 400)))
    assert status == 200 and body["outcome"] == "refund", body
    assert await state(services, invoice) == (-1_500_000, 1, 1, 8_500_000)
    status, body = await deliver(app, event("evt_3", "charge.refunded", charge(1250, 400)))
    assert status == 200 and body["outcome"] == "duplicate", body
    assert await state(services, invoice) == (-1_500_000, 1, 1, 8_500_000)


async def test_a_redelivered_event_makes_the_move_its_first_delivery_failed_to_make(
    app: RunningApp,
) -> None:
    # The first delivery stored the payment, then its balance credit failed (here the
    # account was missing from Redis for a moment) and the gateway got an error, so it
    # delivered the event again: answered "duplicate", and the credit was never made.
    # The same for a refund's debit.
    services = app.services
    invoice = await owing_account(services)
    account_key = keys.account("pp")
    saved = await services.redis.hgetall(account_key)

    async def delivered_while_the_balance_is_away(body: bytes) -> int:
        await services.redis.delete(account_key)
        try:
            status, _ = await deliver(app, body)
        finally:
            await services.redis.hset(account_key, mapping=saved)
        return status

    paying = event("evt_1", "payment_intent.succeeded", intent(1250, account_id="pp"))
    assert await delivered_while_the_balance_is_away(paying) >= 400
    assert await state(services, invoice) == (-10 * EUR, 1, 0, 10 * EUR)  # stored, not credited
    status, body = await deliver(app, paying)
    assert status == 200 and body["outcome"] == "duplicate", body
    assert await state(services, invoice) == (2_500_000, 1, 0, 10 * EUR)
    saved = await services.redis.hgetall(account_key)

    refunding = event("evt_2", "charge.refunded", charge(1250, 400))
    assert await delivered_while_the_balance_is_away(refunding) >= 400
    assert await state(services, invoice) == (2_500_000, 1, 1, 8_500_000)  # not debited
    status, body = await deliver(app, refunding)
    assert status == 200 and body["outcome"] == "duplicate", body
    assert await state(services, invoice) == (-1_500_000, 1, 1, 8_500_000)
    # Once: a third delivery moves nothing.
    status, body = await deliver(app, refunding)
    assert status == 200 and body["outcome"] == "duplicate", body
    assert await state(services, invoice) == (-1_500_000, 1, 1, 8_500_000)


async def test_credit_pays_again_an_invoice_a_refund_reopened(app: RunningApp) -> None:
    # The gateway's 6.00 paid part of January's 10.00 and a payment by hand the rest,
    # 6.00 of it left as credit; the gateway's refund took its 6.00 back from the
    # invoice. The next payment of the account tried to pay the invoice from that credit
    # with a second allocation row of the same pair: a unique-key error, a 500, for a
    # payment already recorded, and the credit could never pay the invoice.
    services = app.services
    invoice = await owing_account(services)
    status, _ = await deliver(
        app, event("evt_1", "payment_intent.succeeded", intent(600, account_id="pp"))
    )
    assert status == 200
    by_hand = await payments.record_payment(
        services.pool, services.store, NewPayment("pp", 10 * EUR, "manual", "P1")
    )
    assert (by_hand.payment.allocated, by_hand.payment.credit) == (4 * EUR, 6 * EUR)
    status, body = await deliver(app, event("evt_2", "charge.refunded", charge(600, 600)))
    assert status == 200 and body["outcome"] == "refund", body
    assert await state(services, invoice) == (0, 2, 1, 4 * EUR)

    later = await payments.record_payment(
        services.pool, services.store, NewPayment("pp", 1 * EUR, "manual", "R1")
    )

    # The new payment pays 1.00 of what the refund reopened, the credit the other 5.00.
    assert later.created and later.payment.credit == 0
    assert await state(services, invoice) == (1 * EUR, 3, 1, 10 * EUR)
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT p.external_id, a.amount FROM payment_allocations a"
            " JOIN payments p ON p.id = a.payment_id WHERE a.invoice_id = $1 ORDER BY p.id",
            invoice,
        )
    assert [tuple(r) for r in rows] == [("pi_1", 0), ("P1", 9 * EUR), ("R1", 1 * EUR)]


async def test_a_bad_signature_or_a_replay_is_refused(app: RunningApp) -> None:
    services = app.services
    invoice = await owing_account(services)
    body = event("evt_9", "payment_intent.succeeded", intent(1000, account_id="pp"))

    status, answer = await deliver(app, body, secret="whsec_someone_else")
    assert status == 400 and answer["error"]["field"] == "Stripe-Signature", answer
    assert "does not match" in answer["error"]["message"]

    status, answer, _ = await app.anonymous("POST", PATH, data=body)
    assert status == 400 and answer["error"]["field"] == "Stripe-Signature", answer

    # A body past 1 MiB sent without a length (chunked): refused once the limit is read.
    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * (1 << 16)

    status, answer, _ = await app.anonymous("POST", PATH, data=chunked())
    assert (status, answer["error"]["reason"], answer["error"]["field"]) == (
        413,
        "body_too_large",
        "body",
    ), answer

    # Signed rightly, but 301 s ago: outside the 300 s window.
    status, answer = await deliver(app, body, at=time.time() - 301)
    assert status == 400 and "window" in answer["error"]["message"], answer

    # A signature that is not even hex (non-ASCII): refused like any other forgery.
    header = f"t={int(time.time())},v1=\u00e9\u00e9"
    status, answer, _ = await app.anonymous(
        "POST", PATH, data=body, headers={"Stripe-Signature": header}
    )
    assert status == 400 and answer["error"]["field"] == "Stripe-Signature", answer

    # The body changed after signing.
    header = gateway.signature_header(SECRET, int(time.time()), body)
    tampered = body.replace(b"1000", b"9000")
    status, answer, _ = await app.anonymous(
        "POST", PATH, data=tampered, headers={"Stripe-Signature": header}
    )
    assert status == 400, answer
    assert await state(services, invoice) == (-10 * EUR, 0, 0, 0)

    # An unknown event type is acknowledged and ignored; one that names no account is
    # refused naming the metadata field (the gateway retries it).
    status, answer = await deliver(app, event("evt_a", "customer.created", {"id": "cus_1"}))
    assert status == 200 and answer["outcome"] == "ignored", answer
    status, answer = await deliver(app, event("evt_b", "payment_intent.succeeded", intent(500)))
    assert status == 400, answer
    assert answer["error"]["field"] == "data.object.metadata.account_id"
    # The same event, once right, within the window: applied (the refusal stored nothing).
    status, answer = await deliver(app, body, at=time.time() - 200)
    assert status == 200 and answer["outcome"] == "payment", answer
    assert await state(services, invoice) == (0, 1, 0, 10 * EUR)


async def test_an_amount_larger_than_ocs_keeps_is_refused_naming_it(app: RunningApp) -> None:
    # 10**15 cents is more micro-units than the payments table's bigint holds: it was
    # refused only by PostgreSQL, naming the whole body. Refused now naming the amount,
    # nothing stored.
    services = app.services
    invoice = await owing_account(services)
    huge = event("evt_h", "payment_intent.succeeded", intent(10**15, account_id="pp"))
    status, answer = await deliver(app, huge)
    assert status == 400, answer
    assert answer["error"]["field"] == "data.object.amount", answer
    assert await state(services, invoice) == (-10 * EUR, 0, 0, 0)
    refund = event("evt_r", "charge.refunded", charge(10**15, 10**15))
    status, answer = await deliver(app, refund)
    assert (status, answer["error"]["field"]) == (400, "data.object.amount"), answer


def test_the_signature_scheme_matches_stripes() -> None:
    # Stripe's scheme: v1 = hex HMAC-SHA256 of "<t>.<body>" under the secret.
    import hashlib
    import hmac

    payload = b'{"id":"evt"}'
    expected = hmac.new(b"k", b"1700000000." + payload, hashlib.sha256).hexdigest()
    assert gateway.signature_header("k", 1700000000, payload) == f"t=1700000000,v1={expected}"
    assert gateway.verify(f"t=1700000000,v0=x,v1={expected}", payload, "k", 300, 1700000100.0)
    with pytest.raises(gateway.SignatureError, match="window"):
        gateway.verify(f"t=1700000000,v1={expected}", payload, "k", 300, 1700000301.0)
    with pytest.raises(gateway.SignatureError, match="timestamp"):
        gateway.verify(f"v1={expected}", payload, "k", 300, 1700000000.0)
