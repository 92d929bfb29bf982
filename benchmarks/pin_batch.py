"""How long a batch of calling cards takes to generate, by batch size.

A batch (``POST /v1/pin-batches``, ``ocs cards generate``) draws unique PINs, stores
their digests in PostgreSQL and their look-up keys in Redis, and creates one prepaid
account each, all through ``CardService.generate``. This times that call for each
size given, in a fresh database and Redis database, with a plan of its own.

The database named by ``--database-url`` is dropped and created again (never
``postgres``), and the Redis database of ``--redis-url`` is flushed (never 0).

    python benchmarks/pin_batch.py [--cards 10000 50000] [--length 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe
from benchmarks.usage_import import admin_url, connect
from ocs.balances.cards import CardService
from ocs.balances.digests import Digests
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.db.migrate import migrate

PLAN = "cards"


async def fresh_database(database_url: str) -> None:
    """Drop and create the benchmark's database, then migrate it and add the plan."""
    admin, name = admin_url(database_url)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        await migrate(pool)
        await catalog_store.create_plan(pool, Plan(PLAN, PLAN, "EUR", 0, 0, 2, 14_400))


async def bench(args: argparse.Namespace) -> None:
    """Generate one batch of each size and print its time."""
    print(f"machine: {describe()}")
    await fresh_database(args.database_url)
    redis, store = await connect(args.redis_url)
    await redis.flushdb()
    digests = Digests(secrets.token_bytes(32))
    async with asyncpg.create_pool(args.database_url, min_size=2, max_size=4) as pool:
        cards = CardService(pool, store, digests)
        for number, count in enumerate(args.cards, start=1):
            started = time.perf_counter()
            batch = await cards.generate(
                batch_id=f"bench-{number}",
                plan_id=PLAN,
                count=count,
                length=args.length,
                value=1_000_000,
            )
            elapsed = time.perf_counter() - started
            if len(batch.cards) != count:
                raise SystemExit(f"check failed: {len(batch.cards)} cards of {count}")
            print(
                f"{count:,} cards, {args.length}-digit PINs: {elapsed:.2f} s"
                f" ({count / elapsed:,.0f} cards/s)"
            )
    await redis.aclose()


def main() -> None:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--length", type=int, default=12)
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "OCS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ocs_pin_bench"
        ),
        help="a database of its own: dropped and created again (never postgres)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("OCS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"),
        help="flushed (never DB 0)",
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
