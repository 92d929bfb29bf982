"""Billing in the admin API: runs, invoices, charges, subscriptions, with roles.

Viewers read; billing staff are operators: they create runs, post and void. A
request on an invoice in the wrong state is 409 invoice_state. Amounts by hand.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from ocs import api_tokens
from tests.conftest import RunningApp, add_plan, bearer
from tests.helpers import ocs_cli

# A monthly line rent of 12.50, as POST /v1/charges takes it.
RENT = {
    "id": "rent",
    "name": "Line rent",
    "product_code": "LINE",
    "currency": "EUR",
    "amount": "12.50",
    "kind": "recurring",
    "cadence": "monthly",
}


async def _as(app: RunningApp, token: str, method: str, path: str, body: Any = None) -> Any:
    """(status, JSON) of a request sent with ``token``."""
    kwargs: dict[str, Any] = {"headers": bearer(token)}
    if body is not None:
        kwargs["json"] = body
    status, answer, _ = await app.anonymous(method, path, **kwargs)
    return status, answer


async def test_operators_run_and_post_viewers_only_read(app: RunningApp) -> None:
    pool = app.services.pool
    viewer = await api_tokens.create(pool, "clerk", "viewer")
    operator = await api_tokens.create(pool, "biller", "operator")
    await add_plan(app.services)
    status, body = await _as(
        app,
        operator,
        "PUT",
        "/v1/plans/retail/billing",
        {"cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01"},
    )
    assert (status, body["cycle"]) == (200, "fixed_date"), body
    status, body = await _as(
        app,
        operator,
        "POST",
        "/v1/charges",
        RENT,
    )
    assert (status, body["amount"]) == (201, "12.500000"), body
    for account in ("a1", "a2"):
        status, body = await app.post(
            "/v1/accounts", {"id": account, "plan": "retail", "balance": "30"}
        )
        assert status == 201, body
        status, body = await _as(
            app,
            operator,
            "POST",
            "/v1/subscriptions",
            {"account": account, "plan": "retail", "start_date": "2026-01-01", "charges": ["rent"]},
        )
        assert (status, body["charges"][0]["charge_id"]) == (201, "rent"), body

    # A viewer may not create a run; an operator may.
    run = {"period": "2026-03", "invoice_date": "2026-04-01", "execute": True}
    assert (await _as(app, viewer, "POST", "/v1/invoice-runs", run))[0] == 403
    status, created = await _as(app, operator, "POST", "/v1/invoice-runs", run)
    assert status == 201, created
    status, progress = await _as(app, viewer, "GET", f"/v1/invoice-runs/{created['id']}")
    assert status == 200
    assert (progress["state"], progress["accounts_done"], progress["accounts_total"]) == (
        "done",
        2,
        2,
    )

    status, listed = await _as(app, viewer, "GET", "/v1/invoices?state=draft&period=2026-03")
    assert status == 200
    # March's fee, whole (subscribed from January): 12.50 each.
    assert [(i["account"], i["total"]) for i in listed["invoices"]] == [
        ("a1", "12.500000"),
        ("a2", "12.500000"),
    ]

    post = f"/v1/invoice-runs/{created['id']}/post"
    assert (await _as(app, viewer, "POST", post))[0] == 403
    status, posted = await _as(app, operator, "POST", post)
    assert status == 200, posted
    assert [p["number"] for p in posted["posted"]] == ["INV-2026-000001", "INV-2026-000002"]
    assert posted["lines_moved"] == 2
    first = listed["invoices"][0]["id"]
    status, shown = await _as(app, viewer, "GET", f"/v1/invoices/{first}")
    assert (status, shown["state"], shown["number"]) == (200, "posted", "INV-2026-000001")
    assert [(li["kind"], li["amount"], li["moved"]) for li in shown["lines"]] == [
        ("recurring", "12.500000", True)
    ]
    status, account = await app.get("/v1/accounts/a1")
    assert account["balance"] == "17.500000"  # 30.00 - 12.50

    # Void: viewers may not; operators get a credit note; a second void is 409.
    assert (await _as(app, viewer, "POST", f"/v1/invoices/{first}/void"))[0] == 403
    status, voided = await _as(app, operator, "POST", f"/v1/invoices/{first}/void")
    assert (status, voided["number"], voided["total"]) == (201, "CN-2026-000001", "-12.500000")
    status, refused = await _as(app, operator, "POST", f"/v1/invoices/{first}/void")
    assert (status, refused["error"]["reason"]) == (409, "invoice_state")
    status, refused = await _as(app, operator, "POST", f"/v1/invoices/{first}/post")
    assert (status, refused["error"]["reason"]) == (409, "invoice_state")
    status, account = await app.get("/v1/accounts/a1")
    assert account["balance"] == "30.000000"

    status, calls = await _as(app, viewer, "GET", f"/v1/invoices/{first}/calls")
    assert (status, calls) == (200, {"calls": [], "next": None})
    status, preview = await _as(
        app, viewer, "GET", "/v1/accounts/a2/invoice-preview?at=2026-05-10T00:00:00Z"
    )
    assert (status, preview["period"], preview["total"]) == (200, "2026-05", "12.500000")
    status, subs = await _as(app, viewer, "GET", "/v1/subscriptions?account=a2")
    assert (status, [s["account"] for s in subs["subscriptions"]]) == (200, ["a2"])
    assert (await _as(app, viewer, "GET", "/v1/invoices/999999"))[0] == 404
    assert (await _as(app, viewer, "GET", "/v1/invoice-runs/0"))[0] == 400


async def test_the_itemised_call_list_by_caller_in_json_and_csv(app: RunningApp) -> None:
    # Two calls this month, from two caller ids: UK mobile 45 s (0.15 connect + 0.06/min
    # on 30/6 = 0.198) and UK fixed 60 s (0.01/min on 60/60 = 0.01).
    from datetime import UTC, datetime

    from tests.conftest import eventually

    await add_plan(app.services)
    status, body = await app.put(
        "/v1/plans/retail/billing",
        {"cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01"},
    )
    assert status == 200, body
    status, body = await app.post(
        "/v1/accounts", {"id": "it1", "plan": "retail", "balance": "5.00"}
    )
    assert status == 201, body
    for call_id, destination, caller, seconds in (
        ("it-1", "447700900123", "1001", 45),
        ("it-2", "442079460000", "2002", 60),
    ):
        status, body = await app.post(
            "/v1/calls",
            {"account": "it1", "destination": destination, "caller": caller, "call_id": call_id},
        )
        assert status == 201, body
        status, body = await app.post(f"/v1/calls/{call_id}/stop", {"duration": seconds})
        assert status == 200, body

    async def both_cdrs() -> bool:
        async with app.services.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM cdrs WHERE account_id = 'it1'") == 2

    await eventually(both_cdrs, what="the two CDRs in PostgreSQL")

    async def stream_empty() -> bool:
        return await app.services.store.oldest_unwritten_ms() is None

    # Drafting waits while the ledger writer holds an entry from before the window's end.
    await eventually(stream_empty, what="the ledger writer to delete what it wrote")
    now = datetime.now(UTC)
    status, run = await app.post(
        "/v1/invoice-runs",
        {"period": f"{now:%Y-%m}", "usage_cutoff": now.isoformat(), "execute": True,
         "early": True},
    )  # fmt: skip
    assert status == 201, run
    status, listed = await app.get("/v1/invoices?account=it1")
    assert status == 200 and len(listed["invoices"]) == 1, listed
    invoice = listed["invoices"][0]["id"]

    status, every = await app.get(f"/v1/invoices/{invoice}/calls")
    assert status == 200, every
    assert [(c["caller"], c["zone"], c["duration"], c["amount"]) for c in every["calls"]] == [
        ("1001", "UK Mobile", 45, "0.198000"),
        ("2002", "UK Fixed", 60, "0.010000"),
    ]
    status, one = await app.get(f"/v1/invoices/{invoice}/calls?member=2002")
    assert [c["destination"] for c in one["calls"]] == ["442079460000"], one
    response = await app.client.get(f"/v1/invoices/{invoice}/calls?format=csv&member=1001")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = (await response.text()).strip().splitlines()
    assert len(rows) == 2 and "UK Mobile" in rows[1] and "0.198000" in rows[1], rows

    # Invoiced now: the cycle is fixed (moved, every past period would be drafted again),
    # while what does not move the periods still changes.
    base = {"cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01"}
    for change in ({"cycle_day": 15}, {"time_zone": "America/St_Johns"},
                   {"effective_date": "2026-02-01"}):  # fmt: skip
        status, refused = await app.put("/v1/plans/retail/billing", {**base, **change})
        assert (status, refused["error"]["field"]) == (400, "cycle"), (change, refused)
    status, body = await app.put("/v1/plans/retail/billing", {**base, "grace_days": 14})
    assert (status, body["grace_days"]) == (200, 14), body


async def test_a_run_is_dated_today_where_its_plan_bills(app: RunningApp) -> None:
    await add_plan(app.services)
    zone = ZoneInfo("Pacific/Kiritimati")  # UTC+14: most of the day, tomorrow in UTC
    status, body = await app.put(
        "/v1/plans/retail/billing",
        {"cycle": "fixed_date", "cycle_day": 1, "effective_date": "2026-01-01",
         "time_zone": "Pacific/Kiritimati"},
    )  # fmt: skip
    assert status == 200, body
    before = datetime.now(zone).date()
    status, made = await app.post("/v1/invoice-runs", {"period": "2026-01"})
    assert status == 201, made
    assert made["invoice_date"] in {before.isoformat(), datetime.now(zone).date().isoformat()}


# An account's subscriptions stored straight into PostgreSQL: a thousand POSTs say the same,
# far slower.
MANY_SUBSCRIPTIONS_SQL = """
INSERT INTO subscriptions (account_id, plan_id, start_date, status)
SELECT $1, 'retail', date '2026-01-01', 'active' FROM generate_series(1, $2)
"""


async def test_an_accounts_1001st_subscription_is_created_found_and_listed_a_page_at_a_time(
    app: RunningApp, tmp_path: Path
) -> None:
    await add_plan(app.services)
    for account in ("a1", "a2"):
        status, body = await app.post("/v1/accounts", {"id": account, "plan": "retail"})
        assert status == 201, body
    status, body = await app.post(
        "/v1/charges",
        RENT,
    )
    assert status == 201, body
    async with app.services.pool.acquire() as conn:
        await conn.execute(MANY_SUBSCRIPTIONS_SQL, "a1", 600)
        await conn.execute(MANY_SUBSCRIPTIONS_SQL, "a2", 1)  # another account's, between
        await conn.execute(MANY_SUBSCRIPTIONS_SQL, "a1", 400)

    # The 1,001st: created once (a 404 here had the client retry, subscribing it twice).
    status, created = await app.post(
        "/v1/subscriptions",
        {"account": "a1", "plan": "retail", "start_date": "2026-02-01", "charges": ["rent"]},
    )
    assert status == 201, created
    assert (created["start_date"], created["charges"][0]["charge_id"]) == ("2026-02-01", "rent")
    newest = created["id"]
    status, charged = await app.post(
        f"/v1/subscriptions/{newest}/charges", {"charge": "rent", "quantity": 2}
    )
    assert (status, [c["quantity"] for c in charged["charges"]]) == (201, [1, 2]), charged
    status, moved = await app.post(f"/v1/subscriptions/{newest}/status", {"status": "suspended"})
    assert (status, moved["status"]) == (200, "suspended"), moved

    # Listed whole, a page at a time: every one of the account's once, oldest first.
    listed: list[dict[str, Any]] = []
    pages, after = 0, ""
    while True:
        status, page = await app.get(f"/v1/subscriptions?account=a1{after}")
        assert status == 200, page
        listed += page["subscriptions"]
        pages += 1
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    ids = [s["id"] for s in listed]
    assert (pages, len(ids), ids == sorted(ids)) == (2, 1001, True)
    assert {s["account"] for s in listed} == {"a1"}
    assert (listed[-1]["id"], listed[-1]["status"]) == (newest, "suspended")

    status, page = await app.get("/v1/subscriptions?account=a1&limit=2")
    assert (status, page["next"]) == (200, str(ids[1])), page
    status, page = await app.get(f"/v1/subscriptions?account=a1&after={ids[-2]}")
    assert (status, [s["id"] for s in page["subscriptions"]], page["next"]) == (
        200,
        [newest],
        None,
    )
    for bad in ("somewhere", "1" * 4400, "-1"):
        status, refused = await app.get(f"/v1/subscriptions?after={bad}")
        assert (status, refused["error"]["field"]) == (400, "after"), refused
    status, refused = await app.get("/v1/subscriptions?limit=1001")
    assert (status, refused["error"]["field"]) == (400, "limit"), refused
    # The CLI lists them all (it stopped at the first 1,000).
    code, out, err = await ocs_cli(
        app.services.settings, tmp_path, "subscriptions", "list", "--account", "a1"
    )
    assert code == 0, err
    assert [s["id"] for s in json.loads(out)["subscriptions"]] == ids


async def test_an_account_is_not_subscribed_to_a_plan_in_another_currency(
    app: RunningApp,
) -> None:
    """A plan's fee and charges are billed in the account's currency: an EUR account on a
    JPY plan would be billed its 1000 JPY fee as 1000.00 EUR. Refused, naming ``plan``;
    and once subscribed to, a plan keeps its currency."""
    await add_plan(app.services)
    await add_plan(app.services, "yen", currency="JPY")
    await add_plan(app.services, "spare")  # EUR, no account on it
    status, body = await app.post("/v1/accounts", {"id": "eu1", "plan": "retail"})
    assert status == 201, body
    status, body = await app.post(
        "/v1/subscriptions", {"account": "eu1", "plan": "yen", "start_date": "2026-01-01"}
    )
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        400,
        "invalid_field",
        "plan",
    ), body
    assert "JPY" in body["error"]["message"] and "EUR" in body["error"]["message"]
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 0
        assert await conn.fetchval("SELECT count(*) FROM events") == 0

    status, body = await app.post(
        "/v1/subscriptions", {"account": "eu1", "plan": "spare", "start_date": "2026-01-01"}
    )
    assert status == 201, body
    async with app.services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="currency cannot change"):
            await conn.execute("UPDATE plans SET currency = 'JPY' WHERE id = 'spare'")
