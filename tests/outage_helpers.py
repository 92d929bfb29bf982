"""Helpers for tests of backend outages: a PostgreSQL pool that refuses connections on
demand, a TCP relay in front of the real PostgreSQL whose network path a test breaks,
a redis-server of a test's own (killed, restarted, or made to refuse writes), and the
HTTP app on a real port with its /readyz probe.

Not a test module.
"""

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import redis
from aiohttp.test_utils import TestClient, TestServer

from ocs import embedded
from ocs.config import Settings
from ocs.http import health_handlers
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.conftest import reset_state
from tests.ports import free_port


class FlakyPool:
    """A PostgreSQL pool that refuses connections while ``down``, as a stopped server does."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        """Up, in front of ``pool``."""
        self._pool = pool
        self.down = False
        self.refused = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection of the real pool; while ``down``, the error a refused connect raises."""
        if self.down:
            self.refused += 1
            # What asyncpg raises when nothing listens on the server's port.
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        async with self._pool.acquire() as conn:
            yield conn


@dataclass
class _Link:
    """One client connection relayed to PostgreSQL: its two writers, its two pumps, and
    whether bytes flow (cleared: they are held, neither side closed)."""

    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    marked: bool = False  # for a relay's ``forward`` to note something seen on it


class PgRelay:
    """A TCP relay on 127.0.0.1 in front of the test PostgreSQL (TCP or its unix socket):
    a pool opened on ``url`` reaches the real server through it, and a test breaks that
    path for real. ``freeze`` holds every byte of the connections open now, in both
    directions, closing none (a half-open connection: a cut cable, a dead NAT entry);
    ``refusing`` closes each new connection at once (a server away)."""

    def __init__(self, database_url: str) -> None:
        """In front of the server ``database_url`` names; ``start`` listens."""
        self._target = urlsplit(database_url)
        self._server: asyncio.Server | None = None
        self.links: list[_Link] = []
        self.refusing = False
        self.url = ""

    async def start(self) -> None:
        """Listen on a free port; ``url`` is then the database URL through the relay."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        target = self._target
        user = target.netloc.rpartition("@")[0]
        query = [(k, v) for k, v in parse_qsl(target.query) if k not in ("host", "port")]
        netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
        self.url = urlunsplit(target._replace(netloc=netloc, query=urlencode(query)))

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the real server: its TCP port, or the socket the URL's
        ``host`` query names (the embedded server's)."""
        target = self._target
        query = dict(parse_qsl(target.query))
        port = target.port or int(query.get("port", 5432))
        if target.hostname is not None:
            return await asyncio.open_connection(target.hostname, port)
        return await asyncio.open_unix_connection(f"{query['host']}/.s.PGSQL.{port}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await self._upstream()
        link = _Link((writer, up_writer))
        link.flowing.set()
        self.links.append(link)
        link.pumps = [
            asyncio.create_task(self._pump(link, reader, up_writer, toward_server=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, toward_server=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        toward_server: bool,
    ) -> None:
        """Copy bytes one way while the link flows, as long as ``forward`` lets them; at
        either side's end, or the first bytes it stops, close both."""
        try:
            while data := await reader.read(65536):
                await link.flowing.wait()
                if not self.forward(link, data, toward_server=toward_server):
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        for end in link.writers:
            end.close()

    def forward(self, link: _Link, data: bytes, *, toward_server: bool) -> bool:
        """Whether to pass ``data`` on (False: it is dropped and the link closed); a
        relay that breaks the path on what it sees says so here. This one passes all."""
        return True

    def open_links(self) -> int:
        """How many relayed connections are still open (neither side has closed)."""
        return sum(not any(end.is_closing() for end in link.writers) for link in self.links)

    def freeze(self) -> None:
        """Hold every byte of the connections open now (new ones flow)."""
        for link in self.links:
            link.flowing.clear()

    async def close(self) -> None:
        """Stop listening and close every relayed connection."""
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for pump in link.pumps:
                pump.cancel()
            for end in link.writers:
                end.close()
        for link in self.links:
            for pump in link.pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if self._server is not None:
            await self._server.wait_closed()


@asynccontextmanager
async def services_on(
    redis_url: str, database_url: str, data_dir: Path, pepper_file: Path
) -> AsyncIterator[Services]:
    """A runtime of a test's own on ``redis_url`` (a ``PrivateRedis``, which the test kills
    or makes refuse writes), its stores emptied first. The caller gives it a backend
    tracker of its own (``backend_health._DEFAULT`` set to None): every component built
    here reports to it."""
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        data_dir=data_dir,
        pepper_file=pepper_file,
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
        admin_token_required=False,
    )
    await reset_state(redis_url, database_url)
    async with open_runtime(settings) as services:
        yield services


async def client_with_readyz(services: Services) -> TestClient:
    """The HTTP app on a real port, with /readyz whether or not app.py registers it yet."""
    app = create_app(services)
    if not any(r.resource and r.resource.canonical == "/readyz" for r in app.router.routes()):
        app.router.add_get("/readyz", health_handlers.readyz)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


class PrivateRedis:
    """A redis-server of this test alone, on a fixed port, that can be killed and restarted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (its AOF keeps the data across a kill) and wait for PING."""
        self._process = subprocess.Popen(
            [
                str(embedded._redis_server_binary()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1.0, socket_timeout=1.0)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise
                time.sleep(0.02)  # polling for the server to answer, not a fixed wait
        finally:
            client.close()

    def kill(self) -> None:
        """An outage: SIGKILL, no SHUTDOWN, so every connection drops at once."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
