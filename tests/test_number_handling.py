"""Number handling before the match: inbound tariffs, access numbers (DNIS), on-net ranges."""

from aiohttp import ClientResponse

from ocs.rating.rates import cost
from tests.conftest import RADIUS_SECRET, RunningApp, RunningRadius, eventually
from tests.radclient import radclient

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment"


async def _deck(app: RunningApp, plan: str, rows: str) -> None:
    response: ClientResponse = await app.client.post(
        f"/v1/plans/{plan}/tariffs", data=rows, headers={"Content-Type": "text/csv"}
    )
    assert response.status == 200, await response.text()


async def _plan(app: RunningApp, plan: str, rows: str) -> None:
    status, body = await app.post("/v1/plans", {"id": plan, "currency": "EUR", "max_lines": 4})
    assert status == 201, body
    await _deck(app, plan, rows)


async def _account(app: RunningApp, account: str, plan: str, balance: str = "10.00") -> None:
    status, body = await app.post("/v1/accounts", {"id": account, "plan": plan, "balance": balance})
    assert status == 201, body


async def _call(app: RunningApp, **fields: object) -> tuple[int, dict]:
    return await app.post("/v1/calls", fields)


async def _stop(app: RunningApp, call_id: str, duration: int) -> dict:
    status, body = await app.post(f"/v1/calls/{call_id}/stop", {"duration": duration})
    assert status == 200, body
    return body


async def test_inbound_calls_are_rated_by_the_inbound_tariffs(app: RunningApp) -> None:
    await _plan(
        app,
        "dids",
        f"{HEADER},direction\n44,UK,0.020,0,1,1,outbound\n44,UK,0.006,0,60,60,inbound\n",
    )
    await _account(app, "pbx", "dids")

    async def loaded() -> bool:
        return app.services.catalog.snapshot.tariff_for("dids", "441234", "inbound") is not None

    await eventually(loaded, what="the inbound deck")
    status, inbound = await _call(
        app, account="pbx", destination="441234567890", direction="inbound"
    )
    assert status == 201, inbound
    assert (inbound["zone"], inbound["direction"]) == ("UK", "inbound")
    # 61 s inbound at 0.006 a minute in 60 s steps bills 120 s.
    assert (await _stop(app, inbound["call_id"], 61))["cost"] == "0.012000"
    status, outbound = await _call(app, account="pbx", destination="441234567890")
    assert status == 201 and outbound["zone"] == "UK"
    assert (await _stop(app, outbound["call_id"], 61))["cost"] == "0.020334"
    # An inbound call with no inbound tariff (a German caller) is free, and takes a line.
    status, free = await _call(app, account="pbx", destination="4930123456", direction="inbound")
    assert status == 201 and free["zone"] == "inbound"
    _, account = await app.get("/v1/accounts/pbx")
    assert account["lines_in_use"] == 1
    assert (await _stop(app, free["call_id"], 600))["cost"] == "0.000000"


async def test_an_access_number_rates_the_call_by_its_own_deck(app: RunningApp) -> None:
    await _plan(app, "cards", f"{HEADER}\n44,UK,0.010,0,1,1\n")
    # The toll-free access number costs the operator more: its deck is dearer.
    await _plan(app, "tollfree", f"{HEADER}\n44,UK,0.050,0.100,1,1\n")
    await _account(app, "card-1", "cards", balance="1.00")
    response = await app.client.put(
        "/v1/plans/cards/access-numbers", json={"numbers": {"+18005550100": "tollfree"}}
    )
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        return app.services.catalog.snapshot.rating_plan("cards", "18005550100") == "tollfree"

    await eventually(loaded, what="the access number in the catalog")
    status, local = await _call(app, account="card-1", destination="442071234567")
    assert status == 201 and local["max_duration"] == 6000  # 1.00 at 0.010 a minute
    await _stop(app, local["call_id"], 0)
    status, toll = await _call(
        app, account="card-1", destination="442071234567", access_number="+18005550100"
    )
    assert status == 201
    # (1.00 - 0.10 connect fee) at 0.050 a minute: 1080 s.
    assert toll["max_duration"] == 1080
    body = await _stop(app, toll["call_id"], 120)
    dear = app.services.catalog.snapshot.tariff_for("tollfree", "442071234567")
    assert dear is not None
    assert body["cost"] == "0.200000" and cost(dear[1].rate, 120) == 200_000
    # An unknown access number rates by the account's own plan.
    status, other = await _call(
        app, account="card-1", destination="442071234567", access_number="18005550199"
    )
    assert status == 201 and other["max_duration"] == (800_000 * 60) // 10_000


async def test_on_net_ranges_rate_in_the_on_net_zone_before_the_deck(app: RunningApp) -> None:
    await _plan(
        app,
        "mobile",
        f"{HEADER}\n44,UK,0.010,0,1,1\n447,UK Mobile,0.080,0,1,1\n4477009,On-net,0.000,0,1,1\n",
    )
    await _account(app, "sub", "mobile", balance="1.00")
    # The operator's ranges: one in the mobile block, one in the fixed block.
    response = await app.client.put("/v1/on-net", json={"prefixes": ["4477009", "+44207946"]})
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        found = app.services.catalog.snapshot.tariff_for("mobile", "442079460000")
        return found is not None and found[1].zone == "On-net"

    await eventually(loaded, what="the on-net ranges in the catalog")
    for number in ("447700900000", "442079460000"):
        status, call = await _call(app, account="sub", destination=number)
        assert status == 201 and call["zone"] == "On-net"
        assert (await _stop(app, call["call_id"], 300))["cost"] == "0.000000"
    status, off_net = await _call(app, account="sub", destination="447911123456")
    assert status == 201 and off_net["zone"] == "UK Mobile"
    bad = await app.client.put("/v1/on-net", json={"prefixes": ["44x"]})
    assert bad.status == 400
    assert (await bad.json())["error"]["field"] == "prefixes[0]"


async def test_a_radius_ivr_names_the_access_number_in_an_avpair(radius: RunningRadius) -> None:
    app = radius.app
    await _plan(app, "cards", f"{HEADER}\n44,UK,0.010,0,1,1\n")
    await _plan(app, "tollfree", f"{HEADER}\n44,UK,0.050,0.100,1,1\n")
    await _account(app, "card-9", "cards", balance="1.00")
    response = await app.client.put(
        "/v1/plans/cards/access-numbers", json={"numbers": {"18005550100": "tollfree"}}
    )
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        return app.services.catalog.snapshot.rating_plan("cards", "18005550100") == "tollfree"

    await eventually(loaded, what="the access number in the catalog")
    reply = await radclient(
        "auth",
        radius.auth_port,
        RADIUS_SECRET,
        [
            ("User-Name", "card-9"),
            ("Called-Station-Id", "442071234567"),
            ("Cisco-AVPair", "h323-conf-id=DNIS-1"),
            ("Cisco-AVPair", "access-number=+18005550100"),
        ],
    )
    assert reply.code == "Access-Accept", reply.output
    assert reply.attributes["Session-Timeout"] == ["1080"]


async def test_an_access_number_into_another_currency_is_refused(app: RunningApp) -> None:
    await _plan(app, "cards", f"{HEADER}\n44,UK,0.010,0,1,1\n")
    await _plan(app, "tollfree", f"{HEADER}\n44,UK,0.050,0.100,1,1\n")
    status, body = await app.post("/v1/plans", {"id": "tollfree-usd", "currency": "USD"})
    assert status == 201, body
    await _deck(app, "tollfree-usd", f"{HEADER}\n44,UK,0.050,0.100,1,1\n")
    # USD micro-units through an EUR plan would be charged as EUR: refused, nothing stored.
    bad = await app.client.put(
        "/v1/plans/cards/access-numbers",
        json={"numbers": {"+18005550100": "tollfree", "+18005550199": "tollfree-usd"}},
    )
    assert bad.status == 400, await bad.text()
    error = (await bad.json())["error"]
    assert error["field"] == "numbers.18005550199"
    assert "USD" in error["message"] and "EUR" in error["message"]
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM access_numbers WHERE plan_id = 'cards'")
    assert stored == 0
    # The same currency is still taken.
    good = await app.client.put(
        "/v1/plans/cards/access-numbers", json={"numbers": {"+18005550100": "tollfree"}}
    )
    assert good.status == 200, await good.text()
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT number, rating_plan FROM access_numbers WHERE plan_id = 'cards'"
        )
    assert [(r["number"], r["rating_plan"]) for r in rows] == [("18005550100", "tollfree")]
