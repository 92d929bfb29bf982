"""A process whose LISTEN connection is lost misses every catalog and NAS client change
until it has reconnected and reloaded: /readyz says so meanwhile, naming the listener.

The network path to PostgreSQL is broken for real, by a TCP relay in front of the
server (``PgRelay``): new connections closed at once (a server away), and the bytes of
an open connection held without closing it (half-open: only the ``SELECT 1`` liveness
check can find it).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ocs.backend_health import BackendHealth
from ocs.catalog import snapshot as catalog
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import CatalogHolder
from ocs.db import listener as listener_module
from ocs.decks.rate_deck import parse_deck
from ocs.radius.clients import ClientTable, add_client
from ocs.radius.server import RadiusServer
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.deck_helpers import HEADER
from tests.outage_helpers import PgRelay, client_with_readyz
from tests.radius_udp import sample


@pytest.fixture
async def relay(services: Services) -> AsyncIterator[PgRelay]:
    """A relay in front of the test database, closed after the test."""
    relay = PgRelay(services.settings.database_url or "")
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def _relayed_pool(relay: PgRelay) -> asyncpg.Pool:
    # Two at most: the listener's, and the one its loads run on (beside it, since LISTEN
    # runs before the first load); a test that breaks the path may end the second first
    # (``_only_the_listeners``).
    return await asyncpg.create_pool(relay.url, min_size=1, max_size=2)


async def _only_the_listeners(
    pool: asyncpg.Pool, relay: PgRelay, listening: asyncpg.Connection
) -> None:
    """End the pool's other connection, the one the first load ran on (beside LISTEN's,
    which runs first), so that the only one the relay carries is ``listening``."""
    async with pool.acquire() as loaded_on:
        assert loaded_on is not listening
        loaded_on.terminate()

    async def only_the_listeners() -> bool:
        return relay.open_links() == 1

    await eventually(only_the_listeners, what="the relay to carry the listener's only")


async def _readyz(services: Services) -> tuple[int, dict[str, Any]]:
    client = await client_with_readyz(services)
    try:
        response = await client.get("/readyz")
        return response.status, await response.json()
    finally:
        await client.close()


BACKENDS_UP = {"redis": {"up": True}, "postgresql": {"up": True}}


async def test_readyz_names_the_catalog_listener_until_it_reconnected_and_reloaded(
    services: Services, relay: PgRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL ends the catalog's LISTEN connection and takes no new one for a while:
    /readyz said ready all along, while a deck changed meanwhile was never served."""
    await add_plan(services, "a")
    monkeypatch.setattr(services, "health", BackendHealth())  # this test's outage alone
    pool = await _relayed_pool(relay)
    holder = CatalogHolder(pool)
    try:
        await holder.start()
        monkeypatch.setattr(services, "catalog", holder)
        listener = holder.listener
        assert listener is not None and listener.connection is not None
        listener.retry_max_s = 0.1
        assert await _readyz(services) == (200, {"ready": True, "backends": BACKENDS_UP})

        # Held until the reconnection: the reload that follows it cannot run before the
        # test gives this, the pool's other connection, back (``reloading``, for real).
        blocker = await pool.acquire()
        relay.refusing = True
        lost = listener.connection
        async with services.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        status, body = await _readyz_until(services, "catalog", "reconnecting")
        assert status == 503
        assert body["ready"] is False and body["backends"] == BACKENDS_UP
        assert body["listeners"]["catalog"]["state"] == "reconnecting"
        assert body["listeners"]["catalog"]["down_for_s"] >= 0
        assert set(body["listeners"]) == {"catalog"}

        # A change committed meanwhile is notified to nobody: only the reload brings it.
        await catalog_store.import_deck(
            services.pool, "a", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
        )
        assert holder.snapshot.tariff_for("a", "33123456") is None

        relay.refusing = False
        try:
            status, body = await _readyz_until(services, "catalog", "reloading")
            assert status == 503 and body["ready"] is False
        finally:
            await pool.release(blocker)

        async def ready() -> bool:
            return (await _readyz(services))[0] == 200

        await eventually(ready, what="/readyz to answer 200 again")
        assert await _readyz(services) == (200, {"ready": True, "backends": BACKENDS_UP})
        assert holder.snapshot.tariff_for("a", "33123456") is not None
        assert services.health.is_up("postgresql")
    finally:
        await holder.stop()
        pool.terminate()


async def test_readyz_names_the_nas_client_listener_while_it_is_lost(
    services: Services, relay: PgRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RADIUS client table's LISTEN, lost: a NAS added meanwhile would be refused
    as a stranger, and /readyz said ready."""
    monkeypatch.setattr(services, "health", BackendHealth())
    pool = await _relayed_pool(relay)
    server = RadiusServer(services.calls, services.settings, ClientTable([]))
    try:
        await server.watch_clients(pool)
        listener = server.client_listener
        assert listener is not None and listener.connection is not None
        # An idle one would be taken for the new LISTEN: never refused, never reconnecting.
        await _only_the_listeners(pool, relay, listener.connection)
        listener.retry_max_s = 0.1
        services.listeners.append(listener)
        assert (await _readyz(services))[0] == 200

        relay.refusing = True
        async with services.pool.acquire() as conn:
            pid = listener.connection.get_server_pid()
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        status, _ = await _readyz_until(services, "nas_clients", "reconnecting")
        assert status == 503
        await add_client(services.pool, "gw-9", "127.0.0.9/32", "gw-secret", True)

        relay.refusing = False

        async def ready() -> bool:
            return (await _readyz(services))[0] == 200

        await eventually(ready, what="/readyz to answer 200 again")
        assert server.clients.lookup("127.0.0.9") is not None
    finally:
        await server.stop_watching()
        pool.terminate()


async def test_a_half_open_listen_connection_is_found_by_its_select_1(
    services: Services,
    relay: PgRelay,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The LISTEN connection goes silent without closing (nothing passes either way,
    no FIN, no RST): no termination callback comes, and without the liveness check the
    process would wait for notifications for ever. Its ``SELECT 1`` times out, the
    connection is replaced, the catalog reloaded, and later changes followed."""
    await add_plan(services, "a")
    monkeypatch.setattr(services, "health", BackendHealth())
    pool = await _relayed_pool(relay)
    holder = CatalogHolder(pool)
    try:
        await holder.start()
        listener = holder.listener
        assert listener is not None and listener.connection is not None
        silent = listener.connection
        # A frozen idle one would be taken for the new LISTEN and hang it.
        await _only_the_listeners(pool, relay, silent)
        reconnects = sample("ocs_pg_listener_reconnects_total", listener="catalog")
        version = holder.version
        listener.check_s = 0.3
        with caplog.at_level(logging.WARNING, logger="ocs.db"):
            relay.freeze()
            # A change after the freeze: its notification never arrives on the silent one.
            await catalog_store.import_deck(
                services.pool, "a", parse_deck(HEADER + "33,France,0.03,0,60,60\n")
            )

            async def replaced() -> bool:
                now = listener.connection
                return now not in (None, silent) and holder.version > version

            await eventually(replaced, what="the silent connection to be replaced")
        assert "postgresql listener connection does not answer" in caplog.text
        assert sample("ocs_pg_listener_reconnects_total", listener="catalog") == reconnects + 1
        assert holder.version > version
        assert holder.snapshot.tariff_for("a", "33123456") is not None
        # Followed again: a change now reaches the snapshot through the new connection.
        await catalog_store.create_plan(pool, catalog.Plan("c", "c", "EUR", 0, 0, 1, 14_400))

        async def has_c() -> bool:
            return "c" in holder.snapshot.plans

        await eventually(has_c, what="a later change to be loaded")
    finally:
        await holder.stop()
        pool.terminate()


async def _readyz_until(
    services: Services, listener: str, state: str
) -> tuple[int, dict[str, Any]]:
    """/readyz's answer once it names ``listener`` in ``state``."""
    answer: tuple[int, dict[str, Any]] = (0, {})

    async def named() -> bool:
        nonlocal answer
        answer = await _readyz(services)
        return answer[1].get("listeners", {}).get(listener, {}).get("state") == state

    await eventually(named, what=f"/readyz to name the {listener} listener {state}")
    return answer


async def test_stop_ends_a_watch_whose_cancellation_was_swallowed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.11's wait_for can swallow a cancellation that lands as its timeout fires;
    # the catalog holder's stop then waited for ever on a watch that went on running
    # (a CI run hung in a test's teardown, the watch still sending its SELECT 1). A call
    # in the watch that swallows the first cancellation stands in for that race.
    monkeypatch.setattr(listener_module, "CHECK_S", 0.01)  # the watch looks every 10 ms
    holder = CatalogHolder(services.pool)
    await holder.start()
    listener = holder.listener
    assert listener is not None
    entered = swallowed = 0

    async def alive_that_swallows_a_cancellation(*args: Any) -> bool:
        nonlocal entered, swallowed
        entered += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > 1:
                raise
        return True

    monkeypatch.setattr(listener, "_alive", alive_that_swallows_a_cancellation)

    async def watching() -> bool:
        return entered > 0

    await eventually(watching, what="the watch to check its connection")
    loop = asyncio.get_running_loop()
    began = loop.time()
    # Bounded here so that the old code fails instead of hanging the suite: cancelled at
    # 10 s, its wait passed the cancellation on to the watch.
    await asyncio.wait_for(holder.stop(), timeout=10)
    assert loop.time() - began < 5
    assert swallowed == 2
