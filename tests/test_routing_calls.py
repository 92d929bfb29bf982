"""Least-cost routing at authorize: carriers dearer than the price are dropped, a call
with no carrier left is refused unless the plan allows negative margin, a call to the
operator's own (on-net) numbers is not routed, and the answer lists the carriers (HTTP
``carriers``, RADIUS Cisco-AVPair ``ocs-route``)."""

import csv
import io

import pyrad.packet as rp
from aiohttp import ClientResponse

from ocs.charging.values import Grant
from ocs.radius.access import granted
from ocs.rating.rates import Rate
from tests.conftest import RADIUS_SECRET, RunningApp, RunningRadius, eventually
from tests.radclient import radclient
from tests.radius_udp import access_request

GERMANY = "4930123456"
SELL_DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n49,Germany,0.020,0,1,1\n"
)
COSTS = "prefix,connect_fee,first_block,increment,price_per_minute\n"


async def _put(app: RunningApp, path: str, payload: object) -> ClientResponse:
    if isinstance(payload, str):
        response = await app.client.put(path, data=payload, headers={"Content-Type": "text/csv"})
    else:
        response = await app.client.put(path, json=payload)
    assert response.status in (200, 201), await response.text()
    return response


async def _routed_plan(app: RunningApp, route_set: list[str], allow: bool = False) -> None:
    status, body = await app.post("/v1/plans", {"id": "lcr", "currency": "EUR", "max_lines": 5})
    assert status == 201, body
    response = await app.client.post(
        "/v1/plans/lcr/tariffs", data=SELL_DECK, headers={"Content-Type": "text/csv"}
    )
    assert response.status == 200, await response.text()
    for carrier, price in (("A", "0.030"), ("B", "0.010")):
        status, body = await app.post(
            "/v1/carriers", {"id": carrier, "name": f"Carrier {carrier}", "currency": "EUR"}
        )
        assert status in (200, 201), body
        await _put(app, f"/v1/carriers/{carrier}/rates", f"{COSTS}49,0,1,1,{price}\n")
    await _put(app, "/v1/route-sets/rs", {"carriers": route_set})
    await _put(app, "/v1/plans/lcr/routing", {"route_set": "rs", "allow_negative_margin": allow})
    status, body = await app.post("/v1/accounts", {"id": "acme", "plan": "lcr", "balance": "5.00"})
    assert status == 201, body

    async def routed() -> bool:
        snapshot = app.services.catalog.snapshot
        plan = snapshot.plan("lcr")
        return (
            plan is not None
            and plan.route_set_id == "rs"
            and plan.allow_negative_margin == allow
            and snapshot.routes.route_sets.get("rs") == tuple(route_set)
            and snapshot.tariff_for("lcr", GERMANY) is not None
        )

    await eventually(routed, what="the plan's routing in the catalog")


async def test_the_carrier_dearer_than_the_price_is_dropped(app: RunningApp) -> None:
    # Sell 0.02 a minute; carrier A costs 0.03 (a loss), B 0.01.
    await _routed_plan(app, ["A", "B"])
    status, body = await app.post("/v1/calls", {"account": "acme", "destination": GERMANY})
    assert status == 201, body
    assert body["carriers"] == ["B"]


async def test_only_a_losing_carrier_refuses_the_call(app: RunningApp) -> None:
    await _routed_plan(app, ["A"])
    status, body = await app.post("/v1/calls", {"account": "acme", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (403, "no_profitable_route")
    _, account = await app.get("/v1/accounts/acme")
    assert account["reserved"] == "0.000000" and account["lines_in_use"] == 0


async def test_a_card_is_quoted_no_time_to_a_destination_every_call_to_which_is_refused(
    app: RunningApp,
) -> None:
    await _routed_plan(app, ["A"])  # A costs 0.03 against a price of 0.02
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "lcr", "batch": "ivr", "count": 1, "length": 12, "value": "1.00"},
    )
    text = await response.text()
    assert response.status == 201, text
    (card,) = list(csv.DictReader(io.StringIO(text)))
    # The IVR must not announce minutes the switch will then be refused.
    status, quote = await app.get(f"/v1/pins/{card['pin']}/time?destination={GERMANY}")
    assert (status, quote["error"]["reason"]) == (403, "no_profitable_route"), quote
    status, body = await app.post("/v1/calls", {"account": "acme", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (403, "no_profitable_route")
    # A carrier with margin: the card's 1.00 buys 50 minutes at 0.02.
    await _put(app, "/v1/route-sets/rs", {"carriers": ["A", "B"]})

    async def rerouted() -> bool:
        return app.services.catalog.snapshot.routes.route_sets.get("rs") == ("A", "B")

    await eventually(rerouted, what="the route set with carrier B")
    status, quote = await app.get(f"/v1/pins/{card['pin']}/time?destination={GERMANY}")
    assert (status, quote["seconds"]) == (200, 3_000), quote


async def test_a_plan_allowing_negative_margin_routes_through_the_losing_carrier(
    app: RunningApp,
) -> None:
    await _routed_plan(app, ["A"], allow=True)
    status, body = await app.post("/v1/calls", {"account": "acme", "destination": GERMANY})
    assert status == 201, body
    assert body["carriers"] == ["A"]


async def test_a_band_price_below_every_carriers_cost_refuses_the_call(app: RunningApp) -> None:
    # Sold at 0.02 a minute but 0.005 in band "cheap", all day; B costs 0.01: every
    # minute would lose 0.005, which the plan forbids.
    await _routed_plan(app, ["B"])
    await _put(
        app,
        "/v1/plans/lcr/bands",
        {"time_zone": "UTC", "rules": [{"band": "cheap", "start": "00:00", "end": "24:00"}]},
    )
    await _put(app, "/v1/plans/lcr/tariffs/Germany/shape", {"band_prices": {"cheap": "0.005"}})

    async def banded() -> bool:
        snapshot = app.services.catalog.snapshot
        plan = snapshot.plan("lcr")
        match = snapshot.tariff_for("lcr", GERMANY)
        return (
            plan is not None
            and plan.bands is not None
            and match is not None
            and bool(match[1].rate.band_prices)
        )

    await eventually(banded, what="the plan's bands and band prices in the catalog")
    status, body = await app.post("/v1/calls", {"account": "acme", "destination": GERMANY})
    assert (status, body["error"]["reason"]) == (403, "no_profitable_route"), body
    _, account = await app.get("/v1/accounts/acme")
    assert account["reserved"] == "0.000000" and account["lines_in_use"] == 0


async def test_radius_accept_lists_the_carriers_best_first(radius: RunningRadius) -> None:
    app = radius.app
    await _routed_plan(app, ["B", "A"], allow=True)
    reply = await radclient(
        "auth",
        radius.auth_port,
        RADIUS_SECRET,
        [
            ("User-Name", "acme"),
            ("Called-Station-Id", GERMANY),
            ("Cisco-AVPair", "h323-conf-id=LCR-1"),
        ],
    )
    assert reply.code == "Access-Accept", reply.output
    # A loses money, so only B is offered: margin first, then the route set's order.
    assert reply.attributes["Cisco-AVPair"] == ["ocs-route=1:B"]


UK_MOBILE = "447700900123"
ON_NET_NUMBER = "442071234567"  # in the operator's own range 4420


async def _plan_with_on_net_range(app: RunningApp) -> None:
    """Plan ``p``: UK at 0.10 a minute, the On-net zone free (its own prefix 999 covers
    neither number: only the on-net range 4420 does); route set (A), A charging 0.05 for
    all of 44, on-net range included."""
    status, body = await app.post("/v1/plans", {"id": "p", "currency": "EUR", "max_lines": 5})
    assert status == 201, body
    deck = (
        "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
        "44,UK,0.100,0,1,1\n999,On-net,0.000,0,1,1\n"
    )
    response = await app.client.post(
        "/v1/plans/p/tariffs", data=deck, headers={"Content-Type": "text/csv"}
    )
    assert response.status == 200, await response.text()
    status, body = await app.post(
        "/v1/carriers", {"id": "A", "name": "Carrier A", "currency": "EUR"}
    )
    assert status in (200, 201), body
    await _put(app, "/v1/carriers/A/rates", f"{COSTS}44,0,1,1,0.050\n")
    await _put(app, "/v1/route-sets/rs", {"carriers": ["A"]})
    await _put(app, "/v1/plans/p/routing", {"route_set": "rs", "allow_negative_margin": False})
    await _put(app, "/v1/on-net", {"prefixes": ["4420"]})
    status, body = await app.post("/v1/accounts", {"id": "sub", "plan": "p", "balance": "5.00"})
    assert status == 201, body

    async def loaded() -> bool:
        snapshot = app.services.catalog.snapshot
        plan = snapshot.plan("p")
        on_net = snapshot.tariff_for("p", ON_NET_NUMBER)
        return (
            plan is not None
            and plan.route_set_id == "rs"
            and snapshot.routes.route_sets.get("rs") == ("A",)
            and on_net is not None
            and on_net[1].zone == "On-net"
        )

    await eventually(loaded, what="the plan's routing and on-net range in the catalog")


async def test_a_call_to_an_on_net_number_is_granted_with_no_route(app: RunningApp) -> None:
    # Carrier A costs 0.05 against the On-net price of 0: were the call routed, A would
    # be dropped and the call refused no_profitable_route. The operator's own number
    # goes to no carrier.
    await _plan_with_on_net_range(app)
    status, body = await app.post("/v1/calls", {"account": "sub", "destination": ON_NET_NUMBER})
    assert status == 201, body
    assert (body["zone"], body["carriers"]) == ("On-net", [])
    # Off-net the route set still applies: A (0.05) keeps the margin on UK (0.10).
    status, body = await app.post("/v1/calls", {"account": "sub", "destination": UK_MOBILE})
    assert status == 201, body
    assert (body["zone"], body["carriers"]) == ("UK", ["A"])


async def test_radius_accepts_an_on_net_call_with_no_route(radius: RunningRadius) -> None:
    await _plan_with_on_net_range(radius.app)

    async def authorize(destination: str, conf_id: str) -> list[str]:
        reply = await radclient(
            "auth",
            radius.auth_port,
            RADIUS_SECRET,
            [
                ("User-Name", "sub"),
                ("Called-Station-Id", destination),
                ("Cisco-AVPair", f"h323-conf-id={conf_id}"),
            ],
        )
        assert reply.code == "Access-Accept", reply.output
        pairs = reply.attributes.get("Cisco-AVPair", [])
        return [pair for pair in pairs if pair.startswith("ocs-route=")]

    assert await authorize(ON_NET_NUMBER, "ONNET-1") == []
    assert await authorize(UK_MOBILE, "ONNET-2") == ["ocs-route=1:A"]


def test_a_long_route_set_keeps_the_access_accept_within_4096_octets() -> None:
    # 64 carriers (a route set's most) with 60-character ids: all of them would make an
    # Access-Accept of about 5,800 octets, which a NAS drops (RFC 2865 section 3).
    carriers = tuple(f"carrier-{n:02d}-" + "x" * 49 for n in range(1, 65))
    grant = Grant(
        call_id="long-lcr", account_id="1001", zone="Germany", destination="4930123456",
        max_duration=600, reserved=1_000_000, currency="EUR", rate=Rate(0, 1, 1, 600_000),
        repeated=False, carriers=carriers,
    )  # fmt: skip
    answer = granted(grant)
    routes = [value for name, value in answer.attributes if name == "Cisco-AVPair"]
    # The best routes first, in order, and as many as fit.
    assert routes == [f"ocs-route={n}:{c}" for n, c in enumerate(carriers[: len(routes)], 1)]
    assert 30 <= len(routes) < 64
    request = access_request(RADIUS_SECRET, [("User-Name", "1001")])
    reply = request.CreateReply()
    reply.code = rp.AccessAccept
    for name, value in answer.attributes:
        reply.AddAttribute(name, value)
    reply.add_message_authenticator()
    assert len(reply.ReplyPacket()) <= 4096
