"""A plan's rate deck is stored as one document, ``decks.lines`` (migration 0013).

An import replaces the plan's document whole in its one transaction: after it
the stored deck is exactly the new one, in prefix order, and every process
rates by it; a failure anywhere on the way leaves the old deck (or none), the
old tariffs and the snapshot serving as before, and sends no notification.
``prefixes`` stays readable as a view. Databases from before 0013 migrate with
their decks in place.
"""

import asyncio
import uuid

import asyncpg
import numpy as np
import pytest

from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import CatalogHolder, Plan
from ocs.db import migrate as migrate_module
from ocs.db.migrate import migrate
from ocs.decks.rate_deck import parse_deck
from ocs.errors import OcsError
from ocs.services import Services
from tests.conftest import add_plan, caught_up, eventually, with_database
from tests.deck_helpers import a_deck, deck_text, served, stored


async def create(services: Services, plan_id: str) -> None:
    await catalog_store.create_plan(services.pool, Plan(plan_id, plan_id, "EUR", 0, 0, 1, 14_400))


async def document(pool: asyncpg.Pool, plan_id: str) -> tuple[int, list[str]] | None:
    """The plan's stored deck: (its prefix count, its lines), or None."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT prefixes, lines FROM decks WHERE plan_id = $1", plan_id)
    if row is None:
        return None
    text = bytes(row["lines"]).decode()
    assert text.endswith("\n")
    return row["prefixes"], text[:-1].split("\n")


async def tariff_count(pool: asyncpg.Pool, plan_id: str) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM tariffs WHERE plan_id = $1", plan_id)


async def settled(services: Services, plan_id: str) -> None:
    """The plan is in the snapshot and the reloads its creation caused are over."""

    async def loaded() -> bool:
        return services.catalog.snapshot.plan(plan_id) is not None

    await eventually(loaded, what=f"plan {plan_id} loaded")
    await caught_up(services)


async def test_an_import_stores_one_sorted_document_and_later_ones_replace_it(
    services: Services,
) -> None:
    plan_id = "Retail-EU.2026"
    await create(services, plan_id)
    prefixes, zones = a_deck(5_000, seed=11)
    # Prefixes beyond a sort key's 18 digits are written from the deck's text.
    long_a, long_b = "4477" + "1" * 18, "4477" + "1" * 17 + "2"
    zones |= {long_a: "Mobile", long_b: "Other"}
    prefixes = [*prefixes[::-1], long_b, long_a]  # the file need not be sorted

    first = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(prefixes, zones))
    )
    assert (first.prefixes, first.added, first.changed, first.removed) == (
        len(prefixes),
        len(prefixes),
        0,
        0,
    )
    assert {"tariffs", "lines", "write", "commit"} <= set(first.stages)
    count, lines = await document(services.pool, plan_id) or (0, [])
    assert count == len(lines) == len(prefixes)
    assert [line.split("\t")[0] for line in lines] == sorted(prefixes)
    # The view gives the rows, zone ids and all.
    assert await stored(services, plan_id) == zones
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])
    await served(services, plan_id, long_a + "9", "Mobile")
    await served(services, plan_id, long_b + "9", "Other")

    # A daily re-import: a few rows gone, a few new, a few moved (two of them long).
    gone, moved = prefixes[:10], [*prefixes[10:13], long_a]
    new = [f"9{i:07d}" for i in range(7)]
    kept = [p for p in prefixes if p not in gone] + new
    zones2 = {p: zones.get(p, "Other") for p in kept} | {p: "Other" for p in moved}
    daily = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(kept, zones2))
    )
    assert (daily.added, daily.changed, daily.removed) == (7, 4, 10)
    assert await stored(services, plan_id) == zones2
    await served(services, plan_id, moved[0] + "55", "Other")
    await served(services, plan_id, long_a + "9", "Other")
    await served(services, plan_id, gone[0] + "55", None)
    await served(services, plan_id, new[0] + "55", "Other")

    # Another deck altogether.
    prefixes3, zones3 = a_deck(3_000, seed=12)
    whole = await catalog_store.import_deck(
        services.pool, plan_id, parse_deck(deck_text(prefixes3, zones3))
    )
    common = len(set(prefixes3) & set(kept))
    assert (whole.added, whole.removed) == (len(prefixes3) - common, len(kept) - common)
    assert await stored(services, plan_id) == zones3
    await served(services, plan_id, prefixes3[0] + "1", zones3[prefixes3[0]])
    await served(services, plan_id, new[0] + "55", None)

    # An empty deck: the plan keeps no prefixes and rates nothing.
    empty = await catalog_store.import_deck(services.pool, plan_id, [])
    assert (empty.prefixes, empty.added, empty.removed) == (0, 0, len(prefixes3))
    assert await document(services.pool, plan_id) is None
    await served(services, plan_id, prefixes3[0] + "1", None)


async def test_a_first_import_that_fails_on_the_way_leaves_nothing_behind(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(services, "serving")  # another plan's deck keeps serving throughout
    plan_id = "first"
    await create(services, plan_id)
    prefixes, zones = a_deck(2_000, seed=13)
    deck = parse_deck(deck_text(prefixes, zones))
    await settled(services, plan_id)
    before = services.catalog.snapshot

    # Fails in PostgreSQL, at the very end: the document breaks a constraint.
    monkeypatch.setattr(
        catalog_store,
        "_WRITE_DECK",
        "INSERT INTO decks (plan_id, prefixes, lines) VALUES ($1, -$2::int, $3)",
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await catalog_store.import_deck(services.pool, plan_id, deck)
    monkeypatch.undo()
    # Fails in the worker thread writing the lines, after the tariffs were written.

    def failing(*args: object) -> bytes:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(catalog_store, "_deck_lines", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        await catalog_store.import_deck(services.pool, plan_id, deck)
    monkeypatch.undo()

    for _ in range(2):
        assert await document(services.pool, plan_id) is None
        assert await tariff_count(services.pool, plan_id) == 0
        assert await stored(services, plan_id) == {}
        # Any NOTIFY sent would have been applied by now: none went out, nothing reloads.
        await caught_up(services)
    assert services.catalog.snapshot is before
    assert services.catalog.snapshot.tariff_for("serving", "447700900123") is not None

    # The same deck then imports whole.
    result = await catalog_store.import_deck(services.pool, plan_id, deck)
    assert result.added == len(prefixes)
    assert await stored(services, plan_id) == zones
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])


async def test_a_failed_reimport_leaves_the_old_deck_stored_and_serving(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = "reimport"
    await create(services, plan_id)
    prefixes, zones = a_deck(2_000, seed=14)
    await catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(prefixes, zones)))
    await served(services, plan_id, prefixes[0] + "1", zones[prefixes[0]])
    await caught_up(services)  # reloads of earlier notifications are done
    version = services.catalog.version
    serving = services.catalog.snapshot
    stored_before = await document(services.pool, plan_id)

    new = [f"9{i:07d}" for i in range(5)]
    moved = prefixes[:3]
    zones2 = zones | {p: "Other" for p in [*moved, *new]}

    def broken(*args: object) -> tuple[int, int, int]:
        raise RuntimeError("cannot count")

    monkeypatch.setattr(catalog_store, "_difference", broken)  # beside the write
    with pytest.raises(RuntimeError, match="cannot count"):
        await catalog_store.import_deck(
            services.pool, plan_id, parse_deck(deck_text([*prefixes, *new], zones2))
        )
    assert await document(services.pool, plan_id) == stored_before
    assert await stored(services, plan_id) == zones
    await caught_up(services)
    assert services.catalog.version == version and services.catalog.snapshot is serving


async def test_imports_into_two_plans_at_once_both_land(services: Services) -> None:
    plans = ["twin-a", "twin-b"]
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


async def test_the_same_plans_import_twice_at_once_ends_with_one_deck(
    services: Services,
) -> None:
    plan_id = "race"
    await create(services, plan_id)
    (p1, z1), (p2, z2) = a_deck(2_000, seed=17), a_deck(2_000, seed=18)
    one, two = await asyncio.gather(
        catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(p1, z1))),
        catalog_store.import_deck(services.pool, plan_id, parse_deck(deck_text(p2, z2))),
    )
    # The plan's row lock orders them: the second finds the first's deck and replaces it.
    firsts = [r for r in (one, two) if r.removed == 0]
    assert len(firsts) == 1 and firsts[0].added == firsts[0].prefixes
    last = z2 if firsts[0] is one else z1
    assert await stored(services, plan_id) == last
    await served(services, plan_id, next(iter(last)) + "1", last[next(iter(last))])


async def test_an_unknown_plan_stores_nothing(services: Services) -> None:
    with pytest.raises(OcsError) as refused:
        await catalog_store.import_deck(
            services.pool, "ghost", parse_deck(deck_text(*a_deck(10, seed=19)))
        )
    assert refused.value.field == "plan"
    assert await document(services.pool, "ghost") is None


async def test_migration_0013_turns_each_plans_partition_into_its_document(
    backend_urls: tuple[str, str],
) -> None:
    admin_url = backend_urls[1]
    name = f"ocs_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await asyncpg.create_pool(with_database(admin_url, name), min_size=1, max_size=4)
        try:
            await _migrate_with_decks(pool)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate_with_decks(pool: asyncpg.Pool) -> None:
    shipped = migrate_module.available_migrations()
    before = [m for m in shipped if m[0] < 13]
    original = migrate_module.available_migrations
    migrate_module.available_migrations = lambda: before  # type: ignore[assignment]
    try:
        assert max(await migrate(pool)) == 12
    finally:
        migrate_module.available_migrations = original  # type: ignore[assignment]
    # Two plans' decks the way 0012 stores them: a partition of `prefixes` each.
    rng = np.random.default_rng(20)
    decks = {
        "old-a": {str(p): "Fixed" for p in rng.integers(10**5, 10**7, 3_000)},
        "Tarifé.B": {str(p): "Mobile" for p in rng.integers(10**5, 10**7, 2_000)},
    }
    decks["old-a"]["1" * 25] = "Fixed"  # longer than a key
    async with pool.acquire() as conn:
        zone_ids = {
            r["name"]: r["id"]
            for r in await conn.fetch(
                "INSERT INTO zones (name) VALUES ('Fixed'), ('Mobile') RETURNING id, name"
            )
        }
        for n, (plan_id, rows) in enumerate(decks.items()):
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
            await conn.execute(
                f"CREATE TABLE part_{n} PARTITION OF prefixes FOR VALUES IN ('{plan_id}')"
            )
            await conn.copy_records_to_table(
                "prefixes",
                records=[(plan_id, prefix, zone) for prefix in rows],
                columns=["plan_id", "prefix", "zone_id"],
            )

    assert await migrate(pool) == [m[0] for m in shipped if m[0] >= 13]

    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'prefixes'")
            == "v"
        )
        assert await conn.fetchval("SELECT to_regclass('part_0')") is None
        for plan_id, rows in decks.items():
            got = await conn.fetch(
                "SELECT p.prefix, z.name FROM prefixes p JOIN zones z ON z.id = p.zone_id"
                " WHERE p.plan_id = $1",
                plan_id,
            )
            assert {r["prefix"]: r["name"] for r in got} == rows
            count, lines = await document(pool, plan_id) or (0, [])
            assert count == len(rows)
            assert [line.split("\t")[0] for line in lines] == sorted(rows)
    # A re-import after the migration compares with the migrated document.
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
        assert holder.snapshot.tariff_for("old-a", "1" * 26) is not None
    finally:
        await holder.stop()
