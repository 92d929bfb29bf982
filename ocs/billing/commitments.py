"""Lock accounts on prorated charges: the cycle's custom charges are committed funds.

A plan with ``lock_prorated`` (the plan setting of 0009, "Lock accounts based
on prorated charges") has the charges its next invoice will bill for the
plan's custom charges (its ``plan_id`` charges, the plan fee among them,
prorated by day like on the invoice) set aside: the account's ``committed``
amount, in PostgreSQL and in the Redis hash field ``committed``. Every
real-time script already subtracts it from the available funds (balance +
credit limit - reserved - committed), so the balance pays the charges before
calls, and an account whose balance cannot cover them has nothing available:
its calls are refused (``zero_balance``) until a top-up covers the charges.

The amount is what a dry run (``drafts.compute``) of the account's next
invoice bills for those charges: the lines that move money, rounded, summed
(never below 0). The next invoice is that of the first period, from the one
holding ``at``, with no posted or void invoice of the account: on a start-of-cycle
plan the invoice of the period holding ``at`` is posted inside it, and its
charges, once posted, are paid, not owed. A void invoice keeps its period (one
invoice a period), so no run bills those charges again: re-billing them is the
operator's (decision 0046), and nobody asks the customer for them automatically.
``refresh`` recomputes it; posting calls it for the accounts it posted, whose
charges have then been paid, so the next cycle's are committed instead. The billing
worker calls ``refresh_plans`` at every pass: it refreshes a plan's accounts when the
plan's stamp (``plan_stamp``: the period holding now, the lock setting, the billing
settings, the custom charges) differs from the one it stored (migration 0075), so
at each cycle start and after each change of the plan's charges or settings. A
subscription created or changing status over the API or the CLI refreshes its account
at once.

An account whose plan does not lock (``lock_prorated`` off), or whose plan is billed
by hand or on demand (no cycle, so no next invoice to dry-run), has nothing committed:
``refresh`` sets it back to 0 and unlocks it. A plan locking without billing settings
is left as it is (its accounts keep the plan fee committed at their creation: no
invoice bills it, so there is nothing to recompute).

When an account's funds stop covering its committed charges it is locked
(``accounts.prorated_locked``, migration 0037), and unlocked when they cover
them again: each change is announced (``account.locked``, ``account.unlocked``)
in the transaction that records it.
"""

import asyncio
import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import drafts
from ocs.billing.counter_cycles import counter_period
from ocs.billing.cycles import SCHEDULED, PlanBilling
from ocs.events.outbox import emit

# Accounts refreshed on one connection at a time: a plan of 100k accounts is read a
# batch at a time (by id), so no list of every account is held, and a stop is seen
# between batches.
BATCH = 500
# Advisory-lock namespace of "this plan's accounts are being refreshed by a worker".
REFRESH_LOCK_PREFIX = "ocs-commitments:"


@dataclass(frozen=True, slots=True)
class Committed:
    """An account's committed amount now, and whether its funds cover it."""

    account_id: str
    committed: int
    covered: bool


# The accounts (of a plan, or these) whose plan locks on its charges and has a cycle:
# $3 the last id of the batch before (NULL: from the first), $4 the batch's size.
_ACCOUNTS_SQL = """
SELECT a.id FROM accounts a JOIN plans p ON p.id = a.plan_id AND p.lock_prorated
JOIN plan_billing b ON b.plan_id = a.plan_id
WHERE ($1::text IS NULL OR a.plan_id = $1) AND ($2::text[] IS NULL OR a.id = ANY($2))
  AND b.cycle NOT IN ('manual', 'on_demand')
  AND ($3::text IS NULL OR a.id > $3)
ORDER BY a.id LIMIT $4
"""

# The accounts (same scope and batches) that hold a commitment, or its lock, they should
# not: their plan does not lock, or is billed by hand or on demand. A plan locking with no
# billing settings is not among them (its accounts keep their creation's plan fee).
_RELEASED_SQL = """
SELECT a.id FROM accounts a JOIN plans p ON p.id = a.plan_id
LEFT JOIN plan_billing b ON b.plan_id = a.plan_id
WHERE ($1::text IS NULL OR a.plan_id = $1) AND ($2::text[] IS NULL OR a.id = ANY($2))
  AND (a.committed <> 0 OR a.prorated_locked)
  AND (NOT p.lock_prorated OR b.cycle IN ('manual', 'on_demand'))
  AND ($3::text IS NULL OR a.id > $3)
ORDER BY a.id LIMIT $4
"""

# Every plan with an account, with its billing settings (none: NULL), what the worker
# last refreshed its accounts for, and a digest of its custom charges as drafts bill them.
_PLANS_SQL = """
SELECT p.id AS plan, p.lock_prorated, b.*, r.stamp AS refreshed,
       (SELECT md5(string_agg(row(c.id, c.kind, c.amount, c.cadence, c.every_days,
                                  c.timing, c.currency)::text, ',' ORDER BY c.id))
        FROM charges c WHERE c.plan_id = p.id) AS charges
FROM plans p LEFT JOIN plan_billing b ON b.plan_id = p.id
LEFT JOIN plan_commitment_refreshes r ON r.plan_id = p.id
WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.plan_id = p.id)
ORDER BY p.id
"""


async def next_invoice_group(
    conn: asyncpg.Connection, account_id: str, at: datetime
) -> tuple[drafts.Group, str]:
    """The one-account group of the account's next invoice (and its plan): the first
    period, from the one holding ``at``, that has no posted or void invoice of the
    account (a void one's period is never drafted again)."""
    group, plan_id = await drafts.account_group(conn, account_id, at)
    passed = {
        r["period_start"]
        for r in await conn.fetch(
            "SELECT period_start FROM invoices WHERE account_id = $1 AND kind = 'invoice'"
            " AND state IN ('posted', 'void') AND period_start >= $2",
            account_id,
            group.period.start,
        )
    }
    if not passed:
        return group, plan_id
    cycle = group.cycle
    n = cycle.index_of_day(group.period.first_day)
    period = group.period
    # Each step passes one posted or void invoice: the loop ends within len(passed) steps.
    while period.start in passed:
        n += 1
        period = cycle.period(n)
    return replace(group, period=period), plan_id


async def prorated_commitment(conn: asyncpg.Connection, account_id: str, at: datetime) -> int:
    """What the account's next invoice (``next_invoice_group``) bills it for its plan's
    custom charges: their money-moving lines, rounded, summed, at least 0."""
    group, plan_id = await next_invoice_group(conn, account_id, at)
    custom = {
        r["id"] for r in await conn.fetch("SELECT id FROM charges WHERE plan_id = $1", plan_id)
    }
    computed = await drafts.compute(conn, group, drafts.Options(invoice_date=at.date()))
    _currency, found = computed[account_id]
    total = sum(
        line.amount
        for line in found
        if line.moves_money
        and line.charge_id in custom
        and line.item_id is None
        and line.number is None
    )
    return max(total, 0)


async def refresh(
    pool: asyncpg.Pool,
    store: BalanceStore,
    *,
    plan_id: str | None = None,
    account_ids: list[str] | None = None,
    at: datetime | None = None,
    stopping: asyncio.Event | None = None,
) -> list[Committed]:
    """Commit the prorated custom charges of every account (of a plan, or these) whose
    plan locks on them and has a cycle, and set back to 0 (unlocked) those whose plan
    does not lock or is billed by hand or on demand; the accounts and amounts set.
    Accounts of a plan locking without billing settings are left as they are.

    A batch of ``BATCH`` accounts at a time; a ``stopping`` set is seen between
    batches, and the accounts not reached yet are left as they are."""
    when = at or datetime.now(UTC)
    done: list[Committed] = []
    for query in (_RELEASED_SQL, _ACCOUNTS_SQL):
        after: str | None = None
        while stopping is None or not stopping.is_set():
            async with pool.acquire() as conn:
                ids = [r["id"] for r in await conn.fetch(query, plan_id, account_ids, after, BATCH)]
                for account_id in ids:
                    amount = (
                        0
                        if query is _RELEASED_SQL
                        else await prorated_commitment(conn, account_id, when)
                    )
                    found = await _commit(conn, store, account_id, amount)
                    if found is not None:
                        done.append(found)
            if len(ids) < BATCH:
                break
            after = ids[-1]
    return done


async def _commit(
    conn: asyncpg.Connection, store: BalanceStore, account_id: str, amount: int
) -> Committed | None:
    """Set the account's committed amount in PostgreSQL and Redis (through the policy
    script), and record whether its funds cover it; None when it is not in Redis."""
    await conn.execute(
        "UPDATE accounts SET committed = $2 WHERE id = $1 AND committed <> $2", account_id, amount
    )
    if not await store.set_policy(account_id, {"committed": amount}):
        return None  # not in Redis (yet): its creation commits what its plan says
    state = await store.get_account(account_id)
    covered = state is None or state.balance + state.credit_limit >= amount
    await record_lock(conn, account_id, amount, locked=amount > 0 and not covered)
    return Committed(account_id, amount, covered)


async def refresh_subscription(
    pool: asyncpg.Pool, store: BalanceStore, subscription_id: int
) -> list[Committed]:
    """``refresh`` the account of a subscription just created or whose status changed:
    its next invoice bills the plan's charges from (or no longer bills them after) it."""
    async with pool.acquire() as conn:
        account_id = await conn.fetchval(
            "SELECT account_id FROM subscriptions WHERE id = $1", subscription_id
        )
    if account_id is None:
        return []
    return await refresh(pool, store, account_ids=[account_id])


def plan_stamp(
    lock_prorated: bool, billing: PlanBilling | None, charges: str | None, now: datetime
) -> str:
    """What a plan's committed amounts follow besides its accounts' subscriptions: its
    lock setting, its billing settings, its custom charges (a digest) and, on a
    scheduled cycle, the period holding ``now`` (``counter_period``: the plan's own, a
    calendar month for a subscription-date plan). A new stamp is a refresh due."""
    if not lock_prorated:
        return "off"
    if billing is None:
        return "unbilled"
    if billing.cycle not in SCHEDULED:
        return f"cycle:{billing.cycle}"
    parts = (counter_period(billing, now).label, repr(billing), charges or "")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PlanRefreshed:
    """A plan whose accounts the worker refreshed: how many were set, for which stamp."""

    plan_id: str
    accounts: int
    stamp: str


async def refresh_plans(
    pool: asyncpg.Pool,
    store: BalanceStore,
    now: datetime,
    stopping: asyncio.Event | None = None,
) -> list[PlanRefreshed]:
    """Refresh the accounts of every plan whose stamp (``plan_stamp``) differs from the
    one stored when they were last refreshed, then store it: at each cycle start, and
    after a change of the plan's charges, lock setting or billing settings (one pass of
    the billing worker later). A plan another worker is refreshing (its advisory lock
    taken) is left to it; one a stop interrupted keeps its old stamp, so the next pass
    does it again (the amounts set are the same)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_PLANS_SQL)
    done = []
    for row in rows:
        if stopping is not None and stopping.is_set():
            break
        billing = None if row["plan_id"] is None else PlanBilling.from_row(row)
        stamp = plan_stamp(row["lock_prorated"], billing, row["charges"], now)
        if stamp == row["refreshed"]:
            continue
        plan_id: str = row["plan"]
        key = REFRESH_LOCK_PREFIX + plan_id
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                continue
            try:
                found = await refresh(pool, store, plan_id=plan_id, at=now, stopping=stopping)
                if stopping is not None and stopping.is_set():
                    break
                await conn.execute(
                    "INSERT INTO plan_commitment_refreshes (plan_id, stamp) VALUES ($1, $2)"
                    " ON CONFLICT (plan_id) DO UPDATE"
                    " SET stamp = EXCLUDED.stamp, refreshed_at = now()",
                    plan_id,
                    stamp,
                )
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
        done.append(PlanRefreshed(plan_id, len(found), stamp))
    return done


async def record_lock(
    conn: asyncpg.Connection, account_id: str, amount: int, *, locked: bool
) -> None:
    """Record whether the account is locked on its committed charges; a change is
    announced (``account.locked`` / ``account.unlocked``) in the same transaction."""
    async with conn.transaction():
        changed = await conn.fetchval(
            "UPDATE accounts SET prorated_locked = $2"
            " WHERE id = $1 AND prorated_locked IS DISTINCT FROM $2 RETURNING 1",
            account_id,
            locked,
        )
        if changed is not None:
            await emit(
                conn,
                "account.locked" if locked else "account.unlocked",
                account_id,
                {"account_id": account_id, "reason": "prorated_charges", "committed": amount},
            )
