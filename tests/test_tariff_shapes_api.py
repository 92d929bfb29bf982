"""Tariff shapes through the catalog: tiers and a max cost rate authorize and stop alike."""

from urllib.parse import quote

from tests.conftest import RunningApp, add_plan, eventually

# A zone sold "first 15 minutes 1.00 flat, then 0.10 a minute".
DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
33,France Flat,0,1.00,0,1
44,UK,0.010,0,60,60
"""


async def _shape(app: RunningApp, zone: str, body: dict) -> tuple[int, dict]:
    response = await app.client.put(f"/v1/plans/retail/tariffs/{quote(zone)}/shape", json=body)
    return response.status, await response.json()


async def test_a_tiered_zone_is_rated_by_its_tiers_at_authorize_and_stop(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=DECK)
    status, body = await _shape(
        app,
        "France Flat",
        {"tiers": [{"from_second": 900, "price_per_minute": "0.10", "increment": 60}]},
    )
    assert status == 200, body

    async def reloaded() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "33123456")
        return found is not None and bool(found[1].rate.tiers)

    await eventually(reloaded, what="the tiered tariff in the snapshot")
    await app.post("/v1/accounts", {"id": "fr", "plan": "retail", "balance": "2.00"})
    status, grant = await app.post(
        "/v1/calls", {"account": "fr", "destination": "33123456", "call_id": "fr-1"}
    )
    # 2.00 buys the flat 1.00 (15 minutes) and ten more minutes at 0.10: 25 minutes.
    assert status == 201 and grant["max_duration"] == 1500
    _, stopped = await app.post("/v1/calls/fr-1/stop", {"duration": 16 * 60})
    assert stopped["cost"] == "1.100000"

    # The shape outlives a daily re-import of the deck.
    await app.client.post("/v1/plans/retail/tariffs", data=DECK)

    async def still_tiered() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "33123456")
        return (
            found is not None and bool(found[1].rate.tiers) and (app.services.catalog.version > 2)
        )

    await eventually(still_tiered, what="the re-imported deck to keep its tiers")


async def test_a_max_cost_caps_the_charge(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    status, _ = await _shape(app, "UK", {"max_cost": "0.05", "max_cost_mode": "free"})
    assert status == 200

    async def capped() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        return found is not None and found[1].rate.max_cost == 50_000

    await eventually(capped, what="the capped tariff in the snapshot")
    await app.post("/v1/accounts", {"id": "uk", "plan": "retail", "balance": "1.00"})
    await app.post("/v1/calls", {"account": "uk", "destination": "4420", "call_id": "uk-1"})
    _, stopped = await app.post("/v1/calls/uk-1/stop", {"duration": 3600})
    assert stopped["cost"] == "0.050000"


async def test_a_call_a_bundle_covers_in_part_is_cut_at_the_max_cost(app: RunningApp) -> None:
    # UK at 0.010 a minute (60/60), capped at 0.10 with the call cut there: ten minutes.
    # A bundle of 120 free seconds covered its first two minutes, and the capped cost
    # stopped growing at ten: the grant was the plan's longest call, its last hours free.
    await add_plan(app.services, deck=DECK)
    status, _ = await _shape(app, "UK", {"max_cost": "0.10", "max_cost_mode": "cut"})
    assert status == 200
    status, counter = await app.post(
        "/v1/plans/retail/counters",
        {"id": "uk-120", "seconds": 120, "zones": ["UK"], "price_per_minute": "0.00"},
    )
    assert status == 201, counter

    async def ready() -> bool:
        snapshot = app.services.catalog.snapshot
        found = snapshot.tariff_for("retail", "4420")
        return (
            found is not None
            and found[1].rate.cut_at_max_cost
            and any(c.id == "uk-120" for c in snapshot.counters_for("retail"))
        )

    await eventually(ready, what="the cut tariff and the bundle in the snapshot")
    await app.post("/v1/accounts", {"id": "cut", "plan": "retail", "balance": "5.00"})
    status, grant = await app.post(
        "/v1/calls", {"account": "cut", "destination": "4420", "call_id": "cut-1"}
    )
    assert status == 201, grant
    assert (grant["counter_seconds"], grant["max_duration"]) == (120, 600)
    # Cut there by the switch: the two bundled minutes free, eight at 0.010.
    _, stopped = await app.post("/v1/calls/cut-1/stop", {"duration": 600})
    assert stopped["cost"] == "0.080000"


async def test_bad_shapes_name_their_field(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    status, body = await _shape(app, "Nowhere", {"max_cost": "1.00"})
    assert (status, body["error"]["field"]) == (404, "zone")
    status, body = await _shape(app, "UK", {"max_cost_mode": "maybe"})
    assert (status, body["error"]["field"]) == (400, "max_cost_mode")
    status, body = await _shape(app, "UK", {"tiers": [{"from_second": 0}]})
    assert (status, body["error"]["field"]) == (400, "from_second")
    status, body = await _shape(
        app,
        "UK",
        {
            "tiers": [
                {"from_second": 600, "price_per_minute": "0.01"},
                {"from_second": 600, "price_per_minute": "0.02"},
            ]
        },
    )
    assert (status, body["error"]["field"]) == (400, "tiers")


async def test_a_surcharge_is_reserved_and_charged(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    status, body = await _shape(app, "UK", {"surcharge_percent": "10", "surcharge_flat": "0.01"})
    assert status == 200 and body["surcharge_percent"] == "10", body

    async def surcharged() -> bool:
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        return found is not None and found[1].rate.surcharge_percent_bp == 1000

    await eventually(surcharged, what="the surcharged tariff in the snapshot")
    await app.post("/v1/accounts", {"id": "sur", "plan": "retail", "balance": "1.00"})
    await app.post("/v1/calls", {"account": "sur", "destination": "4420", "call_id": "sur-1"})
    _, stopped = await app.post("/v1/calls/sur-1/stop", {"duration": 120})
    # Two minutes at 0.01 = 0.02, +10% = 0.022, + 0.01 per call.
    assert stopped["cost"] == "0.032000"
    status, body = await _shape(app, "UK", {"surcharge_percent": "2.555"})
    assert (status, body["error"]["field"]) == (400, "surcharge_percent")
