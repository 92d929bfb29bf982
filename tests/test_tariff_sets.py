"""Tariffs stored as one document a plan (migration 0041, ocs.decks.tariff_sets): the
migration keeps every stored shape, the ``tariffs`` view reads as the old table did,
and a reload reads only the plans a change names."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import RATE_COLUMNS, Plan, load_snapshot, rate_from_row
from ocs.db import migrate as migrate_module
from ocs.db.migrate import migrate
from ocs.decks.rate_deck import parse_deck
from ocs.decks.tariff_sets import (
    StoredTariff,
    read_tariff_sets,
    read_tariffs,
    stored_zones,
    tariffs_document,
)
from ocs.rating.rates import Rate, Tier
from ocs.services import Services
from tests.conftest import caught_up, eventually, with_database

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment"
SHAPED = Rate(
    50_000,
    30,
    6,
    120_000,
    tiers=(Tier(900, 100_000, 60), Tier(3_600, 50_000, 60, 500_000)),
    max_cost=5_000_000,
    cut_at_max_cost=True,
    per=1,
    surcharge_percent_bp=250,
    surcharge_flat=10_000,
    band_prices=(("offpeak", 10_000), ("peak", 20_000)),
)
# (zone, direction, connect_fee, first_block, increment, price, tiers, max_cost, cut,
#  percent_bp, flat, band_prices, per) as 0040's table held them.
OLD_ROWS = [
    ("Ger, many: Ü", "outbound", 0, 1, 1, 12_000, "[]", 0, False, 0, 0, "{}", 60),
    ("UK", "outbound", 50_000, 30, 6, 120_000,
     '[{"start": 900, "price_per_minute": 100000, "increment": 60, "flat": 0},'
     ' {"start": 3600, "price_per_minute": 50000, "increment": 60, "flat": 500000}]',
     5_000_000, True, 250, 10_000, '{"peak": 20000, "offpeak": 10000}', 1),
    ("UK", "inbound", 0, 1, 1, 5_000, "[]", 1_000_000, False, 0, 0, "{}", 60),
]  # fmt: skip
VIEW_COLUMNS = (
    "zone_id, direction, connect_fee, first_block, increment, price_per_minute, tiers::text,"
    " max_cost, cut_at_max_cost, surcharge_percent_bp, surcharge_flat, band_prices::text, per"
)


def test_a_document_reads_back_its_tariffs() -> None:
    tariffs = [
        StoredTariff(3, "A, b: c", "inbound", SHAPED),
        StoredTariff(3, "A, b: c", "outbound", Rate(0, 60, 60, 1_000)),
    ]
    document = tariffs_document(tariffs)
    assert read_tariffs(document) == tariffs
    # Rates in their array form, as the migration's ``tariffs`` view reads them.
    assert document.endswith(b'[3,"A, b: c","outbound",[0,60,60,1000,[],0,false,60,0,0,[]]]]')
    # A rate with its trailing defaults left out reads as the whole one.
    assert read_tariffs(b'[[3,"A, b: c","outbound",[0,60,60,1000]]]') == tariffs[1:]
    # An import reads the zones and only the rates with a shape.
    assert stored_zones(document) == ({"A, b: c": 3}, {(3, "inbound"): SHAPED})
    assert stored_zones(b'[[3,"A","outbound",[0, 60, 60, 1000, [], 0, false, 60, 0, 0, []]]]') == (
        {"A": 3},
        {},
    )


async def test_the_migration_keeps_every_tariff_and_the_view_reads_as_the_table(
    backend_urls: tuple[str, str],
) -> None:
    admin_url = backend_urls[1]
    name = f"ocs_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(with_database(admin_url, name), min_size=1, max_size=4)
        try:
            await _migrate_with_tariffs(pool)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate_with_tariffs(pool: asyncpg.Pool) -> None:
    shipped = migrate_module.available_migrations()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            migrate_module, "available_migrations", lambda: [m for m in shipped if m[0] < 41]
        )
        assert max(await migrate(pool)) == 40
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO plans (id, name, currency) VALUES ('p', 'p', 'EUR')")
        await conn.execute("INSERT INTO zones (name) VALUES ('Unused')")
        for zone, *values in OLD_ROWS:
            zone_id = await conn.fetchval(
                "INSERT INTO zones (name) VALUES ($1) ON CONFLICT (name)"
                " DO UPDATE SET name = EXCLUDED.name RETURNING id",
                zone,
            )
            await conn.execute(
                "INSERT INTO tariffs (plan_id, zone_id, direction, connect_fee, first_block,"
                " increment, price_per_minute, tiers, max_cost, cut_at_max_cost,"
                " surcharge_percent_bp, surcharge_flat, band_prices, per)"
                " VALUES ('p', $1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12::jsonb,"
                " $13)",
                zone_id,
                *values,
            )
        before = [
            tuple(r.values())
            for r in await conn.fetch(f"SELECT {VIEW_COLUMNS} FROM tariffs ORDER BY 1, 2")
        ]
        # The rates as the reload read them from the table (rate_from_row).
        expected = {
            (r["name"], r["direction"]): rate_from_row(r)
            for r in await conn.fetch(
                f"SELECT z.name, t.direction, {RATE_COLUMNS} FROM tariffs t"
                " JOIN zones z ON z.id = t.zone_id"
            )
        }
    # 0041 first (later migrations follow it).
    assert (await migrate(pool))[0] == 41
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'tariffs'")
            == "v"
        )
        after = [
            tuple(r.values())
            for r in await conn.fetch(f"SELECT {VIEW_COLUMNS} FROM tariffs ORDER BY 1, 2")
        ]
    assert after == before
    snapshot = await load_snapshot(pool)
    got = {
        (t.zone, direction): t.rate
        for direction, kind in (
            ("outbound", snapshot.tariffs),
            ("inbound", snapshot.inbound_tariffs),
        )
        for t in kind["p"].tariffs
    }
    assert got == expected
    uk = snapshot.tariff_named("p", "UK")
    assert uk is not None and uk.rate == SHAPED
    # An import after the migration keeps the zone ids and the shapes stored.
    deck = f'{HEADER}\n44,UK,0.12,0.05,30,6\n49,"Ger, many: Ü",0.012,0,1,1\n'
    await catalog_store.import_deck(pool, "p", parse_deck(deck))
    again = await load_snapshot(pool)
    assert again.tariffs == snapshot.tariffs
    async with pool.acquire() as conn:
        # The deck has no direction column: the inbound tariff goes.
        assert await conn.fetchval("SELECT count(*) FROM tariffs WHERE plan_id = 'p'") == 2


async def test_a_reload_reads_only_the_tariffs_of_the_plans_it_names(services: Services) -> None:
    pool = services.pool
    for plan in ("a", "b"):
        await catalog_store.create_plan(pool, Plan(plan, plan, "EUR", 0, 0, 1, 60))
        await catalog_store.import_deck(pool, plan, parse_deck(f"{HEADER}\n44,UK,0.10,0,60,60\n"))
    first = await load_snapshot(pool)
    # A change no notification names (a hand edit) stays unseen until a full reload...
    async with pool.acquire() as conn:
        document = (await read_tariff_sets(conn, ["b"]))["b"]
        edited = document.replace(b"60,60,100000,", b"60,60,200000,")
        assert edited != document
        await conn.execute("UPDATE tariff_sets SET document = $1 WHERE plan_id = 'b'", edited)
    kept = await load_snapshot(pool, first, {"a"})
    assert kept.tariffs["b"] is first.tariffs["b"]
    assert kept.decks["b"] is first.decks["b"]
    assert kept.tariff_for("b", "4412")[1].rate.price_per_minute == 100_000  # type: ignore[index]
    # ...and is read when its plan is named.
    named = await load_snapshot(pool, first, {"b"})
    assert named.tariffs["a"] is first.tariffs["a"]
    assert named.tariff_for("b", "4412")[1].rate.price_per_minute == 200_000  # type: ignore[index]
    assert (await load_snapshot(pool)).tariff_for("b", "4412")[1].rate.price_per_minute == 200_000  # type: ignore[index]


async def test_a_shape_set_through_the_api_rewrites_only_its_tariff(services: Services) -> None:
    pool = services.pool
    await catalog_store.create_plan(pool, Plan("p", "p", "EUR", 0, 0, 1, 60))
    deck = f"{HEADER}\n44,UK,0.10,0,60,60\n33,France,0.20,0,60,60\n"
    await catalog_store.import_deck(pool, "p", parse_deck(deck))
    before = {t.zone: t.rate for t in (await load_snapshot(pool)).tariffs["p"].tariffs}
    await catalog_store.set_tariff_shape(pool, "p", "UK", (), 2_000_000, True)
    await caught_up(services)
    after = {t.zone: t.rate for t in services.catalog.snapshot.tariffs["p"].tariffs}
    assert after["France"] == before["France"]
    assert after["UK"] == Rate(0, 60, 60, 100_000, max_cost=2_000_000, cut_at_max_cost=True)


async def test_a_zone_another_import_adds_meanwhile_is_taken_as_it_is(services: Services) -> None:
    pool = services.pool
    await catalog_store.create_plan(pool, Plan("p", "p", "EUR", 0, 0, 1, 60))
    deck = parse_deck(f"{HEADER}\n44,UK,0.10,0,60,60\n33,France,0.20,0,60,60\n")
    async with pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        france = await other.fetchval("INSERT INTO zones (name) VALUES ('France') RETURNING id")
        # The import waits on the uncommitted name, then finds it taken when it commits.
        importing = asyncio.create_task(catalog_store.import_deck(pool, "p", deck))
        await eventually(
            lambda: _waiting_on_a_lock(pool), what="the import waiting for the other insert"
        )
        await transaction.commit()
    result = await importing
    assert (result.prefixes, result.zones) == (2, 2)
    async with pool.acquire() as conn:
        stored = read_tariffs((await read_tariff_sets(conn, ["p"]))["p"])
        assert {t.zone: t.zone_id for t in stored}["France"] == france
        assert await conn.fetchval("SELECT count(*) FROM zones") == 2


async def _waiting_on_a_lock(pool: asyncpg.Pool) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    )
    return bool(waiting)
