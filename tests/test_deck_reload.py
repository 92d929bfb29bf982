"""Large decks replace the old whole, and a reload rebuilds only the deck that changed.

An import counts what changed against the plan's current deck (prefixes new,
moved to another zone, gone) and leaves exactly the new deck behind. A catalog
NOTIFY names the plan; every serving process rebuilds that plan's deck beside
the old snapshot, keeps the others, and on a failed reload goes on serving the
old snapshot and tries again on a timer. A LISTEN connection PostgreSQL drops
is replaced and the whole catalog reloaded; a change committed while a process
starts, as it loads the catalog, is served.
"""

import logging
from typing import Any

import asyncpg
import pytest

from ocs.catalog import snapshot as catalog
from ocs.catalog import store as catalog_store
from ocs.decks.rate_deck import parse_deck
from ocs.services import Services
from tests.conftest import add_plan, caught_up, eventually
from tests.deck_helpers import HEADER, a_deck, deck_text, served, stored
from tests.radius_udp import sample


async def test_a_reimport_counts_the_difference_and_leaves_the_new_deck(
    services: Services,
) -> None:
    await add_plan(services, "big", deck=HEADER + "1,Other,0.5,0,1,1\n")
    prefixes, zones = a_deck(5_000, seed=1)
    first = await catalog_store.import_deck(
        services.pool, "big", parse_deck(deck_text(prefixes, zones))
    )
    # The plan's one-row deck is replaced: its one prefix is gone.
    assert (first.prefixes, first.added, first.removed) == (len(prefixes), len(prefixes), 1)
    assert await stored(services, "big") == zones

    # The daily reload: a few prefixes gone, a few new, a few moved to another zone.
    gone, moved = prefixes[:10], prefixes[10:15]
    new = [f"9{i:07d}" for i in range(7)]
    kept = [p for p in prefixes if p not in gone] + new
    zones2 = {p: zones.get(p, "Other") for p in kept} | {p: "Other" for p in moved}
    result = await catalog_store.import_deck(
        services.pool, "big", parse_deck(deck_text(kept, zones2))
    )
    assert (result.added, result.changed, result.removed) == (7, 5, 10)
    assert (result.prefixes, result.zones) == (len(kept), 3)
    assert await stored(services, "big") == zones2
    await served(services, "big", moved[0] + "55", "Other")
    await served(services, "big", gone[0] + "55", None)
    await served(services, "big", new[0] + "55", "Other")

    # Most rows change: everything is written anew.
    prefixes3, zones3 = a_deck(3_000, seed=2)
    result = await catalog_store.import_deck(
        services.pool, "big", parse_deck(deck_text(prefixes3, zones3))
    )
    assert result.added == len(prefixes3) and result.removed == len(kept)
    assert await stored(services, "big") == zones3
    await served(services, "big", prefixes3[0] + "1", zones3[prefixes3[0]])


async def test_a_deck_change_rebuilds_that_plan_only(services: Services) -> None:
    await add_plan(services, "a")
    await add_plan(services, "b")
    await caught_up(services)  # the plans' own notifications reload nothing after this
    before = services.catalog.snapshot
    deck_a = before.decks["a"]
    deck_b = before.decks["b"]
    await catalog_store.import_deck(
        services.pool, "b", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
    )
    await served(services, "b", "33123456", "France")
    after = services.catalog.snapshot
    assert after.decks["a"] is deck_a  # untouched: not rebuilt
    assert after.decks["b"] is not deck_b
    assert after.tariff_for("a", "447700900123") == before.tariff_for("a", "447700900123")


async def test_caught_up_returns_once_every_notified_change_is_served(
    services: Services,
) -> None:
    await add_plan(services, "a")
    await catalog_store.import_deck(
        services.pool, "a", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
    )
    version = await caught_up(services)  # no polling: the import's NOTIFY is applied
    match = services.catalog.snapshot.tariff_for("a", "33123456")
    assert match is not None and match[1].zone == "France"
    assert version == services.catalog.version
    # Nothing changed since: the barrier's own marker reloads nothing.
    assert await caught_up(services) == version


async def test_a_failed_reload_keeps_the_old_snapshot_serving(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await add_plan(services, "a")
    await caught_up(services)  # the plan's own notifications reload nothing after this
    holder = services.catalog
    serving = holder.snapshot
    version = holder.version

    def broken(data: bytes, tariffs: catalog.PlanTariffs) -> None:
        raise ValueError("prefix 'x': expected 1 to 32 digits")

    monkeypatch.setattr(catalog, "build_deck", broken)
    with caplog.at_level(logging.ERROR, logger="ocs.catalog"):
        await catalog_store.import_deck(
            services.pool, "a", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
        )

        async def reported() -> bool:
            return "catalog reload failed" in caplog.text

        await eventually(reported, what="the failed reload to be logged")
    assert "expected 1 to 32 digits" in caplog.text
    assert holder.snapshot is serving and holder.version == version
    assert holder.snapshot.tariff_for("a", "447700900123") is not None  # the old deck

    monkeypatch.undo()
    await catalog_store.create_plan(services.pool, catalog.Plan("c", "c", "EUR", 0, 0, 1, 14_400))
    # After a failure the next change rebuilds everything, the missed deck included.
    await served(services, "a", "33123456", "France")
    await served(services, "a", "447700900123", None)


async def test_a_failed_reload_is_tried_again_without_waiting_for_another_change(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that fails (PostgreSQL away for a moment, say) is retried on a timer: the
    snapshot does not stay behind the catalog until some other change happens."""
    await add_plan(services, "a")
    await caught_up(services)
    services.catalog.retry_s = 0.05
    failures = sample("ocs_catalog_reload_failures_total")

    def broken(data: bytes, tariffs: catalog.PlanTariffs) -> None:
        raise ConnectionResetError("connection was closed in the middle of operation")

    monkeypatch.setattr(catalog, "build_deck", broken)
    await catalog_store.import_deck(
        services.pool, "a", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
    )

    async def failed() -> bool:
        return sample("ocs_catalog_reload_failures_total") > failures

    await eventually(failed, what="the reload to fail")
    monkeypatch.undo()
    # No further change: the retry alone brings the new deck in.
    await served(services, "a", "33123456", "France")


async def test_a_dropped_listen_connection_is_replaced_and_the_catalog_reloaded(
    services: Services,
) -> None:
    """PostgreSQL ends the LISTEN connection (a restart, a failover, idle_session_timeout,
    pg_terminate_backend): ocs takes another, reloads the whole catalog (changes sent
    meanwhile are lost with the old one), counts it, and follows later changes again."""
    await add_plan(services, "a")
    await caught_up(services)
    listener = services.catalog.listener
    assert listener is not None and listener.connection is not None
    lost = listener.connection
    reconnects = sample("ocs_pg_listener_reconnects_total", listener="catalog")
    version = services.catalog.version
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", lost.get_server_pid())

    async def replaced() -> bool:
        now = listener.connection
        return now is not None and now is not lost and services.catalog.version > version

    await eventually(replaced, what="a new LISTEN connection and a full reload")
    assert sample("ocs_pg_listener_reconnects_total", listener="catalog") == reconnects + 1
    # Changes after the loss reach the snapshot.
    await catalog_store.create_plan(services.pool, catalog.Plan("c", "c", "EUR", 0, 0, 1, 14_400))
    await catalog_store.import_deck(
        services.pool, "c", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
    )
    await served(services, "c", "33123456", "France")
    assert await caught_up(services) == services.catalog.version


async def test_a_price_changed_while_a_process_starts_is_served(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate deck reimported while a serving process starts, committed after it read the
    catalog and before it would have begun to LISTEN: the new price is served, where the
    old one was until some later change.

    The starting process has a pool of its own, and only its loads are intercepted: the
    fixture's holder calls the same module function (reloads that ``add_plan``'s own
    notifications start may still be running), and a load of its counted as the start's
    first made the change in no load at all, or in one beside the start's, which proves
    nothing."""
    await add_plan(services, "a", deck=HEADER + "33,France,0.030,0,60,60\n")
    read_at_start = catalog.load_snapshot
    assert services.settings.database_url is not None
    starting = await asyncpg.create_pool(services.settings.database_url, min_size=1, max_size=3)
    loads: list[catalog.CatalogSnapshot] = []

    async def read_then_the_price_changed(
        pool: asyncpg.Pool, *args: Any, **kwargs: Any
    ) -> catalog.CatalogSnapshot:
        if pool is not starting:
            return await read_at_start(pool, *args, **kwargs)
        read = await read_at_start(pool, *args, **kwargs)
        loads.append(read)
        if len(loads) == 1:
            await catalog_store.import_deck(
                services.pool, "a", parse_deck(HEADER + "33,France,0.045,0,60,60\n")
            )
        return read

    monkeypatch.setattr(catalog, "load_snapshot", read_then_the_price_changed)
    holder = catalog.CatalogHolder(starting)
    try:
        await holder.start()
        # The start's own load read the old price; the change came after it.
        match = loads[0].tariff_for("a", "33123456")
        assert match is not None and match[1].rate.price_per_minute == 30_000

        async def new_price() -> bool:
            match = holder.snapshot.tariff_for("a", "33123456")
            return match is not None and match[1].rate.price_per_minute == 45_000

        await eventually(new_price, what="0.045 a minute to France on plan a")
        # Nothing missed: a later change is followed too.
        await catalog_store.import_deck(
            services.pool, "a", parse_deck(HEADER + "33,France,0.050,0,60,60\n")
        )

        async def later_price() -> bool:
            match = holder.snapshot.tariff_for("a", "33123456")
            return match is not None and match[1].rate.price_per_minute == 50_000

        await eventually(later_price, what="0.050 a minute to France on plan a")
    finally:
        await holder.stop()
        await starting.close()


async def test_prefixes_longer_than_a_key_are_compared_as_text(services: Services) -> None:
    long_a, long_b, long_c = "4477" + "1" * 18, "4477" + "1" * 17 + "2", "4477" + "2" * 18
    others = [str(4400 + i) for i in range(40)]
    zones = {p: "Fixed" for p in others} | {long_a: "Mobile", long_b: "Mobile", long_c: "Fixed"}
    await add_plan(services, "long", deck=deck_text([*others, long_a, long_b, long_c], zones))
    # long_a stays, long_b moves zone, long_c goes: a small difference, written row-wise.
    zones2 = {p: "Fixed" for p in others} | {long_a: "Mobile", long_b: "Other"}
    result = await catalog_store.import_deck(
        services.pool, "long", parse_deck(deck_text([*others, long_a, long_b], zones2))
    )
    assert (result.added, result.changed, result.removed) == (0, 1, 1)
    assert await stored(services, "long") == zones2
    await served(services, "long", long_b + "9", "Other")
    await served(services, "long", long_a + "9", "Mobile")
    await served(services, "long", long_c + "9", None)
