"""``ocs reconcile``'s check of the accounts' states: what Redis lets a call do agrees
with the status PostgreSQL records (decision 0028, addendum 2026-12-07).

An account's status is written in both stores: ``accounts.status`` in PostgreSQL,
and ``status`` with its lock reason ``lock`` in the Redis account hash, which is all
the real-time path reads. An operator's change (``AccountService.update_policy``),
dunning's suspension and reactivation and an on-demand session's lock write the row
first and Redis last inside one transaction: a process killed, or a COMMIT lost, after
the Redis write leaves Redis ahead of PostgreSQL, and a Redis that lost its last writes
leaves it behind. Either way a suspended account may call, or an active one is refused,
until its status next changes.

The states that agree (PostgreSQL's ``accounts.status`` -> Redis's ``status``/``lock``):

- ``active`` -> ``active``, or ``locked`` with the lock reason ``critical``: the
  critical-balance lock lives in Redis alone (decision 0008), set by a charge and
  lifted by a top-up;
- ``locked`` -> ``locked`` with no lock reason (an operator's lock) or ``session``
  (an on-demand account with no open session);
- ``suspended`` -> ``suspended``.

A ``critical`` lock reason on an account PostgreSQL says is locked or suspended does
not agree: the next top-up would make it ``active`` (``topup.lua`` lifts any lock of
that reason). An account Redis lacks is left to the balance check, which reports it.

Redis's states are read a page of PostgreSQL's accounts at a time; each account on
which they differ is read again, both sides, while its row is locked (``FOR SHARE``):
every status change holds that row from its Redis write to its COMMIT, so one in
flight between the first two reads is waited for rather than reported. Repairing sets
Redis to PostgreSQL's status under the row's lock (``FOR UPDATE``), read again there.
"""

import logging
from dataclasses import dataclass

import asyncpg

from ocs.balances import keys
from ocs.balances.accounts import SESSION_LOCK
from ocs.balances.cluster import RedisClient
from ocs.balances.store import BalanceStore
from ocs.billing.dunning import CRITICAL_LOCK
from ocs.errors import account_not_found

log = logging.getLogger("ocs.billing.account_reconcile")

# Accounts read per page of PostgreSQL (and per Redis pipeline), and locked and read
# again per transaction when confirming differences.
PAGE = 10_000
CONFIRM_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class StateMismatch:
    """An account whose Redis state does not agree with PostgreSQL's status:
    ``redis_lock`` "" for no lock reason."""

    account_id: str
    postgresql_status: str
    redis_status: str
    redis_lock: str


@dataclass(frozen=True, slots=True)
class Repaired:
    """The state a repair gave Redis; ``lock`` "" for no lock reason. ``None`` in its
    place (see ``repair_states``): PostgreSQL and Redis agreed by the time it looked."""

    status: str
    lock: str


def _text(value: bytes | str | None) -> str:
    """A Redis reply as text, "" for none (the client may or may not decode replies)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def agrees(postgresql_status: str, redis_status: str, redis_lock: str) -> bool:
    """Whether Redis's status and lock reason let calls through exactly when
    PostgreSQL's status does, and no top-up can lift a lock PostgreSQL records."""
    if postgresql_status == "active":
        return redis_status == "active" or (
            redis_status == "locked" and redis_lock == CRITICAL_LOCK
        )
    return redis_status == postgresql_status and redis_lock != CRITICAL_LOCK


async def _redis_states(redis: RedisClient, account_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(status, lock) of each of ``account_ids`` Redis holds; one pipeline, each HMGET
    sent to its key's master on a cluster."""
    async with redis.pipeline(transaction=False) as pipe:
        for account_id in account_ids:
            pipe.hmget(keys.account(account_id), ["status", "lock"])
        replies = await pipe.execute()
    return {
        account_id: (_text(status), _text(lock))
        for account_id, (status, lock) in zip(account_ids, replies, strict=True)
        if status is not None
    }


def _differing(statuses: dict[str, str], states: dict[str, tuple[str, str]]) -> list[StateMismatch]:
    """The accounts of ``statuses`` (id -> PostgreSQL's status) whose Redis state,
    where Redis holds one, does not agree with it."""
    return [
        StateMismatch(account_id, status, *states[account_id])
        for account_id, status in statuses.items()
        if account_id in states and not agrees(status, *states[account_id])
    ]


async def _confirmed(
    redis: RedisClient, pool: asyncpg.Pool, account_ids: list[str]
) -> list[StateMismatch]:
    """Of ``account_ids``, those that still disagree when both stores are read while
    the rows are locked (no status change of them in flight)."""
    found: list[StateMismatch] = []
    for start in range(0, len(account_ids), CONFIRM_BATCH):
        batch = account_ids[start : start + CONFIRM_BATCH]
        async with pool.acquire() as conn, conn.transaction():
            statuses = {
                r["id"]: r["status"]
                for r in await conn.fetch(
                    "SELECT id, status FROM accounts WHERE id = ANY($1::text[])"
                    " ORDER BY id FOR SHARE",
                    batch,
                )
            }
            # While the rows are locked: a status change waits, and tells Redis after.
            states = await _redis_states(redis, list(statuses))
        found.extend(_differing(statuses, states))
    return found


async def check_states(redis: RedisClient, pool: asyncpg.Pool) -> list[StateMismatch]:
    """Every account whose Redis status and lock do not agree with PostgreSQL's status,
    by id; traffic and status changes may run meanwhile."""
    suspects: list[str] = []
    after = ""
    while True:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, status FROM accounts WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                PAGE,
            )
        if not rows:
            break
        statuses = {r["id"]: r["status"] for r in rows}
        states = await _redis_states(redis, list(statuses))
        suspects.extend(m.account_id for m in _differing(statuses, states))
        after = rows[-1]["id"]
    if not suspects:
        return []
    return await _confirmed(redis, pool, suspects)


async def _locked_lock(conn: asyncpg.Connection, account_id: str) -> str:
    """The lock reason a locked account gets back: ``session`` for an account billed on
    demand with no session open (what closing a session or creating one writes), else
    none (an operator's lock, which only an operator lifts)."""
    waiting = await conn.fetchval(
        "SELECT b.cycle = 'on_demand' AND NOT EXISTS (SELECT 1 FROM billing_sessions s"
        " WHERE s.account_id = a.id AND s.closed_at IS NULL)"
        " FROM accounts a JOIN plan_billing b ON b.plan_id = a.plan_id WHERE a.id = $1",
        account_id,
    )
    return SESSION_LOCK if waiting else ""


async def _repair_one(
    pool: asyncpg.Pool, redis: RedisClient, store: BalanceStore, account_id: str
) -> Repaired | None:
    """Set one account's Redis state to PostgreSQL's status, both read again while its
    row is locked; None when they agree by then (or PostgreSQL no longer has it)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM accounts WHERE id = $1 FOR UPDATE", account_id
        )
        before = (await _redis_states(redis, [account_id])).get(account_id)
        if status is None or before is None or agrees(status, *before):
            return None
        lock = await _locked_lock(conn, account_id) if status == "locked" else ""
        if not await store.set_policy(account_id, {"status": status, "lock": lock}):
            raise account_not_found(account_id)
    # A warning: a state left wrong (calls let through or refused) was found and changed.
    log.warning(
        "account state in Redis set to PostgreSQL's",
        extra={
            "account_id": account_id,
            "postgresql_status": status,
            "redis_status": before[0],
            "redis_lock": before[1],
            "lock": lock,
        },
    )
    return Repaired(status, lock)


async def repair_states(
    pool: asyncpg.Pool, redis: RedisClient, store: BalanceStore, mismatches: list[StateMismatch]
) -> dict[str, Repaired | None]:
    """Set each mismatched account's Redis status and lock to PostgreSQL's status, read
    under its row's lock: account -> what Redis holds now (None: the two agreed by then,
    nothing written). One log line per account changed."""
    return {m.account_id: await _repair_one(pool, redis, store, m.account_id) for m in mismatches}
