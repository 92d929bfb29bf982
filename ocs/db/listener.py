"""A PostgreSQL LISTEN that survives the loss of its connection.

A process that follows changes by LISTEN/NOTIFY holds one pooled connection for
it. PostgreSQL may drop that connection at any time: a restart, a failover, an
``idle_session_timeout``, ``pg_terminate_backend``, a network cut. asyncpg then
closes the connection and no notification arrives again, without an error to
anyone. ``ChannelListener`` notices the loss (asyncpg's termination callback at
once; a ``SELECT 1`` every ``check_s`` seconds for a connection that went silent
without closing), takes a fresh connection, LISTENs again and calls
``on_reconnect``: the notifications sent in between are lost, so the owner
reloads in full. Each reconnection is counted in
``ocs_pg_listener_reconnects_total{listener}`` and logged.

Until then the owner serves what it loaded before the loss, and misses every
change since: ``state`` says so, for ``/readyz``. It is ``reconnecting`` from
the moment the loss is noticed until LISTEN runs again, then ``reloading`` until
the owner reports, by ``reloaded``, a full reload begun after that (``epoch``
counts the LISTENs, so a reload begun before the new one cannot end it).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

import asyncpg

from ocs import metrics

log = logging.getLogger("ocs.db")

# What asyncpg calls for each notification: (connection, backend pid, channel, payload).
NotifyCallback = Callable[[asyncpg.Connection, int, str, str], None]

# Between two checks of a connection that still looks open (a SELECT 1, bounded by the
# same time), and the longest pause between two tries to get a connection back.
CHECK_S = 5.0
RETRY_MAX_S = 30.0

ListenerState = Literal["listening", "reconnecting", "reloading", "stopped"]


class ChannelListener:
    """One pooled connection LISTENing on ``channel``, replaced whenever it is lost.

    ``on_notify`` gets every notification; ``on_reconnect`` is called once LISTEN
    runs again on a new connection (what was notified meanwhile is unknown).
    ``check_s`` and ``retry_max_s`` are plain attributes, so a test can narrow them.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        name: str,
        on_notify: NotifyCallback,
        on_reconnect: Callable[[], None],
    ) -> None:
        """A listener on ``channel`` named ``name`` (the metric's label); ``start`` begins."""
        self._pool = pool
        self._channel = channel
        self._name = name
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        # LISTENs run so far on a replacement connection, and the newest of them the owner
        # has reloaded after; the loop time the current loss was noticed (None: none).
        self._epoch = 0
        self._reloaded_epoch = 0
        self._down_since: float | None = None
        self.check_s = CHECK_S
        self.retry_max_s = RETRY_MAX_S
        self._reconnects = metrics.PG_LISTENER_RECONNECTS.labels(name)

    @property
    def connection(self) -> asyncpg.Connection | None:
        """The connection listening now (None: not started, stopped, or being replaced)."""
        return self._conn

    @property
    def name(self) -> str:
        """The listener's name (the metric's label, /readyz's key)."""
        return self._name

    @property
    def epoch(self) -> int:
        """Which LISTEN runs now (0 the first; one more each reconnection): a reload
        begun on epoch ``n`` sees every change not notified on it."""
        return self._epoch

    def reloaded(self, epoch: int) -> None:
        """The owner finished a full reload it began on ``epoch``: once that is the
        current one, nothing missed during a loss is still missing."""
        self._reloaded_epoch = max(self._reloaded_epoch, epoch)
        if self.state == "listening":
            self._down_since = None

    @property
    def state(self) -> ListenerState:
        """``listening``; ``reconnecting`` while the connection is lost; ``reloading``
        once LISTEN runs again until the owner's reload (``reloaded``); ``stopped``
        before ``start`` and after ``stop``."""
        if self._watcher is None:
            return "stopped"
        if self._conn is None or self._lost.is_set():
            return "reconnecting"
        if self._reloaded_epoch < self._epoch:
            return "reloading"
        return "listening"

    def down_for(self) -> float | None:
        """Seconds since the current loss was noticed; None while ``listening``."""
        if self._down_since is None or self.state in ("listening", "stopped"):
            return None
        return asyncio.get_running_loop().time() - self._down_since

    async def start(self) -> None:
        """LISTEN on a pooled connection (raises if none can be had), then watch it."""
        await self._listen()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching, UNLISTEN and give the connection back to the pool."""
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            # Cancelled until it ends: a cancellation swallowed by a library call in
            # flight must not leave this stop waiting for ever.
            while not watcher.done():
                watcher.cancel()
                await asyncio.wait({watcher}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError):
                watcher.result()
        await self._release()

    async def _listen(self) -> None:
        """Take a connection and LISTEN on it; on failure none is held."""
        conn: asyncpg.Connection = await self._pool.acquire()
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            await self._discard(conn)
            raise
        self._lost.clear()
        self._conn = conn

    def _terminated(self, conn: asyncpg.Connection) -> None:
        """asyncpg's callback: the connection closed (by PostgreSQL, the network, us)."""
        if conn is self._conn:
            self._lost.set()
            self._noticed_loss()

    def _noticed_loss(self) -> None:
        """Note when the loss began: at its first sign, kept until the owner has
        reloaded after the reconnection (a second loss meanwhile continues it)."""
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()

    async def _watch(self) -> None:
        """Check the connection every ``check_s`` seconds, or at once when it closes;
        replace a lost one."""
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # cancellation ``stop`` sends when it lands as the timeout fires, and the
            # watch would then run on while its owner waits for it for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_s):
                    await self._lost.wait()
            try:
                if not await self._alive():
                    await self._replace()
            except Exception:
                # The watch must outlive any surprise, or the next loss goes unnoticed;
                # it pauses first, so that a failure that repeats never spins the loop.
                log.exception("postgresql listener watch failed", extra={"listener": self._name})
                await asyncio.sleep(self.check_s)

    async def _alive(self) -> bool:
        """Whether the connection is open and answers within ``check_s`` seconds."""
        conn = self._conn
        if conn is None or self._lost.is_set() or not _open(conn):
            return False
        try:
            async with asyncio.timeout(self.check_s):
                await conn.execute("SELECT 1")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "postgresql listener connection does not answer",
                extra={"listener": self._name, "error": str(exc) or type(exc).__name__},
            )
            return False
        return True

    async def _replace(self) -> None:
        """Drop the lost connection, then try until LISTEN runs on a new one."""
        log.warning(
            "postgresql listener connection lost; reconnecting",
            extra={"listener": self._name, "channel": self._channel},
        )
        self._noticed_loss()
        conn, self._conn = self._conn, None
        if conn is not None and _open(conn):
            # Open but silent: ended, so that the pool replaces it (a closed pooled
            # connection goes back to its pool by itself and is never touched again).
            conn.terminate()
        pause = min(0.5, self.retry_max_s)
        while True:
            try:
                await self._listen()
                break
            except Exception as exc:  # any failure: the next try may succeed
                log.warning(
                    "postgresql listener cannot reconnect yet",
                    extra={"listener": self._name, "error": str(exc), "retry_s": pause},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.retry_max_s)
        self._epoch += 1
        self._reconnects.inc()
        log.info(
            "postgresql listener reconnected",
            extra={"listener": self._name, "channel": self._channel},
        )
        self._on_reconnect()

    async def _release(self) -> None:
        """UNLISTEN and give the connection back to the pool, if it is still open."""
        conn, self._conn = self._conn, None
        if conn is not None and _open(conn):
            await self._discard(conn)

    async def _discard(self, conn: asyncpg.Connection) -> None:
        """Stop listening on ``conn`` and give it back to the pool; one that cannot be
        given back (it hangs) is terminated."""
        try:
            conn.remove_termination_listener(self._terminated)
            await asyncio.wait_for(
                conn.remove_listener(self._channel, self._on_notify), self.check_s
            )
            await asyncio.wait_for(self._pool.release(conn), self.check_s)
        except Exception:
            if _open(conn):
                conn.terminate()


def _open(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is still open and ours: once closed, the pool takes
    it back by itself and every method of it raises InterfaceError."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False
