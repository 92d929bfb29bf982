"""Helpers for tests of backend outages: a PostgreSQL pool that refuses connections on
demand, and the HTTP app on a real port with its /readyz probe.

Not a test module.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from ocs.http import health_handlers
from ocs.http.app import create_app
from ocs.services import Services


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


async def client_with_readyz(services: Services) -> TestClient:
    """The HTTP app on a real port, with /readyz whether or not app.py registers it yet."""
    app = create_app(services)
    if not any(r.resource and r.resource.canonical == "/readyz" for r in app.router.routes()):
        app.router.add_get("/readyz", health_handlers.readyz)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client
