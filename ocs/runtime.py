"""Opening and closing everything an ocs process needs, in order, as one context.

``open_runtime`` resolves Redis and PostgreSQL (external URLs, or embedded
servers started under the data directory), applies migrations (or, with
``migrate_on_start = false``, refuses to start while any is pending), loads the Lua
scripts (on every master of a Redis Cluster) and the catalog, and wires the
services; on exit it closes them in
reverse order. ``ocs serve``, ``ocs demo``, the CLI commands and the tests all
use it, so they run the same code.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from ocs.backend_health import describe as describe_error
from ocs.balances.accounts import AccountService
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.cards import CardService
from ocs.balances.cluster import redis_client
from ocs.balances.digests import NoPepper
from ocs.balances.old_forms import OldForms
from ocs.balances.pin_guard import PinGuard
from ocs.balances.store import BalanceStore
from ocs.catalog.snapshot import CatalogHolder
from ocs.charging.lifecycle import CallService
from ocs.config import ConfigError, Settings
from ocs.counters.service import CounterService
from ocs.db.migrate import check_migrated, migrate
from ocs.pepper import load_digests
from ocs.services import Services
from ocs.warm_up import warm_up

log = logging.getLogger("ocs.runtime")

# A look at the stores (the Redis client, the PostgreSQL pool) before anything is written.
StoresCheck = Callable[[Any, asyncpg.Pool], Awaitable[None]]


class BackendUnreachable(Exception):
    """Redis or PostgreSQL could not be connected to (down, not answering, too many
    connections, starting up) when a process opened its runtime: a later start may do.

    Its text is one line naming the backend and where it is (host, port, database:
    never a password) and what it answered; the CLI prints it instead of a traceback
    and exits 1, which the units restart.
    """

    def __init__(self, backend: str, url: str, cause: BaseException) -> None:
        from ocs.embedded import describe_url

        self.backend = backend
        super().__init__(f"cannot use {backend} at {describe_url(url)}: {describe_error(cause)}")


class BackendRefused(ConfigError):
    """Redis or PostgreSQL answered and refused this process's credentials or database:
    a wrong password, a role or database that does not exist, no ``pg_hba.conf`` entry,
    a Redis database index out of range. No restart changes that answer.

    A ``ConfigError`` (exit 2, which the units do not restart): one line naming the
    setting (``database_url``, ``redis_url``) and the server without the password.
    """

    def __init__(self, setting: str, backend: str, url: str, cause: BaseException) -> None:
        from ocs.embedded import describe_url

        self.backend = backend
        super().__init__(
            f"{setting}: {backend} at {describe_url(url)} refused it: {describe_error(cause)}"
        )


# What opening a connection raises when the server is not there or refuses us: socket
# and TLS errors, timeouts, and the server's own refusals (a database or role that does
# not exist, a wrong password, too many connections).
_POSTGRESQL_REFUSALS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_REDIS_REFUSALS = (OSError, TimeoutError, RedisError)
# The refusals among them that the same URL meets again on every start: SQLSTATE class
# 28 (a wrong password, a role that does not exist or may not log in, no pg_hba.conf
# entry) and 3D000 (no such database); Redis's WRONGPASS/NOAUTH, NOPERM, and SELECT of
# a database it does not have. Not "too many connections" nor "starting up": those pass.
_POSTGRESQL_CONFIG_REFUSALS = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
_REDIS_CONFIG_REFUSALS = (AuthenticationError, AuthorizationError)


def postgresql_error(url: str, exc: BaseException) -> BackendUnreachable | BackendRefused:
    """The error of a PostgreSQL at ``url`` that could not be connected to with ``exc``:
    ``BackendRefused`` (naming ``database_url``) when it refused the login, else
    ``BackendUnreachable``."""
    if isinstance(exc, _POSTGRESQL_CONFIG_REFUSALS):
        return BackendRefused("database_url", "PostgreSQL", url, exc)
    return BackendUnreachable("PostgreSQL", url, exc)


def redis_error(url: str, exc: BaseException) -> BackendUnreachable | BackendRefused:
    """``postgresql_error`` for Redis at ``url`` (naming ``redis_url``)."""
    if isinstance(exc, _REDIS_CONFIG_REFUSALS) or (
        isinstance(exc, ResponseError) and "DB index" in str(exc)
    ):
        return BackendRefused("redis_url", "Redis", url, exc)
    return BackendUnreachable("Redis", url, exc)


async def _open_pool(url: str, size: int) -> asyncpg.Pool:
    """A connection pool on PostgreSQL at ``url``; ``BackendUnreachable`` if it cannot be
    connected to, ``BackendRefused`` if it refuses the login."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(url, min_size=1, max_size=size)
    except _POSTGRESQL_REFUSALS as exc:
        raise postgresql_error(url, exc) from exc
    return pool


async def _check_redis(redis: Any, url: str) -> None:
    """PING Redis at ``url`` (connect, AUTH, SELECT); ``BackendUnreachable`` if it fails,
    ``BackendRefused`` if it refuses the credentials or the database."""
    try:
        await redis.ping()
    except _REDIS_REFUSALS as exc:
        raise redis_error(url, exc) from exc


async def check_backends(settings: Settings) -> None:
    """Connect once to the Redis and PostgreSQL of ``settings`` (URLs, not embedded)
    and let go: ``BackendUnreachable`` names the one that cannot be reached,
    ``BackendRefused`` the setting of one that refused the credentials or database.

    A ``--workers`` parent calls it before it starts any worker, so that a backend that
    is down or refuses stops the start with one line instead of workers that exit and
    are restarted, one after another.
    """
    if settings.database_url:
        pool = await _open_pool(settings.database_url, 1)
        await pool.close()
    if settings.redis_url:
        redis = redis_client(settings.redis_url, cluster=settings.redis_cluster, max_connections=1)
        try:
            await _check_redis(redis, settings.redis_url)
        finally:
            await redis.aclose()


async def check_pepper(settings: Settings) -> None:
    """Load the pepper of ``settings`` (a URL, not embedded), made if it has none yet,
    against PostgreSQL's check value, migrated first (``prepare_schema``; decision 0054):
    ``ConfigError`` when it is not the deployment's.

    A ``--workers`` parent calls it before it starts any worker: a wrong or missing
    pepper stops the start with one line instead of workers that exit and are restarted
    for ever, and the workers find the one file made here (none of them makes it).
    """
    if not settings.database_url:
        return
    pool = await _open_pool(settings.database_url, 1)
    try:
        await prepare_schema(settings, pool)
        await load_digests(settings, pool, create=True)
    finally:
        await pool.close()


async def prepare_schema(settings: Settings, pool: asyncpg.Pool) -> list[int]:
    """The versions applied now: the pending migrations with ``migrate_on_start``, else
    none, and ``MigrationRefused`` while any is pending (only ``ocs db migrate`` then
    changes the schema). Either way a database a newer release migrated is refused."""
    if settings.migrate_on_start:
        return await migrate(pool)
    await check_migrated(pool)
    return []


class Backends:
    """The Redis and PostgreSQL URLs in use, and any embedded servers this process started."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.redis_url = settings.redis_url
        self.database_url = settings.database_url
        self._stops: list[Callable[[], None]] = []

    def describe(self) -> str:
        """Which store this process uses, in words: embedded under a path, or the URLs."""
        from ocs.embedded import describe_url

        data_dir = Path(self._settings.data_dir).resolve()
        redis_url, database_url = self._settings.redis_url, self._settings.database_url
        if redis_url is None and database_url is None:
            return f"embedded Redis and PostgreSQL in {data_dir}"
        kind = "Redis Cluster" if self._settings.redis_cluster else "Redis"
        redis = (
            f"{kind} {describe_url(redis_url)}" if redis_url else f"embedded Redis in {data_dir}"
        )
        postgres = (
            f"PostgreSQL {describe_url(database_url)}"
            if database_url
            else f"embedded PostgreSQL in {data_dir}"
        )
        return f"{redis}, {postgres}"

    def start(self) -> None:
        """Start embedded servers for whatever has no URL (blocking: call off the loop).

        Logs which store the process uses first. When a server must be started under the
        default data dir while another ocs process of this user runs an embedded store in a
        different one, raises :class:`ocs.embedded.StoreConflictError` and starts nothing:
        such a command would otherwise work on a second, empty store.
        """
        from ocs.config import default_data_dir
        from ocs.embedded import describe_url

        data_dir = Path(self._settings.data_dir).resolve()
        embedded_needed = self.redis_url is None or self.database_url is None
        log.info(
            f"store: {self.describe()}",
            extra={
                "data_dir": str(data_dir) if embedded_needed else None,
                "redis_url": describe_url(self.redis_url) if self.redis_url else "embedded",
                "database_url": (
                    describe_url(self.database_url) if self.database_url else "embedded"
                ),
            },
        )
        if not embedded_needed:
            return
        from ocs import embedded  # imported lazily: only embedded mode needs psutil/pgserver

        if data_dir == default_data_dir().resolve():
            # Only the default is guessed; a data dir named by flag, variable or file is the
            # operator's choice, and several servers on different ones are legitimate.
            embedded.check_no_other_store(data_dir)
        registration = embedded.register_store(data_dir)
        self._stops.append(registration.release)
        try:
            self._start_embedded(data_dir)
        except BaseException:
            self.stop()
            raise

    def _start_embedded(self, data_dir: Path) -> None:
        from ocs import embedded

        if self.redis_url is None:
            running = embedded.running_embedded_redis_url(data_dir)
            if running is not None:
                self.redis_url = running
                log.info(
                    "using the embedded Redis another ocs process runs",
                    extra={"data_dir": str(data_dir)},
                )
            else:
                server = embedded.start_embedded_redis(data_dir)
                self._stops.append(server.stop)
                self.redis_url = server.url
                log.info(
                    "started embedded Redis (AOF on); set OCS_REDIS_URL for an external one",
                    extra={"data_dir": str(data_dir)},
                )
        if self.database_url is None:
            pg = embedded.start_embedded_postgres(data_dir)
            self._stops.append(pg.stop)
            self.database_url = pg.url
            log.info(
                "started embedded PostgreSQL; set OCS_DATABASE_URL for an external one",
                extra={"data_dir": str(data_dir)},
            )

    def stop(self) -> None:
        """Stop the embedded servers this process started, last started first."""
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:
                log.exception("stopping an embedded server failed")
        self._stops.clear()


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    listen_catalog: bool = True,
    load_catalog: bool = True,
    pepper: bool = True,
    make_pepper: bool = False,
    inspect: StoresCheck | None = None,
) -> AsyncIterator[Services]:
    """The shared services of a process (backends started if embedded), closed on exit.

    ``pepper``: load the pepper PIN and password digests are keyed by (decision 0054);
    False for a command that makes and looks up no digest, which then needs no pepper
    file (its ``digests`` refuse to be used). ``make_pepper``: make its file when there
    is none yet (the server only); else a missing file stops the process. ``inspect``:
    called with the Redis client and the PostgreSQL pool once both answer, before
    anything is migrated, a pepper made or looked up, or a script loaded: what it
    raises stops the process having written nothing to either (``ocs demo``'s check).
    """
    if settings.redis_cluster and settings.redis_url is None:
        # An embedded Redis is one standalone server: a cluster is always external.
        raise ConfigError("redis_cluster: needs redis_url, a node of the cluster")
    backends = Backends(settings)
    await asyncio.to_thread(backends.start)
    try:
        assert backends.redis_url is not None and backends.database_url is not None
        redis = redis_client(
            backends.redis_url,
            cluster=settings.redis_cluster,
            max_connections=settings.redis_max_connections,
        )
        try:
            async with await _open_pool(backends.database_url, settings.database_pool_size) as pool:
                await _check_redis(redis, backends.redis_url)
                if inspect is not None:
                    await inspect(redis, pool)
                migrated_now = await prepare_schema(settings, pool)
                # Before anything can make or look up a digest: a process with another
                # pepper than the deployment's stops here (decision 0054).
                digests = (
                    await load_digests(settings, pool, create=make_pepper) if pepper else NoPepper()
                )
                # A process without the pepper looks no PIN up: it reads no mark either.
                old_forms = await OldForms.load(pool) if pepper else OldForms()
                pipeline = AutoPipeline(
                    redis,
                    backends.redis_url,
                    cluster=settings.redis_cluster,
                    wait_replicas=settings.redis_wait_replicas,
                    wait_timeout_ms=settings.redis_wait_timeout_ms,
                    migration_wait=settings.redis_migration_wait_ms / 1000,
                )
                await pipeline.load_scripts()
                catalog = CatalogHolder(pool)
                if listen_catalog:
                    # Compile (or load from numba's cache) the matcher before the first
                    # request, so no request ever waits for a compile.
                    await asyncio.to_thread(warm_up)
                    await catalog.start()
                elif load_catalog:
                    await catalog.reload()
                store = BalanceStore(pipeline)
                try:
                    yield Services(
                        settings=settings,
                        redis=redis,
                        pool=pool,
                        database_url=backends.database_url,
                        pipeline=pipeline,
                        store=store,
                        catalog=catalog,
                        digests=digests,
                        old_forms=old_forms,
                        accounts=AccountService(pool, store, digests),
                        calls=CallService(catalog, store, settings, digests, old_forms=old_forms),
                        counters=CounterService(pool, store),
                        cards=CardService(pool, store, digests, old_forms),
                        pin_guard=PinGuard(pipeline, settings),
                        migrated_now=migrated_now,
                    )
                finally:
                    await old_forms.stop()
                    await pipeline.drain()
                    await catalog.stop()
        finally:
            await redis.aclose()
    finally:
        await asyncio.to_thread(backends.stop)
