"""Usage mediation at scale: a 1,000,000-row supplier CDR file imported, classified, rated
and debited (issue 15's figure: at most 30 s on the 2-core dev machine).

The file is a carrier's CSV with a header (record id, account, caller, called, start
in local time, duration in seconds, a country column and a call type), made here
with a fixed seed: ``--accounts`` accounts, calls spread over March 2026 to four
destinations. The template classifies by called-number prefix and by column value
to six granular rate types, and the supplier's overrides regroup two of them; three
of the rate types have a rate in the plan, the rest of the calls are rated by the
plan's deck by their called number, all by the one rating function at the call's
own start time. Calls to the UK draw on a mandatory usage counter first (an hour a
cycle, free), as live calls do, so about one record in seven also uses bundle seconds.

It times ``UsageImporter.run`` as ``ocs usage import`` runs it (the file read and
classified, each record given its account and price, repeats looked up in
PostgreSQL, every debit through ``charge_batch.lua`` into Redis and the ledger
stream), then checks the outcome: every row charged once, the Redis balances'
total debit equal to the import's amount, and no bundle used past its hour.
The ledger writer then runs until every CDR is in PostgreSQL, timed too (the CDRs of
live calls are written the same way, after the debit): an import reads no row before
the ledger entries made before it are stored (decision 0051), so the accounts' opening
entries are written before the first import and the CDRs before the second. A second
import of the same file is timed as well: it must move nothing.

The CPU figures are this process's and the Redis server's (``INFO cpu``), since the
work is split between them.

The database named by ``--database-url`` is dropped and created again (never
``postgres``), and the Redis database of ``--redis-url`` is flushed (never 0).

    python benchmarks/usage_import.py                      # 1,000,000 rows
    python benchmarks/usage_import.py --rows 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe
from ocs.balances import keys
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.store import BalanceStore
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import CatalogHolder, Plan
from ocs.db.migrate import migrate
from ocs.decks.rate_deck import parse_deck
from ocs.mediation.importer import ImportRequest, UsageImporter
from ocs.rating.counter_rules import CounterDef

PLAN = "med"
OPENING = 1_000_000_000_000  # 1,000,000.00 EUR: no account runs out
SUPPLIER = "carrier-x"
DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK,0.02,0,60,60
447,UK Mobile,0.09,0,30,6
1,North America,0.012,0,6,6
33,France,0.03,0.01,1,1
"""
# (rate type, description) with a rate in the plan: (price per minute, first block, increment)
RATE_TYPE_RATES = {
    "Canada On-Net": ("0.004", 6, 6),
    "Inbound Toll-free": ("0.018", 30, 6),
    "USA Premium": ("0.25", 60, 60),
}
OVERRIDES = {
    "Inbound Toll-free Canada": "Inbound Toll-free",
    "Inbound Toll-free USA": "Inbound Toll-free",
}
TEMPLATE = {
    "name": "carrier-x",
    "supplier": SUPPLIER,
    "format": {"kind": "csv", "delimiter": ",", "header": True},
    "columns": {
        "record_id": "id",
        "account": "account",
        "caller": "caller",
        "called": "called",
        "start": "start",
        "duration": "duration",
        "direction": "dir",
    },
    "start": {"format": "%Y-%m-%d %H:%M:%S", "time_zone": "America/Toronto"},
    "direction": {"map": {"O": "outbound", "I": "inbound"}},
    "classify": [
        {
            "rate_type": "Inbound Toll-free Canada",
            "when": {
                "direction": "inbound",
                "cells": [{"column": "country", "equals": "CA"}],
            },
        },
        {
            "rate_type": "Inbound Toll-free USA",
            "when": {"direction": "inbound", "cells": [{"column": "country", "equals": "US"}]},
        },
        {"rate_type": "USA Premium", "when": {"called_prefix": ["1900"]}},
        {
            "rate_type": "Canada On-Net",
            "when": {"cells": [{"column": "type", "regex": "^onnet"}]},
        },
    ],
    "filters": [{"column": "type", "equals": "test", "negate": True}],
}
# The mandatory bundle: free seconds a cycle for calls to the UK.
BUNDLE = CounterDef("uk-hour", PLAN, 3_600, frozenset({"UK"}))
CALLED = ("442071234567", "447700900123", "14165550123", "33142685300", "19005550100")


def account_id(n: int) -> str:
    """The n-th account's id."""
    return f"ma{n:06d}"


def admin_url(database_url: str) -> tuple[str, str]:
    """(URL of the server's ``postgres`` database for CREATE/DROP, the target name)."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if name in ("", "postgres", "template0", "template1"):
        raise SystemExit(f"--database-url must name a database of its own, not {name!r}")
    return urlunsplit(parts._replace(path="/postgres")), name


def write_file(path: Path, rows: int, accounts: int) -> float:
    """The supplier's CSV; seconds to write it."""
    started = time.perf_counter()
    rng = random.Random(15)
    base = datetime(2026, 3, 1)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("id,account,caller,called,start,duration,dir,country,type\n")
        for n in range(1, rows + 1):
            kind = rng.random()
            if kind < 0.1:
                called, direction, country, call_type = "18005550199", "I", "CA", "tollfree"
            elif kind < 0.15:
                called, direction, country, call_type = "18885550199", "I", "US", "tollfree"
            elif kind < 0.3:
                called, direction, country, call_type = "16135550111", "O", "CA", "onnet-ca"
            elif kind < 0.3005:
                called, direction, country, call_type = "16135550111", "O", "CA", "test"
            else:
                # Distinct numbers, as a real file has: no look-up is cached.
                called = f"{rng.choice(CALLED)[:-4]}{rng.randrange(10_000):04d}"
                direction, country, call_type = "O", "", "offnet"
            start = base + timedelta(seconds=rng.randrange(31 * 86_400 - 7_200))
            out.write(
                f"r{n},{account_id(rng.randrange(1, accounts + 1))},14165550100,{called},"
                f"{start:%Y-%m-%d %H:%M:%S},{rng.randrange(1, 1_800)},{direction},{country},"
                f"{call_type}\n"
            )
    return time.perf_counter() - started


async def prepare(database_url: str, redis_url: str, accounts: int) -> None:
    """A fresh database with the plan, its deck, rate types, overrides and accounts; the
    accounts' real-time state in a flushed Redis database."""
    admin, name = admin_url(database_url)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        await migrate(pool)
        await catalog_store.create_plan(pool, Plan(PLAN, PLAN, "EUR", 0, 0, 4, 14_400))
        await catalog_store.import_deck(pool, PLAN, parse_deck(DECK))
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO counters (id, plan_id, seconds, zones) VALUES ($1, $2, $3, $4)",
                BUNDLE.id,
                PLAN,
                BUNDLE.seconds,
                sorted(BUNDLE.zones),
            )
            for rate_type in {*RATE_TYPE_RATES, *OVERRIDES.values()}:
                await conn.execute(
                    "INSERT INTO rate_types (name) VALUES ($1) ON CONFLICT DO NOTHING", rate_type
                )
            for rate_type, (price, block, step) in RATE_TYPE_RATES.items():
                await conn.execute(
                    "INSERT INTO rate_type_rates (plan_id, rate_type, name, currency,"
                    " first_block, increment, price_per_minute) VALUES ($1, $2, $2, 'EUR', $3,"
                    " $4, $5)",
                    PLAN,
                    rate_type,
                    block,
                    step,
                    _micro(price),
                )
            for source, target in OVERRIDES.items():
                await conn.execute(
                    "INSERT INTO rate_type_overrides VALUES ($1, $2, $3)", SUPPLIER, source, target
                )
            await conn.execute(
                "INSERT INTO usage_templates (name, version, supplier, definition)"
                " VALUES ($1, 1, $2, $3)",
                TEMPLATE["name"],
                SUPPLIER,
                json.dumps(TEMPLATE),
            )
            await conn.execute(
                "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
                " SELECT 'ma' || lpad(g::text, 6, '0'), $2, 'EUR', 0, 4, 'active'"
                " FROM generate_series(1, $1) AS g",
                accounts,
                PLAN,
            )
    redis, store = await connect(redis_url)
    try:
        await redis.flushdb()
        created = await asyncio.gather(
            *(
                store.create_account(
                    account_id(n),
                    plan_id=PLAN,
                    currency="EUR",
                    credit_limit=0,
                    max_lines=4,
                    status="active",
                    opening_balance=OPENING,
                )
                for n in range(1, accounts + 1)
            )
        )
        if any(c is None for c in created):
            raise SystemExit("a Redis account existed already after FLUSHDB")
    finally:
        await redis.aclose()


def _micro(text: str) -> int:
    """A decimal amount in micro-units, exactly."""
    whole, _, part = text.partition(".")
    return int(whole) * 1_000_000 + int((part + "000000")[:6])


async def connect(redis_url: str) -> tuple[Redis, BalanceStore]:
    """Redis and the balance store over the auto-pipeline, scripts loaded."""
    if urlsplit(redis_url).path.strip("/") in ("", "0"):
        raise SystemExit("--redis-url must name a Redis database other than 0 (it is flushed)")
    redis = Redis.from_url(redis_url)
    pipeline = AutoPipeline(redis, redis_url)
    await pipeline.load_scripts()
    return redis, BalanceStore(pipeline)


async def redis_cpu(redis: Redis) -> float:
    """The Redis server's CPU seconds so far (user + system, main thread and others)."""
    info: dict[str, Any] = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu() -> float:
    """This process's CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def total_debit(redis: Redis, accounts: int) -> int:
    """What the accounts' balances lost, summed (micro-units)."""
    pipe = redis.pipeline(transaction=False)
    for n in range(1, accounts + 1):
        pipe.hget(keys.account(account_id(n)), "balance")
    balances = await pipe.execute()
    return sum(OPENING - int(b) for b in balances)


async def bundle_seconds(store: BalanceStore, accounts: int) -> tuple[int, int]:
    """(seconds used of every account's bundle, the most one account used)."""
    cycles = await store.counter_cycles(account_id(n) for n in range(1, accounts + 1))
    used = [c.counters[BUNDLE.id].used for c in cycles.values() if BUNDLE.id in c.counters]
    return sum(used), max(used, default=0)


async def write_ledger(redis: Redis, pool: asyncpg.Pool, store: BalanceStore) -> float:
    """Run the ledger writer until every ledger stream is empty: the seconds it took."""
    writer = LedgerWriter(redis, pool)
    stopping = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(writer.run(stopping))
    while True:
        if await store.oldest_unwritten_ms() is None:
            break
        await asyncio.sleep(0.2)
    stopping.set()
    await task
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    """Prepare, import, check, and print the figures."""
    print(f"machine: {describe()}")
    print(f"rows {args.rows:,}, accounts {args.accounts:,}")
    work = Path(tempfile.mkdtemp(prefix="ocs-usage-bench-"))
    path = work / "carrier-x.csv"
    print(
        f"file: {write_file(path, args.rows, args.accounts):.1f} s to write,"
        f" {path.stat().st_size / 1e6:.1f} MB"
    )
    await prepare(args.database_url, args.redis_url, args.accounts)
    redis, store = await connect(args.redis_url)
    async with asyncpg.create_pool(args.database_url, min_size=2, max_size=4) as pool:
        catalog = CatalogHolder(pool)
        await catalog.reload()
        importer = UsageImporter(
            pool, store, catalog, database_url=args.database_url, result_ttl=7 * 86_400
        )
        # The accounts' opening entries: stored before the import may read a row.
        await write_ledger(redis, pool, store)
        request = ImportRequest(template="carrier-x", files=(str(path),))
        cpu0, redis0 = own_cpu(), await redis_cpu(redis)
        started = time.perf_counter()
        summary = await importer.run(request)
        elapsed = time.perf_counter() - started
        cpu1, redis1 = own_cpu(), await redis_cpu(redis)
        print(
            f"import: {elapsed:.2f} s ({args.rows / elapsed:,.0f} rows/s); charged"
            f" {summary.rows_charged:,}, filtered {summary.rows_filtered:,}, rejected"
            f" {summary.rows_rejected:,}, repeated {summary.rows_repeated:,};"
            f" CPU: this process {cpu1 - cpu0:.1f} s + Redis {redis1 - redis0:.1f} s"
        )
        debited = await total_debit(redis, args.accounts)
        amount = summary.amounts.get("EUR", 0)
        expected = args.rows - summary.rows_filtered
        if summary.rows_charged != expected or summary.rows_rejected or debited != amount:
            raise SystemExit(
                f"check failed: charged {summary.rows_charged} of {expected},"
                f" rejected {summary.rows_rejected}, balances debited {debited} vs {amount}"
            )
        bundle, most = await bundle_seconds(store, args.accounts)
        if most > BUNDLE.seconds:
            raise SystemExit(
                f"check failed: an account used {most} s of a {BUNDLE.seconds} s bundle"
            )
        print(
            f"  checked: {summary.rows_charged:,} rows charged once, balances debited"
            f" {amount / 1e6:,.2f} EUR = the import's amount; {bundle:,} bundle seconds used,"
            f" at most {most:,} an account"
        )
        written = await write_ledger(redis, pool, store)
        count = await pool.fetchval("SELECT count(*) FROM cdrs WHERE supplier = $1", SUPPLIER)
        # What autovacuum does a little later: the repeat look-ups plan with fresh stats.
        await pool.execute("ANALYZE cdrs")
        print(f"ledger writer: {written:.2f} s until all {count:,} CDRs were in PostgreSQL")
        started = time.perf_counter()
        again = await importer.run(request)
        elapsed = time.perf_counter() - started
        print(
            f"the same file again: {elapsed:.2f} s, charged {again.rows_charged},"
            f" repeated {again.rows_repeated:,}"
        )
        if again.rows_charged or await total_debit(redis, args.accounts) != debited:
            raise SystemExit("check failed: the second import moved money")
        if (await bundle_seconds(store, args.accounts))[0] != bundle:
            raise SystemExit("check failed: the second import used bundle seconds")
    await redis.aclose()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "OCS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ocs_usage_bench"
        ),
        help="a database of its own: dropped and created again (never postgres)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("OCS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"),
        help="flushed (never DB 0)",
    )
    parser.add_argument(
        "--persist", action="store_true", help="(always done now: the writer is timed)"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
