"""The emails of events, received by an SMTP server in the test (aiosmtpd): a posted
invoice's PDF (and its calls' CSV) to the account's billing email, a dunning notice, and
nothing sent when the account has no address; a deliverer with no SMTP server configured
leaves the emails pending."""

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from ocs.balances.accounts import AccountSpec
from ocs.billing import dunning, dunning_store, notify_email, posting
from ocs.billing.notify_email import NO_ADDRESS, senders
from ocs.billing.store import Subscription, add_charge, subscribe
from ocs.config import Settings, with_overrides
from ocs.events import delivery, webhooks
from ocs.events.delivery import (
    CHANNELS,
    CONCURRENCY,
    NO_SMTP,
    Claimed,
    Context,
    Outcome,
    deliver_pending,
    senders_for,
)
from ocs.events.outbox import emit
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, monthly, post_on_time, run
from tests.conftest import RunningApp, eventually
from tests.helpers import ocs_cli
from tests.ports import free_port

# What a deliverer with an SMTP server sends: webhooks and emails.
MAIL = senders(with_overrides(Settings(), smtp_host="127.0.0.1"))


class Inbox:
    """An aiosmtpd handler keeping every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message and its recipients; accept it."""
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Inbox, int]]:
    """An SMTP server on this event loop: (its inbox, its port)."""
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield inbox, port
    finally:
        server.close()
        await server.wait_closed()


def mailing(settings: Settings, port: int | None) -> Settings:
    """Settings that send email through 127.0.0.1:``port`` (None: no SMTP server)."""
    return with_overrides(
        settings,
        smtp_host=None if port is None else "127.0.0.1",
        smtp_port=port or 25,
        smtp_from="billing@ocs.test",
        invoice_issuer_name="Example Telecom",
        webhook_backoff=0.0,
        webhook_max_attempts=2,
    )


async def billing_email(services: Services, account_id: str, address: str) -> None:
    """Give the account's subscription a billing email."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE subscriptions SET billing_email = $2 WHERE account_id = $1",
            account_id,
            address,
        )


async def email_rows(services: Services) -> list[dict[str, Any]]:
    """The email deliveries: (state, attempts, last error), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT state, attempts, last_error FROM event_deliveries WHERE channel = 'email'"
            " ORDER BY id"
        )
    return [dict(r) for r in rows]


async def posted_invoices(services: Services) -> None:
    """March's invoices of p1 (a call in March) and p2 (no calls), posted."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "p1", "rent", date(2026, 1, 1), balance=20 * EUR)
    await customer(services, "p2", "rent", date(2026, 1, 1), balance=20 * EUR)
    await cdr(services, "c-1", "p1", datetime(2026, 3, 10, 12, tzinfo=UTC), charged=60_000)
    await billing_email(services, "p1", "ap@customer-one.test")
    await billing_email(services, "p2", "billing@customer-two.test")
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=run_id)


async def test_a_posted_invoice_is_emailed_with_its_pdf_and_call_listing(
    services: Services, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await posted_invoices(services)

    report = await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)

    assert (report.attempted, report.delivered) == (2, 2)
    assert [r["state"] for r in await email_rows(services)] == ["delivered", "delivered"]
    by_to = {tuple(to): message for to, message in inbox.messages}
    assert sorted(by_to) == [("ap@customer-one.test",), ("billing@customer-two.test",)]
    one = by_to[("ap@customer-one.test",)]
    assert one["From"] == "billing@ocs.test"
    assert one["Subject"] == "Invoice INV-2026-000001 from Example Telecom"
    body = one.get_body(preferencelist=("plain",))
    # 10.00 of rent and the call's 0.06.
    assert body is not None and "total 10.06 EUR" in body.get_content()
    attachments = {str(a.get_filename()): a for a in one.iter_attachments()}
    assert sorted(attachments) == ["INV-2026-000001-calls.csv", "INV-2026-000001.pdf"]
    pdf = attachments["INV-2026-000001.pdf"]
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_content()[:4] == b"%PDF"
    listing = attachments["INV-2026-000001-calls.csv"].get_content()
    assert isinstance(listing, str) and "447700900123" in listing
    # No calls on p2's invoice: the PDF only.
    two = by_to[("billing@customer-two.test",)]
    assert [a.get_filename() for a in two.iter_attachments()] == ["INV-2026-000002.pdf"]
    # Delivered ones are not sent again.
    again = await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)
    assert again.attempted == 0 and len(inbox.messages) == 2


async def test_a_dunning_step_sends_a_notice(services: Services, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        await emit(
            conn,
            "dunning.step",
            "late",
            {
                "account": "late",
                "step": "notice",
                "notice": 1,
                "of": 3,
                "invoice_number": "INV-2026-000007",
                "currency": "EUR",
                "amount_outstanding": 12_500_000,
                "due_date": "2026-04-15",
            },
        )

    report = await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)

    assert report.delivered == 1
    [(to, message)] = inbox.messages
    assert to == ["owner@late.test"]
    assert message["Subject"] == "Payment reminder from Example Telecom"
    text = message.get_content()
    assert "Account late: payment reminder 1 of 3." in text
    assert "Invoice INV-2026-000007: 12.50 EUR outstanding, due 2026-04-15." in text


async def test_a_customer_who_paid_gets_service_restored_not_a_payment_reminder(
    services: Services, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    # No notices: suspended at the first midnight after the due date (11 April).
    await dunning_store.set_plan_settings(services.pool, "retail", 0, 7, grace_days=10)
    await services.accounts.create(AccountSpec("late", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("late", "retail", date(2026, 3, 1)))
    await add_charge(services.pool, sub, "rent")
    await billing_email(services, "late", "owner@late.test")
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await post_on_time(services, run_id)
    report = await dunning.run_dunning(
        services.pool, services.store, services.settings, datetime(2026, 4, 12, tzinfo=UTC)
    )
    assert report.suspended == ["late"]
    paid_at = datetime(2026, 4, 28, tzinfo=UTC)
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoices SET amount_paid = total, paid_at = $1 WHERE account_id = 'late'",
            paid_at,
        )
    assert await dunning.reactivate_paid(services.pool, services.store, ["late"], paid_at) == [
        "late"
    ]

    await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)

    # Sent at once, so in any order.
    by_subject = {message["Subject"]: message for _, message in inbox.messages}
    assert sorted(by_subject) == [
        "Invoice INV-2026-000001 from Example Telecom",
        "Payment reminder from Example Telecom",  # the suspension's notice
        "Service restored by Example Telecom",
    ]
    restored = by_subject["Service restored by Example Telecom"].get_content()
    assert "Account late: the service suspended for non-payment is restored." in restored
    assert "reminder" not in restored and "Please pay" not in restored


async def test_paying_under_an_operators_lock_sends_no_service_restored(
    services: Services, smtp: tuple[Inbox, int]
) -> None:
    """Dunning suspends an account an operator had locked and one that was active; both
    pay. Only the active one's service comes back, and only it gets "Service restored":
    the locked one's calls are still refused, so its reactivation's email is skipped and
    its event says ``service_restored: false``."""
    inbox, port = smtp
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await dunning_store.set_plan_settings(services.pool, "retail", 0, 7, grace_days=10)
    for account_id in ("fraud", "late"):
        await services.accounts.create(
            AccountSpec(account_id, plan_id="retail", credit_limit=100 * EUR)
        )
        sub = await subscribe(services.pool, Subscription(account_id, "retail", date(2026, 3, 1)))
        await add_charge(services.pool, sub, "rent")
        await billing_email(services, account_id, f"owner@{account_id}.test")
    await services.accounts.update_policy("fraud", status="locked")
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await post_on_time(services, run_id)
    report = await dunning.run_dunning(
        services.pool, services.store, services.settings, datetime(2026, 4, 12, tzinfo=UTC)
    )
    assert sorted(report.suspended) == ["fraud", "late"]
    paid_at = datetime(2026, 4, 28, tzinfo=UTC)
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE invoices SET amount_paid = total, paid_at = $1", paid_at)
    assert await dunning.reactivate_paid(
        services.pool, services.store, ["fraud", "late"], paid_at
    ) == ["fraud", "late"]
    assert (await services.accounts.show("fraud")).status == "locked"

    await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)

    received = sorted((to, message["Subject"]) for [to], message in inbox.messages)
    assert received == [
        ("owner@fraud.test", "Invoice INV-2026-000001 from Example Telecom"),
        ("owner@fraud.test", "Payment reminder from Example Telecom"),  # the suspension
        ("owner@late.test", "Invoice INV-2026-000002 from Example Telecom"),
        ("owner@late.test", "Payment reminder from Example Telecom"),
        ("owner@late.test", "Service restored by Example Telecom"),
    ]
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT e.subject, e.data, d.state, d.last_error FROM events e"
            " JOIN event_deliveries d ON d.event_id = e.id AND d.channel = 'email'"
            " WHERE e.kind = 'dunning.step' AND e.data->>'step' = 'reactivation'"
            " ORDER BY e.subject"
        )
    reactivations = [
        (
            r["subject"],
            json.loads(r["data"])["status"],
            json.loads(r["data"])["service_restored"],
            r["state"],
            r["last_error"],
        )
        for r in rows
    ]
    assert reactivations == [
        ("fraud", "locked", False, "skipped", notify_email.STILL_LOCKED),
        ("late", "active", True, "delivered", None),
    ]


async def test_replaying_an_invoice_for_a_dead_webhook_does_not_email_the_customer_again(
    app: RunningApp, smtp: tuple[Inbox, int]
) -> None:
    services = app.services
    inbox, port = smtp
    hook_port = free_port()  # nothing listens there yet: the webhook is down
    status, made = await app.post(
        "/v1/webhooks",
        {"url": f"http://127.0.0.1:{hook_port}/hook", "kinds": ["invoice.posted"], "id": "crm"},
    )
    assert status == 201, made
    await posted_invoices(services)
    settings = mailing(services.settings, port)  # 2 attempts, no backoff
    await deliver_pending(services.pool, settings, senders=MAIL)
    assert len(inbox.messages) == 2
    status, dead = await app.get("/v1/events?state=dead")
    assert status == 200 and len(dead["events"]) == 2
    event = dead["events"][0]

    # The receiver is fixed, then the runbook's replay: `ocs events replay EVENT_ID`.
    taken: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        taken.append(request.headers["webhook-id"])
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    try:
        status, replayed = await app.post(f"/v1/events/{event['id']}/replay", {})
        assert status == 200, replayed
        assert [(d["channel"], d["state"]) for d in replayed["deliveries"]] == [
            ("webhook", "pending")
        ]
        report = await deliver_pending(services.pool, settings, senders=MAIL)
    finally:
        await runner.cleanup()
    assert (report.attempted, report.delivered) == (1, 1)
    assert taken == [f"evt_{event['id']}"]
    assert len(inbox.messages) == 2  # the customer is not sent the invoice again


async def test_a_deliverer_without_smtp_leaves_emails_pending_for_one_with_it(
    services: Services, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await posted_invoices(services)

    # A second worker or an `ocs events deliver` run whose config has no smtp_host.
    unmailed = mailing(services.settings, None)
    report = await deliver_pending(services.pool, unmailed, senders=senders(unmailed))
    assert report.attempted == 0
    assert [(r["state"], r["attempts"]) for r in await email_rows(services)] == [("pending", 0)] * 2

    # The worker with the SMTP server then sends them.
    mailed = mailing(services.settings, port)
    report = await deliver_pending(services.pool, mailed, senders=senders(mailed))
    assert (report.attempted, report.delivered) == (2, 2)
    assert [r["state"] for r in await email_rows(services)] == ["delivered"] * 2
    assert sorted(to for to, _ in inbox.messages) == [
        ["ap@customer-one.test"],
        ["billing@customer-two.test"],
    ]


async def test_no_address_skips_and_a_refusing_server_is_retried(
    services: Services, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    await posted_invoices(services)

    # No billing email for p2: its invoice is skipped; p1's goes.
    await billing_email(services, "p2", "")
    report = await deliver_pending(services.pool, mailing(services.settings, port), senders=MAIL)
    assert (report.delivered, report.skipped) == (1, 1)
    assert [(r["state"], r["last_error"]) for r in await email_rows(services)] == [
        ("delivered", None),
        ("skipped", NO_ADDRESS),
    ]

    # The SMTP server gone: a failed attempt, retried, then dead.
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE event_deliveries SET state = 'pending', attempts = 0, delivered_at = NULL"
        )
    await billing_email(services, "p2", "billing@customer-two.test")
    gone = mailing(services.settings, port)
    gone = with_overrides(gone, smtp_port=1)  # nothing listens on port 1
    report = await deliver_pending(services.pool, gone, senders=MAIL)
    assert (report.attempted, report.dead) == (4, 2)  # 2 attempts each, no backoff
    rows = await email_rows(services)
    assert [(r["state"], r["attempts"]) for r in rows] == [("dead", 2)] * 2
    assert all(r["last_error"] for r in rows)


async def test_stopping_ends_a_pass_after_the_sends_in_flight_leaving_the_backlog_pending(
    services: Services,
) -> None:
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        for notice in range(1, 41):  # a backlog: more than are sent at once
            await emit(conn, "dunning.step", "late", {"step": "notice", "notice": notice})
    stopping = asyncio.Event()
    release = asyncio.Event()
    started: list[int] = []

    async def slow_send(delivery: Claimed, context: Context) -> Outcome:
        started.append(delivery.id)
        if len(started) == CONCURRENCY:
            stopping.set()  # SIGTERM while a full set of sends is in flight
        await release.wait()
        return Outcome.ok()

    # Every sending slot may go to the emails here: a full set in flight.
    settings = with_overrides(mailing(services.settings, None), email_in_flight=CONCURRENCY)
    task = asyncio.create_task(
        deliver_pending(services.pool, settings, senders={"email": slow_send}, stopping=stopping)
    )
    async with asyncio.timeout(10):
        await stopping.wait()
    release.set()
    async with asyncio.timeout(10):  # ends once the sends in flight are marked
        report = await task

    assert (report.attempted, report.delivered) == (CONCURRENCY, CONCURRENCY)
    assert len(started) == CONCURRENCY
    states = [(r["state"], r["attempts"]) for r in await email_rows(services)]
    assert states.count(("delivered", 1)) == CONCURRENCY
    assert states.count(("pending", 0)) == 40 - CONCURRENCY


class RefuseFirst(Inbox):
    """An inbox whose server refuses the first message (451) and takes the rest; it
    keeps every message it is handed, the refused one too."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message; refuse it the first time."""
        await super().handle_DATA(server, session, envelope)
        return "451 try again later" if len(self.messages) == 1 else "250 OK"


async def test_a_retried_email_keeps_its_message_id(services: Services) -> None:
    inbox = RefuseFirst()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        event_id = await emit(conn, "dunning.step", "late", {"step": "notice"})
    settings = mailing(services.settings, port)  # billing@ocs.test, 2 attempts, no backoff
    try:
        report = await deliver_pending(services.pool, settings, senders=MAIL)
    finally:
        server.close()
        await server.wait_closed()

    assert (report.attempted, report.retrying, report.delivered) == (2, 1, 1)
    assert [message["Message-ID"] for _, message in inbox.messages] == [
        f"<evt-{event_id}@ocs.test>"
    ] * 2


class Stalled(Inbox):
    """An inbox whose server never answers the message's data until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the message, then hold the answer until released."""
        await super().handle_DATA(server, session, envelope)
        await self.release.wait()
        return "250 OK"


async def test_an_email_attempt_past_its_limit_is_a_failed_attempt_retried_later(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = Stalled()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(inbox), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        await emit(conn, "dunning.step", "late", {"step": "notice"})
    # Within the lease (300 s) by its margin; shortened here, the server slower still.
    monkeypatch.setattr(notify_email, "ATTEMPT_LIMIT_S", 0.5)
    settings = with_overrides(
        mailing(services.settings, port), webhook_timeout=60.0, webhook_backoff=3600.0
    )
    try:
        async with asyncio.timeout(30):
            report = await deliver_pending(services.pool, settings, senders=MAIL)
    finally:
        inbox.release.set()
        server.close()
        await server.wait_closed()

    assert (report.attempted, report.retrying) == (1, 1)
    [row] = await email_rows(services)
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert row["last_error"] == "not sent within 0.5 s"


async def test_an_email_backlog_leaves_sending_slots_to_the_webhooks(services: Services) -> None:
    # A webhook receiver that answers at once.
    taken: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        taken.append(request.headers["webhook-id"])
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    # An invoice run's backlog of emails, older than the webhook's event.
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        for notice in range(1, 41):
            await emit(conn, "dunning.step", "late", {"step": "notice", "notice": notice})
    await webhooks.create(
        services.pool,
        f"http://127.0.0.1:{port}/hook",
        allow_private=True,
        kinds=["subscription.created"],
    )
    async with services.pool.acquire() as conn:
        await emit(conn, "subscription.created", "crm", {"account_id": "crm"})
    release = asyncio.Event()
    sending = 0
    most = 0

    async def slow_mail(claimed: Claimed, context: Context) -> Outcome:
        nonlocal sending, most
        sending += 1
        most = max(most, sending)
        try:
            await release.wait()  # an SMTP server slow to take each email
        finally:
            sending -= 1
        return Outcome.ok()

    settings = mailing(services.settings, 25)
    assert settings.email_in_flight == 8
    task = asyncio.create_task(
        deliver_pending(services.pool, settings, senders=senders_for(settings, slow_mail))
    )
    try:
        # The webhook's event goes out while the emails are still being sent: they hold 8
        # of the 16 slots, not all of them.
        await eventually(
            lambda: asyncio.sleep(0, result=len(taken) == 1), within=10.0, what="the webhook"
        )
        assert not task.done() and sending == most == 8
        states = [r["state"] for r in await email_rows(services)]
        assert states.count("pending") == 40
    finally:
        release.set()
        async with asyncio.timeout(30):
            report = await task
        await runner.cleanup()
    assert (report.attempted, report.delivered) == (41, 41)
    assert most == 8 and len(taken) == 1


async def skipped_for_want_of_smtp(services: Services, event_ids: list[int]) -> None:
    """Mark these events' emails as a deliverer without smtp_host did until 2026-12-07:
    skipped for good."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE event_deliveries SET state = 'skipped', last_error = $2, attempts = 1"
            " WHERE channel = 'email' AND event_id = ANY ($1::bigint[])",
            event_ids,
            NO_SMTP,
        )


async def email_events(services: Services) -> list[tuple[int, str, str, str]]:
    """The email deliveries: (event id, kind, subject, state), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT e.id, e.kind, e.subject, d.state FROM event_deliveries d"
            " JOIN events e ON e.id = d.event_id WHERE d.channel = 'email' ORDER BY d.id"
        )
    return [(r["id"], r["kind"], r["subject"], r["state"]) for r in rows]


async def test_emails_skipped_before_smtp_was_configured_are_sent_once_by_a_replay(
    app: RunningApp, smtp: tuple[Inbox, int], tmp_path: Path
) -> None:
    services = app.services
    inbox, port = smtp
    await posted_invoices(services)
    async with services.pool.acquire() as conn:
        await emit(conn, "dunning.step", "p1", {"account_id": "p1", "step": "notice"})
    [one, _, notice] = [e[0] for e in await email_events(services)]
    # The second invoice's email went out; the first invoice's and the notice were
    # skipped by a deliverer without SMTP.
    await skipped_for_want_of_smtp(services, [one, notice])
    mailed = mailing(services.settings, port)
    report = await deliver_pending(services.pool, mailed, senders=MAIL)
    assert report.delivered == 1
    assert [to for to, _ in inbox.messages] == [["billing@customer-two.test"]]
    # p2's notice is skipped: its billing email was taken away after it was stored.
    async with services.pool.acquire() as conn:
        await emit(conn, "dunning.step", "p2", {"account_id": "p2", "step": "notice"})
    await billing_email(services, "p2", "")
    report = await deliver_pending(services.pool, mailed, senders=MAIL)
    assert report.skipped == 1

    # A replay of invoice emails only (a late payment reminder may be stale).
    status, replayed = await app.post("/v1/events/replay-skipped", {"kind": "invoice.posted"})
    assert (status, replayed) == (200, {"requeued": 1})
    report = await deliver_pending(services.pool, mailed, senders=MAIL)
    assert (report.attempted, report.delivered) == (1, 1)
    assert sorted(to for to, _ in inbox.messages) == [
        ["ap@customer-one.test"],
        ["billing@customer-two.test"],
    ]
    assert inbox.messages[-1][1]["Subject"] == "Invoice INV-2026-000001 from Example Telecom"
    assert [e[3] for e in await email_events(services)] == [
        "delivered",
        "delivered",
        "skipped",
        "skipped",
    ]

    # Every kind: the notice only (not p2's, skipped for want of an address; not the
    # delivered invoices).
    status, replayed = await app.post("/v1/events/replay-skipped", {})
    assert (status, replayed) == (200, {"requeued": 1})
    # Skipped again, then by days: of events stored up to yesterday, none; today's, it.
    await skipped_for_want_of_smtp(services, [notice])
    today = datetime.now(UTC).date()
    yesterday = (today - timedelta(days=1)).isoformat()
    status, replayed = await app.post("/v1/events/replay-skipped", {"until": yesterday})
    assert (status, replayed) == (200, {"requeued": 0})
    code, out, err = await ocs_cli(
        services.settings,
        tmp_path,
        "events",
        "replay-skipped",
        "--kind",
        "dunning.step",
        "--since",
        today.isoformat(),
        "--until",
        today.isoformat(),
    )
    assert code == 0, err
    assert json.loads(out) == {"requeued": 1}
    report = await deliver_pending(services.pool, mailed, senders=MAIL)
    assert (report.attempted, report.delivered) == (1, 1)
    assert len(inbox.messages) == 3
    assert inbox.messages[-1][1]["Subject"] == "Payment reminder from Example Telecom"
    assert (await deliver_pending(services.pool, mailed, senders=MAIL)).attempted == 0
    status, replayed = await app.post("/v1/events/replay-skipped", {})
    assert (status, replayed) == (200, {"requeued": 0})
    assert len(inbox.messages) == 3

    # Days the wrong way round, a kind that is none: 400 naming the field.
    status, refused = await app.post(
        "/v1/events/replay-skipped", {"since": today.isoformat(), "until": yesterday}
    )
    assert status == 400 and refused["error"]["field"] == "until", refused
    status, refused = await app.post("/v1/events/replay-skipped", {"kind": "invoice.paid"})
    assert status == 400 and refused["error"]["field"] == "kind", refused
    code, _, err = await ocs_cli(
        services.settings, tmp_path, "events", "replay-skipped", "--since", "tomorrow"
    )
    assert code == 2 and "--since" in err


async def test_every_channel_of_the_outbox_has_its_sender_in_one_rule(services: Services) -> None:
    async with services.pool.acquire() as conn:
        check = await conn.fetchval(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " WHERE c.conrelid = 'event_deliveries'::regclass AND c.contype = 'c'"
            "   AND pg_get_constraintdef(c.oid) LIKE '%channel = ANY%'"
        )
    # The channels the trigger may make rows for are those the deliverers know.
    made = sorted(part.split("'")[1] for part in check.split("::text")[:-1] if "'" in part)
    assert made == sorted(CHANNELS) == ["email", "webhook"]
    with_smtp = with_overrides(services.settings, smtp_host="127.0.0.1")
    without = with_overrides(services.settings, smtp_host=None)
    # A billing deliverer with SMTP sends every channel; one without, none of the emails.
    assert sorted(notify_email.senders(with_smtp)) == made
    assert sorted(notify_email.senders(without)) == ["webhook"]
    # The events layer's own default is the same rule, without the email sender.
    assert sorted(delivery.senders_for(with_smtp)) == ["webhook"]
    assert notify_email.senders(with_smtp)["email"] is notify_email.send_event_email


async def test_emails_with_every_slot_taken_are_due_when_the_first_lease_ends(
    services: Services,
) -> None:
    await billed_plan(services)
    await customer(services, "late", None, date(2026, 1, 1))
    await billing_email(services, "late", "owner@late.test")
    async with services.pool.acquire() as conn, conn.transaction():
        for notice in range(1, 11):
            await emit(conn, "dunning.step", "late", {"step": "notice", "notice": notice})
    settings = mailing(services.settings, 25)
    now = datetime.now(UTC)

    # Another deliverer is sending 8 of the 10: the other 2 wait for a slot.
    taken = await delivery.claim(services.pool, settings, now, ["email"])
    assert len(taken) == settings.email_in_flight == 8
    assert await delivery.claim(services.pool, settings, now, ["email"]) == []
    # So a serving deliverer sleeps until the first of those leases ends, not a pass
    # every 10 ms on rows it may not take.
    due = await delivery.next_due(services.pool, settings, ["email"])
    first_lease = min(c.leased_until for c in taken if c.leased_until is not None)
    assert due == first_lease and due > now + timedelta(seconds=200)
