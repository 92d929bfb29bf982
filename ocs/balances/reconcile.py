"""`ocs reconcile`: prove every Redis balance equals its ledger, exactly.

Per bucket, one script reads atomically the balances of the bucket's accounts,
the entries still in its ledger stream and the stream's last id. The ledger
total of an account is then its PostgreSQL rows up to that id plus the
stream entries not yet in PostgreSQL. The ledger writer deletes an entry from
the stream only after PostgreSQL committed it, so every entry up to the last
id is in one place or both, and counted once; rows after it belong to changes
the snapshot does not show yet, and are left out. Traffic may run meanwhile.

A difference means a balance changed without its record, or a record was
lost: it is reported per account, and the command exits 1.

The same code runs on Redis Cluster: a bucket's keys share one slot, so each
snapshot runs on the master that holds the bucket.
"""

from dataclasses import dataclass
from typing import Any

import asyncpg

from ocs.balances import keys, scripts
from ocs.balances.cluster import RedisClient, wire_for


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An account whose Redis balance differs from its ledger total."""

    account_id: str
    redis_balance: int | None  # None: the account is missing in Redis
    ledger_total: int


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome of ``reconcile``: accounts checked, ledger entries in flight, mismatches."""

    accounts: int
    pending_entries: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        """True when every balance equals its ledger."""
        return not self.mismatches


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_PG_TOTALS = """
SELECT l.account_id, sum(l.amount) AS total
FROM ledger l
JOIN unnest($1::int[], $2::bigint[], $3::bigint[]) AS s (bucket, ms, seq)
  ON split_part(l.entry_id, '-', 1)::int = s.bucket
WHERE (split_part(l.entry_id, '-', 2)::bigint, split_part(l.entry_id, '-', 3)::bigint)
      <= (s.ms, s.seq)
GROUP BY l.account_id
"""


async def _snapshots(redis: RedisClient, by_bucket: dict[int, list[str]]) -> list[Any]:
    """Each bucket's snapshot (last ledger id, balances, entries in the stream), in order.

    One round of EVALSHA through a lean wire of its own: on Redis Cluster it sends each
    bucket's script to the master of the bucket's slot (every key of a snapshot
    carries the bucket's tag). The script is loaded on every master first: a master a
    failover promoted may lack it.
    """
    script = scripts.SNAPSHOT_BUCKET
    wire = wire_for(redis)
    try:
        await wire.execute_on_every_master([("SCRIPT", "LOAD", script.source)])
        commands = []
        for bucket, members in by_bucket.items():
            names = [keys.ledger(bucket), *(keys.account(a) for a in members)]
            commands.append(("EVALSHA", script.sha, len(names), *names))
        replies = await wire.execute_many(commands)
    finally:
        await wire.close()
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def reconcile(redis: RedisClient, pool: asyncpg.Pool) -> Reconciliation:
    """Compare every account's Redis balance with its ledger total, while traffic runs."""
    async with pool.acquire() as conn:
        account_ids = [r["id"] for r in await conn.fetch("SELECT id FROM accounts ORDER BY id")]
    by_bucket: dict[int, list[str]] = {b: [] for b in range(keys.BUCKETS)}
    for account_id in account_ids:
        by_bucket[keys.bucket_of(account_id)].append(account_id)

    snapshots = await _snapshots(redis, by_bucket)
    balances: dict[str, int | None] = {}
    pending: dict[str, tuple[str, int]] = {}  # ledger entry key -> (account, amount)
    last_ids: list[tuple[int, int, int]] = []
    for (bucket, members), (last_id, values, flat) in zip(
        by_bucket.items(), snapshots, strict=True
    ):
        ms, seq = (int(part) for part in _text(last_id).split("-"))
        last_ids.append((bucket, ms, seq))
        for account_id, value in zip(members, values, strict=True):
            balances[account_id] = None if value is None else int(value)
        for i in range(0, len(flat), 3):
            entry_key = f"{bucket}-{_text(flat[i])}"
            pending[entry_key] = (_text(flat[i + 1]), int(flat[i + 2]))

    # One snapshot of PostgreSQL for both reads: a row the writer commits between
    # them would otherwise be counted in neither.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        totals = {
            r["account_id"]: int(r["total"])
            for r in await conn.fetch(
                _PG_TOTALS,
                [b for b, _, _ in last_ids],
                [m for _, m, _ in last_ids],
                [s for _, _, s in last_ids],
            )
        }
        written = {
            r["entry_id"]
            for r in await conn.fetch(
                "SELECT entry_id FROM ledger WHERE entry_id = ANY($1)", list(pending)
            )
        }
    for entry_key, (account_id, amount) in pending.items():
        if entry_key not in written:
            totals[account_id] = totals.get(account_id, 0) + amount
    mismatches = [
        Mismatch(account_id, balances.get(account_id), totals.get(account_id, 0))
        for account_id in account_ids
        if balances.get(account_id) != totals.get(account_id, 0)
    ]
    return Reconciliation(len(account_ids), len(pending) - len(written), mismatches)
