"""``ocs reconcile``'s check of the numbers: every number's Redis reference names the
account PostgreSQL says holds it (decision 0030, addendum 2026-12-07).

An inbound call finds its account by the number's Redis reference alone
(``keys.did_ref``), while PostgreSQL's ``number_set_numbers.account_id`` says who
holds and is charged for the number. A take or release tells Redis inside its
transaction; a process killed between the two, or a COMMIT whose answer was lost
and could not be read back (``number_refs.settle_reference``), leaves the reference
wrong until the number's next take or release: its calls reach another account, or
none, or one that gave the number back.

Redis's references are scanned (one key each, ``did:{b:N}:<number>``: every
master's on a cluster, a batch of keys at a time) and PostgreSQL's holders read;
each number on which they differ is then read again, both sides, while its row is
locked (``FOR SHARE``, as ``settle_reference`` does). A take or release in flight
holds that row until it has told Redis and committed, so a difference seen only
because one ran between the two first reads is not reported. Repairing a number is
``settle_reference`` itself: Redis set to PostgreSQL's holder under the row's lock,
so a take or release running meanwhile is never overwritten by a stale answer.
"""

from dataclasses import dataclass

import asyncpg

from ocs.balances import keys
from ocs.balances.cluster import RedisClient
from ocs.balances.store import BalanceStore
from ocs.billing import number_refs

# Keys asked of each master per SCAN step, and the references read per pipeline.
SCAN_COUNT = 10_000
# Numbers locked and read again per transaction when confirming differences.
CONFIRM_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class NumberMismatch:
    """A number whose Redis reference is not PostgreSQL's holder: ``redis_account``
    None for a reference missing, ``holder`` None for a number PostgreSQL says is
    free (or does not know)."""

    number: str
    redis_account: str | None
    holder: str | None


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client may or may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else value


async def _references(redis: RedisClient, numbers: list[str]) -> dict[str, str]:
    """The account each of ``numbers`` names in Redis (those with a reference); one
    pipeline, each GET sent to its key's master on a cluster."""
    async with redis.pipeline(transaction=False) as pipe:
        for number in numbers:
            pipe.get(keys.did_ref(number))
        replies = await pipe.execute()
    return {n: _text(r) for n, r in zip(numbers, replies, strict=True) if r is not None}


async def _redis_references(redis: RedisClient) -> dict[str, str]:
    """Every number reference in Redis (every master's, on a cluster): number -> account."""
    found: dict[str, str] = {}
    batch: list[str] = []
    async for key in redis.scan_iter(match="did:*", count=SCAN_COUNT):
        # did:{b:N}:<number>: the number follows the hash tag.
        batch.append(_text(key).partition("}:")[2])
        if len(batch) >= SCAN_COUNT:
            found.update(await _references(redis, batch))
            batch = []
    if batch:
        found.update(await _references(redis, batch))
    return found


async def _confirmed(
    redis: RedisClient, pool: asyncpg.Pool, numbers: list[str]
) -> list[NumberMismatch]:
    """Of ``numbers``, those whose reference still differs from PostgreSQL's holder when
    both are read while the rows are locked (no take or release of them in flight)."""
    found: list[NumberMismatch] = []
    for start in range(0, len(numbers), CONFIRM_BATCH):
        batch = numbers[start : start + CONFIRM_BATCH]
        async with pool.acquire() as conn, conn.transaction():
            holders = {
                r["number"]: r["account_id"]
                for r in await conn.fetch(
                    "SELECT number, account_id FROM number_set_numbers"
                    " WHERE number = ANY($1::text[]) ORDER BY number FOR SHARE",
                    batch,
                )
            }
            # While the rows are locked: a take or release waits, and tells Redis after.
            references = await _references(redis, batch)
        found.extend(
            NumberMismatch(n, references.get(n), holders.get(n))
            for n in batch
            if references.get(n) != holders.get(n)
        )
    return found


async def check_numbers(redis: RedisClient, pool: asyncpg.Pool) -> list[NumberMismatch]:
    """Every number whose Redis reference differs from PostgreSQL's holder (a reference
    missing, naming another account, or left for a free number), by number; traffic,
    takes and releases may run meanwhile."""
    in_redis = await _redis_references(redis)
    async with pool.acquire() as conn:
        held = {
            r["number"]: r["account_id"]
            for r in await conn.fetch(
                "SELECT number, account_id FROM number_set_numbers WHERE account_id IS NOT NULL"
            )
        }
    suspects = sorted(n for n in in_redis.keys() | held.keys() if in_redis.get(n) != held.get(n))
    if not suspects:
        return []
    return await _confirmed(redis, pool, suspects)


async def repair_numbers(
    pool: asyncpg.Pool, store: BalanceStore, mismatches: list[NumberMismatch]
) -> dict[str, str | None]:
    """Set each mismatched number's Redis reference to PostgreSQL's holder, read under
    its row's lock (``settle_reference``); number -> the account it names now (None:
    free, its reference removed). 503 ``outcome_unknown`` where PostgreSQL cannot be
    read: the numbers not reached are left as they were."""
    return {m.number: await number_refs.settle_reference(pool, store, m.number) for m in mismatches}
