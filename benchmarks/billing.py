"""Billing at operator scale: invoice drafts and posting for 100,000 accounts, 10,000,000 CDRs.

Issue 12's figures: every account subscribes to one plan (monthly cycle on day
1, invoiced at the end of the cycle) with two monthly charges, "Line rent"
10.00 EUR in arrears and "Support" 2.50 EUR in advance, and ``--cdrs`` rated
calls spread evenly over March 2026 in time order (as the ledger writer
inserts them: one account's calls scattered over the whole table), in four
zones, outbound and inbound. The data is made in PostgreSQL itself (``INSERT
... SELECT`` over ``generate_series``, in slices on parallel connections, the
CDR secondary indexes built after the load from their own definitions, then
``ANALYZE``); the accounts' real-time state goes into Redis through the
balance scripts, gathered in the auto-pipeline.

Then it times, as ocs runs them:

* ``runs.create_run`` for period 2026-03 (the chunks of accounts);
* ``runs.execute_run`` in ``--workers`` processes (or asyncio tasks in this
  process with ``--mode tasks``), all started together: every draft;
* ``posting.post`` of the run in this process: gapless numbers, then each
  charge line's money through ``fee.lua`` with the line as ledger reference.

and checks the outcome: one draft per account, 8 lines each (2 charges, 6
usage summaries), the drafts' sum equal to 12.50 EUR an account plus the
CDRs' charges rounded per account, zone and direction (computed here in SQL);
after posting, numbers 1..N, every charge line moved and sampled Redis
balances 100.00 - 12.50 = 87.50 EUR.

Memory: a thread samples the RSS of this process and of its worker processes
(psutil, every 50 ms) and each worker reports its kernel peak (``ru_maxrss``);
compare two sizes to see whether it grows with the data. ``--query-timings``
adds per-statement times (the workers' pool uses a connection class that times
each call) and the split of posting into numbering and money moving.

The database named by ``--database-url`` is dropped and created again (never
``postgres``), and the Redis database of ``--redis-url`` is flushed (never 0).
``--reuse`` keeps the generated data of a previous run of the same size and
only clears the billing tables and recreates the Redis accounts.

    python benchmarks/billing.py --accounts 10000 --cdrs 1000000
    python benchmarks/billing.py --accounts 100000 --cdrs 10000000 --workers 2
    python benchmarks/billing.py --reuse --mode tasks --workers 4 --query-timings
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import random
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil
import uvloop
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.store import BalanceStore
from ocs.billing import posting, rules_store, runs, taxes
from ocs.billing.cycles import PlanBilling
from ocs.billing.rules_store import BundleSpec, IndicatorSpec, RuleSpec
from ocs.billing.store import Charge, create_charge, set_plan_billing
from ocs.billing.taxes import Tax
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.db.migrate import migrate

EUR = 1_000_000
PLAN = "bench"
PERIOD = "2026-03"
INVOICE_DATE = date(2026, 4, 1)
OPENING = 100 * EUR
RENT = 10 * EUR  # monthly, arrears: March
SUPPORT = 2_500_000  # monthly, advance: April, on the March invoice
CHARGES_PER_ACCOUNT = RENT + SUPPORT
USAGE_LINES = 6  # 4 zones outbound, 2 of them inbound too (see CDR_SQL)
# Zone names and prices per minute (micro-EUR), as in the tests' retail deck.
ZONES = (("UK Fixed", 10_000), ("UK Mobile", 60_000), ("Germany", 12_000), ("USA", 5_000))
# A prime, coprime with any account count not divisible by it: g -> account is a
# permutation of each block of N consecutive CDRs, so each account gets an equal share.
SPREAD = 7919
# --vat-and-bundle (issue 13's figure): 20% VAT on every line, 60 free minutes to UK Mobile.
VAT_RATE = 20_000_000  # millionths of a percent
FREE_SECONDS = 3_600
BUNDLE = "free60"
SAMPLE_EVERY = 0.05


def account_id(n: int, width: int) -> str:
    """The id of account ``n`` (1-based): ``ba0000001``."""
    return f"ba{n:0{width}d}"


# One slice [$1, $2] of the CDRs. $3: accounts, $4: total CDRs, $5: id width.
# Call g is the (g-1)/$4-th instant of March (UTC); its account is a permutation of
# g; its zone and direction follow from which of the account's calls it is (g / N),
# so every account has calls in all four zones, and inbound calls in two of them.
CDR_SQL = """
INSERT INTO cdrs (entry_id, call_id, account_id, plan_id, zone, destination, currency,
                  authorized_at, stopped_at, duration, billed_seconds, connect_fee,
                  first_block, increment, price_per_minute, rated_cost, charged, direction)
SELECT lpad(g::text, 12, '0') || '-0', 'call-' || g,
       'ba' || lpad((1 + (g * {spread}::bigint) % $3)::text, $5, '0'), '{plan}',
       z.zone, '44' || (g % 1000000000)::text, 'EUR',
       t - make_interval(secs => d), t, d, d, 0, 1, 1, z.ppm, d * z.ppm / 60, d * z.ppm / 60,
       CASE WHEN (g / $3) % 10 = 9 THEN 'inbound' ELSE 'outbound' END
FROM generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT timestamptz '2026-03-01 00:00:00+00'
                     + make_interval(secs => (g - 1) * 2678400.0 / $4) AS t,
                     (1 + (g * 37) % 600)::int AS d) AS c,
     LATERAL (SELECT (ARRAY[{zones}])[1 + (g / $3) % 4] AS zone,
                     (ARRAY[{prices}]::bigint[])[1 + (g / $3) % 4] AS ppm) AS z
""".format(
    spread=SPREAD,
    plan=PLAN,
    zones=", ".join(f"'{name}'" for name, _ in ZONES),
    prices=", ".join(str(price) for _, price in ZONES),
)

# What the drafts must sum to, computed apart from ocs: each account's charges, plus its
# usage per zone and direction rounded once to cents, half away from zero (numeric round).
EXPECTED_SQL = """
SELECT $1::bigint * $2::bigint + COALESCE(sum(round(s / 10000.0) * 10000), 0)::bigint
FROM (SELECT sum(charged) AS s FROM cdrs
      WHERE stopped_at >= '2026-03-01 00:00:00+00' AND stopped_at < '2026-04-01 00:00:00+00'
      GROUP BY account_id, zone, direction) AS u
"""


class PeakRss:
    """Peak resident memory of this process and of its children, sampled in a thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.own = 0
        self.children = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # Listing children scans all of /proc (psutil's ppid map): measured at ~25% of a
        # core when done every sample, so the list is refreshed only once a second.
        children: list[psutil.Process] = []
        listed = 0.0
        while not self._stop.wait(SAMPLE_EVERY):
            if time.monotonic() - listed >= 1.0:
                children = self._process.children(recursive=True)
                listed = time.monotonic()
            own = self._process.memory_info().rss
            kids = 0
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kids += child.memory_info().rss
            with self._lock:
                self.own = max(self.own, own)
                self.children = max(self.children, kids)

    def phase(self) -> tuple[float, float]:
        """(own, children's sum) peak MB since the last call; starts the next phase."""
        now = self._process.memory_info().rss
        with self._lock:
            found = (max(self.own, now) / 2**20, self.children / 2**20)
            self.own = now
            self.children = 0
        return found

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


# What a worker process reports: name, seconds, peak RSS (MB), CPU seconds (its own, its
# database backends'), and its statements' timings.
WorkerReport = tuple[str, float, float, tuple[float, float], dict[str, tuple[float, int]]]


def own_cpu_s() -> float:
    """This process's CPU seconds so far (user + system)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def process_cpu_s(pid: int) -> float:
    """Another process's CPU seconds so far (user + system): a PostgreSQL backend on this
    machine, read from /proc (the benchmark's database runs here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def max_rss_mb() -> float:
    """This process's kernel peak RSS so far (ru_maxrss, KiB on Linux), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class QueryTimes:
    """Seconds and calls per SQL statement (its first 70 characters), for --query-timings."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, sql: str, elapsed: float) -> None:
        key = " ".join(sql.split())[:70]
        self.seconds[key] += elapsed
        self.calls[key] += 1

    def merge(self, other: dict[str, tuple[float, int]]) -> None:
        for key, (seconds, calls) in other.items():
            self.seconds[key] += seconds
            self.calls[key] += calls

    def as_dict(self) -> dict[str, tuple[float, int]]:
        return {key: (self.seconds[key], self.calls[key]) for key in self.seconds}

    def report(self, title: str) -> None:
        if not self.seconds:
            return
        print(f"  {title} (seconds summed over workers, calls):")
        for key, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            print(f"    {seconds:8.2f} s {self.calls[key]:7d}x  {key}")


TIMES = QueryTimes()


class TimedConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that adds each statement's time to ``TIMES``."""

    async def _timed(self, sql: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            TIMES.add(sql, time.perf_counter() - started)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetch(query, *args, **kwargs))

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetchrow(query, *args, **kwargs))

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetchval(query, *args, **kwargs))

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().execute(query, *args, **kwargs))

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> Any:
        return await self._timed(command, super().executemany(command, args, **kwargs))

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> Any:
        return await self._timed(
            f"COPY {table_name}", super().copy_records_to_table(table_name, **kwargs)
        )


def timed_steps(module: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Wrap the module's coroutine functions ``names`` to sum their seconds; the sums."""
    spent: dict[str, float] = defaultdict(float)
    for name in names:
        original = getattr(module, name)

        def wrapper(
            *args: Any, _original: Callable[..., Awaitable[Any]] = original, _name: str = name
        ) -> Awaitable[Any]:
            async def timed() -> Any:
                started = time.perf_counter()
                try:
                    return await _original(*args)
                finally:
                    spent[_name] += time.perf_counter() - started

            return timed()

        setattr(module, name, wrapper)
    return spent


def admin_url(database_url: str) -> tuple[str, str]:
    """(URL of the server's ``postgres`` database for CREATE/DROP, the target name)."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if name in ("", "postgres", "template0", "template1"):
        raise SystemExit(f"--database-url must name a database of its own, not {name!r}")
    return urlunsplit(parts._replace(path="/postgres")), name


async def connect_redis(redis_url: str) -> tuple[Redis, BalanceStore]:
    """Redis and the balance store over the auto-pipeline, scripts loaded."""
    if urlsplit(redis_url).path.strip("/") in ("", "0"):
        raise SystemExit("--redis-url must name a Redis database other than 0 (it is flushed)")
    redis = Redis.from_url(redis_url)
    pipeline = AutoPipeline(redis, redis_url)
    await pipeline.load_scripts()
    return redis, BalanceStore(pipeline)


async def generated_size(database_url: str) -> tuple[int, int] | None:
    """(accounts, CDRs) of an existing benchmark database, None when there is none."""
    admin, name = admin_url(database_url)
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    if not exists:
        return None
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('cdrs') IS NOT NULL"):
            return None
        accounts = await conn.fetchval("SELECT count(*) FROM accounts")
        cdrs = await conn.fetchval("SELECT count(*) FROM cdrs")
    finally:
        await conn.close()
    return int(accounts), int(cdrs)


async def generate(
    database_url: str, store: BalanceStore, accounts: int, cdrs: int, width: int
) -> dict[str, float]:
    """Drop and create the database, migrate it, and fill it; seconds per step."""
    steps: dict[str, float] = {}
    admin, name = admin_url(database_url)
    started = time.perf_counter()
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    async with asyncpg.create_pool(database_url, min_size=2, max_size=4) as pool:
        await migrate(pool)
        await catalog_store.create_plan(pool, Plan(PLAN, PLAN, "EUR", 0, 0, 4, 14_400))
        await set_plan_billing(
            pool, store, PlanBilling(PLAN, "fixed_date", date(2026, 1, 1), cycle_day=1)
        )
        # The plan's custom charges: every account subscribed to the plan has both.
        for charge_id, name, amount, timing in (
            ("rent", "Line rent", RENT, "arrears"),
            ("support", "Support", SUPPORT, "advance"),
        ):
            charge = Charge(charge_id, name, charge_id.upper(), "EUR", amount, "recurring")
            await create_charge(
                pool, replace(charge, cadence="monthly", timing=timing, plan_id=PLAN)
            )
        steps["schema"] = time.perf_counter() - started

        started = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
                " SELECT 'ba' || lpad(g::text, $2, '0'), $3, 'EUR', 0, 4, 'active'"
                " FROM generate_series(1, $1) AS g",
                accounts,
                width,
                PLAN,
            )
            # The plan subscription carries the plan's two charges (its custom charges).
            await conn.execute(
                "INSERT INTO subscriptions (account_id, plan_id, start_date, status)"
                " SELECT id, plan_id, DATE '2026-01-01', 'active' FROM accounts ORDER BY id"
            )
        steps["accounts"] = time.perf_counter() - started

        started = time.perf_counter()
        async with pool.acquire() as conn:
            indexes = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes i WHERE tablename = 'cdrs'"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
            )
            for index in indexes:
                await conn.execute(f'DROP INDEX "{index["indexname"]}"')

        async def load(first: int, last: int) -> None:
            async with pool.acquire() as conn:
                await conn.execute(CDR_SQL, first, last, accounts, cdrs, width)

        # Slices of at least 100,000 calls, as many at once as the box has cores
        # (the server is on this box).
        slices = max(1, min(cdrs // 100_000, 2 * (os.cpu_count() or 1)))
        bounds = [1 + cdrs * i // slices for i in range(slices + 1)]
        semaphore = asyncio.Semaphore(os.cpu_count() or 1)

        async def slice_job(i: int) -> None:
            async with semaphore:
                await load(bounds[i], bounds[i + 1] - 1)

        await asyncio.gather(*(slice_job(i) for i in range(slices)))
        steps["cdrs insert"] = time.perf_counter() - started

        started = time.perf_counter()

        async def build(definition: str) -> None:
            async with pool.acquire() as conn:
                await conn.execute("SET maintenance_work_mem = '512MB'")
                await conn.execute(definition)

        await asyncio.gather(*(build(index["indexdef"]) for index in indexes))
        steps["cdrs indexes"] = time.perf_counter() - started
        started = time.perf_counter()
        async with pool.acquire() as conn:
            # The dev server runs without autovacuum: without statistics the planner guesses.
            await conn.execute("VACUUM ANALYZE")
        steps["vacuum analyze"] = time.perf_counter() - started
    return steps


async def set_vat_and_bundle(database_url: str, on: bool) -> None:
    """Put on (or take off) issue 13's load: a 20% VAT on every line (tax code S on the
    four zones and both products) and a bundle of 60 free minutes to UK Mobile a month
    on every subscription, made through ocs's own store functions."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM subscription_bundles")
            await conn.execute("DELETE FROM plan_taxes WHERE plan_id = $1", PLAN)
            made = await conn.fetchval("SELECT count(*) FROM bundles WHERE id = $1", BUNDLE)
        if not on:
            return
        if not made:
            await taxes.create_tax(
                pool, Tax("VAT", "VAT", VAT_RATE, "federal", "EUR", date(2026, 1, 1))
            )
            for zone, _ in ZONES:
                await taxes.set_zone_tax_code(pool, zone, "S")
            for product in ("RENT", "SUPPORT"):
                await taxes.set_product_tax_code(pool, product, "S")
            uk = IndicatorSpec("uk", "sum", "duration", zone="UK Mobile")
            free = RuleSpec("free", "60 free minutes to UK Mobile", "uk", FREE_SECONDS)
            await rules_store.create_bundle(
                pool, BundleSpec(BUNDLE, "Mobile bundle", "EUR", indicators=(uk,), rules=(free,))
            )
        await taxes.assign_tax(pool, PLAN, "VAT", "tax_code", "S")
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO subscription_bundles (subscription_id, bundle_id)"
                " SELECT id, $1 FROM subscriptions",
                BUNDLE,
            )
            await conn.execute("ANALYZE subscription_bundles")


async def reset_billing(database_url: str) -> None:
    """Forget every invoice and run of an earlier round (TRUNCATE: no row triggers)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "TRUNCATE invoice_lines, invoices, invoice_run_chunks, invoice_runs,"
            " invoice_sequences RESTART IDENTITY CASCADE"
        )
    finally:
        await conn.close()


async def redis_accounts(store: BalanceStore, redis: Redis, accounts: int, width: int) -> float:
    """Flush the Redis database and create every account's real-time state; seconds."""
    started = time.perf_counter()
    await redis.flushdb()
    batch = 5_000
    for first in range(1, accounts + 1, batch):
        created = await asyncio.gather(
            *(
                store.create_account(
                    account_id(n, width),
                    plan_id=PLAN,
                    currency="EUR",
                    credit_limit=0,
                    max_lines=4,
                    status="active",
                    opening_balance=OPENING,
                )
                for n in range(first, min(first + batch, accounts + 1))
            )
        )
        if any(c is None for c in created):
            raise SystemExit("a Redis account existed already after FLUSHDB")
    return time.perf_counter() - started


def worker_process(
    database_url: str,
    run_id: int,
    name: str,
    query_timings: bool,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[WorkerReport],
) -> None:
    """One billing worker: connect, wait for the others, execute the run; report."""

    async def main() -> None:
        connection_class = TimedConnection if query_timings else asyncpg.Connection
        async with asyncpg.create_pool(
            database_url, min_size=2, max_size=2, connection_class=connection_class
        ) as pool:
            async with pool.acquire() as first, pool.acquire() as second:
                backends = [await c.fetchval("SELECT pg_backend_pid()") for c in (first, second)]
            await asyncio.to_thread(ready.wait)
            started = time.perf_counter()
            cpu_before = own_cpu_s(), sum(process_cpu_s(pid) for pid in backends)
            await runs.execute_run(pool, run_id, worker=name)
            elapsed = time.perf_counter() - started
            cpu = (
                own_cpu_s() - cpu_before[0],
                sum(process_cpu_s(pid) for pid in backends) - cpu_before[1],
            )
        results.put((name, elapsed, max_rss_mb(), cpu, TIMES.as_dict()))

    uvloop.run(main())


async def drafts_in_processes(
    database_url: str, run_id: int, workers: int, query_timings: bool
) -> tuple[float, list[tuple[str, float, float]]]:
    """Every draft by ``workers`` processes started together: (wall seconds, per worker)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers + 1)
    results: multiprocessing.Queue[WorkerReport] = context.Queue()
    processes = [
        context.Process(
            target=worker_process,
            args=(database_url, run_id, f"bench-{i}", query_timings, ready, results),
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    # Imports and connections are made before the clock starts.
    await asyncio.to_thread(ready.wait)
    started = time.perf_counter()
    reports = [await asyncio.to_thread(results.get) for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {process.exitcode})")
    for _name, _elapsed, _rss, _cpu, times in reports:
        TIMES.merge(times)
    python_s = sum(cpu[0] for _, _, _, cpu, _ in reports)
    database_s = sum(cpu[1] for _, _, _, cpu, _ in reports)
    print(
        f"  CPU: workers {python_s:.1f} s + their database backends {database_s:.1f} s"
        f" = {python_s + database_s:.1f} s"
    )
    return elapsed, [(name, took, rss) for name, took, rss, _, _ in reports]


async def drafts_in_tasks(
    database_url: str, run_id: int, workers: int, query_timings: bool
) -> tuple[float, list[tuple[str, float, float]]]:
    """Every draft by ``workers`` asyncio tasks of this process: (wall seconds, per worker)."""
    connection_class = TimedConnection if query_timings else asyncpg.Connection
    async with asyncpg.create_pool(
        database_url, min_size=workers + 1, max_size=workers + 1, connection_class=connection_class
    ) as pool:

        async def one(name: str) -> tuple[str, float, float]:
            started = time.perf_counter()
            await runs.execute_run(pool, run_id, worker=name)
            return name, time.perf_counter() - started, max_rss_mb()

        started = time.perf_counter()
        done = await asyncio.gather(*(one(f"bench-{i}") for i in range(workers)))
        return time.perf_counter() - started, list(done)


async def check_drafts(
    pool: asyncpg.Pool, run_id: int, accounts: int, vat_and_bundle: bool
) -> tuple[int, int]:
    """Refuse a wrong outcome: (invoices, lines) of the run, after checking the sums.

    Without taxes and bundles, the drafts must sum to the charges plus the usage
    rounded per account, zone and direction, computed apart from ocs. With VAT
    and the bundle (every line bears the 20% VAT code), each invoice's VAT must
    be 20% of its subtotal rounded once, every account gets one free-minutes
    credit of at most 60 minutes at the UK Mobile price, and the subtotals must
    sum to that same figure plus the credits.
    """
    async with pool.acquire() as conn:
        invoices, subtotal, drafts = await conn.fetchrow(
            "SELECT count(*), COALESCE(sum(subtotal), 0), count(*) FILTER (WHERE state = 'draft')"
            " FROM invoices WHERE run_id = $1",
            run_id,
        )
        lines = await conn.fetchval(
            "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.run_id = $1",
            run_id,
        )
        expected = await conn.fetchval(EXPECTED_SQL, accounts, CHARGES_PER_ACCOUNT)
        state = await conn.fetchval("SELECT state FROM invoice_runs WHERE id = $1", run_id)
        wrong_vat, credits, free_lines, free_beyond = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM invoices WHERE run_id = $1"
            "        AND tax_total <> round(subtotal * $2::numeric / 1e12) * 10000),"
            " COALESCE(sum(l.amount), 0), count(*),"
            " count(*) FILTER (WHERE l.amount >= 0 OR l.amount < -$3::bigint)"
            " FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.run_id = $1 AND l.kind = 'bundle_free'",
            run_id,
            VAT_RATE if vat_and_bundle else 0,
            FREE_SECONDS * dict(ZONES)["UK Mobile"] // 60,
        )
    per_account = 2 + USAGE_LINES + (2 if vat_and_bundle else 0)
    problems = []
    if state != "done":
        problems.append(f"run state {state}")
    if invoices != accounts or drafts != accounts:
        problems.append(f"{invoices} invoices ({drafts} drafts) for {accounts} accounts")
    if lines != accounts * per_account:
        problems.append(f"{lines} lines, expected {accounts * per_account}")
    if subtotal != expected + credits:
        problems.append(f"subtotals sum to {subtotal}, expected {expected + credits}")
    if wrong_vat:
        problems.append(f"{wrong_vat} invoices whose VAT is not 20% of the subtotal")
    if free_lines != (accounts if vat_and_bundle else 0) or free_beyond:
        problems.append(f"{free_lines} free-minutes credits ({free_beyond} out of bounds)")
    if problems:
        raise SystemExit("drafts wrong: " + "; ".join(problems))
    return int(invoices), int(lines)


async def check_posted(
    pool: asyncpg.Pool, store: BalanceStore, run_id: int, accounts: int, width: int
) -> None:
    """Refuse a wrong posting: numbers 1..N, every line that moves money moved once, and
    sampled balances debited by exactly those lines."""
    async with pool.acquire() as conn:
        moving = await conn.fetchval(
            "SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.run_id = $1 AND l.moves_money",
            run_id,
        )
        posted, first, last, moved = await conn.fetchrow(
            "SELECT count(*), min(number), max(number),"
            " (SELECT count(*) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
            "  WHERE i.run_id = $1 AND l.moved_at IS NOT NULL)"
            " FROM invoices WHERE run_id = $1 AND state = 'posted'",
            run_id,
        )
    problems = []
    if posted != accounts:
        problems.append(f"{posted} posted of {accounts}")
    if (first, last) != ("INV-2026-000001", f"INV-2026-{accounts:06d}"):
        problems.append(f"numbers {first}..{last}")
    if moved != moving or moving < 2 * accounts:
        problems.append(f"{moved} lines moved of {moving}")
    for n in random.Random(12).sample(range(1, accounts + 1), min(100, accounts)):
        account = account_id(n, width)
        async with pool.acquire() as conn:
            owed = await conn.fetchval(
                "SELECT sum(l.amount) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
                " WHERE i.run_id = $1 AND i.account_id = $2 AND l.moves_money",
                run_id,
                account,
            )
        state = await store.get_account(account)
        if state is None or state.balance != OPENING - owed:
            problems.append(f"{account} balance {state and state.balance}, owed {owed}")
            break
    if problems:
        raise SystemExit("posting wrong: " + "; ".join(problems))


async def bench(args: argparse.Namespace) -> None:
    """Generate (or reuse) the data, then time the run, the drafts and posting."""
    accounts, cdrs = args.accounts, args.cdrs
    width = max(7, len(str(accounts)))
    rss = PeakRss()
    print(f"machine: {describe()}")
    print(f"accounts {accounts:,}, CDRs {cdrs:,}, workers {args.workers} ({args.mode})")
    print(f"RSS at start: {rss.phase()[0]:.0f} MB")

    redis, store = await connect_redis(args.redis_url)
    if args.reuse and await generated_size(args.database_url) == (accounts, cdrs):
        print("data: reused")
        # Migrations added since the data was made (indexes, triggers) apply to it too.
        started = time.perf_counter()
        async with asyncpg.create_pool(args.database_url, min_size=1, max_size=2) as pool:
            await migrate(pool)
        print(f"migrations: {time.perf_counter() - started:.1f} s")
        await reset_billing(args.database_url)
    else:
        started = time.perf_counter()
        steps = await generate(args.database_url, store, accounts, cdrs, width)
        spent = ", ".join(f"{step} {seconds:.1f}" for step, seconds in steps.items())
        print(f"data: {time.perf_counter() - started:.1f} s ({spent})")
    await set_vat_and_bundle(args.database_url, args.vat_and_bundle)
    print(f"VAT and bundle: {'on' if args.vat_and_bundle else 'off'}")
    print(f"Redis accounts: {await redis_accounts(store, redis, accounts, width):.1f} s")
    print(f"  peak RSS while generating: {rss.phase()[0]:.0f} MB")

    connection_class = TimedConnection if args.query_timings else asyncpg.Connection
    async with asyncpg.create_pool(
        args.database_url, min_size=2, max_size=4, connection_class=connection_class
    ) as pool:
        started = time.perf_counter()
        run_id = await runs.create_run(
            pool, PERIOD, invoice_date=INVOICE_DATE, chunk_size=args.chunk_size
        )
        create_s = time.perf_counter() - started
        own, _ = rss.phase()
        print(f"create_run: {create_s:.2f} s, peak RSS {own:.0f} MB")

        run_drafts = drafts_in_processes if args.mode == "processes" else drafts_in_tasks
        drafts_s, per_worker = await run_drafts(
            args.database_url, run_id, args.workers, args.query_timings
        )
        own, children = rss.phase()
        async with pool.acquire() as conn:
            taken = dict(
                await conn.fetch(
                    "SELECT lease_owner, count(*) FROM invoice_run_chunks WHERE run_id = $1"
                    " GROUP BY lease_owner",
                    run_id,
                )
            )
        invoices, lines = await check_drafts(pool, run_id, accounts, args.vat_and_bundle)
        all_drafts = create_s + drafts_s
        print(
            f"drafts: {drafts_s:.2f} s ({accounts / drafts_s:,.0f} accounts/s);"
            f" with create_run {all_drafts:.2f} s ({accounts / all_drafts:,.0f} accounts/s);"
            f" {invoices:,} invoices, {lines:,} lines, checked"
        )
        for name, took, peak in sorted(per_worker):
            print(f"  {name}: {took:.2f} s, {taken.get(name, 0)} chunks, ru_maxrss {peak:.0f} MB")
        print(f"  peak RSS: this process {own:.0f} MB, worker processes together {children:.0f} MB")
        TIMES.report("statements during create_run and the drafts")
        TIMES.seconds.clear()
        TIMES.calls.clear()

        steps = timed_steps(posting, ("assign_numbers", "move_money"))
        started = time.perf_counter()
        posted = await posting.post(pool, store, run_id=run_id)
        post_s = time.perf_counter() - started
        own, _ = rss.phase()
        await check_posted(pool, store, run_id, accounts, width)
        print(
            f"posting: {post_s:.2f} s ({accounts / post_s:,.0f} accounts/s);"
            f" {len(posted.numbers):,} numbered, {posted.lines_moved:,} lines moved, checked"
        )
        split = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items())
        print(f"  {split}; peak RSS {own:.0f} MB (ru_maxrss {max_rss_mb():.0f} MB)")
        TIMES.report("statements during posting")
    await redis.aclose()
    rss.close()


def main() -> None:
    """Parse the flags and run the benchmark on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--cdrs", type=int, default=10_000_000)
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/ocs_billing_bench",
        help="a database of its own: dropped and created again (never postgres)",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/7", help="flushed (never DB 0)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", choices=("processes", "tasks"), default="processes")
    parser.add_argument("--chunk-size", type=int, default=runs.DEFAULT_CHUNK)
    parser.add_argument("--reuse", action="store_true", help="keep data of the same size")
    parser.add_argument("--query-timings", action="store_true")
    parser.add_argument(
        "--vat-and-bundle",
        action="store_true",
        help="issue 13's load: 20%% VAT on every line, a free-minutes bundle on every account",
    )
    args = parser.parse_args()
    if args.accounts < 1 or args.cdrs < args.accounts or args.cdrs % args.accounts:
        parser.error("--cdrs must be a multiple of --accounts (an equal share each)")
    if args.cdrs // args.accounts < 20:
        parser.error("each account needs at least 20 CDRs (its 6 usage lines)")
    if args.accounts % SPREAD == 0:
        parser.error(f"--accounts must not be a multiple of {SPREAD}")
    uvloop.run(bench(args))


if __name__ == "__main__":
    main()
