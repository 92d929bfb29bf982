"""Re-rating CDRs with today's catalog: the rating function that rated each, no money moved."""

import json
from pathlib import Path
from urllib.parse import quote

from ocs.balances.accounts import AccountSpec
from ocs.billing.rerate import rerate
from ocs.catalog import store as catalog_store
from ocs.charging.values import AuthorizeRequest
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
