"""The state series of ``/metrics``: sampled from Redis, PostgreSQL and the catalog.

Live calls, the funds and lines they hold, the hottest accounts and zones, the
ledger's lag and its dead letters live in Redis; billing runs and event
deliveries in PostgreSQL. No process sees all of them happen, so none can count
them as they change: every ``interval`` seconds ``StateSampler`` reads them
(pipelined, off the hot path's connection) and publishes plain numbers to
``metrics.STATE``, which renders them at each scrape. PostgreSQL is read every
``billing_every``-th time (its queries use indexes: the runs table, the newest
run's invoices, the deliveries waiting or dead).

Each pass also times a ``PING`` and a ``SELECT 1`` (``ocs_backend_roundtrip_seconds``
with ``source="probe"``) and reports the outcome to the process's backend tracker,
so ``ocs_backend_up`` falls when a backend goes away even while no traffic
touches it. A part that cannot be read is not exported until it can again:
a stale figure would say the ledger keeps up while Redis is gone.

Cost, per pass: three commands per bucket (1024 buckets), one per stream that
holds entries, and two per account with live calls. Redis holds one truth for
every worker, so the workers of ``ocs serve --workers N`` share one pass: the
process holding a short lease (``keys.live_state_lease``) reads the live state and
stores it (``keys.live_state_sample``), and the others publish that sample while
it is younger than the interval, instead of N passes over every live call.
"""

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ocs import backend_health, metrics
from ocs.backend_health import POSTGRESQL, REDIS, BackendHealth
from ocs.balances import keys
from ocs.catalog.snapshot import CatalogHolder
from ocs.charging.values import CallRecordSummary
from ocs.pacing import Pacer
from ocs.services import Services

log = logging.getLogger("ocs.state_metrics")

DEFAULT_INTERVAL_S = 10.0
# A live-state pass reads this many buckets, then this many accounts' calls, a round
# trip at a time, and counts this many calls between two turns of the loop: each
# slice about a millisecond of the serving loop's time.
SAMPLE_BUCKETS = 64
SAMPLE_ACCOUNTS = 16
SAMPLE_CALLS = 250
# The share of the serving loop's time a live-state pass may take while it runs: its
# slices are spread out (ocs.pacing), so that calls never queue behind a burst of them.
SAMPLE_SHARE = 0.1
# The lease of the process taking a shared sample outlives the longest pass it expects
# (a paced pass over 100,000 calls takes seconds), so that no other starts one meanwhile.
LEASE_MIN_S = 60.0
PROBE_TIMEOUT_S = 5.0

_RUNS_SQL = (
    "SELECT state, count(*) AS runs,"
    " COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest"
    " FROM invoice_runs GROUP BY state"
)
_UNPOSTED_SQL = (
    "SELECT count(*) AS runs,"
    " COALESCE(extract(epoch FROM now() - min(finished_at)), 0)::float8 AS oldest"
    " FROM invoice_runs WHERE auto_post AND posted_at IS NULL AND state = 'done'"
)
_LAST_FINISHED_SQL = (
    "SELECT extract(epoch FROM finished_at)::float8 AS at,"
    " extract(epoch FROM finished_at - created_at)::float8 AS took"
    " FROM invoice_runs WHERE state = 'done' AND finished_at IS NOT NULL"
    " ORDER BY finished_at DESC LIMIT 1"
)
_NEWEST_SQL = "SELECT id, accounts_done, accounts_total FROM invoice_runs ORDER BY id DESC LIMIT 1"
_INVOICES_SQL = "SELECT state, count(*) AS n FROM invoices WHERE run_id = $1 GROUP BY state"
_DELIVERIES_SQL = (
    "SELECT channel, state, count(*) AS n FROM event_deliveries"
    " WHERE state IN ('pending', 'dead') GROUP BY channel, state"
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def top(counts: Counter[str], n: int = metrics.HOT_TOP) -> list[tuple[str, int]]:
    """The ``n`` largest counts, largest first (ties by name, so the answer is stable)."""
    return heapq.nsmallest(n, counts.items(), key=lambda item: (-item[1], item[0]))


def _pipeline_results(replies: Sequence[Any]) -> list[Any]:
    """A pipeline's replies; the first error among them raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return list(replies)


async def sample_live(
    redis: Redis | RedisCluster,
    now: Callable[[], float] = time.time,
    pacer: Pacer | None = None,
) -> metrics.LiveState:
    """Live calls, their funds and lines, and the ledger's lag, as Redis holds them now.

    Read and counted a slice at a time, pausing between slices as ``pacer`` says (by
    default only yielding): with tens of thousands of live calls, one pass in one go
    held a serving loop for 20-50 ms.
    """
    pacer = pacer if pacer is not None else Pacer(1.0)
    pacer.restart()
    started = time.perf_counter()
    with_calls: set[bytes] = set()
    lengths: list[int] = []
    dead_letters = 0
    for first in range(0, keys.BUCKETS, SAMPLE_BUCKETS):
        pipe = redis.pipeline(transaction=False)
        for bucket in range(first, min(first + SAMPLE_BUCKETS, keys.BUCKETS)):
            pipe.zrange(keys.call_expiry(bucket), 0, -1)
            pipe.xlen(keys.ledger(bucket))
            pipe.xlen(keys.dead_letters(bucket))
        replies = _pipeline_results(await pipe.execute(raise_on_error=False))
        account_of = keys.expiry_member_account
        for found in replies[0::3]:
            with_calls.update(map(account_of, found))
        lengths += replies[1::3]
        dead_letters += sum(replies[2::3])
        await pacer.pause()
    accounts = sorted(account.decode() for account in with_calls)

    pipe = redis.pipeline(transaction=False)
    waiting = [bucket for bucket, length in enumerate(lengths) if length]
    for bucket in waiting:
        pipe.xrange(keys.ledger(bucket), "-", "+", count=1)
    firsts = _pipeline_results(await pipe.execute(raise_on_error=False)) if waiting else []
    per_account: list[Any] = []
    for first in range(0, len(accounts), SAMPLE_ACCOUNTS):
        pipe = redis.pipeline(transaction=False)
        for account in accounts[first : first + SAMPLE_ACCOUNTS]:
            # The entries alone: the call ids are not counted (half the bytes, no dict).
            pipe.hvals(keys.live_calls(account))
            pipe.hget(keys.account(account), "max_lines")
        per_account += _pipeline_results(await pipe.execute(raise_on_error=False))
        await pacer.pause()

    at = now()
    oldest_ms = min(
        (int(_text(entries[0][0]).partition("-")[0]) for entries in firsts if entries),
        default=None,
    )
    calls: Counter[str] = Counter()
    reserved: Counter[str] = Counter()
    by_account: Counter[str] = Counter()
    by_zone: Counter[str] = Counter()
    at_limit = 0
    counted = 0
    for account, live, max_lines in zip(
        accounts, per_account[0::2], per_account[1::2], strict=True
    ):
        if not live:
            continue  # stopped between the two reads
        counted += len(live)
        if counted >= SAMPLE_CALLS:
            counted = 0
            await pacer.pause()  # let requests in between
        by_account[account] = len(live)
        if max_lines is not None and len(live) >= int(max_lines):
            at_limit += 1
        for raw in live:
            # <held>|<started>|<used>|<debited>|<record> (store.LiveEntry), split here
            # without building an entry: this loop runs once per live call.
            held, started_at, _, _, packed = raw.split(b"|", 4)
            # "0": its start still to come; "0<second>": a provisional start, no answer
            # reported yet (decision 0055).
            calls["not_started" if started_at[:1] == b"0" else "started"] += 1
            try:
                record = CallRecordSummary.unpack(packed)
            except Exception:  # an unreadable record still holds its line and funds
                reserved["unknown"] += int(held)
                by_zone["unknown"] += 1
                continue
            reserved[record.currency] += int(held)
            by_zone[record.zone] += 1
    return metrics.LiveState(
        at=at,
        took=time.perf_counter() - started,
        calls=dict(calls),
        reserved=dict(reserved),
        accounts_with_calls=len(by_account),
        accounts_at_line_limit=at_limit,
        hot_accounts=top(by_account),
        hot_zones=top(by_zone),
        ledger_pending=sum(lengths),
        ledger_oldest_age=0.0 if oldest_ms is None else max(at - oldest_ms / 1000, 0.0),
        dead_letters=dead_letters,
    )


# The shared live-state sample as Redis keeps it: LiveState as JSON, read back whole.
_LIVE_DECODER = msgspec.json.Decoder(metrics.LiveState)


async def sample_billing(
    pool: asyncpg.Pool, now: Callable[[], float] = time.time
) -> metrics.BillingState:
    """Invoice runs, the newest run's invoices and the event deliveries waiting or dead."""
    async with pool.acquire() as conn:
        runs = await conn.fetch(_RUNS_SQL)
        unposted = await conn.fetchrow(_UNPOSTED_SQL)
        finished = await conn.fetchrow(_LAST_FINISHED_SQL)
        newest = await conn.fetchrow(_NEWEST_SQL)
        invoices = [] if newest is None else await conn.fetch(_INVOICES_SQL, newest["id"])
        deliveries = await conn.fetch(_DELIVERIES_SQL)
    running = [r for r in runs if r["state"] == "running"]
    return metrics.BillingState(
        at=now(),
        runs={r["state"]: int(r["runs"]) for r in runs},
        oldest_running_age=float(running[0]["oldest"]) if running else 0.0,
        unposted_runs=int(unposted["runs"]),
        oldest_unposted_age=float(unposted["oldest"]),
        last_finished_at=None if finished is None else float(finished["at"]),
        last_duration=None if finished is None else float(finished["took"]),
        latest_accounts=(
            {}
            if newest is None
            else {"done": newest["accounts_done"], "total": newest["accounts_total"]}
        ),
        latest_invoices={r["state"]: int(r["n"]) for r in invoices},
        deliveries={(r["channel"], r["state"]): int(r["n"]) for r in deliveries},
    )


class StateSampler:
    """Samples the state series every ``interval`` seconds until asked to stop."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        pool: asyncpg.Pool,
        catalog: CatalogHolder,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        billing_every: int = 3,
        health: BackendHealth | None = None,
        clock: Callable[[], float] = time.time,
        take_live_pass: bool = True,
        probe_writes: Callable[[], Awaitable[backend_health.WriteProbe]] | None = None,
    ) -> None:
        self._redis = redis
        # Redis's probe: a write on every master (the auto-pipeline's ``probe_writes``);
        # without one, a probe key SET through ``redis`` (one master of a cluster).
        self._probe_writes = probe_writes
        self._pool = pool
        self._catalog = catalog
        self._interval = interval
        self._billing_every = max(billing_every, 1)
        self._health = health if health is not None else backend_health.default()
        self._clock = clock
        self._passes = 0
        self._pacer = Pacer(SAMPLE_SHARE)
        self._version = -1
        self._loaded_at = 0.0
        # False: the pass over every live call is another process's (ocs.background);
        # this one only publishes the sample that process stored.
        self._take_live_pass = take_live_pass

    @classmethod
    def of(
        cls,
        services: Services,
        interval: float = DEFAULT_INTERVAL_S,
        *,
        take_live_pass: bool = True,
    ) -> "StateSampler":
        """A sampler over a process's services (``take_live_pass``: see ``shared_live``)."""
        return cls(
            services.redis,
            services.pool,
            services.catalog,
            interval=interval,
            health=services.health,
            take_live_pass=take_live_pass,
            probe_writes=services.pipeline.probe_writes,
        )

    def sample_catalog(self) -> metrics.CatalogState:
        """The snapshot served now; its load time is when a pass first saw its version."""
        version, snapshot = self._catalog.version, self._catalog.snapshot
        if version != self._version:
            self._version, self._loaded_at = version, self._clock()
        return metrics.CatalogState(
            version=version,
            loaded_at=self._loaded_at,
            sizes={
                "plans": len(snapshot.plans),
                "prefixes": sum(len(deck) for deck in snapshot.decks.values()),
                "carriers": len(snapshot.routes.decks),
                # A plan's route set's carriers in another currency (or none known):
                # never offered to its calls. Alert on any.
                "routes_in_other_currency": len(self._catalog.other_currency_routes),
            },
        )

    async def probe(self, backend: str) -> bool:
        """One timed round trip to ``backend``, reported to the tracker; whether it answered.

        Redis's is a write (a short-lived probe key, on every master of a cluster): a
        Redis refusing writes (OOM, READONLY...) answers PING, and is down for every
        call all the same."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if backend == REDIS and self._probe_writes is not None:
                    # Down (the gauge 0) while any master fails; which: ocs_redis_master_up.
                    error = (await self._probe_writes()).error()
                    if error is not None:
                        raise error
                elif backend == REDIS:
                    await self._redis.set(
                        keys.write_probe(), "1", px=backend_health.WRITE_PROBE_TTL_MS
                    )
                else:
                    async with self._pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.BACKEND_ERRORS.labels(backend, "probe").inc()
            if not self._health.report(exc, default=backend):
                log.warning(
                    "backend probe failed",
                    extra={"backend": backend, "error": backend_health.describe(exc)},
                )
            return False
        metrics.BACKEND_ROUNDTRIP.labels(backend, "probe").observe(time.perf_counter() - started)
        self._health.report_success(backend, write=backend == REDIS)
        return True

    async def shared_live(self) -> metrics.LiveState | None:
        """The live state as one process sampled it for all: the stored sample while it
        is younger than the interval; else a new one, taken and stored by this process
        when it gets the lease; else (another is taking one) the stored one, or None.

        A sampler that does not take the pass (``take_live_pass`` false) answers the
        stored sample, or None while there is none."""
        stored = await self._redis.get(keys.live_state_sample())
        found = None if stored is None else _LIVE_DECODER.decode(stored)
        if not self._take_live_pass or (
            found is not None and self._clock() - found.at < self._interval
        ):
            return found
        lease_ms = int(max(LEASE_MIN_S, 6 * self._interval) * 1000)
        if not await self._redis.set(keys.live_state_lease(), "1", nx=True, px=lease_ms):
            return found
        try:
            live = await sample_live(self._redis, self._clock, self._pacer)
            keep_ms = int(max(LEASE_MIN_S, 3 * self._interval) * 1000)
            await self._redis.set(keys.live_state_sample(), msgspec.json.encode(live), px=keep_ms)
        finally:
            await self._redis.delete(keys.live_state_lease())
        return live

    async def sample(self, *, shared: bool = False) -> None:
        """One pass: probe both backends, then publish what each reachable one holds.

        ``shared``: the live state as one process sampled it for all (``shared_live``);
        else read by this process now."""
        billing_due = self._passes % self._billing_every == 0
        self._passes += 1
        metrics.STATE.publish(catalog=self.sample_catalog())
        if not await self.probe(REDIS):
            metrics.STATE.forget("live")
        else:
            try:
                live = (
                    await self.shared_live()
                    if shared
                    else await sample_live(self._redis, self._clock, self._pacer)
                )
            except Exception as exc:
                self._failed("live", REDIS, exc)
            else:
                if live is not None:
                    metrics.STATE.publish(live=live)
                elif not self._take_live_pass:
                    # No process has stored a sample for a while (the one that takes the
                    # pass is down): no figure rather than an old one.
                    metrics.STATE.forget("live")
        if not await self.probe(POSTGRESQL):
            metrics.STATE.forget("billing")
        elif billing_due:
            try:
                billing = await sample_billing(self._pool, self._clock)
            except Exception as exc:
                self._failed("billing", POSTGRESQL, exc)
            else:
                metrics.STATE.publish(billing=billing)

    def _failed(self, part: str, backend: str, exc: Exception) -> None:
        """A part could not be read: it is not exported until it can be again."""
        metrics.STATE.forget(part)
        if not self._health.report(exc, default=backend):
            log.exception("state sample failed", extra={"part": part})

    async def run(self, stopping: asyncio.Event) -> None:
        """Sample every ``interval`` until ``stopping`` is set; the series go with it."""
        try:
            while not stopping.is_set():
                await self.sample(shared=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=self._interval)
        finally:
            metrics.STATE.forget()
