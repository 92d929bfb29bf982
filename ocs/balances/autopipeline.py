"""Auto-pipelining: every Redis command issued in one event-loop tick goes out as one pipeline.

One ``await redis.evalsha(...)`` per request through a connection pool
collapses under hundreds of concurrent requests (measured, decision 0006);
collecting the commands of a tick and sending them together keeps one round
trip per decision while serving thousands of decisions a second.

Commands in one pipeline are independent (no MULTI): each caller gets its own
result or exception. On Redis Cluster the wire splits a tick's pipeline into one
write per master (ocs/balances/wire.py). The scripts are loaded on every
connection the wire opens, so a master that took over a slot has them; a
NOSCRIPT answer (after a SCRIPT FLUSH) means that script did not run, so the
scripts are loaded on every master and those commands alone are sent again.

A batch for one connected server is written at the end of its tick and its replies
handed out by a callback; only connecting, a cluster's routing, WAIT and the NOSCRIPT
retry run as a task (decision 0006). On a cluster, the commands of a slot being
migrated (answered ``TRYAGAIN``) are retried apart: the batch's other callers get their
replies at once, and those callers theirs when the commands run or give up
(``redis_migration_wait_ms``, decision 0033).

A batch that cannot be sent fails each of its callers (who answer
"unavailable") and is reported to the process's backend tracker, which logs the
outage once; nothing is logged here per batch or per command. So are the commands a
Redis refuses because it takes no write now (OOM, READONLY...: ocs.backend_health):
each such caller fails, the batch's other replies are handed out. While the tracker
has Redis down for refused writes, answered batches do not end the outage (reads are
answered all along): a probe ``SET`` sent at most once a second does, once it is taken.
On a cluster no answered batch ends an outage (the healthy masters answer theirs while
another is down): the probe does, once every master takes it.
"""

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ocs import backend_health, metrics
from ocs.backend_health import BackendHealth
from ocs.balances import keys
from ocs.balances.cluster import RedisClient
from ocs.balances.scripts import ALL_SCRIPTS, Script
from ocs.balances.wire import MIGRATION_WAIT_S, RedisWire, Retrying, batch_failure

_Pending = tuple[tuple[Any, ...], asyncio.Future[Any]]
_LOAD_SCRIPTS: tuple[tuple[str, ...], ...] = tuple(
    ("SCRIPT", "LOAD", script.source) for script in ALL_SCRIPTS
)
# While Redis refuses writes: one probe write a second at most.
PROBE_INTERVAL_S = 1.0


class AutoPipeline:
    """Queues commands and flushes them as one pipeline at the end of the loop tick."""

    def __init__(
        self,
        redis: RedisClient,
        url: str,
        *,
        max_batch: int = 1024,
        health: BackendHealth | None = None,
        cluster: bool = False,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        migration_wait: float = MIGRATION_WAIT_S,
    ) -> None:
        self._redis = redis
        self._health = health if health is not None else backend_health.default()
        self._wire = RedisWire(
            url,
            cluster=cluster,
            on_connect=_LOAD_SCRIPTS,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            migration_wait=migration_wait,
        )
        self._cluster = cluster
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        # Batches written by ``_flush`` whose replies are still to come.
        self._sent: set[asyncio.Future[list[Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probing = False  # a probe write is in flight
        self._next_probe = 0.0  # monotonic clock: no probe write before

    @property
    def redis(self) -> RedisClient:
        """The Redis client this pipeline was made with, for commands sent on their own."""
        return self._redis

    @property
    def cluster(self) -> bool:
        """True when the commands go to a Redis Cluster: a script's keys share one slot."""
        return self._cluster

    async def load_scripts(self) -> None:
        """Register every script with every master (SCRIPT LOAD is idempotent)."""
        await self._wire.execute_on_every_master(_LOAD_SCRIPTS)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future resolves with its reply."""
        loop = self._loop
        if loop is None:
            # Bound to the loop of its first command: its connections are that loop's
            # anyway. Asked once, since asyncio's get_running_loop is a getpid() call.
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if len(self._queue) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def run_script(
        self, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue one EVALSHA of ``script`` for this tick's pipeline; the future holds its result."""
        return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        loop = self._loop
        assert loop is not None  # set by the first command queued
        started = time.perf_counter()
        # Written now when the one server is connected: the replies are handed out by a
        # callback, without a task and its coroutines per batch (a third of what a
        # batch cost this process, benchmarks/redis_roundtrip.py).
        sent = self._wire.send_now([args for args, _ in batch])
        if sent is None:
            task = loop.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            return
        self._sent.add(sent)
        sent.add_done_callback(functools.partial(self._delivered, batch, started))

    def _delivered(
        self, batch: list[_Pending], started: float, sent: "asyncio.Future[list[Any]]"
    ) -> None:
        """The replies of a batch ``_flush`` wrote, handed to its callers."""
        self._sent.discard(sent)
        if sent.cancelled():
            self._failed(batch, RedisConnectionError("the Redis batch was cancelled"))
            return
        error = sent.exception()
        if error is not None:
            self._failed(batch, error)
            return
        retry = self._deliver(batch, sent.result(), started)
        if retry:
            assert self._loop is not None
            task = self._loop.create_task(self._send_again(retry))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            replies, retrying = await self._wire.execute_answered([args for args, _ in batch])
        except Exception as exc:
            self._failed(batch, exc)
            return
        if retrying is not None:
            # Commands of a migrating slot: their callers are answered when they run (or
            # give up); the others now, not held with them.
            self._answer_later(batch, retrying, started)
            apart = set(retrying.indexes)
            kept = [i for i in range(len(batch)) if i not in apart]
            batch, replies = [batch[i] for i in kept], [replies[i] for i in kept]
        retry = self._deliver(batch, replies, started)
        if retry:
            await self._send_again(retry)

    def _answer_later(self, batch: list[_Pending], retrying: Retrying, started: float) -> None:
        """Hand the replies of the commands ``retrying`` runs apart to their callers when
        they come (``drain`` waits for them)."""
        assert self._loop is not None  # set by the first command queued
        waiting = [batch[i] for i in retrying.indexes]
        task = self._loop.create_task(self._answered_later(waiting, retrying, started))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _answered_later(
        self, batch: list[_Pending], retrying: Retrying, started: float
    ) -> None:
        """The replies of commands retried apart, handed out as a batch's are."""
        try:
            replies = await retrying.replies
        except Exception as exc:
            self._failed(batch, exc)
            return
        failure = batch_failure(replies)
        if failure is not None:
            self._failed(batch, failure)
            return
        retry = self._deliver(batch, replies, started)
        if retry:
            await self._send_again(retry)

    def _failed(self, batch: list[_Pending], exc: BaseException) -> None:
        """A batch that could not be sent or was not answered: every caller fails."""
        metrics.REDIS_PIPELINE_ERRORS.inc()
        self._fail_all(batch, exc)

    def _fail_all(self, batch: list[_Pending], exc: BaseException) -> None:
        """Every caller of ``batch`` fails with ``exc``, reported to the health tracker."""
        # A lost or refused connection means Redis is unreachable: the callers answer
        # "unavailable" and the tracker logs the outage once, not once per batch.
        self._health.report(exc, default=backend_health.REDIS)
        for _, future in batch:
            _fail_quietly(future, exc)

    def _deliver(self, batch: list[_Pending], replies: list[Any], started: float) -> list[_Pending]:
        """Each caller its reply; the commands Redis answered NOSCRIPT, to send again."""
        # One observation per batch (one round trip), not per command.
        metrics.REDIS_PIPELINE_ROUNDTRIP.observe(time.perf_counter() - started)
        retry: list[_Pending] = []
        outage: Exception | None = None
        for (args, future), reply in zip(batch, replies, strict=True):
            if _is_noscript(reply):
                retry.append((args, future))
            elif future.done():
                continue  # the caller gave up (cancelled); the command still ran
            elif isinstance(reply, Exception):
                if backend_health.backend_of(reply) is None:
                    future.set_exception(reply)
                else:  # LOADING (a restarted Redis reads its data), or writes refused
                    outage = reply
                    _fail_quietly(future, reply)
            else:
                future.set_result(reply)
        if outage is None:
            # A cluster's batch reached only the masters of its keys: while one fails, the
            # others' answers do not end the outage (each batch would flap it).
            if not self._health.report_success(
                backend_health.REDIS, every_master=not self._cluster
            ):
                self._probe_writes()  # a write taken by every master ends it
        else:
            self._health.report_failure(backend_health.REDIS, outage)
        return retry

    def _probe_writes(self) -> None:
        """Send a probe write, unless one is in flight or one was sent under a second ago."""
        now = time.monotonic()
        if self._probing or now < self._next_probe:
            return
        self._probing = True
        self._next_probe = now + PROBE_INTERVAL_S
        assert self._loop is not None  # set by the first command queued
        task = self._loop.create_task(self._probe())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _probe(self) -> None:
        """One probe write on every master: taken by all, Redis takes writes again;
        refused by one (another master than the batches' on a cluster), still down."""
        try:
            probe = await self.probe_writes()
        except Exception as exc:
            self._health.report(exc, default=backend_health.REDIS)
            return
        finally:
            self._probing = False
        error = probe.error()
        if error is not None:
            self._health.report(error, default=backend_health.REDIS)
        else:
            self._health.report_success(backend_health.REDIS, write=True)

    async def probe_writes(
        self, wait_s: float = backend_health.MASTER_PROBE_TIMEOUT_S
    ) -> backend_health.WriteProbe:
        """SET a short-lived probe key (``keys.write_probe``) on every master, the one
        server when standalone, waiting ``wait_s`` seconds for each: every master's
        outcome (a refused write: OOM, READONLY...; its outage), reported per master to
        the tracker (``ocs_redis_master_up``, one line per change). A probe on one master
        of a cluster missed the others' refusals (decision 0013). Raises when no master
        answers (the slot map cannot be read)."""
        outcomes = await self._wire.write_probe(
            keys.write_probe(), backend_health.WRITE_PROBE_TTL_MS, wait_s
        )
        probe = backend_health.WriteProbe(outcomes)
        self._health.report_masters(probe)
        return probe

    async def _send_again(self, retry: list[_Pending]) -> None:
        """The commands of a batch that found their script missing (NOSCRIPT, after a
        restart or a SCRIPT FLUSH): the scripts loaded on every master, then sent again."""
        try:
            await self.load_scripts()
            replies = await self._run(retry)
        except Exception as exc:
            self._fail_all(retry, exc)
            return
        for (_, future), reply in zip(retry, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, batch: list[_Pending]) -> list[Any]:
        return await self._wire.execute_many([args for args, _ in batch])

    async def drain(self) -> None:
        """Wait for every pipeline already sent (staged shutdown), then close the connection."""
        self._flush()
        # A batch delivered meanwhile may start a task (a NOSCRIPT retry): look again.
        while self._in_flight or self._sent:
            await asyncio.gather(*self._in_flight, *self._sent, return_exceptions=True)
        await self._wire.close()


def _fail_quietly(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail a caller's future with an outage error, without asyncio's GC-time report.

    A caller that awaits several futures one by one stops at the first error and
    never retrieves the rest; asyncio would log each of those ("Future exception
    was never retrieved", with a traceback) when collected: thousands per second
    while Redis is down. The outage is logged once by the backend tracker instead;
    the caller that awaits still gets the exception.
    """
    if future.done():
        return  # the caller gave up (cancelled)
    future.set_exception(exc)
    future.exception()  # marks it retrieved


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
