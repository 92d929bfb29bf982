"""Re-rating CDRs with today's catalog: same rating function, batch matched, no money moved."""

import json
from pathlib import Path

from ocs.balances.accounts import AccountSpec
from ocs.billing.rerate import rerate
from ocs.catalog import store as catalog_store
from ocs.charging.values import AuthorizeRequest
from ocs.decks.rate_deck import parse_deck
from ocs.rating.rates import cost
from tests.conftest import RETAIL_DECK, RunningApp, add_plan, eventually
from tests.helpers import ocs_cli

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
