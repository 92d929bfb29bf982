"""Re-rating CDRs with today's catalog: the rating function that rated each, no money moved."""

import json
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from ocs.balances.accounts import AccountSpec
from ocs.billing.rerate import RerateReport, rerate
from ocs.catalog import store as catalog_store
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.decks.rate_deck import parse_deck
from ocs.rating.rates import cost
from tests.conftest import RETAIL_DECK, RunningApp, add_plan, eventually
from tests.helpers import ocs_cli
from tests.usage_import_helpers import DECK, HEADER, new_account, run_import, setup_mediation

NEW_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK Fixed,0.010,0,60,60
447,UK Mobile,0.060,0.150,30,6
49,Germany,0.024,0,1,1
"""


async def test_cdrs_are_rated_again_with_the_new_deck(app: RunningApp, tmp_path: Path) -> None:
    services = app.services
    await add_plan(services, deck=RETAIL_DECK, max_lines=3)
    await services.accounts.create(AccountSpec("rita", "retail", opening_balance=10_000_000))
    calls = {"4930123456": 100, "442071234567": 61, "12125550100": 30}
    for number, seconds in calls.items():
        grant = await services.calls.authorize(AuthorizeRequest("rita", number))
        await services.calls.stop(grant.call_id, seconds)

    async def written() -> bool:
        async with services.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM cdrs") == 3

    await eventually(written, what="the three CDRs in PostgreSQL")
    same = await rerate(services.pool, services.catalog.snapshot, "retail")
    assert (same.cdrs, same.changed, same.unrated) == (3, 0, 0)
    assert same.total_now == same.total_then

    # Germany doubles; the USA is no longer sold.
    await catalog_store.import_deck(services.pool, "retail", parse_deck(NEW_DECK))
    await services.catalog.reload()
    report = await rerate(services.pool, services.catalog.snapshot, "retail")
    assert (report.cdrs, report.changed, report.unrated) == (3, 2, 1)
    germany = services.catalog.snapshot.tariff_for("retail", "4930123456")
    assert germany is not None
    by_destination = {line.destination: line for line in report.lines}
    assert by_destination["4930123456"].rated_now == cost(germany[1].rate, 100) == 40_000
    assert by_destination["4930123456"].rated_then == 20_000
    assert by_destination["12125550100"].rated_now is None
    # UK Fixed is unchanged: 61 s billed as 120 s at 0.010 a minute.
    assert report.total_now == 40_000 + 20_000
    # Nothing moved: the balance is what the calls left.
    assert (await services.accounts.show("rita")).balance == 10_000_000 - same.total_then

    code, out, err = await ocs_cli(services.settings, tmp_path, "rerate", "--plan", "retail")
    assert code == 0, err
    printed = json.loads(out)
    assert (printed["changed"], printed["unrated"], printed["total_now"]) == (2, 1, "0.060000")


async def test_usage_events_and_rate_typed_records_are_rated_as_they_were_rated(
    app: RunningApp, tmp_path: Path
) -> None:
    # A usage event's destination (its service, "Data") raised ValueError in the deck's
    # match, and an imported call rated by its rate type was rated again by the deck.
    services = app.services
    await setup_mediation(app, deck=DECK + "990001,Data,0.010,0,0,10\n")
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('Data')}/shape", json={"per": 1}
    )
    assert response.status == 200, await response.text()

    async def per_unit(per: int) -> bool:
        found = services.catalog.snapshot.tariff_named("retail", "Data")
        return bool(found and found.rate.per == per)

    await eventually(lambda: per_unit(1), what="Data per MB")
    await new_account(app, "acc1", "10.00")
    status, event = await app.post(
        "/v1/usage", {"account": "acc1", "event_id": "mb1", "service": "Data", "quantity": 100}
    )
    assert (status, event["cost"]) == (201, "1.000000"), event
    path = tmp_path / "x.csv"
    # r1: on-net by the template's rule (6/6 at 0.004 a minute: 61 s are 66 s, 0.0044);
    # r2: no rate type, the deck's UK (0.04).
    path.write_text(
        HEADER
        + "r1,acc1,442071234567,2026-03-03 09:00:00,61,O,,onnet-7\n"
        + "r2,acc1,442071234567,2026-03-03 09:05:00,61,O,,\n"
    )
    summary = await run_import(app, path)
    assert summary.rows_charged == 2, summary

    async def written() -> bool:
        return await services.pool.fetchval("SELECT count(*) FROM cdrs") == 3

    await eventually(written, what="the three CDRs")
    same = await rerate(services.pool, services.catalog.snapshot, "retail")
    assert (same.cdrs, same.changed, same.unrated, same.usage_events, same.rate_typed) == (
        3,
        0,
        0,
        1,
        1,
    ), same
    assert same.total_now == same.total_then == 1_000_000 + 4_400 + 40_000

    # The on-net rate doubles, and Data is priced per 2 MB.
    await services.pool.execute(
        "UPDATE rate_type_rates SET price_per_minute = 8000 WHERE rate_type = 'Canada On-Net'"
    )
    await services.catalog.reload()
    response = await app.client.put(
        f"/v1/plans/retail/tariffs/{quote('Data')}/shape", json={"per": 2}
    )
    assert response.status == 200, await response.text()
    await eventually(lambda: per_unit(2), what="Data per 2 MB")
    report = await rerate(services.pool, services.catalog.snapshot, "retail")
    changes = {
        line.call_id: (line.zone_then, line.zone_now, line.rated_now) for line in report.lines
    }
    assert changes == {
        "usage:carrier-x:r1": ("Canada On-Net", "Canada On-Net", 8_800),
        "mb1": ("Data", "Data", 500_000),
    }
    code, out, err = await ocs_cli(services.settings, tmp_path, "rerate", "--plan", "retail")
    assert code == 0, err
    printed = json.loads(out)
    assert (printed["changed"], printed["usage_events"], printed["rate_typed"]) == (2, 1, 1)


DECK_HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"


async def cdrs_written(app: RunningApp, count: int) -> None:
    """Wait until the ledger writer has written ``count`` CDRs to PostgreSQL."""

    async def written() -> bool:
        return await app.services.pool.fetchval("SELECT count(*) FROM cdrs") == count

    await eventually(written, what=f"{count} CDRs in PostgreSQL")


async def new_deck(app: RunningApp, plan_id: str, deck: str) -> None:
    """Replace a plan's deck in the catalog and reload it (the catalog changes)."""
    await catalog_store.import_deck(app.services.pool, plan_id, parse_deck(deck))
    await app.services.catalog.reload()


def changes(report: RerateReport) -> list[tuple[str, int, str | None, int | None]]:
    """(zone then, rated then, zone now, rated now) of each changed call."""
    return [(x.zone_then, x.rated_then, x.zone_now, x.rated_now) for x in report.lines]


async def test_an_on_net_call_is_rated_again_in_the_on_net_zone(app: RunningApp) -> None:
    # A 300 s call to the operator's own range is rated On-net (free) before the deck; it
    # was re-rated by the deck's UK (0.05), reported changed with no catalog change.
    on_net_deck = DECK_HEADER + "44,UK,0.010,0,1,1\n4477009,On-net,0.000,0,1,1\n"
    await add_plan(app.services, "mobile", deck=on_net_deck)
    await app.post("/v1/accounts", {"id": "sub", "plan": "mobile", "balance": "1.00"})
    response = await app.client.put("/v1/on-net", json={"prefixes": ["+44207946"]})
    assert response.status == 200, await response.text()

    async def on_net() -> bool:
        found = app.services.catalog.snapshot.tariff_for("mobile", "442079460000")
        return found is not None and found[1].zone == "On-net"

    await eventually(on_net, what="the on-net range in the catalog")
    grant = await app.services.calls.authorize(AuthorizeRequest("sub", "442079460000"))
    assert grant.zone == "On-net"
    assert (await app.services.calls.stop(grant.call_id, 300)).charged == 0
    await cdrs_written(app, 1)
    same = await rerate(app.services.pool, app.services.catalog.snapshot, "mobile")
    assert (same.cdrs, same.changed, same.total_then, same.total_now) == (1, 0, 0, 0), same

    # On-net calls now cost 0.02 a minute: 300 s are 0.10 (UK's 0.05 was reported).
    await new_deck(app, "mobile", DECK_HEADER + "44,UK,0.010,0,1,1\n4477009,On-net,0.020,0,1,1\n")
    report = await rerate(app.services.pool, app.services.catalog.snapshot, "mobile")
    assert changes(report) == [("On-net", 0, "On-net", 100_000)]


async def test_a_call_on_an_access_number_is_rated_again_by_that_numbers_plan(
    app: RunningApp,
) -> None:
    # A calling card's call that came in on a toll-free access number is rated by the
    # number's plan (0.10 connect and 0.05 a minute: 0.20 for 120 s); it was re-rated by
    # the card's own plan (0.02), reported changed with no catalog change.
    await add_plan(app.services, "cards", deck=DECK_HEADER + "44,UK,0.010,0,1,1\n")
    await add_plan(app.services, "tollfree", deck=DECK_HEADER + "44,UK,0.050,0.100,1,1\n")
    await app.post("/v1/accounts", {"id": "card-1", "plan": "cards", "balance": "1.00"})
    response = await app.client.put(
        "/v1/plans/cards/access-numbers", json={"numbers": {"+18005550100": "tollfree"}}
    )
    assert response.status == 200, await response.text()

    async def loaded() -> bool:
        return app.services.catalog.snapshot.rating_plan("cards", "18005550100") == "tollfree"

    await eventually(loaded, what="the access number in the catalog")
    request = AuthorizeRequest("card-1", "442071234567", access_number="18005550100")
    grant = await app.services.calls.authorize(request)
    assert (await app.services.calls.stop(grant.call_id, 120)).charged == 200_000
    await cdrs_written(app, 1)
    stored = await app.services.pool.fetchrow("SELECT plan_id, rating_plan FROM cdrs")
    assert tuple(stored) == ("cards", "tollfree")
    same = await rerate(app.services.pool, app.services.catalog.snapshot, "cards")
    assert (same.cdrs, same.changed, same.total_then, same.total_now) == (
        1,
        0,
        200_000,
        200_000,
    ), same

    # The access number's plan now charges 0.075 a minute: 0.10 + 0.15 = 0.25.
    await new_deck(app, "tollfree", DECK_HEADER + "44,UK,0.075,0.100,1,1\n")
    report = await rerate(app.services.pool, app.services.catalog.snapshot, "cards")
    assert changes(report) == [("UK", 200_000, "UK", 250_000)]
    # A CDR written before migration 0074 names no rating plan: rated by its own plan's
    # deck, as before (120 s at 0.01 a minute).
    await app.services.pool.execute("UPDATE cdrs SET rating_plan = NULL")
    older = await rerate(app.services.pool, app.services.catalog.snapshot, "cards")
    assert changes(older) == [("UK", 200_000, "UK", 20_000)]


async def test_a_late_stop_is_rated_again_as_part_of_its_call(app: RunningApp) -> None:
    # The janitor closed a started call at its whole grant (an hour, 3.75) and its Stop
    # came later saying 60 s: the late stop gave back all but 0.21. Re-rating skipped
    # the late stop's CDR and rated the call at 3600 s.
    await add_plan(app.services, max_call_duration=3600)
    await app.post("/v1/accounts", {"id": "lost", "plan": "retail", "balance": "10.00"})
    calls = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("lost", "447700900123", call_id="lost-1"))
    assert grant.max_duration == 3600
    await calls.start("lost-1")
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1
    charge = await calls.stop("lost-1", 60)  # 0.15 connect + 60 s at 0.06 a minute
    assert (charge.charged, charge.cause) == (210_000, "late-stop")
    await cdrs_written(app, 2)
    same = await rerate(app.services.pool, app.services.catalog.snapshot, "retail")
    assert (same.cdrs, same.changed, same.total_then, same.total_now) == (
        1,
        0,
        210_000,
        210_000,
    ), same

    # UK Mobile doubles: the 60 s call is 0.15 + 0.12 (not 7.35, an hour of it).
    await new_deck(app, "retail", DECK_HEADER + "447,UK Mobile,0.120,0.150,30,6\n")
    report = await rerate(app.services.pool, app.services.catalog.snapshot, "retail")
    assert changes(report) == [("UK Mobile", 210_000, "UK Mobile", 270_000)]
    assert [line.duration for line in report.lines] == [60]


async def test_a_late_stop_of_either_form_is_rated_again_as_its_call(app: RunningApp) -> None:
    # Two calls closed as expired at their hour's grant whose Stops said 3700 s: 0.15 +
    # 3702 s (30/6) at 0.06 a minute, 3.852 each. A late stop written before 2ccb9c8 (the
    # release of migration 0051) held the whole call's 3700 s; since, the 100 s it adds.
    # The old form was added to the close: 7300 s, 7.452, changed with the catalog as it
    # was.
    await add_plan(app.services, max_call_duration=3600, max_lines=2)
    await app.post("/v1/accounts", {"id": "lost", "plan": "retail", "balance": "100.00"})
    calls = app.services.calls
    for call_id in ("old-form", "new-form"):
        await calls.authorize(AuthorizeRequest("lost", "447700900123", call_id=call_id))
        await calls.start(call_id)
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 2
    for call_id in ("old-form", "new-form"):
        charge = await calls.stop(call_id, 3700)
        assert (charge.rated, charge.cause) == (3_852_000, "late-stop")
    await cdrs_written(app, 4)
    pool = app.services.pool
    late = await pool.fetch(
        "SELECT duration, billed_seconds FROM cdrs WHERE termination_cause = 'late-stop'"
    )
    assert [tuple(row) for row in late] == [(100, 102), (100, 102)]
    # Both as a release before migration 0074 wrote them (no answer kept); old-form's
    # late stop as releases before 0051 wrote it, the call moved to before the upgrade.
    await pool.execute("UPDATE cdrs SET answered_at = NULL")
    marker = await pool.fetchval("SELECT applied_at FROM schema_migrations WHERE version = 51")
    await pool.execute(
        "UPDATE cdrs SET duration = 3700, billed_seconds = 3702"
        " WHERE call_id = 'old-form' AND termination_cause = 'late-stop'"
    )
    shift = await pool.fetchval(
        "SELECT max(stopped_at) - $1::timestamptz + interval '1 hour' FROM cdrs"
        " WHERE call_id = 'old-form'",
        marker,
    )
    await pool.execute(
        "UPDATE cdrs SET authorized_at = authorized_at - $1::interval,"
        " stopped_at = stopped_at - $1::interval WHERE call_id = 'old-form'",
        shift,
    )
    snapshot = app.services.catalog.snapshot
    same = await rerate(pool, snapshot, "retail")
    assert (same.cdrs, same.changed, same.total_then, same.total_now) == (
        2,
        0,
        7_704_000,
        7_704_000,
    ), same

    # An old-form late stop written after the upgrade's migrations (an old process not
    # yet restarted) is read as the new form by its time; only the old form rates it as
    # it was rated: read so, it is unchanged too.
    await pool.execute(
        "UPDATE cdrs SET stopped_at = now() WHERE call_id = 'old-form'"
        " AND termination_cause = 'late-stop'"
    )
    during = await rerate(pool, snapshot, "retail")
    assert (during.changed, during.total_now) == (0, 7_704_000), during
    await pool.execute(
        "UPDATE cdrs SET stopped_at = $1::timestamptz - interval '1 hour'"
        " WHERE call_id = 'old-form' AND termination_cause = 'late-stop'",
        marker,
    )

    # UK Mobile doubles: each call is 0.15 + 3702 s at 0.12 a minute, 7.554 (the old
    # form's was reported as 7300 s, 14.754).
    await new_deck(app, "retail", DECK_HEADER + "447,UK Mobile,0.120,0.150,30,6\n")
    report = await rerate(pool, app.services.catalog.snapshot, "retail")
    assert changes(report) == [("UK Mobile", 3_852_000, "UK Mobile", 7_554_000)] * 2
    assert [(line.call_id, line.duration) for line in report.lines] == [
        ("old-form", 3700),
        ("new-form", 3700),
    ]


LONDON = ZoneInfo("Europe/London")


async def test_a_banded_call_is_rated_again_from_its_answer(app: RunningApp) -> None:
    # UK is 0.01 a minute, 0.05 in peak (weekdays from 08:00). A call authorized Monday
    # 07:50 rang until 08:00 and talked 10 minutes, all in peak: 0.50. Re-rating placed
    # it from its authorization, 07:50-08:00 off-peak (0.10): changed, catalog unchanged.
    await add_plan(app.services, deck=DECK_HEADER + "44,UK,0.010,0,1,1\n")
    response = await app.client.put(
        "/v1/plans/retail/bands",
        json={
            "time_zone": "Europe/London",
            "rules": [{"band": "peak", "days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"}],
        },
    )
    assert response.status == 200, await response.text()

    async def peak_price(price: int) -> bool:
        plan = app.services.catalog.snapshot.plan("retail")
        found = app.services.catalog.snapshot.tariff_for("retail", "4420")
        prices = dict(found[1].rate.band_prices) if found else {}
        return bool(plan and plan.bands) and prices.get("peak") == price

    async def set_peak(price: str) -> None:
        response = await app.client.put(
            f"/v1/plans/retail/tariffs/{quote('UK')}/shape", json={"band_prices": {"peak": price}}
        )
        assert response.status == 200, await response.text()

    await set_peak("0.05")
    await eventually(lambda: peak_price(50_000), what="peak at 0.05 in the snapshot")
    await app.post("/v1/accounts", {"id": "band", "plan": "retail", "balance": "2.00"})
    authorized = datetime(2026, 11, 23, 7, 50, tzinfo=LONDON).timestamp()
    answered = int(datetime(2026, 11, 23, 8, 0, tzinfo=LONDON).timestamp())
    calls = CallService(
        app.services.catalog,
        app.services.store,
        app.services.settings,
        app.services.digests,
        clock=lambda: authorized,
    )
    await calls.authorize(
        AuthorizeRequest("band", "442079460000", call_id="rang"), Origin(wait_for_start=True)
    )
    await app.services.store.start(
        account_id="band", call_id="rang", started_at=answered, expires_at=answered + 3600
    )
    assert (await calls.stop("rang", 600)).charged == 500_000
    await cdrs_written(app, 1)
    stored = await app.services.pool.fetchval("SELECT answered_at FROM cdrs")
    assert int(stored.timestamp()) == answered
    same = await rerate(app.services.pool, app.services.catalog.snapshot, "retail")
    assert (same.cdrs, same.changed, same.total_then, same.total_now) == (
        1,
        0,
        500_000,
        500_000,
    ), same

    # Peak now costs 0.10 a minute: the 10 minutes from 08:00 are 1.00.
    await set_peak("0.10")
    await eventually(lambda: peak_price(100_000), what="peak at 0.10 in the snapshot")
    report = await rerate(app.services.pool, app.services.catalog.snapshot, "retail")
    assert changes(report) == [("UK", 500_000, "UK", 1_000_000)]
