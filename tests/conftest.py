"""Fixtures: real Redis and PostgreSQL, flushed per test, and a running ocs app.

``OCS_TEST_REDIS_URL`` / ``OCS_TEST_DATABASE_URL`` name external servers; when
unset, embedded ones are started for the session (the product's own embedded
mode). Each session works in a fresh PostgreSQL database it drops at the end.

The settings are the product's secure defaults: the ``app`` fixture makes an
admin token and its client sends it with every request; ``RunningApp.anonymous``
sends a request without it.

Fixtures several test files use live here too: ``ocs`` (one ``ocs`` command line on the
test backends), ``rig`` (a NAS emulator that takes the
Disconnect-Requests of cut RADIUS calls, tests/nas_emulator.py) and ``data_root`` /
``launch`` (`ocs serve` and `ocs demo` as child processes on embedded servers,
tests/embedded_helpers.py). This file imports no helper module that imports it back.
"""

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import uvloop
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ocs import api_tokens
from ocs.balances.ledger_writer import LedgerWriter
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.cli import main
from ocs.config import Settings, with_overrides
from ocs.decks.rate_deck import parse_deck
from ocs.http.app import create_app
from ocs.radius.clients import load_client_table
from ocs.radius.server import RadiusServer
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.embedded_helpers import Launch, OcsProcess, child_env
from tests.nas_emulator import NAS_SECRET, Nas, NasProtocol
from tests.radius_udp import UdpClient

# The Redis Cluster fixtures and the ``cluster`` marker (tests/redis_cluster.py).
pytest_plugins = ("tests.redis_cluster",)

RETAIL_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK Fixed,0.010,0,60,60
447,UK Mobile,0.060,0.150,30,6
49,Germany,0.012,0,1,1
1,USA,0.005,0,6,6
"""


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """The event loops tests run on: uvloop only."""
    # Tests run on the event loop production runs on.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def backend_urls() -> Iterator[tuple[str, str]]:
    """(redis URL, PostgreSQL admin URL) for the session."""
    redis_url = os.environ.get("OCS_TEST_REDIS_URL")
    database_url = os.environ.get("OCS_TEST_DATABASE_URL")
    stops = []
    if redis_url is None or database_url is None:
        from ocs import embedded

        # Not under pytest's tmp dir: as root, pgserver runs PostgreSQL as user
        # "pgserver", and a concurrent pytest session resets /tmp/pytest-of-root to 0700.
        data_dir = Path(tempfile.mkdtemp(prefix="ocs-test-"))
        stops.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
        if redis_url is None:
            server = embedded.start_embedded_redis(data_dir)
            stops.append(server.stop)
            redis_url = server.url
        if database_url is None:
            pg = embedded.start_embedded_postgres(data_dir)
            stops.append(pg.stop)
            database_url = pg.url
            asyncio.run(without_fsync(database_url))
    yield redis_url, database_url
    for stop in reversed(stops):
        stop()


async def without_fsync(admin_url: str) -> None:
    """Turn fsync off on the session's own embedded PostgreSQL (never on a server named by
    ``OCS_TEST_DATABASE_URL``), and wait until the server runs so.

    Why: every ``DROP DATABASE`` (the migration tests make and drop databases of their
    own) waits for an immediate checkpoint, which fsyncs every file the session dirtied:
    on a busy CI disk that took 95 s for one test, and each commit waited for its WAL
    fsync too. What fsync protects against, an operating system crash, is no part of any
    test: a PostgreSQL process killed still leaves its writes in the page cache, and the
    data directory is thrown away at the end of the session.
    """
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("ALTER SYSTEM SET fsync = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        # A new backend reads the configuration file as reloaded by the postmaster.
        conn = await asyncpg.connect(admin_url)
        try:
            if await conn.fetchval("SELECT current_setting('fsync')") == "off":
                return
        finally:
            await conn.close()
        if loop.time() > deadline:
            raise AssertionError("the embedded PostgreSQL did not turn fsync off")
        await asyncio.sleep(0.02)


def with_database(url: str, name: str) -> str:
    """``url`` (a PostgreSQL URL) naming database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url(backend_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    admin_url = backend_urls[1]
    name = f"ocs_test_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield with_database(admin_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url(backend_urls: tuple[str, str]) -> str:
    """The session's Redis URL."""
    return backend_urls[0]


@pytest.fixture(scope="session")
def pepper_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pepper file of every ocs process on the session's backends (decision 0054): a
    deployment gives all its processes one, and PostgreSQL refuses a process with another
    (child processes started against the session's database, with data dirs of their
    own, included)."""
    path = tmp_path_factory.mktemp("pepper") / "pepper"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def settings(redis_url: str, database_url: str, tmp_path: Path, pepper_file: Path) -> Settings:
    """The product's settings on the session's backends, HTTP on a free port."""
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        data_dir=tmp_path / "var",
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
        pepper_file=pepper_file,
        # The tests' webhook receivers listen on 127.0.0.1 (the refusal of such addresses,
        # the default, is tested with it off: tests/test_webhook_egress.py).
        webhook_allow_private=True,
    )


async def reset_state(redis_url: str, database_url: str) -> None:
    """Empty the Redis database and every migrated PostgreSQL table."""
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        # Every table the migrations made, listed from the database itself, so a new
        # table can never carry state from one test into the next.
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS name, quote_literal(quote_ident(tablename)) AS text"
            " FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        if tables:
            # Only the tables holding rows are truncated: a TRUNCATE of every table
            # re-creates each one's files and took 0.4 s a test; most tables are empty.
            filled = await conn.fetch(
                " UNION ALL ".join(
                    f"SELECT {row['text']}::text AS name WHERE EXISTS (SELECT FROM {row['name']})"
                    for row in tables
                )
            )
            if filled:
                await conn.execute(f"TRUNCATE {', '.join(row['name'] for row in filled)} CASCADE")
            # Every used sequence a column owns back to its start, as RESTART IDENTITY
            # did (setval is not transactional and touches no file).
            await conn.execute(
                "SELECT setval(c.oid, s.start_value, false) FROM pg_depend d"
                " JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'"
                " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
                " JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname"
                " WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
                " AND s.last_value IS NOT NULL"
            )
    finally:
        await conn.close()


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The runtime on emptied backends (catalog holder started), closed after the test."""
    await reset_state(settings.redis_url or "", settings.database_url or "")
    async with open_runtime(settings) as opened:
        yield opened


# The name of the admin token the ``app`` fixture's client sends.
TEST_TOKEN_NAME = "tests"


def bearer(token: str) -> dict[str, str]:
    """The header that presents ``token``."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class RunningApp:
    """The app under test: its client sends ``admin_token`` with every request."""

    services: Services
    client: TestClient
    writer: LedgerWriter
    admin_token: str = ""

    async def post(self, path: str, payload: object) -> tuple[int, dict]:
        """POST ``payload`` as JSON: (status, JSON body)."""
        response = await self.client.post(path, json=payload)
        return response.status, await response.json()

    async def put(self, path: str, payload: object) -> tuple[int, dict]:
        """PUT ``payload`` as JSON: (status, JSON body)."""
        response = await self.client.put(path, json=payload)
        return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, dict]:
        """GET: (status, JSON body)."""
        response = await self.client.get(path)
        return response.status, await response.json()

    async def delete(self, path: str) -> tuple[int, dict]:
        """DELETE: (status, JSON body)."""
        response = await self.client.delete(path)
        return response.status, await response.json()

    async def anonymous(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict, dict[str, str]]:
        """A request without the admin token (or with the ``headers`` given only):
        (status, JSON body or {}, response headers)."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.client.make_url(path), **kwargs) as response,
        ):
            body = await response.json() if response.content_type == "application/json" else {}
            return response.status, body, dict(response.headers)


@pytest.fixture
async def app(services: Services) -> AsyncIterator[RunningApp]:
    """The HTTP app on a real port, with a ledger writer running beside it; its client
    sends an admin token, as an operator's tools do."""
    token = await api_tokens.create(services.pool, TEST_TOKEN_NAME, "admin")
    client = TestClient(TestServer(create_app(services)), headers=bearer(token))
    await client.start_server()
    writer = LedgerWriter(services.redis, services.pool, block_ms=50)
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping))
    try:
        yield RunningApp(services=services, client=client, writer=writer, admin_token=token)
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
        await client.close()


@pytest.fixture
def ocs(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run one ``ocs`` command line on the test backends: (exit code, JSON out, stderr)."""
    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    monkeypatch.setenv("OCS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("OCS_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("OCS_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("OCS_PEPPER_FILE", str(settings.pepper_file))
    monkeypatch.setenv("OCS_LOG_LEVEL", "warning")

    def run(*argv: str) -> tuple[int, Any, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err

    return run


async def account(app: RunningApp, account_id: str) -> dict[str, Any]:
    """``GET /v1/accounts/{id}``, which must answer 200: the account's view."""
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, body
    return body


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def caught_up(services: Services, within: float = 10.0) -> int:
    """Wait until every catalog change notified so far is in the services' snapshot (its
    reload done or failed), instead of pausing; the catalog version then."""
    async with asyncio.timeout(within):
        return await services.catalog.caught_up()


async def add_plan(
    services: Services,
    plan_id: str = "retail",
    deck: str = RETAIL_DECK,
    **overrides: object,
) -> Plan:
    """A plan with ``deck`` created through the catalog store, and the catalog reloaded."""
    fields: dict = {
        "id": plan_id,
        "name": plan_id,
        "currency": "EUR",
        "credit_limit": 0,
        "min_balance": 0,
        "max_lines": 1,
        "max_call_duration": 14_400,
    }
    fields.update(overrides)
    plan = Plan(**fields)
    await catalog_store.create_plan(services.pool, plan)
    await catalog_store.import_deck(services.pool, plan_id, parse_deck(deck))
    await services.catalog.reload()
    return plan


RADIUS_SECRET = "testing123"


@dataclass
class RunningRadius:
    """A RADIUS server on free ports beside the HTTP app, trusting 127.0.0.1."""

    app: RunningApp
    server: RadiusServer

    @property
    def auth_port(self) -> int:
        """The UDP port of Access-Requests."""
        return self.server.auth_port

    @property
    def acct_port(self) -> int:
        """The UDP port of Accounting-Requests."""
        return self.server.acct_port


async def started_radius(services: Services, clients: tuple[Any, ...]) -> RadiusServer:
    """A RADIUS server over ``services`` on free ports of 127.0.0.1, started, trusting
    ``clients`` (``RadiusClientConfig``s); the caller closes it."""
    from ocs.config import with_overrides
    from ocs.radius.clients import load_client_table

    settings = with_overrides(
        services.settings,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        radius_clients=clients,
    )
    server = RadiusServer(
        services.calls, settings, await load_client_table(services.pool, settings)
    )
    await server.start()
    return server


@pytest.fixture
async def radius(app: RunningApp) -> AsyncIterator[RunningRadius]:
    """A RADIUS server beside ``app`` on free ports, trusting 127.0.0.1 (RADIUS_SECRET)."""
    from ocs.config import RadiusClientConfig

    server = await started_radius(
        app.services,
        (RadiusClientConfig(name="test-nas", network="127.0.0.1/32", secret=RADIUS_SECRET),),
    )
    try:
        yield RunningRadius(app=app, server=server)
    finally:
        server.close_listeners()
        await server.drain(5)


@pytest.fixture
async def nas(radius: RunningRadius) -> RunningRadius:
    """The RADIUS server with the retail plan in the catalog."""
    await add_plan(radius.app.services)
    return radius


@pytest.fixture
async def udp() -> AsyncIterator[UdpClient]:
    """A UDP socket of the test's own, to send exact RADIUS datagrams from."""
    client = await UdpClient.open()
    try:
        yield client
    finally:
        client.close()


# -- a NAS that takes Disconnect-Requests (cuts of RADIUS calls) ---------------------------


@dataclass
class CutRig:
    """The ``rig`` fixture: the app, the NAS emulator it cuts calls on, and the RADIUS
    server beside the app that sends the Disconnect-Requests."""

    app: RunningApp
    nas: Nas
    server: RadiusServer


@pytest.fixture
async def rig(app: RunningApp) -> AsyncIterator[CutRig]:
    """A NAS emulator, registered through the API with its coa_port, and a RADIUS server
    beside the app that sends its Disconnect-Requests (as `ocs serve` wires it)."""
    nas = Nas()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: NasProtocol(nas), local_addr=("127.0.0.1", 0)
    )
    nas.port = transport.get_extra_info("sockname")[1]
    server: RadiusServer | None = None
    try:
        status, body = await app.post(
            "/v1/nas-clients",
            {"name": "cut-nas", "address": "127.0.0.1", "secret": NAS_SECRET, "coa_port": nas.port},
        )
        assert status == 201, body
        assert body["coa_port"] == nas.port
        settings = with_overrides(
            app.services.settings,
            radius_host="127.0.0.1",
            radius_auth_port=0,
            radius_acct_port=0,
            radius_clients=(),
        )
        server = RadiusServer(
            app.services.calls, settings, await load_client_table(app.services.pool, settings)
        )
        await server.start()
        app.services.disconnect = server.disconnect
        await add_plan(app.services)
        yield CutRig(app, nas, server)
    finally:
        app.services.disconnect = None
        if server is not None:
            server.close_listeners()
            await server.drain(5)
        transport.close()
        async with app.services.pool.acquire() as conn:
            await conn.execute("DELETE FROM nas_clients WHERE name = 'cut-nas'")


# -- `ocs serve` / `ocs demo` as child processes on embedded servers -----------------------


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A unique directory for data dirs, outside pytest's basetemp.

    Run as root, pgserver runs PostgreSQL as the user ``pgserver`` and opens every parent
    of PGDATA to it (o+rx). Each pytest session resets /tmp/pytest-of-<user> to 0700, so a
    pytest run beside this one would lock PostgreSQL out of a PGDATA under tmp_path
    (initdb fails with "could not open file .../global/pg_control: Permission denied").
    """
    root = Path(tempfile.mkdtemp(prefix="ocs-serve-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def launch(tmp_path: Path, data_root: Path) -> Iterator[Launch]:
    """launch(command, data_dir) starts an ocs child; all are cleaned up at the end.

    Depends on data_root so that its directory is removed only after the children and
    their embedded servers are gone.
    """
    started: list[OcsProcess] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(
        command: str,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        pass_data_dir: bool = True,
        cwd: Path | None = None,
    ) -> OcsProcess:
        child = OcsProcess(
            command,
            data_dir,
            logs,
            f"{command}-{len(started)}",
            env=env or child_env(data_root / "xdg"),
            pass_data_dir=pass_data_dir,
            cwd=cwd,
        )
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in reversed(started):
            child.cleanup()
