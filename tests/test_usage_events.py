"""Usage events: MB of data and kWh rated by quantity, debited once per event id."""

import csv
import io
import time
from urllib.parse import quote

from ocs.balances import keys
from ocs.catalog import store as catalog_store
from ocs.decks.rate_deck import parse_deck
from tests.conftest import RunningApp, add_plan, eventually

DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK,0.010,0,60,60
990001,Data,0.010,0,0,10
990002,Charging,0.390,0,0,100
"""


async def _per_unit(app: RunningApp, zone: str, per: int) -> None:
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote(zone)}/shape", json={"per": per}
    )
    assert response.status == 200, await response.text()


async def _data_plan(app: RunningApp) -> None:
    """The retail plan with DECK, its Data zone priced per MB, in the catalog snapshot."""
    await add_plan(app.services, deck=DECK)
    await _per_unit(app, "Data", 1)

    async def loaded() -> bool:
        data = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(data and data.rate.per == 1)

    await eventually(loaded, what="the per-unit tariff in the snapshot")


async def test_data_and_energy_are_rated_by_quantity_and_charged_once(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    await _per_unit(app, "Data", 1)  # 0.01 per MB, in 10 MB steps
    await _per_unit(app, "Charging", 1000)  # 0.39 per kWh, metered in Wh, 100 Wh steps

    async def loaded() -> bool:
        data = app.services.catalog.snapshot.tariff_named("retail", "Data")
        energy = app.services.catalog.snapshot.tariff_named("retail", "Charging")
        return bool(data and energy and data.rate.per == 1 and energy.rate.per == 1000)

    await eventually(loaded, what="per-unit tariffs in the snapshot")
    await app.post("/v1/accounts", {"id": "ev", "plan": "retail", "balance": "20.00"})
    status, data = await app.post(
        "/v1/usage", {"account": "ev", "event_id": "mb-1", "service": "Data", "quantity": 350}
    )
    assert status == 201, data
    assert (data["cost"], data["billed_quantity"]) == ("3.500000", 350)
    again = await app.post(
        "/v1/usage", {"account": "ev", "event_id": "mb-1", "service": "Data", "quantity": 350}
    )
    assert again[0] == 200 and again[1]["repeated"] is True
    status, energy = await app.post(
        "/v1/usage",
        {"account": "ev", "event_id": "kwh-1", "service": "Charging", "quantity": 23_400},
    )
    assert (status, energy["cost"]) == (201, "9.126000")
    assert energy["balance"] == "7.374000"

    async def cdrs_written() -> bool:
        async with app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, charged, termination_cause FROM cdrs"
                " WHERE account_id = 'ev' ORDER BY call_id"
            )
        return [(r["call_id"], r["charged"], r["termination_cause"]) for r in rows] == [
            ("kwh-1", 9_126_000, "usage"),
            ("mb-1", 3_500_000, "usage"),
        ]

    await eventually(cdrs_written, what="usage CDRs in PostgreSQL")


async def test_usage_the_account_cannot_pay_is_refused(app: RunningApp) -> None:
    await add_plan(app.services, deck=DECK)
    await _per_unit(app, "Data", 1)

    async def loaded() -> bool:
        found = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(found and found.rate.per == 1)

    await eventually(loaded, what="the per-unit tariff")
    await app.post("/v1/accounts", {"id": "thin", "plan": "retail", "balance": "1.00"})
    status, body = await app.post(
        "/v1/usage", {"account": "thin", "event_id": "big", "service": "Data", "quantity": 1000}
    )
    assert (status, body["error"]["reason"]) == (402, "insufficient_funds")
    status, body = await app.post(
        "/v1/usage", {"account": "thin", "event_id": "x", "service": "Nope", "quantity": 1}
    )
    assert (status, body["error"]["field"]) == (403, "service")
    _, shown = await app.get("/v1/accounts/thin")
    assert shown["balance"] == "1.000000"


async def test_a_usage_event_cannot_spend_funds_committed_to_the_plans_charges(
    app: RunningApp,
) -> None:
    # Lock on prorated charges: 5.00 of the account's 6.00 is committed to the plan's
    # fee, so 1.00 is available; 350 MB at 0.01 (3.50) is refused, 50 MB (0.50) is not.
    await add_plan(app.services, deck=DECK)
    await _per_unit(app, "Data", 1)
    status, policy = await app.put(
        "/v1/plans/retail/policy", {"recurring_fee": "5.00", "lock_prorated": True}
    )
    assert status == 200, policy

    async def loaded() -> bool:
        data = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(data and data.rate.per == 1)

    await eventually(loaded, what="the per-unit tariff in the snapshot")
    status, created = await app.post(
        "/v1/accounts", {"id": "ev2", "plan": "retail", "balance": "6.00"}
    )
    assert (status, created["committed"], created["available"]) == (
        201, "5.000000", "1.000000",
    ), created  # fmt: skip
    status, refused = await app.post(
        "/v1/usage", {"account": "ev2", "event_id": "mb-big", "service": "Data", "quantity": 350}
    )
    assert (status, refused["error"]["reason"]) == (402, "insufficient_funds"), refused
    status, charged = await app.post(
        "/v1/usage", {"account": "ev2", "event_id": "mb-small", "service": "Data", "quantity": 50}
    )
    assert (status, charged["cost"], charged["balance"]) == (201, "0.500000", "5.500000")


async def test_a_usage_event_named_like_a_live_call_leaves_the_call_to_its_own_stop(
    app: RunningApp,
) -> None:
    await _data_plan(app)
    await app.post("/v1/accounts", {"id": "same", "plan": "retail", "balance": "20.00"})
    status, call = await app.post(
        "/v1/calls", {"account": "same", "destination": "441234567", "call_id": "x1"}
    )
    assert status == 201, call
    status, used = await app.post(
        "/v1/usage", {"account": "same", "event_id": "x1", "service": "Data", "quantity": 10}
    )
    assert (status, used["cost"]) == (201, "0.100000"), used
    # The call's stop is the call's: charged its 120 s (0.02), its hold released.
    status, stopped = await app.post("/v1/calls/x1/stop", {"duration": 120})
    assert status == 200, stopped
    assert stopped["cost"] == "0.020000", stopped
    account = (await app.get("/v1/accounts/same"))[1]
    assert (account["balance"], account["reserved"]) == ("19.880000", "0.000000")
    # And the event's repeat is still a repeat.
    again = await app.post(
        "/v1/usage", {"account": "same", "event_id": "x1", "service": "Data", "quantity": 10}
    )
    assert again[0] == 200 and again[1]["repeated"] is True, again


async def test_an_event_charged_before_its_key_moved_is_still_charged_once(
    app: RunningApp,
) -> None:
    await _data_plan(app)
    await app.post("/v1/accounts", {"id": "old", "plan": "retail", "balance": "20.00"})
    event = {"account": "old", "event_id": "mb-9", "service": "Data", "quantity": 10}
    status, first = await app.post("/v1/usage", event)
    assert status == 201, first
    # As an earlier version kept it: the result under the stopped-call key only.
    redis = app.services.redis
    result = await redis.get(keys.usage_done("old", "mb-9"))
    await redis.set(keys.stopped_call("old", "mb-9"), result)
    await redis.delete(keys.usage_done("old", "mb-9"))
    again = await app.post("/v1/usage", event)
    assert again[0] == 200 and again[1]["repeated"] is True, again
    assert (await app.get("/v1/accounts/old"))[1]["balance"] == "19.900000"


async def test_a_free_event_is_taken_when_the_account_owes_money(app: RunningApp) -> None:
    # An invoice posted (debited whatever the balance) left the account owing 1.00. A
    # free event (nothing used, an inbound call, what a bundle covers) costs nothing:
    # it was refused as zero_balance, and a usage import then refused the account's
    # later rows too.
    await _data_plan(app)
    await app.post("/v1/accounts", {"id": "owes", "plan": "retail", "balance": "0"})
    await app.services.store.fee("owes", 1_000_000, "invoice:F-1", require_funds=False)
    status, free = await app.post(
        "/v1/usage", {"account": "owes", "event_id": "mb-0", "service": "Data", "quantity": 0}
    )
    assert status == 201, free
    assert (free["cost"], free["balance"]) == ("0.000000", "-1.000000")
    status, paid = await app.post(
        "/v1/usage", {"account": "owes", "event_id": "mb-1", "service": "Data", "quantity": 10}
    )
    assert (status, paid["error"]["reason"]) == (402, "zero_balance")


async def test_a_critical_balance_lock_refuses_the_next_usage_event(app: RunningApp) -> None:
    # A usage event is new usage, charged at its arrival: once an event (10 MB, 0.10)
    # takes the balance below the critical balance, the next is refused as a new call is
    # (a usage import's records, calls that took place, are not:
    # tests/test_usage_import_account_state.py).
    await _data_plan(app)
    await app.post("/v1/accounts", {"id": "crit", "plan": "retail", "balance": "1.00"})
    response = await app.client.patch("/v1/accounts/crit", json={"critical_balance": "0.95"})
    assert response.status == 200, await response.text()
    status, used = await app.post(
        "/v1/usage", {"account": "crit", "event_id": "mb-1", "service": "Data", "quantity": 10}
    )
    assert (status, used["balance"]) == (201, "0.900000"), used
    status, refused = await app.post(
        "/v1/usage", {"account": "crit", "event_id": "mb-2", "service": "Data", "quantity": 10}
    )
    assert (status, refused["error"]["reason"]) == (403, "account_locked"), refused
    assert (await app.get("/v1/accounts/crit"))[1]["balance"] == "0.900000"


async def test_an_expired_card_pays_for_no_usage(app: RunningApp) -> None:
    # A card past its life keeps its balance but spends none of it: POST /v1/usage is
    # refused as a call is (authorize's account_expired), and the balance stays.
    await _data_plan(app)
    response = await app.client.post(
        "/v1/pin-batches",
        json={
            "plan": "retail",
            "batch": "old",
            "count": 1,
            "value": "20.00",
            "expires_at": "2020-01-01T00:00:00Z",
        },
    )
    assert response.status == 201, await response.text()
    card = "card-old-0000001"
    status, call = await app.post("/v1/calls", {"account": card, "destination": "441234567"})
    assert (status, call["error"]["reason"]) == (403, "account_expired"), call
    status, used = await app.post(
        "/v1/usage", {"account": card, "event_id": "mb-1", "service": "Data", "quantity": 350}
    )
    assert (status, used["error"]["reason"]) == (403, "account_expired"), used
    assert (await app.get(f"/v1/accounts/{card}"))[1]["balance"] == "20.000000"


async def test_a_usage_event_starts_a_cards_days_as_a_first_call_does(app: RunningApp) -> None:
    # A card valid 30 days after its first use, first used for data: its 30 days start
    # then (they never started, so a card used only for data never expired).
    await _data_plan(app)
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": "days", "count": 1, "value": "20.00", "expire_days": 30},
    )
    assert response.status == 201, await response.text()
    [row] = list(csv.DictReader(io.StringIO(await response.text())))
    before = int(time.time())
    status, used = await app.post(
        "/v1/usage",
        {"account": row["account"], "event_id": "mb-1", "service": "Data", "quantity": 350},
    )
    assert status == 201, used
    after = int(time.time())
    status, info = await app.get(f"/v1/pins/{row['pin']}")
    assert status == 200, info
    assert before + 30 * 86_400 <= info["expires_at"] <= after + 30 * 86_400
    assert info["expires_days_after_first_use"] is None
    # A later use does not move it.
    status, used = await app.post(
        "/v1/usage",
        {"account": row["account"], "event_id": "mb-2", "service": "Data", "quantity": 1},
    )
    assert status == 201, used
    assert (await app.get(f"/v1/pins/{row['pin']}"))[1]["expires_at"] == info["expires_at"]


async def test_a_quantity_a_cdr_cannot_hold_is_refused_naming_it_and_debits_nothing(
    app: RunningApp,
) -> None:
    # 3,000,000,000 units were debited, then PostgreSQL refused the CDR (an INTEGER): the
    # ledger writer set it aside, money moved with no record. Refused now, as the importer
    # refuses a row; so is a quantity whose billed quantity (in 10-unit steps) passes it.
    await add_plan(app.services, deck=DECK)
    await _per_unit(app, "Data", 1_000_000)  # 0.01 per million units, in 10-unit steps

    async def loaded() -> bool:
        data = app.services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(data and data.rate.per == 1_000_000)

    await eventually(loaded, what="the per-unit tariff")
    await app.post("/v1/accounts", {"id": "ev", "plan": "retail", "balance": "1000.00"})
    for event_id, quantity in (("big", 3_000_000_000), ("edge", 2_147_483_647)):
        status, body = await app.post(
            "/v1/usage",
            {"account": "ev", "event_id": event_id, "service": "Data", "quantity": quantity},
        )
        assert (status, body["error"]["field"]) == (400, "quantity"), body
    _, shown = await app.get("/v1/accounts/ev")
    assert shown["balance"] == "1000.000000"
    # The most a record holds, billed as it is, is charged and recorded.
    status, body = await app.post(
        "/v1/usage",
        {"account": "ev", "event_id": "most", "service": "Data", "quantity": 2_147_483_640},
    )
    assert (status, body["billed_quantity"], body["cost"]) == (201, 2_147_483_640, "21.474837")

    async def recorded() -> bool:
        rows = await app.services.pool.fetch(
            "SELECT call_id, duration, billed_seconds FROM cdrs WHERE account_id = 'ev'"
        )
        return [tuple(r) for r in rows] == [("most", 2_147_483_640, 2_147_483_640)]

    await eventually(recorded, what="the CDR of the largest event")


async def test_a_retry_after_the_tariff_was_removed_is_answered_with_its_charge(
    app: RunningApp,
) -> None:
    # Event mb-5 is charged (50 MB, 0.50), its answer lost; the Data tariff is then
    # removed from the plan. The retry must not be refused 403 (a client reads a 4xx as
    # "not charged" and would bill it elsewhere): it is the first charge, repeated.
    await _data_plan(app)
    await app.post("/v1/accounts", {"id": "gone", "plan": "retail", "balance": "20.00"})
    event = {"account": "gone", "event_id": "mb-5", "service": "Data", "quantity": 50}
    status, first = await app.post("/v1/usage", event)
    assert (status, first["cost"]) == (201, "0.500000"), first
    without_data = "\n".join(line for line in DECK.splitlines() if "Data" not in line)
    await catalog_store.import_deck(app.services.pool, "retail", parse_deck(without_data))
    await app.services.catalog.reload()
    assert app.services.catalog.snapshot.tariff_named("retail", "Data") is None
    status, again = await app.post("/v1/usage", event)
    assert status == 200, again
    assert again["repeated"] is True and again["quantity_differs"] is False
    assert (again["service"], again["quantity"], again["billed_quantity"]) == ("Data", 50, 50)
    assert (again["cost"], again["balance"], again["currency"]) == (
        "0.500000",
        "19.500000",
        "EUR",
    )
    assert (await app.get("/v1/accounts/gone"))[1]["balance"] == "19.500000"
    # A new event for the removed service is still refused.
    status, refused = await app.post("/v1/usage", {**event, "event_id": "mb-6"})
    assert (status, refused["error"]["reason"]) == (403, "destination_not_allowed"), refused


async def test_a_retry_with_another_quantity_is_answered_with_the_charged_one(
    app: RunningApp,
) -> None:
    # A retry of mb-7 (charged as 30 MB of Data, 0.30) reporting 500 MB of Charging is
    # not charged again, and its answer says what was charged, not what it reported.
    await _data_plan(app)
    await _per_unit(app, "Charging", 1000)
    await app.post("/v1/accounts", {"id": "twice", "plan": "retail", "balance": "20.00"})
    event = {"account": "twice", "event_id": "mb-7", "service": "Data", "quantity": 30}
    assert (await app.post("/v1/usage", event))[0] == 201
    status, again = await app.post("/v1/usage", {**event, "quantity": 500})
    assert status == 200, again
    assert again["repeated"] is True and again["quantity_differs"] is True
    assert (again["service"], again["quantity"], again["billed_quantity"]) == ("Data", 30, 30)
    assert (again["cost"], again["balance"]) == ("0.300000", "19.700000")
    other = {**event, "service": "Charging", "quantity": 30}
    status, again = await app.post("/v1/usage", other)
    assert (status, again["service"], again["quantity"]) == (200, "Data", 30), again
    assert again["quantity_differs"] is False
    assert (await app.get("/v1/accounts/twice"))[1]["balance"] == "19.700000"
    _, document = await app.get("/openapi.json")
    answer = document["components"]["schemas"]["UsageCharged"]
    assert "quantity_differs" in answer["properties"]
