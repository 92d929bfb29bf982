"""A supplier's import lock and the PostgreSQL session that holds it (decision 0051).

A supplier's imports run one at a time: an import holds a session advisory lock,
``pg_advisory_lock(hashtext('usage_import:' || supplier))``, on a connection of its own
(outside the pool) from before its ``usage_imports`` row is made until its final state is
saved. The session's end frees the lock, so the connection is closed in a ``finally`` and
its socket dropped when the close fails or is cancelled: no cancel can skip an unlock.
The running import saves its counts on that connection every few seconds; a connection
that fails there is a lost session, so a lost lock, and the import stops. An import
left ``running`` by a process that ended is marked ``failed`` by whoever next holds the
lock.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from ocs.errors import OcsError, Reason

log = logging.getLogger("ocs.mediation")
T = TypeVar("T")

# Seconds between two saves of a running import's counts: a killed import shows how far
# it got, for one cheap UPDATE every few seconds.
SAVE_EVERY = 2.0
# Seconds the save of a running import's counts may take: a connection that hangs longer
# is taken for a lost session (and lock). And the seconds its connection's close may take
# before its socket is dropped.
SAVE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0
# Seconds between two tries for the supplier's lock.
LOCK_POLL = 0.2
# What an import left running by a process that ended is marked with.
INTERRUPTED = "interrupted: the importing process ended before the import did"


def lock_key(supplier: str) -> str:
    """The text whose hash keys a supplier's import lock (``pg_advisory_lock``)."""
    return f"usage_import:{supplier}"


async def mark_interrupted(conn: asyncpg.Connection, supplier: str) -> list[int]:
    """Mark ``failed`` the supplier's imports still ``running``, given that the caller
    holds the supplier's import lock: a running import holds it from before its row is
    made until its state is final, so one left running belongs to a process that ended
    (PostgreSQL let its lock go with its session). The ids marked."""
    ids: list[int] = [
        r["id"]
        for r in await conn.fetch(
            "UPDATE usage_imports SET state = 'failed', error = $2, finished_at = now()"
            " WHERE supplier = $1 AND state = 'running' RETURNING id",
            supplier,
            INTERRUPTED,
        )
    ]
    for import_id in ids:
        log.warning(
            "usage import marked failed: its process ended",
            extra={"import": import_id, "supplier": supplier},
        )
    return ids


async def settle_interrupted(pool: asyncpg.Pool, supplier: str) -> None:
    """Mark ``failed`` the supplier's imports left running by a process that ended, if no
    import of the supplier runs now (its lock is free); nothing otherwise."""
    async with pool.acquire() as conn:
        key = lock_key(supplier)
        if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            try:
                await mark_interrupted(conn, supplier)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def stopped(task: "asyncio.Task[None]") -> None:
    """Cancel a helper task and wait until it has ended (a cancellation of the caller
    itself still reaches it: ``asyncio.wait`` does not take the task's outcome)."""
    task.cancel()
    await asyncio.wait([task])


async def to_the_end(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even when the caller is cancelled meanwhile, then let the
    cancellation go on: an import's final state is stored, and stored before its
    supplier's lock goes (else the supplier's next import would take it for one whose
    process ended)."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                break
            cancelled = exc
    result = task.result()
    if cancelled is not None:
        raise cancelled
    return result


async def closed(conn: asyncpg.Connection) -> None:
    """Close a connection of the import's own, also when cancelled meanwhile: its
    socket is then dropped, and PostgreSQL ends the session (and frees its locks).

    A failed close is logged, never raised: it runs in a ``finally``, where it would
    replace the import's outcome (a 503's OcsError, a stored ``done``) with its own
    error. asyncpg's ``close`` aborts the connection before raising (a hung network's
    ``TimeoutError``, say), and the session ends with its socket either way.
    """
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception as exc:
        log.warning(
            "usage import's PostgreSQL connection did not close cleanly: dropped",
            extra={"error": str(exc)[:200] or type(exc).__name__},
        )
    finally:
        if not conn.is_closed():
            conn.terminate()


def session_lost(exc: BaseException) -> bool:
    """Whether a failed statement says the connection's session is gone (or hangs), and
    with it the locks it held: not a refusal of the statement, after which the session
    goes on (a ``statement_timeout`` is a ``QueryCanceledError``)."""
    return isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            OSError,
            TimeoutError,
        ),
    )


async def lock_supplier(
    connect: Callable[[], Awaitable[asyncpg.Connection]], supplier: str, wait: float
) -> asyncpg.Connection:
    """A connection of the import's own (made by ``connect``) holding the supplier's
    import lock, once no other import of the supplier holds it; refused after ``wait``
    seconds.

    Not a pool connection: an import holds its lock for its whole run and needs the
    pool's connections meanwhile (look-ups, saves), so imports of as many suppliers
    as the pool has connections would each hold one and wait for another for ever,
    and live calls and the ledger writer would wait behind them. An import waiting
    for the lock keeps its connection (one PostgreSQL session, no pool slot).
    """
    conn = await connect()
    try:
        await wait_for_lock(conn, supplier, wait)
    except BaseException:
        await closed(conn)
        raise
    return conn


async def wait_for_lock(conn: asyncpg.Connection, supplier: str, wait: float) -> None:
    """Take the supplier's lock on ``conn``, trying every ``LOCK_POLL`` seconds. It is
    tried once more after a poll even past ``wait``: a GET of an import takes the lock
    for an instant (``settle_interrupted``), which must not refuse an import when the
    wait is 0."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    key = lock_key(supplier)
    tries = 0
    while True:
        if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            if tries:
                log.warning(
                    "usage import goes on: the supplier's import ended",
                    extra={"supplier": supplier},
                )
            return
        tries += 1
        running = await conn.fetchval(
            "SELECT max(id) FROM usage_imports WHERE supplier = $1 AND state = 'running'",
            supplier,
        )
        if tries > 1 and loop.time() >= deadline:
            raise OcsError(
                Reason.UNAVAILABLE,
                f"an import of supplier {supplier!r} is running"
                + (f" (import {running})" if running is not None else "")
                + f" and did not end within {wait:g} s: a supplier's imports"
                " run one at a time; import again once it has ended",
                field="template",
            )
        if tries == 1:
            log.warning(
                "usage import waits for the supplier's running import",
                extra={"supplier": supplier, "running": running},
            )
        await asyncio.sleep(LOCK_POLL)


@dataclass(frozen=True, slots=True)
class Progress:
    """A running import's counts, as its ``usage_imports`` row stores them."""

    import_id: int
    rows_read: int
    rows_filtered: int
    rows_charged: int
    rows_repeated: int
    rows_rejected: int
    amounts: dict[str, int]
    rows_priced_after_start: int = 0


class ProgressSaver:
    """Stores a running import's counts every ``every`` seconds, on the connection
    holding its supplier's lock: a killed import shows how far it got, and a lost
    session (and so a lost lock) is found (``lost``)."""

    def __init__(
        self, lock: asyncpg.Connection, progress: Callable[[], Progress], every: float
    ) -> None:
        """``progress``: the import's counts now."""
        self.lock = lock
        self.progress = progress
        self.every = every
        # The error that lost the supplier's lock, once lost.
        self.lost: BaseException | None = None
        # Whether the last save was refused (its failure logged once, not every save).
        self.refused = False

    async def run(self) -> None:
        """Save every ``every`` seconds until the session is lost (or cancelled)."""
        while self.lost is None:
            await asyncio.sleep(self.every)
            await self.save_once()

    async def save_once(self) -> None:
        """Store the import's counts now. A connection that fails or does not answer
        within ``SAVE_TIMEOUT`` is a lost session, and so a lost lock (``lost``); a
        refusal of the statement itself (a ``statement_timeout``, say) leaves the
        session, and the lock, as they were: logged, and tried again at the next save."""
        now = self.progress()
        try:
            await self.lock.execute(
                "UPDATE usage_imports SET rows_read = $2, rows_filtered = $3,"
                " rows_charged = $4, rows_repeated = $5, rows_rejected = $6, amounts = $7,"
                " rows_priced_after_start = $8 WHERE id = $1 AND state = 'running'",
                now.import_id,
                now.rows_read,
                now.rows_filtered,
                now.rows_charged,
                now.rows_repeated,
                now.rows_rejected,
                json.dumps(now.amounts),
                now.rows_priced_after_start,
                timeout=SAVE_TIMEOUT,
            )
        except Exception as exc:
            if not session_lost(exc):
                # Logged when the saves begin to fail, not at each one (every 2 s).
                if not self.refused:
                    self.refused = True
                    log.warning(
                        "usage import could not save its progress: tried again every save",
                        extra={"import": now.import_id, "error": str(exc)[:200]},
                    )
                return
            log.error(
                "usage import lost its PostgreSQL session, and its supplier's lock",
                extra={"import": now.import_id, "error": str(exc)[:200] or type(exc).__name__},
            )
            self.lost = exc
            return
        if self.refused:
            self.refused = False
            log.warning("usage import saves its progress again", extra={"import": now.import_id})
