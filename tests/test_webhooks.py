"""Webhooks: endpoints configured over the API and the CLI, events POSTed to a real HTTP
receiver that checks the Standard Webhooks signature, retries with a doubling backoff, the
dead-letter state, and a replay that delivers (decision 0029)."""

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocs.config import Settings, with_overrides
from ocs.events import signing, webhooks
from ocs.events.delivery import deliver_pending, next_due, serve_deliveries
from ocs.events.outbox import emit
from ocs.services import Services
from tests.billing_helpers import billed_plan, customer
from tests.conftest import RunningApp, eventually
from tests.helpers import ocs_cli, send
from tests.ports import free_port


@dataclass
class Receiver:
    """An HTTP endpoint that takes webhooks signed with ``secret`` (401 otherwise),
    answering ``status``; what it took, in order."""

    secret: str = ""
    status: int = 200
    taken: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        """Verify the signature, keep the delivery, answer ``status``."""
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            message_id = signing.verify(self.secret, headers, body, now=time.time())
        except signing.SignatureError:
            self.refused += 1
            return web.Response(status=401)
        self.taken.append({"id": message_id, "headers": headers, "body": json.loads(body)})
        return web.Response(status=self.status)

    async def start(self, port: int) -> None:
        """Listen on 127.0.0.1:``port``."""
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> Any:
    """A receiver (not yet listening: a test starts it on the port it chooses)."""
    found = Receiver()
    yield found
    await found.stop()


def fast(settings: Settings, **changes: Any) -> Settings:
    """Settings with short webhook timings (tests), overridden by ``changes``."""
    base = {"webhook_backoff": 2.0, "webhook_max_attempts": 3, "webhook_timeout": 2.0}
    return with_overrides(settings, **{**base, **changes})


async def deliveries(services: Services) -> list[dict[str, Any]]:
    """Every delivery row, oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM event_deliveries ORDER BY id")
    return [dict(r) for r in rows]


async def test_an_event_reaches_the_receiver_signed_with_the_endpoints_secret(
    app: RunningApp, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    services = app.services
    port = free_port()
    await receiver.start(port)
    status, made = await app.post(
        "/v1/webhooks",
        {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"], "id": "crm"},
    )
    assert status == 201, made
    assert made["secret"].startswith("whsec_") and made["kinds"] == ["subscription.created"]
    receiver.secret = made["secret"]
    await billed_plan(services)
    sub_id = await customer(services, "1001", None, date(2026, 3, 1))

    report = await deliver_pending(services.pool, fast(services.settings))

    assert (report.attempted, report.delivered) == (1, 1)
    assert receiver.refused == 0 and len(receiver.taken) == 1
    got = receiver.taken[0]
    async with services.pool.acquire() as conn:
        event_id = await conn.fetchval("SELECT id FROM events WHERE kind = 'subscription.created'")
    assert got["id"] == f"evt_{event_id}" == got["body"]["id"]
    assert got["headers"]["webhook-signature"].startswith("v1,")
    assert got["body"]["type"] == "subscription.created"
    assert got["body"]["subject"] == "1001"
    assert got["body"]["data"] == {
        "account_id": "1001",
        "plan_id": "retail",
        "start_date": "2026-03-01",
        "status": "active",
        "subscription_id": sub_id,
    }
    # Only the kind it takes: subscription.activated was stored, and has no delivery.
    [row] = await deliveries(services)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)
    # Another secret's check fails: the receiver's verification is a real one.
    other = signing.new_secret()
    with pytest.raises(signing.SignatureError):
        signing.verify(
            other,
            got["headers"],
            json.dumps(got["body"], sort_keys=True, separators=(",", ":")).encode(),
            now=time.time(),
        )
    # The secret is answered once: the list shows none, and no log line holds it.
    status, listed = await app.get("/v1/webhooks")
    assert status == 200
    assert listed["webhooks"] == [{k: v for k, v in made.items() if k != "secret"}]
    assert made["secret"] not in caplog.text
    assert made["secret"] not in repr(await webhooks.list_webhooks(services.pool))


async def test_a_receiver_down_is_retried_with_backoff_then_dead_lettered_then_replayed(
    app: RunningApp, receiver: Receiver
) -> None:
    services = app.services
    settings = fast(services.settings)  # 2 s backoff, doubled; 3 attempts
    port = free_port()  # nothing listens there yet: the receiver is down
    status, made = await app.post(
        "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"]}
    )
    assert status == 201
    receiver.secret = made["secret"]
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))
    t0 = datetime.now(UTC)

    first = await deliver_pending(services.pool, settings, now=t0)
    [row] = await deliveries(services)
    assert (first.attempted, first.retrying) == (1, 1)
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert row["next_attempt_at"] == t0 + timedelta(seconds=2)
    assert row["last_status"] is None and "Connect" in row["last_error"]
    # Not due before its backoff: nothing is attempted.
    assert (
        await deliver_pending(services.pool, settings, now=t0 + timedelta(seconds=1.9))
    ).attempted == 0
    second = await deliver_pending(services.pool, settings, now=t0 + timedelta(seconds=2))
    [row] = await deliveries(services)
    assert (second.retrying, row["attempts"]) == (1, 2)
    assert row["next_attempt_at"] == t0 + timedelta(seconds=2 + 4)  # doubled
    assert (
        await deliver_pending(services.pool, settings, now=t0 + timedelta(seconds=5.9))
    ).attempted == 0
    third = await deliver_pending(services.pool, settings, now=t0 + timedelta(seconds=6))
    [row] = await deliveries(services)
    assert (third.dead, row["state"], row["attempts"]) == (1, "dead", 3)

    # The receiver comes back: a dead delivery is not retried by itself.
    await receiver.start(port)
    later = await deliver_pending(services.pool, settings, now=t0 + timedelta(days=1))
    assert later.attempted == 0 and receiver.taken == []
    status, dead = await app.get("/v1/events?state=dead")
    assert status == 200
    [event] = dead["events"]
    assert event["kind"] == "subscription.created"
    assert [d["state"] for d in event["deliveries"]] == ["dead"]

    # Replayed to a partner that does not take the kind: refused, nothing queued for it.
    status, partner = await app.post(
        "/v1/webhooks", {"url": "http://127.0.0.1:9/partner", "kinds": ["payment.received"]}
    )
    assert status == 201, partner
    status, refused = await app.post(
        f"/v1/events/{event['id']}/replay", {"webhook_id": partner["id"]}
    )
    assert (status, refused["error"]["field"]) == (400, "webhook_id"), refused

    status, replayed = await app.post(f"/v1/events/{event['id']}/replay", {})
    assert status == 200, replayed
    assert [(d["state"], d["attempts"]) for d in replayed["deliveries"]] == [("pending", 0)]
    report = await deliver_pending(services.pool, settings)
    assert report.delivered == 1
    assert [t["id"] for t in receiver.taken] == [f"evt_{event['id']}"]
    status, dead = await app.get("/v1/events?state=dead")
    assert dead["events"] == []


async def test_a_refusal_and_a_slow_receiver_are_failed_attempts(
    app: RunningApp, receiver: Receiver
) -> None:
    services = app.services
    port = free_port()
    await receiver.start(port)
    receiver.status = 503
    status, made = await app.post(
        "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"]}
    )
    receiver.secret = made["secret"]
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))

    report = await deliver_pending(services.pool, fast(services.settings, webhook_max_attempts=1))

    [row] = await deliveries(services)
    assert (report.dead, row["state"], row["last_status"], row["last_error"]) == (
        1,
        "dead",
        503,
        "HTTP 503",
    )
    # The same event kept its webhook-id: a replay to a slow receiver times out.
    slow = web.Application()
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()  # past the deliverer's timeout
        return web.Response()

    slow.router.add_post("/hook", stall)
    runner = web.AppRunner(slow)
    await runner.setup()
    slow_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", slow_port).start()
    try:
        async with services.pool.acquire() as conn:
            await conn.execute("UPDATE webhooks SET url = $1", f"http://127.0.0.1:{slow_port}/hook")
        status, _ = await app.post(f"/v1/events/{row['event_id']}/replay", {})
        assert status == 200
        report = await deliver_pending(
            services.pool, fast(services.settings, webhook_timeout=0.2, webhook_max_attempts=5)
        )
        [row] = await deliveries(services)
        assert (report.retrying, row["state"]) == (1, "pending")
        assert row["last_error"] == "no answer within 0.2 s"
    finally:
        release.set()
        await runner.cleanup()


async def test_a_replay_while_the_event_is_being_sent_does_not_send_it_twice_at_once(
    app: RunningApp,
) -> None:
    services = app.services
    received: list[str] = []
    release = asyncio.Event()

    async def hold_the_first(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        if len(received) == 1:
            await release.wait()  # the first attempt is still being sent
        return web.Response()

    hook = web.Application()
    hook.router.add_post("/hook", hold_the_first)
    runner = web.AppRunner(hook)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, made = await app.post(
            "/v1/webhooks",
            {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"]},
        )
        assert status == 201, made
        await billed_plan(services)
        await customer(services, "1001", None, date(2026, 3, 1))
        settings = fast(services.settings, webhook_timeout=30.0)
        sending = asyncio.create_task(deliver_pending(services.pool, settings))
        await eventually(lambda: asyncio.sleep(0, result=len(received) == 1))
        [row] = await deliveries(services)

        status, replayed = await app.post(f"/v1/events/{row['event_id']}/replay", {})
        assert (status, replayed["deliveries"]) == (200, [])  # left to the attempt under way
        status, replayed = await app.post(
            f"/v1/events/{row['event_id']}/replay", {"webhook_id": made["id"]}
        )
        assert (status, replayed["deliveries"]) == (200, [])
        # A second billing worker's pass meanwhile: nothing to send.
        assert (await deliver_pending(services.pool, settings)).attempted == 0
        release.set()
        assert (await sending).delivered == 1
    finally:
        release.set()
        await runner.cleanup()
    assert received == [f"evt_{row['event_id']}"]
    [row] = await deliveries(services)
    assert (row["state"], row["attempts"]) == ("delivered", 1)


async def test_what_no_deliverer_will_send_does_not_keep_the_serving_one_busy(
    app: RunningApp,
) -> None:
    services = app.services
    status, made = await app.post(
        "/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "kinds": ["subscription.created"]}
    )
    assert status == 201, made
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))
    [row] = await deliveries(services)
    # Its webhook disabled in SQL; and an email while the deliverer sends webhooks only.
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE webhooks SET enabled = false")
        await conn.execute("UPDATE subscriptions SET billing_email = 'ap@1001.test'")
        await emit(conn, "dunning.step", "1001", {"account_id": "1001", "step": "notice"})

    # Nothing it can take is due: the serving deliverer waits for its poll, instead of
    # a pass every 10 ms.
    assert (await deliver_pending(services.pool, fast(services.settings))).attempted == 0
    assert await next_due(services.pool, services.settings) is None
    # The email:
    assert await next_due(services.pool, services.settings, ["email", "webhook"]) is not None

    # A replay to the disabled webhook is refused, naming it.
    status, refused = await app.post(
        f"/v1/events/{row['event_id']}/replay", {"webhook_id": made["id"]}
    )
    assert (status, refused["error"]["field"]) == (400, "webhook_id"), refused
    assert "disabled" in refused["error"]["message"]


async def test_kinds_filter_disabled_endpoints_and_removal(app: RunningApp) -> None:
    services = app.services
    for payload in (
        {"url": "http://127.0.0.1:9/a", "id": "invoices", "kinds": ["invoice.posted"]},
        {"url": "http://127.0.0.1:9/b", "id": "off", "enabled": False},
        {"url": "http://127.0.0.1:9/c", "id": "all"},
    ):
        status, body = await app.post("/v1/webhooks", payload)
        assert status == 201, body
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))

    # created and activated, each to the endpoints taking every kind: the disabled one's
    # wait for it to be enabled (never claimed meanwhile).
    rows = await deliveries(services)
    assert sorted((r["webhook_id"], r["state"]) for r in rows) == [
        ("all", "pending"),
        ("all", "pending"),
        ("off", "pending"),
        ("off", "pending"),
    ]
    assert (await deliver_pending(services.pool, fast(services.settings))).attempted == 2

    status, removed = await send(app, "DELETE", "/v1/webhooks/all")
    assert (status, removed["id"]) == (200, "all")
    # nothing is sent to it after
    assert [r["webhook_id"] for r in await deliveries(services)] == ["off", "off"]
    status, body = await send(app, "DELETE", "/v1/webhooks/all")
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        404,
        "not_found",
        "webhook_id",
    )


@pytest.mark.parametrize(
    ("payload", "field_name"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        # URLs no HTTP client can use: each attempt's error would quote it, token and all.
        ({"url": "http://127.0.0.1:99999/hook?token=x"}, "url"),
        ({"url": "http://[::1/hook?token=x"}, "url"),
        ({"url": "http://127.0.0.1:abc/hook"}, "url"),
        ({"url": "http://exa%mple.com/hook"}, "url"),
        ({"url": "http://a..b/hook"}, "url"),
        ({"url": "http://example.com:0/hook"}, "url"),
        ({"url": "http://example.com/x", "kinds": ["invoice.eaten"]}, "kinds[0]"),
        ({"url": "http://example.com/x", "id": "a b"}, "id"),
        ({"url": "http://example.com/x", "secret": "whsec_AAAA"}, "secret"),
        ({"url": "http://example.com/x", "description": "x" * 201}, "description"),
    ],
)
async def test_a_bad_webhook_is_refused_naming_the_field(
    app: RunningApp, payload: dict[str, Any], field_name: str
) -> None:
    status, body = await app.post("/v1/webhooks", payload)
    assert status == 400, body
    assert body["error"]["field"] == field_name


async def test_a_failed_attempt_records_and_logs_no_token_of_the_url(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    services = app.services
    status, made = await app.post(
        "/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "kinds": ["subscription.created"]}
    )
    assert status == 201, made
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))
    # A URL stored before it was checked this strictly (or set in SQL), with a token.
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhooks SET url = 'http://user:pa55word@127.0.0.1:99999/hook?token=T0KEN'"
        )

    report = await deliver_pending(services.pool, fast(services.settings, webhook_max_attempts=1))

    assert report.dead == 1
    status, listed = await app.get("/v1/events?state=dead")
    assert status == 200
    [delivery] = listed["events"][0]["deliveries"]
    assert delivery["last_error"].startswith("InvalidUrlClientError: ")
    for secret in ("T0KEN", "pa55word", "127.0.0.1:99999"):
        assert secret not in delivery["last_error"]
        assert secret not in caplog.text
    assert "event delivery dead-lettered" in caplog.text


async def test_a_webhook_id_in_use_and_bad_event_requests_are_refused(app: RunningApp) -> None:
    assert (await app.post("/v1/webhooks", {"url": "http://e.com/x", "id": "w"}))[0] == 201
    status, body = await app.post("/v1/webhooks", {"url": "http://e.com/y", "id": "w"})
    assert (status, body["error"]["field"]) == (400, "id")
    status, body = await app.get("/v1/events?state=lost")
    assert (status, body["error"]["field"]) == (400, "state")
    status, body = await app.post("/v1/events/0/replay", {})
    assert (status, body["error"]["field"]) == (400, "event_id")
    status, body = await app.post("/v1/events/99/replay", {})
    assert (status, body["error"]["reason"]) == (404, "not_found")


async def test_webhooks_and_a_replay_on_the_command_line(
    app: RunningApp, tmp_path: Path, receiver: Receiver
) -> None:
    services = app.services
    settings = services.settings
    port = free_port()
    await receiver.start(port)
    code, out, err = await ocs_cli(
        settings, tmp_path, "webhooks", "add", f"http://127.0.0.1:{port}/hook",
        "--id", "crm", "--kind", "subscription.created",
    )  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert (made["id"], made["kinds"], made["secret"][:6]) == (
        "crm",
        ["subscription.created"],
        "whsec_",
    )
    assert made["secret"] not in err
    receiver.secret = made["secret"]
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "list")
    assert code == 0, err
    assert "secret" not in out and json.loads(out)["webhooks"][0]["id"] == "crm"
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "add", "gopher://x")
    assert code == 2 and "url" in err

    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))
    await deliver_pending(services.pool, fast(settings, webhook_max_attempts=1), now=None)
    code, out, err = await ocs_cli(settings, tmp_path, "events", "list", "--state", "delivered")
    assert code == 0, err
    [event] = json.loads(out)["events"]
    code, out, err = await ocs_cli(
        settings, tmp_path, "events", "replay", str(event["id"]), "--webhook", "crm"
    )
    assert code == 0, err
    assert [d["state"] for d in json.loads(out)["deliveries"]] == ["pending"]
    code, out, err = await ocs_cli(settings, tmp_path, "events", "deliver")
    assert code == 0, err
    assert json.loads(out)["delivered"] == 1
    # Sent again with the same webhook-id: the receiver can tell it is a repeat.
    assert [t["id"] for t in receiver.taken] == [f"evt_{event['id']}"] * 2

    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "remove", "crm")
    assert code == 0 and json.loads(out)["removed"]["id"] == "crm"
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "remove", "crm")
    assert code == 1


async def test_the_serving_deliverer_sends_at_commit_and_stops_when_told(
    app: RunningApp, receiver: Receiver
) -> None:
    services = app.services
    port = free_port()
    await receiver.start(port)
    status, made = await app.post(
        "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "kinds": ["subscription.created"]}
    )
    assert status == 201, made
    receiver.secret = made["secret"]
    await billed_plan(services)
    stopping = asyncio.Event()
    serving = asyncio.create_task(
        serve_deliveries(services.pool, fast(services.settings), stopping)
    )
    try:
        await customer(services, "1001", None, date(2026, 3, 1))
        # Woken by the commit's notification, well before its 5 s poll.
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.taken) == 1), within=4)
        await customer(services, "1002", None, date(2026, 3, 1))
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.taken) == 2), within=4)
    finally:
        stopping.set()
        await asyncio.wait_for(serving, timeout=10)
    assert [t["body"]["subject"] for t in receiver.taken] == ["1001", "1002"]
    assert [r["state"] for r in await deliveries(services)] == ["delivered", "delivered"]


async def test_a_receiver_that_stops_answering_does_not_hold_back_the_other_webhooks(
    app: RunningApp, receiver: Receiver
) -> None:
    services = app.services
    # A receiver that takes each POST and never answers until told: a hung CRM.
    hung = web.Application()
    release = asyncio.Event()
    holding = 0
    most_held = 0

    async def stall(request: web.Request) -> web.Response:
        nonlocal holding, most_held
        await request.read()
        holding += 1
        most_held = max(most_held, holding)
        try:
            await release.wait()
        finally:
            holding -= 1
        return web.Response()

    hung.router.add_post("/hook", stall)
    runner = web.AppRunner(hung)
    await runner.setup()
    hung_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hung_port).start()
    port = free_port()
    await receiver.start(port)
    kind = ["subscription.created"]
    try:
        # The hung receiver's backlog is older than the other's events: claimed oldest
        # first, it took every one of the 16 sending slots for a whole timeout.
        status, _ = await app.post(
            "/v1/webhooks", {"url": f"http://127.0.0.1:{hung_port}/hook", "kinds": kind}
        )
        assert status == 201
        async with services.pool.acquire() as conn, conn.transaction():
            for n in range(20):
                await emit(conn, "subscription.created", f"old{n}", {"n": n})
        status, made = await app.post(
            "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "kinds": kind}
        )
        assert status == 201
        receiver.secret = made["secret"]
        async with services.pool.acquire() as conn, conn.transaction():
            for n in range(20):
                await emit(conn, "subscription.created", f"new{n}", {"n": n})
        settings = fast(services.settings, webhook_timeout=60.0)
        assert settings.webhook_in_flight == 4

        sending = asyncio.create_task(deliver_pending(services.pool, settings))

        async def all_taken() -> bool:
            return len(receiver.taken) == 20

        # The other webhook's 20 events arrive while the hung one holds its 4 slots.
        await eventually(all_taken, within=10.0, what="the healthy webhook's events")
        assert holding == most_held == 4
        assert not sending.done()
        # An event stored while the hung receiver still holds its slots goes out too.
        async with services.pool.acquire() as conn:
            await emit(conn, "subscription.created", "later", {"n": 20})

        async def later_taken() -> bool:
            return len(receiver.taken) == 21

        await eventually(later_taken, within=10.0, what="the event stored meanwhile")
        assert holding == 4 and not sending.done()
        release.set()
        report = await asyncio.wait_for(sending, 30.0)
        # The hung receiver took every event (41), four at a time; the other its 21.
        assert (report.attempted, report.delivered) == (62, 62)
        assert most_held == 4 and len(receiver.taken) == 21
    finally:
        release.set()
        await runner.cleanup()


async def test_a_disabled_webhook_keeps_its_events_and_gets_them_in_order_once_enabled(
    app: RunningApp, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ocs.events.webhooks")
    services = app.services
    settings = fast(services.settings, webhook_in_flight=1)  # one at a time: the order shows
    port = free_port()
    await receiver.start(port)
    status, made = await app.post("/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook"})
    assert status == 201, made
    receiver.secret = made["secret"]
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))  # waiting when it is disabled

    status, disabled = await send(app, "PATCH", f"/v1/webhooks/{made['id']}", {"enabled": False})
    assert status == 200, disabled
    assert disabled == {**{k: v for k, v in made.items() if k != "secret"}, "enabled": False}
    # Unchanged: the same answer, and no second log line.
    assert await send(app, "PATCH", f"/v1/webhooks/{made['id']}", {"enabled": False}) == (
        200,
        disabled,
    )
    await customer(services, "1002", None, date(2026, 3, 1))  # stored while it is disabled

    # Nothing is attempted, nothing goes dead, however often the deliverer looks.
    for _ in range(3):
        assert (await deliver_pending(services.pool, settings)).attempted == 0
    assert receiver.taken == []
    assert {(r["state"], r["attempts"]) for r in await deliveries(services)} == {("pending", 0)}
    async with services.pool.acquire() as conn:
        stored = [r["id"] for r in await conn.fetch("SELECT id FROM events ORDER BY id")]
    assert len(stored) == 4  # created and activated, for each account
    # A replay naming it is refused, naming the field.
    status, refused = await app.post(f"/v1/events/{stored[-1]}/replay", {"webhook_id": made["id"]})
    assert (status, refused["error"]["field"]) == (400, "webhook_id"), refused
    assert "disabled" in refused["error"]["message"]

    status, enabled = await send(app, "PATCH", f"/v1/webhooks/{made['id']}", {"enabled": True})
    assert (status, enabled) == (200, {**disabled, "enabled": True})
    while (await deliver_pending(services.pool, settings)).attempted:
        pass

    # Every event, in the order stored, each once.
    assert [t["id"] for t in receiver.taken] == [f"evt_{i}" for i in stored]
    assert {(r["state"], r["attempts"]) for r in await deliveries(services)} == {("delivered", 1)}
    changes = [r for r in caplog.records if r.name == "ocs.events.webhooks"]
    assert [(r.getMessage(), r.__dict__["webhook"]) for r in changes] == [
        ("webhook disabled", made["id"]),
        ("webhook enabled", made["id"]),
    ]
    assert made["secret"] not in caplog.text


@pytest.mark.parametrize(
    ("path", "payload", "status", "field_name"),
    [
        ("/v1/webhooks/crm", {}, 400, "enabled"),
        ("/v1/webhooks/crm", {"enabled": "no"}, 400, "enabled"),
        ("/v1/webhooks/crm", {"enabled": False, "url": "http://e.com/y"}, 400, "url"),
        ("/v1/webhooks/a%20b", {"enabled": False}, 400, "webhook_id"),
        ("/v1/webhooks/nope", {"enabled": False}, 404, "webhook_id"),
    ],
)
async def test_a_bad_webhook_change_is_refused_naming_the_field(
    app: RunningApp, path: str, payload: dict[str, Any], status: int, field_name: str
) -> None:
    assert (await app.post("/v1/webhooks", {"url": "http://e.com/x", "id": "crm"}))[0] == 201
    got, body = await send(app, "PATCH", path, payload)
    assert (got, body["error"]["field"]) == (status, field_name), body
    _, listed = await app.get("/v1/webhooks")
    assert [w["enabled"] for w in listed["webhooks"]] == [True]


async def test_a_webhook_disabled_and_enabled_on_the_command_line(
    app: RunningApp, tmp_path: Path
) -> None:
    settings = app.services.settings
    assert (await app.post("/v1/webhooks", {"url": "http://e.com/x", "id": "crm"}))[0] == 201
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "disable", "crm")
    assert code == 0, err
    assert (json.loads(out)["enabled"], "secret" in out) == (False, False)
    _, listed = await app.get("/v1/webhooks")
    assert [w["enabled"] for w in listed["webhooks"]] == [False]
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "enable", "crm")
    assert code == 0, err
    assert json.loads(out)["enabled"] is True
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "enable", "nope")
    assert code == 1 and "nope" in err
    code, out, err = await ocs_cli(settings, tmp_path, "webhooks", "disable", "a b")
    assert code == 2 and "id" in err


async def test_enabling_a_webhook_does_not_wait_for_a_transaction_storing_an_event(
    app: RunningApp, receiver: Receiver
) -> None:
    """Enabling locks no table: a payment or a billing run storing events meanwhile
    neither holds it up nor is held up, and its event is sent to the webhook."""
    services = app.services
    port = free_port()
    await receiver.start(port)
    status, made = await app.post(
        "/v1/webhooks", {"url": f"http://127.0.0.1:{port}/hook", "enabled": False}
    )
    assert status == 201, made
    receiver.secret = made["secret"]
    async with services.pool.acquire() as conn, conn.transaction():
        # Stored, not committed, while the webhook is disabled then enabled.
        event_id = await emit(conn, "payment.received", "1001", {"account_id": "1001"})
        status, enabled = await send(app, "PATCH", f"/v1/webhooks/{made['id']}", {"enabled": True})
        assert status == 200, enabled  # not 503 after waiting for this transaction
        assert enabled["enabled"] is True
    while (await deliver_pending(services.pool, fast(services.settings))).attempted:
        pass
    assert [t["id"] for t in receiver.taken] == [f"evt_{event_id}"]
    assert [(r["state"], r["attempts"]) for r in await deliveries(services)] == [("delivered", 1)]
