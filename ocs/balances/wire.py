"""A lean Redis connection for the hot path: RESP over one socket, parsed by hiredis.

The auto-pipeline sends every command of an event-loop tick in one write and
matches replies to callers in order. redis-py's pipeline object spends most
of its time per command (retry wrappers, per-reply timeouts, response
callbacks): measured here at 75k commands/s against 510k/s for this path
(docs/decisions/0006-lean-redis-path.md). redis-py stays in use for everything
off the hot path (ledger writer, admin, scripts loading).

One connection per process: Redis executes one command at a time anyway, and
pipelining keeps that connection full. A lost connection fails the commands
in flight (their callers get ``ConnectionError`` and answer "unavailable";
nothing was acknowledged to them) and the next command reconnects.
"""

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection's transport is a Transport; the base class's signature is wider.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)


class RedisWire:
    """Sends batches of commands and returns each reply (or the error Redis answered)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self._timeout = timeout
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = unquote(parts.path) if parts.scheme == "unix" else None
        db_text = query.get("db", [""])[0] or (
            parts.path.strip("/") if parts.scheme != "unix" else ""
        )
        self._db = int(db_text or 0)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost.done():
            return protocol
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost.done():
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    if self._path is not None:
                        _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        context = ssl.create_default_context() if self._scheme == "rediss" else None
                        _, protocol = await loop.create_connection(
                            _Protocol, self._host, self._port, ssl=context
                        )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
            setup: list[tuple[Any, ...]] = []
            if self._password is not None:
                setup.append(("AUTH", self._username or "default", self._password))
            if self._db:
                setup.append(("SELECT", self._db))
            if setup:
                try:
                    async with asyncio.timeout(self._timeout):
                        replies = await self._send(protocol, setup)
                    for reply in replies:
                        if isinstance(reply, Exception):
                            raise reply
                except BaseException:
                    assert protocol.transport is not None
                    protocol.transport.close()
                    raise
            self._protocol = protocol
            return protocol

    @staticmethod
    def _send(
        protocol: _Protocol, commands: Sequence[tuple[Any, ...]]
    ) -> "asyncio.Future[list[Any]]":
        loop = asyncio.get_running_loop()
        futures = []
        chunks = []
        for command in commands:
            future: asyncio.Future[Any] = loop.create_future()
            protocol.waiting.append(future)
            futures.append(future)
            chunks.append(hiredis.pack_command(command))
        assert protocol.transport is not None
        protocol.transport.write(b"".join(chunks))
        return asyncio.gather(*futures, return_exceptions=True)

    async def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Replies in order; a command Redis refused has its ``ResponseError`` in its place.

        A batch unanswered within the timeout closes the connection: every command
        in flight then fails with ``ConnectionError`` (its caller answers
        "unavailable") and the next batch reconnects, so a stalled Redis never
        holds requests forever.
        """
        protocol = await self._connection()
        replies = self._send(protocol, commands)
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(replies)
        except TimeoutError:
            if protocol.transport is not None:
                protocol.transport.close()
            raise RedisConnectionError(f"Redis did not answer within {self._timeout} s") from None

    async def close(self) -> None:
        """Close the connection, if open, and wait until it is closed."""
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await protocol.lost
