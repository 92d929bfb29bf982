"""A plan's rate deck lives in its own partition of ``prefixes`` (migration 0012).

A plan's first deck is COPYed into a fresh table, indexed and attached in the
import's one transaction: after it the plan's rows are exactly the deck's and
every process rates by it; a failure anywhere on the way leaves no table, no
tariffs, no rows, and the snapshot serving as before. Later imports go by
difference into the partition. Databases from before 0012 migrate with their
rows in place.
"""

import asyncio
import uuid

import asyncpg
import numpy as np
import pytest

from ocs.charging import catalog_store
from ocs.charging.catalog import CatalogHolder, Plan, prefix_table
from ocs.charging.deck import parse_deck
from ocs.db import migrate as migrate_module
from ocs.db.migrate import migrate
from ocs.errors import OcsError
from ocs.services import Services
from tests.conftest import _with_database, add_plan, eventually
from tests.test_deck_reload import a_deck, deck_text, served, stored


def fresh_plan_id(stem: str) -> str:
    """A plan id no earlier test of the session used: its first import makes its partition."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


async def create(services: Services, plan_id: str) -> None:
    await catalog_store.create_plan(services.pool, Plan(plan_id, plan_id, "EUR", 0, 0, 1, 14_400))


async def partition_of(pool: asyncpg.Pool, plan_id: str) -> str | None:
    """The bound of the plan's table as a partition of ``prefixes``, or None."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c"
            " JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'prefixes'::regclass"
            " WHERE c.oid = to_regclass($1)",
            prefix_table(plan_id),
        )


async def table_exists(pool: asyncpg.Pool, plan_id: str) -> bool:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", prefix_table(plan_id))


async def tariff_count(pool: asyncpg.Pool, plan_id: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM tariffs WHERE plan_id = $1", plan_id)


async def test_a_first_import_fills_the_plans_own_partition_then_reimports_go_by_difference(
    services: Services,
) -> None:
    plan_id = fresh_plan_id("Retail-EU.2026")  # capitals, '-' and '.' in the partition bound
    await create(services, plan_id)
    assert await partition_of(services.pool, plan_id) is None
    prefixes, zones = a_deck(5_000, seed=11)
    # Prefixes beyond a sort key's 18 digits are written from the deck's text.
    long_a, long_b = "4477" + "1" * 18, "4477" + "1" * 17 + "2"
    zones |= {long_a: "Mobile", long_b: "Other"}
    prefixes = [*prefixes, long_b, long_a]

    first = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(prefixes, zones))
    )
    assert (first.added, first.changed, first.removed) == (len(prefixes), 0, 0)
    assert {"copy", "index", "attach", "commit"} <= set(first.stages)
    assert await partition_of(services.pool, plan_id) == f"FOR VALUES IN ('{plan_id}')"
    assert await stored(services, plan_id) == zones
    async with services.pool.acquire() as conn:
        # The primary key covers the partition; its rows are stored in prefix order.
        key = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = to_regclass($1) AND contype = 'p'",
            prefix_table(plan_id),
        )
        in_order = await conn.fetch(
            f'SELECT prefix FROM "{prefix_table(plan_id)}" ORDER BY ctid LIMIT 100'
        )
    assert key == "PRIMARY KEY (plan_id, prefix)"
    heads = [r["prefix"] for r in in_order]
    assert heads == sorted(heads)
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])
    await served(services, plan_id, long_a + "9", "Mobile")
    await served(services, plan_id, long_b + "9", "Other")

    # A daily re-import: a few rows gone, a few new, a few moved.
    gone, moved = prefixes[:10], prefixes[10:15]
    new = [f"9{i:07d}" for i in range(7)]
    kept = [p for p in prefixes if p not in gone] + new
    zones2 = {p: zones.get(p, "Other") for p in kept} | {p: "Other" for p in moved}
    daily = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(kept, zones2))
    )
    assert (daily.added, daily.changed, daily.removed) == (7, 5, 10)
    assert {"read", "plan", "write"} <= set(daily.stages)
    assert await stored(services, plan_id) == zones2
    await served(services, plan_id, moved[0] + "55", "Other")
    await served(services, plan_id, gone[0] + "55", None)
    await served(services, plan_id, new[0] + "55", "Other")

    # Most rows change: the partition's rows are replaced, the partition stays.
    prefixes3, zones3 = a_deck(3_000, seed=12)
    whole = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(prefixes3, zones3))
    )
    assert whole.added == len(prefixes3) and whole.removed == len(kept)
    assert await stored(services, plan_id) == zones3
    assert await partition_of(services.pool, plan_id) == f"FOR VALUES IN ('{plan_id}')"
    await served(services, plan_id, prefixes3[0] + "1", zones3[prefixes3[0]])


async def test_a_first_import_that_fails_on_the_way_leaves_nothing_behind(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(services, "serving")  # another plan's deck keeps serving throughout
    plan_id = fresh_plan_id("first")
    await create(services, plan_id)
    prefixes, zones = a_deck(2_000, seed=13)
    deck = parse_deck(deck_text(prefixes, zones))
    holder = services.catalog

    async def created() -> bool:
        return holder.snapshot.plan(plan_id) is not None

    await eventually(created, what="the new plan loaded")
    await asyncio.sleep(0.3)  # reloads of earlier notifications are done
    before = holder.snapshot

    # Fails at the very end, after COPY and index: the ATTACH finds rows of another plan.
    monkeypatch.setattr(
        catalog_store,
        "_ATTACH",
        "SELECT format('ALTER TABLE prefixes ATTACH PARTITION %I FOR VALUES IN (%L)',"
        " $1::text, $2::text || '-other')",
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await catalog_store.import_deck(services.pool, plan_id, deck)
    monkeypatch.undo()
    # Fails mid-COPY: the second chunk of COPY text cannot be written.
    written = 0
    copy_text = catalog_store._ordered_text

    def failing(*args: object) -> bytes:
        nonlocal written
        written += 1
        if written == 2:
            raise RuntimeError("disk full")
        return copy_text(*args)

    monkeypatch.setattr(catalog_store, "_COPY_CHUNK", 500)
    monkeypatch.setattr(catalog_store, "_ordered_text", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        await catalog_store.import_deck(services.pool, plan_id, deck)
    monkeypatch.undo()

    for _ in range(2):
        assert not await table_exists(services.pool, plan_id)
        assert await tariff_count(services.pool, plan_id) == 0
        assert await stored(services, plan_id) == {}
        await asyncio.sleep(0.2)  # no NOTIFY went out: nothing reloads
    assert holder.snapshot is before
    assert holder.snapshot.tariff_for("serving", "447700900123") is not None

    # The same deck then imports whole, as a first import.
    result = await catalog_store.import_deck(services.pool, plan_id, deck)
    assert result.added == len(prefixes) and "attach" in result.stages
    assert await stored(services, plan_id) == zones
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])


async def test_a_failed_reimport_leaves_the_old_deck_stored_and_serving(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = fresh_plan_id("reimport")
    await create(services, plan_id)
    prefixes, zones = a_deck(2_000, seed=14)
    await catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(prefixes, zones)))
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])
    await asyncio.sleep(0.3)  # reloads of earlier notifications are done
    version = services.catalog.version
    serving = services.catalog.snapshot

    new = [f"9{i:07d}" for i in range(5)]
    moved = prefixes[:3]
    zones2 = zones | {p: "Other" for p in [*moved, *new]}

    def broken(*args: object) -> bytes:
        raise RuntimeError("cannot write")

    monkeypatch.setattr(catalog_store, "_copy_text", broken)  # after the DELETE and UPDATE
    with pytest.raises(RuntimeError, match="cannot write"):
        await catalog_store.import_deck(
            services.pool, plan_id, parse_deck(deck_text([*prefixes, *new], zones2))
        )
    assert await stored(services, plan_id) == zones
    await asyncio.sleep(0.2)
    assert services.catalog.version == version and services.catalog.snapshot is serving


async def test_first_imports_into_two_plans_at_once_both_land(services: Services) -> None:
    plans = [fresh_plan_id("twin"), fresh_plan_id("twin")]
    decks = [a_deck(3_000, seed=15), a_deck(3_000, seed=16)]
    for plan_id in plans:
        await create(services, plan_id)
    results = await asyncio.gather(
        *(
            catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(*deck)))
            for plan_id, deck in zip(plans, decks, strict=True)
        )
    )
    for plan_id, (prefixes, zones), result in zip(plans, decks, results, strict=True):
        assert result.added == len(prefixes)
        assert await stored(services, plan_id) == zones
        await served(services, plan_id, prefixes[-1] + "1", zones[prefixes[-1]])


async def test_the_same_plans_first_import_twice_at_once_ends_with_one_deck(
    services: Services,
) -> None:
    plan_id = fresh_plan_id("race")
    await create(services, plan_id)
    (p1, z1), (p2, z2) = a_deck(2_000, seed=17), a_deck(2_000, seed=18)
    one, two = await asyncio.gather(
        catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(p1, z1))),
        catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(p2, z2))),
    )
    # The plan's row lock orders them: the second replaces the first's deck.
    assert sorted(["attach" in one.stages, "attach" in two.stages]) == [False, True]
    last = z2 if "attach" in one.stages else z1
    assert await stored(services, plan_id) == last


async def test_an_unknown_plan_gets_no_partition(services: Services) -> None:
    plan_id = fresh_plan_id("ghost")
    with pytest.raises(OcsError):
        await catalog_store.import_deck(
            services.pool, plan_id, parse_deck(deck_text(*a_deck(10, seed=19)))
        )
    assert not await table_exists(services.pool, plan_id)


async def test_migration_0012_moves_stored_decks_into_partitions_in_place(
    backend_urls: tuple[str, str],
) -> None:
    admin_url = backend_urls[1]
    name = f"ocs_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(_with_database(admin_url, name), min_size=1, max_size=4)
        try:
            await _migrate_with_decks(pool)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate_with_decks(pool: asyncpg.Pool) -> None:
    shipped = migrate_module.available_migrations()
    before = [m for m in shipped if m[0] < 12]
    original = migrate_module.available_migrations
    migrate_module.available_migrations = lambda: before  # type: ignore[assignment]
    try:
        assert max(await migrate(pool)) == 11
    finally:
        migrate_module.available_migrations = original  # type: ignore[assignment]
    # Two plans' decks the way 0011 stores them: one table, rows of both plans.
    rng = np.random.default_rng(20)
    decks = {
        "old-a": {str(p): "Fixed" for p in rng.integers(10**5, 10**7, 3_000)},
        "Tarifé.B": {str(p): "Mobile" for p in rng.integers(10**5, 10**7, 2_000)},
    }
    async with pool.acquire() as conn:
        zone_ids = {
            r["name"]: r["id"]
            for r in await conn.fetch(
                "INSERT INTO zones (name) VALUES ('Fixed'), ('Mobile') RETURNING id, name"
            )
        }
        for plan_id, rows in decks.items():
            await conn.execute(
                "INSERT INTO plans (id, name, currency) VALUES ($1, $1, 'EUR')", plan_id
            )
            zone = zone_ids[next(iter(rows.values()))]
            await conn.execute(
                "INSERT INTO tariffs (plan_id, zone_id, connect_fee, first_block, increment,"
                " price_per_minute) VALUES ($1, $2, 0, 60, 60, 10000)",
                plan_id,
                zone,
            )
            await conn.copy_records_to_table(
                "prefixes",
                records=[(plan_id, prefix, zone) for prefix in rows],
                columns=["plan_id", "prefix", "zone_id"],
            )
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'prefixes'")
            == "r"
        )

    assert await migrate(pool) == [12]

    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'prefixes'")
            == "p"
        )
        assert await conn.fetchval("SELECT to_regclass('prefixes_0011')") is None
        for plan_id, rows in decks.items():
            got = await conn.fetch(
                "SELECT p.prefix, z.name FROM prefixes p JOIN zones z ON z.id = p.zone_id"
                " WHERE p.plan_id = $1",
                plan_id,
            )
            assert {r["prefix"]: r["name"] for r in got} == rows
            assert await partition_of(pool, plan_id) == f"FOR VALUES IN ('{plan_id}')"
    # A re-import after the migration goes by difference into the moved rows.
    rows = dict(decks["old-a"])
    gone = next(iter(rows))
    del rows[gone]
    result = await catalog_store.import_deck(pool, "old-a", parse_deck(deck_text(list(rows), rows)))
    assert (result.added, result.changed, result.removed) == (0, 0, 1)
    holder = CatalogHolder(pool)
    await holder.start()
    try:

        async def rates() -> bool:
            match = holder.snapshot.tariff_for("Tarifé.B", next(iter(decks["Tarifé.B"])) + "1")
            return match is not None and match[1].zone == "Mobile"

        await eventually(rates, what="the migrated deck rated")
        assert holder.snapshot.tariff_for("old-a", gone + "1") is None
    finally:
        await holder.stop()
