"""`ocs reconcile`: prove every Redis balance equals its ledger.

For each account, the Redis balance must equal the sum of its ledger rows in
PostgreSQL plus the entries still waiting in the Redis ledger streams (written
by the scripts, not yet moved by the ledger writer). Any difference means a
balance changed without its record, or a record was lost: it is reported per
account, and the command exits 1.
"""

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from ocs.balances import keys


@dataclass(frozen=True, slots=True)
class Mismatch:
    account_id: str
    redis_balance: int | None  # None: the account is missing in Redis
    ledger_total: int  # PostgreSQL rows plus entries still in the streams


@dataclass(frozen=True, slots=True)
class Reconciliation:
    accounts: int
    pending_entries: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches


async def _pending_by_account(redis: Redis) -> tuple[dict[str, int], int]:
    totals: dict[str, int] = {}
    count = 0
    for stream in keys.all_ledgers():
        start = "-"
        while True:
            entries = await redis.xrange(stream, min=start, count=1000)
            for _entry_id, fields in entries:
                account = fields[b"account"].decode()
                totals[account] = totals.get(account, 0) + int(fields[b"amount"])
                count += 1
            if len(entries) < 1000:
                break
            start = "(" + entries[-1][0].decode()
    return totals, count


async def reconcile(redis: Redis, pool: asyncpg.Pool) -> Reconciliation:
    # Streams first, then PostgreSQL: an entry the writer moves in between is then
    # counted twice (a false alarm that a rerun clears), never missed.
    pending, pending_count = await _pending_by_account(redis)
    async with pool.acquire() as conn:
        accounts = [r["id"] for r in await conn.fetch("SELECT id FROM accounts ORDER BY id")]
        sums = {
            r["account_id"]: int(r["total"])
            for r in await conn.fetch(
                "SELECT account_id, sum(amount) AS total FROM ledger GROUP BY account_id"
            )
        }
    pipe = redis.pipeline(transaction=False)
    for account_id in accounts:
        pipe.hget(keys.account(account_id), "balance")
    balances = await pipe.execute()
    mismatches = []
    for account_id, raw in zip(accounts, balances, strict=True):
        expected = sums.get(account_id, 0) + pending.get(account_id, 0)
        balance = None if raw is None else int(raw)
        if balance != expected:
            mismatches.append(Mismatch(account_id, balance, expected))
    return Reconciliation(len(accounts), pending_count, mismatches)
