"""The outbox's events: emitted in the transaction of their change (subscriptions, invoices
posted, accounts locked on prorated charges), none for a rolled-back change, and delivered
once to a receiver that keeps webhook-ids, even when a deliverer is killed -9 (decision 0029).
"""

import asyncio
import collections
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocs.balances.accounts import AccountSpec
from ocs.balances.plan_policy import PlanPolicy, set_plan_policy
from ocs.billing import commitments, number_sets, payments, posting
from ocs.billing.posting import assign_numbers
from ocs.billing.store import (
    Subscription,
    add_charge,
    change_charge,
    end_charge,
    set_status,
    subscribe,
)
from ocs.config import Settings, with_overrides
from ocs.errors import OcsError
from ocs.events import queries, signing, webhooks
from ocs.events.delivery import CONCURRENCY, deliver_pending, lease_s
from ocs.events.outbox import emit
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, monthly, run
from tests.conftest import add_plan, eventually
from tests.helpers import ocs_cli
from tests.ports import free_port

MID_MARCH = datetime(2026, 3, 15, 12, tzinfo=UTC)


async def events(services: Services) -> list[dict[str, Any]]:
    """Every stored event (kind, subject, data), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT kind, subject, data::text AS data FROM events ORDER BY id")
    return [
        {"kind": r["kind"], "subject": r["subject"], "data": json.loads(r["data"])} for r in rows
    ]


@dataclass
class Receiver:
    """An HTTP endpoint checking the signature with ``secret``: every request taken (its
    webhook-id), and ``on_request`` run before it answers 200."""

    secret: str = ""
    ids: list[str] = field(default_factory=list)
    on_request: Any = None
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        """Verify, count, answer 200."""
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.ids.append(signing.verify(self.secret, headers, body, now=time.time()))
        if self.on_request is not None:
            await self.on_request()
        return web.Response(status=200)

    async def start(self) -> str:
        """Listen on a free port; the hook's URL."""
        port = free_port()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def receiver() -> Any:
    """A receiver, stopped after the test."""
    found = Receiver()
    yield found
    if found.runner is not None:
        await found.runner.cleanup()


async def test_a_subscriptions_life_is_announced_in_order(services: Services) -> None:
    pool = services.pool
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "rent-plus", 20 * EUR)
    await services.accounts.create(AccountSpec("1001", plan_id="retail"))
    sub = await subscribe(pool, Subscription("1001", "retail", date(2026, 3, 1), status="pending"))
    await set_status(pool, sub, "active")
    await set_status(pool, sub, "active")  # no change: nothing announced
    await set_status(pool, sub, "suspended")
    await set_status(pool, sub, "active")
    item = await add_charge(pool, sub, "rent")
    upgraded = await change_charge(pool, item, "rent-plus", date(2026, 3, 15))
    await end_charge(pool, upgraded, date(2026, 3, 20))
    await set_status(pool, sub, "cancelled", on=date(2026, 4, 1))
    with pytest.raises(OcsError):
        await set_status(pool, sub, "active")  # refused by the database: nothing announced

    found = await events(services)
    assert [e["kind"] for e in found] == [
        "subscription.created",
        "subscription.activated",
        "subscription.suspended",
        "subscription.resumed",
        "subscription.changed",
        "subscription.changed",
        "subscription.changed",
        "subscription.cancelled",
    ]
    assert {e["subject"] for e in found} == {"1001"}
    data = [e["data"] for e in found]
    assert data[0] == {
        "subscription_id": sub,
        "account_id": "1001",
        "plan_id": "retail",
        "status": "pending",
        "start_date": "2026-03-01",
    }
    assert (data[2]["from"], data[2]["status"]) == ("active", "suspended")
    assert [d["change"] for d in data[4:7]] == ["charge_added", "charge_changed", "charge_ended"]
    assert (data[4]["item_id"], data[4]["charge_id"], data[4]["quantity"]) == (item, "rent", 1)
    assert (data[5]["item_id"], data[5]["replaces_item_id"], data[5]["start_date"]) == (
        upgraded,
        item,
        "2026-03-15",
    )
    assert (data[6]["item_id"], data[6]["end_date"]) == (upgraded, "2026-03-20")
    assert data[7]["cancelled_on"] == "2026-04-01"
    listed = await queries.list_events(pool, subject="1001", kind="subscription.changed")
    assert [e.data["change"] for e in listed] == ["charge_ended", "charge_changed", "charge_added"]


async def test_each_invoice_posted_is_announced_once_and_a_rollback_announces_nothing(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "p1", "rent", date(2026, 1, 1), balance=20 * EUR)
    await customer(services, "p2", "rent", date(2026, 1, 1), balance=20 * EUR)
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    async with services.pool.acquire() as conn:
        # Only p1 has an address to email its invoices to.
        await conn.execute(
            "UPDATE subscriptions SET billing_email = 'ap@p1.test' WHERE account_id = 'p1'"
        )
        before = await conn.fetchval("SELECT count(*) FROM events")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM invoices ORDER BY id")]

    # Numbered, then the transaction fails: no number, no event.
    with pytest.raises(RuntimeError):
        async with services.pool.acquire() as conn, conn.transaction():
            assert len(await assign_numbers(conn, ids)) == 2
            raise RuntimeError("the posting's transaction fails")
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == before
        assert await conn.fetchval("SELECT count(*) FROM event_deliveries") == 0
    # A change the database refuses (no such account) announces nothing either.
    with pytest.raises(OcsError):
        await subscribe(services.pool, Subscription("ghost", "retail", date(2026, 3, 1)))
    assert len(await events(services)) == before

    await posting.post(services.pool, services.store, run_id=run_id)
    await posting.post(services.pool, services.store, run_id=run_id)  # again: nothing new

    posted = [e for e in await events(services) if e["kind"] == "invoice.posted"]
    assert [e["data"] for e in posted] == [
        {
            "invoice_id": invoice,
            "number": number,
            "account_id": account,
            "kind": "invoice",
            "currency": "EUR",
            "total": 10 * EUR,
            "invoice_date": "2026-04-01",
        }
        for invoice, account, number in [
            (ids[0], "p1", "INV-2026-000001"),
            (ids[1], "p2", "INV-2026-000002"),
        ]
    ]
    assert [e["subject"] for e in posted] == ["p1", "p2"]
    # p1's invoice has its email delivery (sent by the billing worker's deliverer); p2,
    # with no billing email, has none (migration 0039).
    async with services.pool.acquire() as conn:
        channels = await conn.fetch(
            "SELECT e.subject, d.channel, d.state FROM event_deliveries d"
            " JOIN events e ON e.id = d.event_id ORDER BY d.id"
        )
    assert [(r["subject"], r["channel"], r["state"]) for r in channels] == [
        ("p1", "email", "pending")
    ]


async def test_a_number_taken_and_released_and_a_refund_are_announced(
    services: Services,
) -> None:
    await add_plan(services)
    await services.accounts.create(AccountSpec("holder", plan_id="retail"))
    # Billed from January: a number may be the account's from then (not before its first day).
    await subscribe(services.pool, Subscription("holder", "retail", date(2026, 1, 1)))
    await number_sets.create_set(services.pool, "dids", "did")
    await number_sets.import_numbers(services.pool, "dids", "number,on_net\n442070000001,true\n")
    await number_sets.assign_to_plan(services.pool, "dids", "retail", 1)
    await number_sets.take_number(services.pool, services.store, "holder", on=date(2026, 3, 2))
    await number_sets.release(
        services.pool, services.store, "holder", "442070000001", on=date(2026, 3, 20)
    )
    paid = await payments.record_payment(
        services.pool,
        services.store,
        payments.NewPayment("holder", 5 * EUR, "manual", "P1", reference="P1"),
    )
    refunded = await payments.refund_payment(
        services.pool, services.store, paid.payment.id, 2 * EUR, "RF1"
    )
    # The same refund asked again changes nothing and announces nothing.
    await payments.refund_payment(services.pool, services.store, paid.payment.id, 2 * EUR, "RF1")

    announced = [
        e
        for e in await events(services)
        if e["kind"] != "payment.received" and not e["kind"].startswith("subscription.")
    ]
    assert announced == [
        {
            "kind": "number.assigned",
            "subject": "holder",
            "data": {
                "account_id": "holder",
                "number": "442070000001",
                "number_set": "dids",
                "kind": "did",
                "on_net": True,
                "on": "2026-03-02",
                "charge_id": None,
            },
        },
        {
            "kind": "number.released",
            "subject": "holder",
            "data": {"account_id": "holder", "number": "442070000001", "on": "2026-03-20"},
        },
        {
            "kind": "payment.refunded",
            "subject": "holder",
            "data": {
                "refund_id": refunded.refund.id,
                "payment_id": paid.payment.id,
                "account_id": "holder",
                "source": "manual",
                "amount": 2 * EUR,
                "currency": "EUR",
                "reopened": 0,
            },
        },
    ]


async def test_an_account_locked_on_prorated_charges_then_unlocked_is_announced(
    services: Services,
) -> None:
    await billed_plan(services)
    await set_plan_policy(
        services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR, lock_prorated=True)
    )
    await customer(services, "rich", None, date(2026, 3, 11), balance=30 * EUR)
    await customer(services, "poor", None, date(2026, 3, 11), balance=10 * EUR)
    created = len(await events(services))

    await commitments.refresh(services.pool, services.store, at=MID_MARCH)
    # March's fee for 21 of 31 days, 6.77, and April's ahead, 10.00: 16.77 > 10.00.
    assert (await events(services))[created:] == [
        {
            "kind": "account.locked",
            "subject": "poor",
            "data": {"account_id": "poor", "reason": "prorated_charges", "committed": 16_770_000},
        }
    ]
    await commitments.refresh(services.pool, services.store, at=MID_MARCH)  # no change
    assert len(await events(services)) == created + 1
    await services.accounts.topup("poor", 7 * EUR, "t-1")
    await commitments.refresh(services.pool, services.store, at=MID_MARCH)
    assert [(e["kind"], e["subject"]) for e in (await events(services))[created:]] == [
        ("account.locked", "poor"),
        ("account.unlocked", "poor"),
    ]


# A process that commits a change and dies before its event is sent: killed -9 once it has
# printed, having (with "claim") taken the delivery's lease first.
CRASH_BEFORE_SEND = """
import asyncio, sys
from datetime import UTC, date, datetime
import asyncpg
from ocs.billing.store import Subscription, subscribe
from ocs.config import Settings
from ocs.events.delivery import claim

async def main() -> None:
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    await subscribe(pool, Subscription("1001", "retail", date(2026, 3, 1)))
    if sys.argv[2] == "claim":
        taken = await claim(pool, Settings(), datetime.now(UTC), ["webhook"])
        print("claimed", len(taken), flush=True)
    else:
        print("committed", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

# A deliverer that is killed -9 by the receiver itself, after the request arrived and before
# it could mark the delivery delivered.
DELIVERER = """
import asyncio, sys
import asyncpg
from ocs.config import Settings
from ocs.events.delivery import deliver_pending

async def main() -> None:
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    print("delivering", flush=True)
    await deliver_pending(pool, Settings(webhook_allow_private=True))  # on 127.0.0.1
    print("finished", flush=True)

asyncio.run(main())
"""


async def child(script: str, *args: str) -> asyncio.subprocess.Process:
    """``python -c script args`` with its stdout piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE
    )


async def kill9(process: asyncio.subprocess.Process) -> None:
    """SIGKILL, and wait for it to be gone."""
    os.kill(process.pid, signal.SIGKILL)
    await asyncio.wait_for(process.wait(), timeout=30)
    assert process.returncode == -signal.SIGKILL


async def test_killed_9_between_commit_and_send_the_event_is_delivered_exactly_once(
    services: Services, receiver: Receiver, tmp_path: Path
) -> None:
    url = await receiver.start()
    hook = await webhooks.create(
        services.pool, url, allow_private=True, kinds=["subscription.created"]
    )
    receiver.secret = hook.secret
    await billed_plan(services)
    await services.accounts.create(AccountSpec("1001", plan_id="retail"))
    settings = services.settings
    assert settings.database_url is not None

    process = await child(CRASH_BEFORE_SEND, settings.database_url, "commit")
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), timeout=60) == b"committed\n"
    await kill9(process)
    # A fresh deliverer, another process: the committed change's event, once.
    code, out, err = await ocs_cli(settings, tmp_path, "events", "deliver")
    assert code == 0, err
    assert json.loads(out)["delivered"] == 1
    code, out, err = await ocs_cli(settings, tmp_path, "events", "deliver")
    assert json.loads(out)["attempted"] == 0
    async with services.pool.acquire() as conn:
        event_id = await conn.fetchval("SELECT id FROM events WHERE kind = 'subscription.created'")
    assert receiver.ids == [f"evt_{event_id}"]  # one request in all


async def test_killed_9_holding_the_lease_the_delivery_waits_for_it_then_goes_once(
    services: Services, receiver: Receiver
) -> None:
    url = await receiver.start()
    hook = await webhooks.create(
        services.pool, url, allow_private=True, kinds=["subscription.created"]
    )
    receiver.secret = hook.secret
    await billed_plan(services)
    await services.accounts.create(AccountSpec("1001", plan_id="retail"))
    settings = services.settings
    assert settings.database_url is not None

    process = await child(CRASH_BEFORE_SEND, settings.database_url, "claim")
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), timeout=60) == b"claimed 1\n"
    await kill9(process)
    # Its lease holds the delivery: nobody sends it (twice) before the lease runs out.
    assert (await deliver_pending(services.pool, settings)).attempted == 0
    expired = datetime.now(UTC) + timedelta(seconds=lease_s(Settings()) + 1)
    report = await deliver_pending(services.pool, settings, now=expired)
    assert (report.attempted, report.delivered) == (1, 1)
    assert len(receiver.ids) == 1
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, attempts FROM event_deliveries")
    assert (row["state"], row["attempts"]) == ("delivered", 2)  # the dead one's claim counts


async def test_killed_9_after_the_receivers_2xx_it_is_sent_again_with_the_same_webhook_id(
    services: Services, receiver: Receiver
) -> None:
    url = await receiver.start()
    hook = await webhooks.create(
        services.pool, url, allow_private=True, kinds=["subscription.created"]
    )
    receiver.secret = hook.secret
    await billed_plan(services)
    await customer(services, "1001", None, date(2026, 3, 1))
    settings = services.settings
    assert settings.database_url is not None
    process = await child(DELIVERER, settings.database_url)
    assert process.stdout is not None

    async def crash() -> None:
        # The receiver has the event; the deliverer dies before it can mark it delivered.
        if len(receiver.ids) == 1:
            await kill9(process)

    receiver.on_request = crash
    assert await asyncio.wait_for(process.stdout.readline(), timeout=60) == b"delivering\n"
    await eventually(lambda: asyncio.sleep(0, result=process.returncode is not None), 60)
    assert b"finished" not in await process.stdout.read()
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM event_deliveries") == "pending"

    expired = datetime.now(UTC) + timedelta(seconds=lease_s(Settings()) + 1)
    report = await deliver_pending(services.pool, settings, now=expired)

    assert report.delivered == 1
    # Two requests, one webhook-id: a receiver that keeps the ids takes the event once.
    assert len(receiver.ids) == 2 and len(set(receiver.ids)) == 1


async def delivered_rows(services: Services) -> int:
    """How many deliveries are marked delivered."""
    async with services.pool.acquire() as conn:
        return int(
            await conn.fetchval("SELECT count(*) FROM event_deliveries WHERE state = 'delivered'")
        )


async def marked(services: Services, at_least: int) -> bool:
    """Whether ``at_least`` deliveries are marked delivered."""
    return await delivered_rows(services) >= at_least


async def test_two_deliverers_send_each_event_once_past_a_slow_receivers_first_lease(
    services: Services, receiver: Receiver
) -> None:
    url = await receiver.start()
    hook = await webhooks.create(
        services.pool, url, allow_private=True, kinds=["subscription.changed"]
    )
    receiver.secret = hook.secret
    count = CONCURRENCY + 4
    async with services.pool.acquire() as conn, conn.transaction():
        for n in range(count):
            await emit(conn, "subscription.changed", f"a{n}", {"n": n})
    first, rest = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        # The first requests answered when ``first`` is set, the next ones with ``rest``;
        # any repeat at once.
        taken = len(receiver.ids)
        if taken <= CONCURRENCY:
            await first.wait()
        elif taken <= count:
            await rest.wait()

    receiver.on_request = slow
    # One webhook sent as many at once as a deliverer sends (the per-webhook cap is
    # test_webhooks.py's): this test is about the leases of a full set of slots.
    settings = with_overrides(services.settings, webhook_in_flight=CONCURRENCY)
    sending = asyncio.create_task(deliver_pending(services.pool, settings))
    try:
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.ids) == CONCURRENCY))
        async with services.pool.acquire() as conn:
            first_lease = await conn.fetchval("SELECT min(leased_until) FROM event_deliveries")
        first.set()
        # Each answered delivery is marked at once, not when the slowest of its batch is.
        await eventually(
            lambda: marked(services, CONCURRENCY), what="the answered deliveries marked"
        )
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.ids) == count))
        # A second billing worker whose clock is past the first lease taken: the rows
        # still being sent were claimed (and leased) only when their send began.
        later = await deliver_pending(
            services.pool, settings, now=first_lease + timedelta(microseconds=1)
        )
        rest.set()
        await sending
    finally:
        first.set()
        rest.set()
    async with services.pool.acquire() as conn:
        ids = [f"evt_{r['id']}" for r in await conn.fetch("SELECT id FROM events")]
    assert collections.Counter(receiver.ids) == collections.Counter(ids)  # each POSTed once
    assert later.attempted == 0
    assert await delivered_rows(services) == count


async def test_a_deliverer_past_its_lease_leaves_the_row_to_the_one_that_took_it_over(
    services: Services, receiver: Receiver
) -> None:
    url = await receiver.start()
    hook = await webhooks.create(
        services.pool, url, allow_private=True, kinds=["subscription.changed"]
    )
    receiver.secret = hook.secret
    async with services.pool.acquire() as conn:
        await emit(conn, "subscription.changed", "a1", {})
    settings = with_overrides(services.settings, webhook_backoff=0.0)
    refuse, hold = asyncio.Event(), asyncio.Event()

    async def answer() -> None:
        # The first attempt refused when ``refuse`` is set; the second held until ``hold``.
        taken = len(receiver.ids)
        if taken == 1:
            await refuse.wait()
            raise web.HTTPServiceUnavailable()
        if taken == 2:
            await hold.wait()

    receiver.on_request = answer
    first = asyncio.create_task(deliver_pending(services.pool, settings))
    second: asyncio.Task[Any] | None = None
    try:
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.ids) == 1))
        async with services.pool.acquire() as conn:
            lease = await conn.fetchval("SELECT leased_until FROM event_deliveries")
        # Another deliverer, its clock past that lease, takes the delivery over.
        second = asyncio.create_task(
            deliver_pending(services.pool, settings, now=lease + timedelta(microseconds=1))
        )
        await eventually(lambda: asyncio.sleep(0, result=len(receiver.ids) == 2))
        refuse.set()
        refused = await first
        # Its 503 is not recorded (the row moved on), so not retried while the second
        # deliverer's attempt is under way.
        assert len(receiver.ids) == 2
        assert (refused.attempted, refused.retrying) == (1, 0)
        # So the second one's lease holds: a third deliverer (on that clock) sends nothing.
        third = await deliver_pending(
            services.pool, settings, now=lease + timedelta(microseconds=2)
        )
        hold.set()
        assert (await second).delivered == 1
    finally:
        refuse.set()
        hold.set()
        if second is not None:
            await asyncio.gather(second, return_exceptions=True)
    assert len(receiver.ids) == 2  # never a third send while the second was under way
    assert third.attempted == 0
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT state, attempts FROM event_deliveries")
    assert (row["state"], row["attempts"]) == ("delivered", 2)
