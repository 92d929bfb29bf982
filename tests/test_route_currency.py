"""Route margins are compared in one currency only (decision 0030, addendum 2026-12-07).

A carrier's cost deck is priced in its own currency. A route set used by a HUF plan and
by a EUR plan once kept or dropped the same carriers for both, comparing raw micro-units:
a 4.00 HUF/min price "beat" a 0.02 EUR/min carrier, and the call was routed at a loss.
Now a carrier in another currency than the plan's, or in none known, is never compared
nor offered, and the API refuses to put one in a plan's route set, naming the field.
"""

import asyncpg

from ocs.catalog.routes import RouteBook
from ocs.numbers.prefixes import PrefixTable
from ocs.rating.rates import Rate
from ocs.state_metrics import StateSampler
from tests.conftest import RunningApp, eventually

GERMANY = "4930123456"
COSTS = "prefix,connect_fee,first_block,increment,price_per_minute\n"
TARIFFS = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"


def per_minute(price: int) -> Rate:
    """A rate of ``price`` micro-units a minute, billed by the second."""
    return Rate(connect_fee=0, first_block=1, increment=1, price_per_minute=price)


def test_a_carrier_in_another_currency_is_neither_compared_nor_offered() -> None:
    # eur costs 0.02 EUR a minute (20,000 micro-euros), huf 3.00 HUF (3,000,000
    # micro-forints); legacy's currency is not known (a carrier before migration 0076).
    routes = RouteBook(
        decks={
            "eur": PrefixTable({"49": per_minute(20_000)}),
            "legacy": PrefixTable({"49": per_minute(10_000)}),
            "huf": PrefixTable({"49": per_minute(3_000_000)}),
        },
        names={"eur": "eur", "legacy": "legacy", "huf": "huf"},
        route_sets={"rs": ("eur", "legacy", "huf")},
        currencies={"eur": "EUR", "legacy": None, "huf": "HUF"},
    )
    # Sold at 4.00 HUF a minute: only the HUF carrier is compared (and has margin).
    sold_in_huf = routes.routes_for("rs", GERMANY, per_minute(4_000_000), currency="HUF")
    assert sold_in_huf.carriers == ("huf",)
    assert sold_in_huf.dropped == ()
    assert sold_in_huf.sell_cost == 4_000_000
    assert sold_in_huf.costs == (("huf", 3_000_000),)
    assert sold_in_huf.other_currency == ("eur", "legacy")
    # Sold at 2.00 HUF: the HUF carrier loses money; allowing negative margin offers it,
    # never the EUR carrier whose 20,000 micro-units once read as cheaper.
    losing = routes.routes_for("rs", GERMANY, per_minute(2_000_000), currency="HUF")
    assert (losing.carriers, losing.dropped) == ((), ("huf",))
    assert losing.refused(False)
    assert losing.usable(True) == ("huf",)
    # Sold at 0.025 EUR a minute: only the EUR carrier.
    sold_in_eur = routes.routes_for("rs", GERMANY, per_minute(25_000), currency="EUR")
    assert (sold_in_eur.carriers, sold_in_eur.dropped) == (("eur",), ())
    assert sold_in_eur.costs == (("eur", 20_000),)
    assert sold_in_eur.other_currency == ("legacy", "huf")
    assert routes.other_currency("rs", "EUR") == ("legacy", "huf")


async def _plan(app: RunningApp, plan_id: str, currency: str, price: str) -> None:
    """A plan selling Germany at ``price`` a minute, and its account (balance 1000.00)."""
    status, body = await app.post(
        "/v1/plans", {"id": plan_id, "currency": currency, "max_lines": 5}
    )
    assert status == 201, body
    response = await app.client.post(
        f"/v1/plans/{plan_id}/tariffs",
        data=f"{TARIFFS}49,Germany,{price},0,1,1\n",
        headers={"Content-Type": "text/csv"},
    )
    assert response.status == 200, await response.text()
    status, body = await app.post(
        "/v1/accounts", {"id": f"{plan_id}-acct", "plan": plan_id, "balance": "1000.00"}
    )
    assert status == 201, body


async def _carrier_rates(app: RunningApp, carrier_id: str, price: str) -> None:
    response = await app.client.put(
        f"/v1/carriers/{carrier_id}/rates",
        data=f"{COSTS}49,0,1,1,{price}\n",
        headers={"Content-Type": "text/csv"},
    )
    assert response.status == 200, await response.text()


async def _plan_route_set(pool: asyncpg.Pool, plan_id: str) -> str | None:
    return await pool.fetchval("SELECT route_set_id FROM plans WHERE id = $1", plan_id)


async def test_a_route_set_with_a_carrier_of_another_currency_is_refused_naming_the_field(
    app: RunningApp,
) -> None:
    pool = app.services.pool
    await _plan(app, "huf-plan", "HUF", "4.00")
    await _plan(app, "eur-plan", "EUR", "0.05")
    status, body = await app.post(
        "/v1/carriers", {"id": "eur", "name": "Euro Carrier", "currency": "EUR"}
    )
    assert status == 201, body
    assert body == {"id": "eur", "name": "Euro Carrier", "currency": "EUR"}
    status, body = await app.post("/v1/carriers", {"id": "huf", "currency": "huf"})
    assert (status, body["currency"]) == (201, "HUF"), body
    status, body = await app.put("/v1/route-sets/rs", {"carriers": ["eur"]})
    assert status == 200, body

    # The HUF plan may not be routed through the EUR carrier.
    status, body = await app.put("/v1/plans/huf-plan/routing", {"route_set": "rs"})
    assert status == 400, body
    assert (body["error"]["reason"], body["error"]["field"]) == ("invalid_field", "route_set")
    assert "EUR" in body["error"]["message"] and "HUF" in body["error"]["message"]
    assert await _plan_route_set(pool, "huf-plan") is None

    # The EUR plan may; then the HUF carrier may not join its route set.
    status, body = await app.put("/v1/plans/eur-plan/routing", {"route_set": "rs"})
    assert status == 200, body
    status, body = await app.put("/v1/route-sets/rs", {"carriers": ["eur", "huf"]})
    assert status == 400, body
    assert (body["error"]["reason"], body["error"]["field"]) == ("invalid_field", "carriers[1]")
    stored = await pool.fetch(
        "SELECT carrier_id FROM route_set_carriers WHERE route_set_id = 'rs' ORDER BY position"
    )
    assert [r["carrier_id"] for r in stored] == ["eur"]

    # A new carrier needs its currency; a known one never changes (its deck is in it).
    status, body = await app.post("/v1/carriers", {"id": "nameless"})
    assert (status, body["error"]["field"]) == (400, "currency"), body
    status, body = await app.post("/v1/carriers", {"id": "eur", "currency": "HUF"})
    assert (status, body["error"]["field"]) == (400, "currency"), body
    status, body = await app.post("/v1/carriers", {"id": "eur", "currency": "EURO"})
    assert (status, body["error"]["field"]) == (400, "currency"), body
    assert await pool.fetchval("SELECT currency FROM carriers WHERE id = 'eur'") == "EUR"
    assert await pool.fetchval("SELECT count(*) FROM carriers WHERE id = 'nameless'") == 0
    # Renamed, the carrier keeps its currency.
    status, body = await app.post("/v1/carriers", {"id": "eur", "name": "Euro Two"})
    assert (status, body) == (200, {"id": "eur", "name": "Euro Two", "currency": "EUR"})


async def test_a_call_is_routed_only_to_carriers_of_its_plans_currency(app: RunningApp) -> None:
    """A deployment upgraded with a route set shared by a HUF plan and a EUR plan: its
    carriers' currencies are unknown (migration 0076 could not tell), so neither plan's
    calls are offered them; once the operator names each carrier's currency, each plan's
    call goes to the carrier of its own currency, never to the other."""
    pool = app.services.pool
    # 4.00 HUF a minute; 0.05 EUR a minute.
    await _plan(app, "huf-plan", "HUF", "4.00")
    await _plan(app, "eur-plan", "EUR", "0.05")
    # As a release before 0076 left them: no currency, one route set for both plans.
    await pool.execute(
        "INSERT INTO carriers (id, name) VALUES ('eur', 'Euro Carrier'), ('huf', 'HUF Carrier')"
    )
    await _carrier_rates(app, "eur", "0.020")  # 0.02 EUR a minute
    await _carrier_rates(app, "huf", "3.000")  # 3.00 HUF a minute
    await pool.execute("INSERT INTO route_sets (id) VALUES ('rs')")
    await pool.execute(
        "INSERT INTO route_set_carriers (route_set_id, position, carrier_id)"
        " VALUES ('rs', 0, 'eur'), ('rs', 1, 'huf')"
    )
    await pool.execute("UPDATE plans SET route_set_id = 'rs' WHERE id IN ('huf-plan', 'eur-plan')")
    await app.services.catalog.reload()

    # Unknown currencies: no carrier is compared, the calls are refused, nothing reserved.
    for plan_id in ("huf-plan", "eur-plan"):
        status, body = await app.post(
            "/v1/calls", {"account": f"{plan_id}-acct", "destination": GERMANY}
        )
        assert (status, body["error"]["reason"]) == (403, "no_profitable_route"), body
    assert app.services.catalog.other_currency_routes == {
        ("huf-plan", "eur", None),
        ("huf-plan", "huf", None),
        ("eur-plan", "eur", None),
        ("eur-plan", "huf", None),
    }

    for carrier_id, currency in (("eur", "EUR"), ("huf", "HUF")):
        status, body = await app.post("/v1/carriers", {"id": carrier_id, "currency": currency})
        assert (status, body["currency"]) == (200, currency), body

    async def named() -> bool:
        return app.services.catalog.snapshot.routes.currencies == {"eur": "EUR", "huf": "HUF"}

    await eventually(named, what="the carriers' currencies in the catalog")
    # The HUF call: 3.00 HUF costs less than the 4.00 sold; the EUR carrier's 0.02 is
    # not compared with 4.00 HUF. The EUR call: 0.02 EUR against 0.05 EUR.
    status, body = await app.post("/v1/calls", {"account": "huf-plan-acct", "destination": GERMANY})
    assert (status, body["carriers"], body["currency"]) == (201, ["huf"], "HUF"), body
    status, body = await app.post("/v1/calls", {"account": "eur-plan-acct", "destination": GERMANY})
    assert (status, body["carriers"], body["currency"]) == (201, ["eur"], "EUR"), body
    # Each plan still lists the other's carrier: counted, never offered.
    assert app.services.catalog.other_currency_routes == {
        ("huf-plan", "eur", "EUR"),
        ("eur-plan", "huf", "HUF"),
    }
    sampler = StateSampler(app.services.redis, pool, app.services.catalog)
    assert sampler.sample_catalog().sizes["routes_in_other_currency"] == 2
