"""Dunning (issue 14, item 3; decision 0028): notices for an unpaid invoice after its due
date, then suspension (both stores: HTTP and RADIUS refuse calls with
account_suspended), reactivation once paid in full; on a fixed clock, real Redis and
PostgreSQL, a real RADIUS server and NAS emulator (conftest's ``rig``).

The sequence: March's rent of 10.00 EUR, invoiced on 1 April 2026, grace 10 days
(due 11 April), 2 notices 7 days apart: notice 1 on 12 April, notice 2 on 19 April,
suspension on 26 April (UTC midnights).
"""

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from ocs import metrics
from ocs.balances.accounts import AccountSpec
from ocs.billing import dunning, payments, posting
from ocs.billing.cycles import PlanBilling
from ocs.billing.document_data import load_facts
from ocs.billing.dunning_store import DunningSettings, OpenInvoice
from ocs.billing.gateway import GatewayEvent
from ocs.billing.store import Subscription, add_charge, set_plan_billing, subscribe
from ocs.billing.void import void
from ocs.call_cutting import call_cutter, nas_disconnect
from ocs.config import with_overrides
from ocs.services import Services
from tests.billing_helpers import EUR, monthly, post_on_time, run
from tests.conftest import CutRig, RunningApp, add_plan, eventually
from tests.helpers import ocs_cli, radius, return_code, send
from tests.nas_emulator import NAS_SECRET
from tests.radclient import radclient
from tests.radius_udp import sample

UK_MOBILE = "447700900123"
GERMANY = "4930901820"


def at(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An instant of 2026, UTC."""
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


async def dunned_plan(services: Services, *, grace_days: int = 10) -> None:
    """Billing on the rig's retail plan: monthly on day 1, grace ``grace_days``; rent 10.00."""
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1, grace_days=grace_days),
    )
    await monthly(services, "rent", 10 * EUR)


async def postpaid(services: Services, account_id: str) -> int:
    """A postpaid account (credit limit 100.00) renting from 1 March: its subscription."""
    await services.accounts.create(
        AccountSpec(account_id, plan_id="retail", credit_limit=100 * EUR)
    )
    sub = await subscribe(services.pool, Subscription(account_id, "retail", date(2026, 3, 1)))
    await add_charge(services.pool, sub, "rent")
    return sub


async def post_march(services: Services) -> None:
    """Invoice March on 1 April and post it that day (the rent moves: 10.00 owed)."""
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await post_on_time(services, run_id)


async def one_notice_three_days_apart(app: RunningApp, *accounts: str) -> None:
    """The retail plan with no grace, dunning with one notice and 3 days between steps,
    and ``accounts`` renting on it (postpaid)."""
    await add_plan(app.services)
    await dunned_plan(app.services, grace_days=0)
    for account_id in accounts:
        await postpaid(app.services, account_id)
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 1, "notice_interval_days": 3}
    )
    assert status == 200, body


async def dun(app: RunningApp, when: datetime) -> dict[str, Any]:
    """POST /v1/dunning/run on the clock ``when``: the report."""
    status, body = await app.post("/v1/dunning/run", {"at": when.isoformat()})
    assert status == 200, body
    return body


def taken(report: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(account, step, notice, outcome) of each step a run took."""
    return [(s["account"], s["step"], s["notice"], s["outcome"]) for s in report["steps"]]


# The events dunning emits (subscribing, posting and others emit their own).
DUNNING_KINDS = ["dunning.step", "subscription.suspended", "subscription.resumed"]


async def events(services: Services, kind: str | None = None) -> list[dict[str, Any]]:
    """The outbox's events dunning emits (or of ``kind``), in order: kind, subject, data."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind, subject, data FROM events WHERE kind = ANY($1::text[]) ORDER BY id",
            DUNNING_KINDS if kind is None else [kind],
        )
    return [{"kind": r["kind"], "subject": r["subject"], **json.loads(r["data"])} for r in rows]


async def status_of(services: Services, account_id: str) -> tuple[str, str]:
    """(PostgreSQL status, Redis status) of an account."""
    async with services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account_id)
    live = await services.store.get_account(account_id)
    assert live is not None
    return stored, live.status


async def subscription_status(services: Services, sub: int) -> str:
    """A subscription's status in PostgreSQL."""
    async with services.pool.acquire() as conn:
        return str(await conn.fetchval("SELECT status FROM subscriptions WHERE id = $1", sub))


async def pay_in_full(services: Services, account_id: str, when: datetime) -> None:
    """Mark the account's invoices paid as the payments side does (amount_paid, paid_at)."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoices SET amount_paid = total, paid_at = $2"
            " WHERE account_id = $1 AND state = 'posted'",
            account_id,
            when,
        )


async def access(rig: CutRig, account_id: str, session: str) -> tuple[str | None, str | None]:
    """A RADIUS Access-Request for a call of ``account_id``: (reply code, h323-return-code)."""
    reply = await radclient(
        "auth",
        rig.server.auth_port,
        NAS_SECRET,
        [
            ("NAS-IP-Address", "127.0.0.1"),
            ("User-Name", account_id),
            ("Acct-Session-Id", session),
            ("Called-Station-Id", GERMANY),
        ],
    )
    return reply.code, return_code(reply)


async def test_notices_on_their_days_then_suspension_then_payment_reactivates(
    rig: CutRig,
) -> None:
    app, services = rig.app, rig.app.services
    await dunned_plan(services)
    sub = await postpaid(services, "d1")
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 2, "notice_interval_days": 7}
    )
    assert status == 200, body
    assert body == {
        "plan": "retail",
        "enabled": True,
        "grace_days": 10,
        "max_notices": 2,
        "notice_interval_days": 7,
        "time_zone": "UTC",
    }
    await post_march(services)
    async with services.pool.acquire() as conn:
        invoice_id, number, total, due = await conn.fetchrow(
            "SELECT id, number, total, amount_due FROM invoices WHERE account_id = 'd1'"
        )
    assert (total, due) == (10 * EUR, 10 * EUR)  # postpaid: the rent is owed

    # Due on 11 April: nothing up to its last second, notice 1 at the next midnight.
    assert taken(await dun(app, at(4, 11, 23, 59, 59))) == []
    assert taken(await dun(app, at(4, 12))) == [("d1", "notice", 1, "sent")]
    [notice] = await events(services, "dunning.step")
    assert notice == {
        "kind": "dunning.step",
        "subject": "d1",
        "account_id": "d1",
        "step": "notice",
        "notice": 1,
        "of": 2,
        "at": "2026-04-12T00:00:00+00:00",
        "invoice_id": invoice_id,
        "invoice_number": number,
        "currency": "EUR",
        "amount_asked": 10 * EUR,
        "amount_paid": 0,
        "amount_outstanding": 10 * EUR,
        "due_date": "2026-04-11",
        "next_step": "notice",
        "next_step_at": "2026-04-19T00:00:00+00:00",
    }
    # The same clock again, and a later one before the interval: nothing.
    assert taken(await dun(app, at(4, 12))) == []
    assert taken(await dun(app, at(4, 18, 23, 59, 59))) == []
    assert taken(await dun(app, at(4, 19))) == [("d1", "notice", 2, "sent")]
    assert taken(await dun(app, at(4, 25, 23, 59, 59))) == []
    assert await status_of(services, "d1") == ("active", "active")

    # A call live before the suspension: dunning_live_calls is "finish" by default.
    status, grant = await app.post(
        "/v1/calls", {"account": "d1", "destination": UK_MOBILE, "call_id": "live-1"}
    )
    assert status == 201, grant
    report = await dun(app, at(4, 26))
    assert taken(report) == [("d1", "suspension", 0, "suspended")]
    assert (report["suspended"], report["calls_cut"], report["calls_left"]) == (["d1"], [], [])
    assert await status_of(services, "d1") == ("suspended", "suspended")
    assert await subscription_status(services, sub) == "suspended"
    assert list(await services.store.live_calls_of("d1")) == ["live-1"]  # left to finish
    assert [(e["kind"], e.get("step"), e.get("subscription_id")) for e in await events(services)][
        2:
    ] == [("dunning.step", "suspension", None), ("subscription.suspended", None, sub)]
    again = await dun(app, at(4, 26))
    assert (taken(again), again["suspended"], again["reactivated"]) == ([], [], [])
    assert len(await events(services)) == 4

    # New calls are refused at once: over HTTP and over RADIUS (h323-return-code 7).
    status, refused = await app.post("/v1/calls", {"account": "d1", "destination": UK_MOBILE})
    assert (status, refused["error"]["reason"]) == (403, "account_suspended")
    assert await access(rig, "d1", "S-1") == ("Access-Reject", "h323-return-code=7")

    status, state = await app.get("/v1/accounts/d1/dunning?at=2026-04-27T00:00:00Z")
    assert status == 200, state
    assert (state["status"], state["suspended"], state["suspended_by_dunning"]) == (
        "suspended",
        True,
        True,
    )
    assert state["suspended_at"] == "2026-04-26T00:00:00Z"
    assert [
        (s["step"], s["notice"], s["taken_at"], s["outcome"], s["invoice_id"])
        for s in state["steps"]
    ] == [
        ("notice", 1, "2026-04-12T00:00:00Z", "sent", invoice_id),
        ("notice", 2, "2026-04-19T00:00:00Z", "sent", invoice_id),
        ("suspension", 0, "2026-04-26T00:00:00Z", "suspended", invoice_id),
    ]
    [owed] = state["invoices"]
    assert (owed["number"], owed["due_date"], owed["overdue"], owed["outstanding"]) == (
        number,
        "2026-04-11",
        True,
        "10.000000",
    )
    assert (owed["notices_sent"], owed["next_step"], state["next_step"]) == (2, None, None)

    # Paid in full: the payments side calls reactivate_paid, once is enough.
    await pay_in_full(services, "d1", at(4, 28))
    assert await dunning.reactivate_paid(services.pool, services.store, ["d1"], at(4, 28)) == ["d1"]
    assert await dunning.reactivate_paid(services.pool, services.store, ["d1"], at(4, 28)) == []
    assert await status_of(services, "d1") == ("active", "active")
    assert await subscription_status(services, sub) == "active"
    assert [(e["kind"], e.get("step"), e.get("by")) for e in await events(services)][4:] == [
        ("dunning.step", "reactivation", "payment"),
        ("subscription.resumed", None, None),
    ]
    status, stopped = await app.post("/v1/calls/live-1/stop", {"duration": 30})
    assert status == 200, stopped
    status, grant = await app.post(
        "/v1/calls", {"account": "d1", "destination": UK_MOBILE, "call_id": "after"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/after/stop", {"duration": 30})
    assert status == 200, stopped  # the plan allows one line: free it for RADIUS
    assert await access(rig, "d1", "S-2") == ("Access-Accept", "h323-return-code=0")
    # Nothing owed: no more steps, whatever the clock.
    assert taken(await dun(app, at(6, 1))) == []
    status, state = await app.get("/v1/accounts/d1/dunning?at=2026-06-01T00:00:00Z")
    assert (state["suspended"], state["invoices"], len(state["steps"])) == (False, [], 3)


async def test_disconnect_setting_cuts_the_live_radius_calls_at_suspension(rig: CutRig) -> None:
    app, services = rig.app, rig.app.services
    services.settings = with_overrides(services.settings, dunning_live_calls="disconnect")
    await dunned_plan(services, grace_days=0)
    await postpaid(services, "d2")
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 0, "notice_interval_days": 1}
    )
    assert status == 200, body
    await post_march(services)
    session = [("User-Name", "d2"), ("Acct-Session-Id", "SESS-D2")]
    assert (
        await radius(
            rig,
            "auth",
            [("NAS-IP-Address", "127.0.0.1"), *session, ("Called-Station-Id", GERMANY)],
        )
        == "Access-Accept"
    )
    assert await radius(rig, "acct", [("Acct-Status-Type", "Start"), *session]) == (
        "Accounting-Response"
    )

    # No notices: suspended the day after the invoice date (grace 0), its call cut.
    assert taken(await dun(app, at(4, 1, 23, 59))) == []
    report = await dun(app, at(4, 2))
    assert taken(report) == [("d2", "suspension", 0, "suspended")]
    # A NAS's own session id names the call with its client and NAS (decision 0048).
    assert (report["calls_cut"], report["calls_left"]) == (["SESS-D2@cut-nas:127.0.0.1"], [])
    assert await services.store.live_calls_of("d2") == {}
    assert len(rig.nas.received) == 1
    assert rig.nas.received[0][0] == 40  # a Disconnect-Request
    assert rig.nas.decoded(0)["Acct-Session-Id"] == ["SESS-D2"]

    async def cut_cdr() -> bool:
        async with services.pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT termination_cause FROM cdrs WHERE call_id = 'SESS-D2@cut-nas:127.0.0.1'"
            )
        return bool(found == "cut")

    await eventually(cut_cdr, what="the cut call's CDR")


async def test_only_dunnings_own_suspension_is_lifted_and_a_run_lifts_a_settled_one(
    app: RunningApp,
) -> None:
    services = app.services
    await one_notice_three_days_apart(app, "op", "settled")
    await post_march(services)
    status, body = await send(app, "PATCH", "/v1/accounts/op", {"status": "suspended"})
    assert status == 200, body

    assert sorted(taken(await dun(app, at(4, 2)))) == [
        ("op", "notice", 1, "sent"),
        ("settled", "notice", 1, "sent"),
    ]
    report = await dun(app, at(4, 5))
    assert sorted(taken(report)) == [
        ("op", "suspension", 0, "already_suspended"),
        ("settled", "suspension", 0, "suspended"),
    ]
    assert report["suspended"] == ["settled"]
    # Paid, both: the operator's suspension stays; dunning's is lifted by the next run.
    await pay_in_full(services, "op", at(4, 6))
    await pay_in_full(services, "settled", at(4, 6))
    assert await dunning.reactivate_paid(services.pool, services.store, ["op"], at(4, 6)) == []
    report = await dun(app, at(4, 6))
    assert (taken(report), report["reactivated"]) == ([], ["settled"])
    assert await status_of(services, "op") == ("suspended", "suspended")
    assert await status_of(services, "settled") == ("active", "active")
    status, state = await app.get("/v1/accounts/op/dunning?at=2026-04-06T00:00:00Z")
    assert (state["suspended"], state["suspended_by_dunning"]) == (True, False)


async def test_an_invoice_a_chargeback_reopens_after_its_suspension_is_dunned_again(
    app: RunningApp,
) -> None:
    # March's invoice: a notice, then the suspension; the gateway's payment paid it and
    # the account came back; then the payment was charged back (refunded in full) and
    # the invoice reopened. Its suspension step had been taken, so no run took another:
    # the account kept its service and was never dunned again.
    services = app.services
    await one_notice_three_days_apart(app, "cb")
    await post_march(services)
    assert taken(await dun(app, at(4, 2))) == [("cb", "notice", 1, "sent")]
    assert taken(await dun(app, at(4, 5))) == [("cb", "suspension", 0, "suspended")]

    def gateway(event_id: str, action: str) -> GatewayEvent:
        kind = "payment_intent.succeeded" if action == "payment" else "charge.refunded"
        return GatewayEvent(event_id, kind, action, 1775000000, "pi_cb", 10 * EUR, "EUR", "cb")

    await payments.apply_gateway_event(services.pool, services.store, gateway("e1", "payment"))
    assert await status_of(services, "cb") == ("active", "active")
    await payments.apply_gateway_event(services.pool, services.store, gateway("e2", "refund"))

    # Dunned again from its first notice: a notice at the next run, the suspension an
    # interval later.
    assert taken(await dun(app, at(4, 6))) == [("cb", "notice", 1, "sent")]
    assert taken(await dun(app, at(4, 8))) == []
    report = await dun(app, at(4, 9))
    assert (taken(report), report["suspended"]) == ([("cb", "suspension", 0, "suspended")], ["cb"])
    assert await status_of(services, "cb") == ("suspended", "suspended")


async def test_partly_paid_stays_suspended_and_an_unpaid_plan_without_dunning_is_left_alone(
    app: RunningApp,
) -> None:
    services = app.services
    await add_plan(services)
    await dunned_plan(services, grace_days=0)
    await postpaid(services, "part")
    await post_march(services)
    # No dunning settings yet: the plan does no dunning, however overdue.
    assert taken(await dun(app, at(5, 1))) == []
    status, state = await app.get("/v1/accounts/part/dunning?at=2026-05-01T00:00:00Z")
    assert status == 200, state
    assert [(i["overdue"], i["next_step"]) for i in state["invoices"]] == [(True, None)]

    await app.put("/v1/plans/retail/dunning", {"max_notices": 0, "notice_interval_days": 1})
    # Late: the suspension is due since 2 April, taken at the run.
    assert taken(await dun(app, at(5, 1))) == [("part", "suspension", 0, "suspended")]
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE invoices SET amount_paid = 9999999 WHERE account_id = 'part'")
    assert await dunning.reactivate_paid(services.pool, services.store, ["part"], at(5, 2)) == []
    report = await dun(app, at(5, 2))
    assert (taken(report), report["reactivated"]) == ([], [])
    status, state = await app.get("/v1/accounts/part/dunning?at=2026-05-02T00:00:00Z")
    assert [i["outstanding"] for i in state["invoices"]] == ["0.000001"]
    assert await status_of(services, "part") == ("suspended", "suspended")


def open_invoice(notices: tuple[datetime, ...] = (), *, tz: str = "UTC") -> OpenInvoice:
    """An unpaid invoice of 1 April, grace 10, 2 notices 7 days apart."""
    return OpenInvoice(
        id=1,
        number="INV-1",
        account_id="a",
        currency="EUR",
        invoice_date=date(2026, 4, 1),
        asked=10 * EUR,
        paid=0,
        settings=DunningSettings("retail", 10, 2, 7, tz),
        notices=notices,
        suspended=False,
    )


def test_a_late_run_keeps_the_interval_and_the_plans_zone_sets_the_midnights() -> None:
    first = dunning.next_step(open_invoice())
    assert first == dunning.Step("notice", 1, at(4, 12))
    # Notice 1 went out 8 days late (30 April, 15:00): notice 2 waits a whole interval.
    late = dunning.next_step(open_invoice((at(4, 30, 15),)))
    assert late == dunning.Step("notice", 2, at(5, 7))
    suspension = dunning.next_step(open_invoice((at(4, 12), at(4, 19, 6))))
    assert suspension == dunning.Step("suspension", 0, at(4, 26))
    # Berlin (UTC+2 in April): overdue from local midnight, 22:00 UTC the day before.
    berlin = dunning.next_step(open_invoice(tz="Europe/Berlin"))
    assert berlin is not None and berlin.due_at == at(4, 11, 22)


async def test_a_late_posted_invoice_gets_its_whole_grace_from_the_day_it_was_posted(
    app: RunningApp,
) -> None:
    """March's invoice is dated 1 April (grace 10 days) but the worker was down: it is
    posted on 20 April, 22:00 in New York where the plan bills (02:00 UTC on the 21st).
    Before, dunning counted from the date alone: notice 1 went out with the invoice."""
    services = app.services
    await add_plan(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(
            "retail", "fixed_date", date(2026, 1, 1), time_zone="America/New_York",
            cycle_day=1, grace_days=10,
        ),
    )  # fmt: skip
    await monthly(services, "rent", 10 * EUR)
    await postpaid(services, "late")
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 1, "notice_interval_days": 3}
    )
    assert status == 200, body
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=run_id)
    async with services.pool.acquire() as conn:
        invoice_id = await conn.fetchval(
            "UPDATE invoices SET posted_at = $1 WHERE account_id = 'late' RETURNING id",
            at(4, 21, 2),
        )

    # Posted: nothing is overdue yet, though 1 April + 10 days is long past.
    assert taken(await dun(app, at(4, 21, 2))) == []
    # Due 30 April (the day it was posted, New York's 20 April, + 10): overdue at New
    # York's next midnight, 04:00 UTC on 1 May; not from the UTC day (21 April).
    assert taken(await dun(app, at(5, 1, 3, 59, 59))) == []
    status, state = await app.get("/v1/accounts/late/dunning?at=2026-05-01T03:59:59Z")
    assert status == 200, state
    [shown] = state["invoices"]
    assert (shown["invoice_date"], shown["due_date"], shown["overdue"]) == (
        "2026-04-01",
        "2026-04-30",
        False,
    )
    assert taken(await dun(app, at(5, 1, 4))) == [("late", "notice", 1, "sent")]
    [notice] = await events(services, "dunning.step")
    assert (notice["due_date"], notice["next_step_at"]) == (
        "2026-04-30",
        "2026-05-04T00:00:00-04:00",
    )
    # The invoice's document asks for payment by that same day.
    async with services.pool.acquire() as conn:
        assert (await load_facts(conn, invoice_id)).due_date == date(2026, 4, 30)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"max_notices": 53, "notice_interval_days": 7}, "max_notices"),
        ({"max_notices": 2, "notice_interval_days": 0}, "notice_interval_days"),
        ({"max_notices": 2, "notice_interval_days": 7, "grace_days": -1}, "grace_days"),
        ({"max_notices": 2}, "notice_interval_days"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field(
    app: RunningApp, payload: dict[str, Any], field: str
) -> None:
    await add_plan(app.services)
    await dunned_plan(app.services)
    status, body = await app.put("/v1/plans/retail/dunning", payload)
    assert status == 400, body
    assert body["error"]["reason"] == "invalid_field"
    assert field in json.dumps(body["error"])


async def test_settings_state_and_run_endpoints_refuse_what_they_cannot_use(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 2, "notice_interval_days": 7}
    )
    assert (status, body["error"]["reason"]) == (404, "not_found")  # no billing settings
    await dunned_plan(app.services)
    status, body = await app.put(
        "/v1/plans/retail/dunning",
        {"max_notices": 3, "notice_interval_days": 5, "grace_days": 14},
    )
    assert (status, body["grace_days"], body["max_notices"]) == (200, 14, 3)
    status, body = await send(app, "DELETE", "/v1/plans/retail/dunning")
    assert (status, body["enabled"], body["max_notices"], body["grace_days"]) == (
        200,
        False,
        None,
        14,
    )
    status, body = await app.get("/v1/accounts/nobody/dunning")
    assert (status, body["error"]["reason"]) == (404, "account_not_found")
    status, body = await app.post("/v1/dunning/run", {"at": "2026-04-12T00:00:00"})
    assert (status, body["error"]["reason"]) == (400, "invalid_field")
    assert "at" in body["error"]["message"]
    status, body = await app.post("/v1/dunning/run", {})
    assert status == 200, body


async def test_a_run_over_the_api_that_fails_leaves_no_backlog_behind(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/dunning/run in a serving process fails half-way (PostgreSQL lost): the
    caller gets the error, and the process's ocs_dunning_backlog stays 0. Nothing would
    ever run dunning in that process again to clear it, and OcsDunningBacklog would
    fire for good; the backlog gauge is the billing worker's, whose next run clears it."""
    await one_notice_three_days_apart(app, "d9")
    await post_march(app.services)
    metrics.DUNNING_BACKLOG.set(0)

    async def lost(*_: Any, **__: Any) -> None:
        raise ConnectionResetError("connection was closed in the middle of operation")

    monkeypatch.setattr(dunning, "_take_notice", lost)
    status, body = await app.post("/v1/dunning/run", {"at": at(4, 3).isoformat()})
    assert status == 503, body
    assert sample("ocs_dunning_backlog") == 0
    monkeypatch.undo()
    # The notice is still due, and taken by the next run.
    assert taken(await dun(app, at(4, 3))) == [("d9", "notice", 1, "sent")]


async def test_cli_sets_runs_and_shows(app: RunningApp, tmp_path: Any) -> None:
    services = app.services
    await add_plan(services)
    await dunned_plan(services, grace_days=0)
    await postpaid(services, "c1")
    await post_march(services)
    code, out, err = await ocs_cli(
        services.settings,
        tmp_path,
        "dunning",
        "settings",
        "retail",
        "--max-notices",
        "1",
        "--interval-days",
        "2",
    )
    assert code == 0, err
    assert json.loads(out)["notice_interval_days"] == 2
    code, out, err = await ocs_cli(
        services.settings, tmp_path, "dunning", "run", "--at", "2026-04-02T00:00:00Z"
    )
    assert code == 0, err
    assert [(s["account"], s["step"], s["notice"]) for s in json.loads(out)["steps"]] == [
        ("c1", "notice", 1)
    ]
    code, out, err = await ocs_cli(
        services.settings, tmp_path, "dunning", "show", "c1", "--at", "2026-04-03T00:00:00Z"
    )
    assert code == 0, err
    state = json.loads(out)
    assert state["next_step"] == {
        "step": "suspension",
        "notice": 0,
        "due_at": "2026-04-04T00:00:00Z",
    }
    assert [s["taken_at"] for s in state["steps"]] == ["2026-04-02T00:00:00Z"]
    code, out, err = await ocs_cli(
        services.settings, tmp_path, "dunning", "run", "--at", "2026-04-02"
    )
    assert code != 0 and "--at" in err
    code, out, err = await ocs_cli(
        services.settings, tmp_path, "dunning", "settings", "retail", "--max-notices", "1"
    )
    assert code != 0 and "--interval-days" in err


async def test_a_process_without_radius_cuts_the_calls_at_their_nas_itself(rig: CutRig) -> None:
    """`ocs billing-worker` runs no RADIUS server: its cutter finds the NAS in the client
    table and sends the Disconnect-Request itself (``call_cutting.nas_disconnect``)."""
    app, services = rig.app, rig.app.services
    await dunned_plan(services, grace_days=0)
    await postpaid(services, "d3")
    status, body = await app.put(
        "/v1/plans/retail/dunning", {"max_notices": 0, "notice_interval_days": 1}
    )
    assert status == 200, body
    await post_march(services)
    session = [("User-Name", "d3"), ("Acct-Session-Id", "SESS-D3")]
    auth_pairs = [("NAS-IP-Address", "127.0.0.1"), *session, ("Called-Station-Id", GERMANY)]
    assert await radius(rig, "auth", auth_pairs) == "Access-Accept"
    assert await radius(rig, "acct", [("Acct-Status-Type", "Start"), *session]) == (
        "Accounting-Response"
    )
    settings = with_overrides(services.settings, dunning_live_calls="disconnect")
    cutter = call_cutter(services, nas_disconnect(services))
    report = await dunning.run_dunning(
        services.pool, services.store, settings, at(4, 2), cutter=cutter
    )
    assert (report.suspended, report.calls_cut, report.calls_left) == (
        ["d3"],
        ["SESS-D3@cut-nas:127.0.0.1"],
        [],
    )
    assert await services.store.live_calls_of("d3") == {}
    assert [(kind, rig.nas.decoded(0)["Acct-Session-Id"]) for kind, *_ in rig.nas.received] == [
        (40, ["SESS-D3"])  # one Disconnect-Request, for the call the NAS knows
    ]


async def test_without_a_call_cutter_disconnect_leaves_the_live_calls_listed(
    app: RunningApp,
) -> None:
    """A run where no call can be cut (the CLI, a worker without RADIUS) suspends all the
    same, and names the live calls it had to leave to finish."""
    services = app.services
    await add_plan(services)
    await dunned_plan(services, grace_days=0)
    await postpaid(services, "w1")
    await app.put("/v1/plans/retail/dunning", {"max_notices": 0, "notice_interval_days": 1})
    await post_march(services)
    status, grant = await app.post(
        "/v1/calls", {"account": "w1", "destination": UK_MOBILE, "call_id": "w-live"}
    )
    assert status == 201, grant
    settings = with_overrides(services.settings, dunning_live_calls="disconnect")
    report = await dunning.run_dunning(services.pool, services.store, settings, at(4, 2))
    assert (report.suspended, report.calls_cut, report.calls_left) == (["w1"], [], ["w-live"])
    assert list(await services.store.live_calls_of("w1")) == ["w-live"]
    assert await status_of(services, "w1") == ("suspended", "suspended")


async def test_a_run_on_a_clock_in_the_future_is_refused_and_takes_no_step(
    app: RunningApp, tmp_path: Any
) -> None:
    """A run takes its steps now: one on a clock days ahead would suspend today an
    account not yet overdue, and record notices dated in the future. Refused (400 naming
    ``at``, over the API and the CLI); reading a state at a later instant stays allowed."""
    services = app.services
    await one_notice_three_days_apart(app, "early")
    await post_march(services)  # overdue since 2 April: notice 1 due, the suspension after
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)

    status, body = await app.post("/v1/dunning/run", {"at": ahead.isoformat()})
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        400,
        "invalid_field",
        "at",
    )
    code, _out, err = await ocs_cli(
        services.settings, tmp_path, "dunning", "run", "--at", ahead.isoformat()
    )
    assert code != 0 and "--at" in err and "future" in err
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dunning_steps") == 0
    assert await status_of(services, "early") == ("active", "active")
    # The state at that instant may be read.
    status, state = await app.get(f"/v1/accounts/early/dunning?at={ahead:%Y-%m-%dT%H:%M:%SZ}")
    assert status == 200, state
    assert state["next_step"]["step"] == "notice"
    # A clock a few seconds ahead of the server's (the caller's skew) runs as now does.
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert taken(await dun(app, soon)) == [("early", "notice", 1, "sent")]


async def test_paying_lifts_dunnings_suspension_but_not_an_operators_lock(
    app: RunningApp,
) -> None:
    """An account an operator locked (fraud, say) is suspended by dunning all the same;
    paying the invoice undoes only what dunning did: the account is locked again, its
    calls still refused, not made active."""
    services = app.services
    await one_notice_three_days_apart(app, "fraud", "plain")
    await post_march(services)
    status, body = await send(app, "PATCH", "/v1/accounts/fraud", {"status": "locked"})
    assert status == 200, body
    assert taken(await dun(app, at(4, 2))) == [
        ("fraud", "notice", 1, "sent"),
        ("plain", "notice", 1, "sent"),
    ]
    report = await dun(app, at(4, 5))
    assert sorted(report["suspended"]) == ["fraud", "plain"]
    assert await status_of(services, "fraud") == ("suspended", "suspended")

    for account_id in ("fraud", "plain"):
        await pay_in_full(services, account_id, at(4, 6))
    assert await dunning.reactivate_paid(
        services.pool, services.store, ["fraud", "plain"], at(4, 6)
    ) == ["fraud", "plain"]
    assert await status_of(services, "fraud") == ("locked", "locked")
    assert await status_of(services, "plain") == ("active", "active")
    status, refused = await app.post("/v1/calls", {"account": "fraud", "destination": UK_MOBILE})
    assert (status, refused["error"]["reason"]) == (403, "account_locked")
    reactivations = [
        (e["subject"], e["status"])
        for e in await events(services, "dunning.step")
        if e["step"] == "reactivation"
    ]
    assert reactivations == [("fraud", "locked"), ("plain", "active")]


async def test_voiding_the_unpaid_overdue_invoices_lifts_dunnings_suspension_at_once(
    app: RunningApp,
) -> None:
    """March and April (10.00 each) unpaid; dunning suspends the account for March. The
    operator voids March: April is still overdue, the account stays suspended. Voiding
    April too leaves nothing owed: the account is active again in PostgreSQL and Redis
    at once, not at the next dunning run (a void that freed no payment reactivated
    nothing), and the reactivation says a void made it (it said "payment")."""
    services = app.services
    await one_notice_three_days_apart(app, "vd")
    await post_march(services)
    assert taken(await dun(app, at(4, 2))) == [("vd", "notice", 1, "sent")]
    assert taken(await dun(app, at(4, 5))) == [("vd", "suspension", 0, "suspended")]
    await post_on_time(services, await run(services, "2026-04", invoice_date=date(2026, 5, 1)))
    assert taken(await dun(app, at(5, 2))) == [("vd", "notice", 1, "sent")]
    async with services.pool.acquire() as conn:
        ids = {
            r["period_label"]: r["id"]
            for r in await conn.fetch(
                "SELECT id, period_label FROM invoices WHERE account_id = 'vd' AND kind = 'invoice'"
            )
        }

    await void(services.pool, services.store, ids["2026-03"])
    assert await status_of(services, "vd") == ("suspended", "suspended")
    await void(services.pool, services.store, ids["2026-04"])
    assert await status_of(services, "vd") == ("active", "active")
    # Recorded as the void's doing, not a payment's: there is no payment to find.
    reactivations = [
        (e["subject"], e["by"])
        for e in await events(services, "dunning.step")
        if e["step"] == "reactivation"
    ]
    assert reactivations == [("vd", "void")]
    async with services.pool.acquire() as conn:
        closed = await conn.fetch(
            "SELECT reactivated_by FROM dunning_suspensions WHERE account_id = 'vd'"
        )
    assert [r["reactivated_by"] for r in closed] == ["void"]
