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
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import drafts
from ocs.billing.counter_cycles import counter_period
from ocs.billing.cycles import SCHEDULED, PlanBilling
from ocs.billing.periods import Period
from ocs.events.outbox import emit

# Accounts refreshed together on one connection: a plan of 100k accounts is read a
# batch at a time (by id), so no list of every account is held, a batch is dry-run in
# one group per next period, and a stop (or the worker's budget) is seen between batches.
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


# Each account's posted and void invoices from ``$2`` on (``next_invoice_groups``).
_PASSED_SQL = """
SELECT account_id, period_start FROM invoices
WHERE account_id = ANY($1::text[]) AND kind = 'invoice' AND state IN ('posted', 'void')
  AND period_start >= $2
"""


async def next_invoice_groups(
    conn: asyncpg.Connection, account_ids: list[str], at: datetime
) -> dict[str, tuple[drafts.Group, str]]:
    """Account -> the one-account group of its next invoice (and its plan), for each of
    the accounts: the first period, from the one holding ``at``, that has no posted or
    void invoice of the account (a void one's period is never drafted again)."""
    groups = await drafts.account_groups(conn, account_ids, at)
    if not groups:
        return {}
    since = min((group.period.start for group, _plan in groups.values()), key=_instant)
    passed: dict[str, set[datetime]] = defaultdict(set)
    for r in await conn.fetch(_PASSED_SQL, list(groups), since):
        passed[r["account_id"]].add(r["period_start"])
    found: dict[str, tuple[drafts.Group, str]] = {}
    for account_id, (group, plan_id) in groups.items():
        found[account_id] = (_passing(group, passed.get(account_id, set())), plan_id)
    return found


def _instant(moment: datetime) -> float:
    """A moment's POSIX time: aware datetimes of one zone compare by wall clock."""
    return moment.timestamp()


def _passing(group: drafts.Group, passed: set[datetime]) -> drafts.Group:
    """The group moved past the periods, from its own, that hold a posted or void
    invoice (``passed``: their starts, earlier ones among them are not looked at)."""
    if group.period.start not in passed:
        return group
    cycle = group.cycle
    n = cycle.index_of_day(group.period.first_day)
    period = group.period
    # Each step passes one posted or void invoice: the loop ends within len(passed) steps.
    while period.start in passed:
        n += 1
        period = cycle.period(n)
    return replace(group, period=period)


async def prorated_commitments(
    conn: asyncpg.Connection, account_ids: list[str], at: datetime
) -> dict[str, int]:
    """Account -> what its next invoice (``next_invoice_groups``) bills it for its plan's
    custom charges: their money-moving lines, rounded, summed, at least 0.

    The accounts sharing a plan and a next period are dry-run together, in one
    ``drafts.compute`` of them all, as a run drafts a chunk: a batch of a plan's
    accounts costs a few reads, not a few reads each."""
    groups = await next_invoice_groups(conn, account_ids, at)
    custom: dict[str, set[str]] = defaultdict(set)
    for r in await conn.fetch(
        "SELECT id, plan_id FROM charges WHERE plan_id = ANY($1::text[])",
        sorted({plan_id for _group, plan_id in groups.values()}),
    ):
        custom[r["plan_id"]].add(r["id"])
    together: dict[tuple[str, date | None, Period], list[str]] = defaultdict(list)
    for account_id, (group, plan_id) in groups.items():
        together[(plan_id, group.anchor, group.period)].append(account_id)
    options = drafts.Options(invoice_date=at.date())
    amounts: dict[str, int] = {}
    for (plan_id, _anchor, _period), ids in together.items():
        one, _plan = groups[ids[0]]
        computed = await drafts.compute(conn, replace(one, account_ids=ids), options)
        charges = custom[plan_id]
        for account_id in ids:
            _currency, found = computed[account_id]
            total = sum(
                line.amount
                for line in found
                if line.moves_money
                and line.charge_id in charges
                and line.item_id is None
                and line.number is None
            )
            amounts[account_id] = max(total, 0)
    return amounts


@dataclass(frozen=True, slots=True)
class Position:
    """Where a refresh is in its accounts: ``phase`` 0 releases (``_RELEASED_SQL``), 1
    commits (``_ACCOUNTS_SQL``); ``after`` the last account id done in it (None: none)."""

    phase: int = 0
    after: str | None = None


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

    A batch of ``BATCH`` accounts at a time, each batch on one pool connection, given
    back before the next is taken (never two at once: a pool of one connection does
    not wait for itself); a ``stopping`` set is seen between batches, and the accounts
    not reached yet are left as they are."""
    when = at or datetime.now(UTC)
    done: list[Committed] = []
    position: Position | None = Position()
    while position is not None and (stopping is None or not stopping.is_set()):
        async with pool.acquire() as conn:
            position, _read = await refresh_batch(
                conn, store, position, done, plan_id=plan_id, account_ids=account_ids, at=when
            )
    return done


async def refresh_batch(
    conn: asyncpg.Connection,
    store: BalanceStore,
    position: Position,
    done: list[Committed],
    *,
    plan_id: str | None,
    account_ids: list[str] | None,
    at: datetime,
) -> tuple[Position | None, int]:
    """Refresh (as ``refresh``) the next batch of accounts from ``position``, on this
    connection; what was set is added to ``done``. Where the next batch starts (None
    when none is left), and how many accounts this one read."""
    query = _RELEASED_SQL if position.phase == 0 else _ACCOUNTS_SQL
    ids = [r["id"] for r in await conn.fetch(query, plan_id, account_ids, position.after, BATCH)]
    if ids:
        amounts = (
            dict.fromkeys(ids, 0)
            if position.phase == 0
            else await prorated_commitments(conn, ids, at)
        )
        done.extend(await _commit(conn, store, ids, amounts))
    if len(ids) == BATCH:
        return Position(position.phase, ids[-1]), len(ids)
    return (Position(1) if position.phase == 0 else None), len(ids)


# Sets the accounts' committed amounts ($1 ids, $2 amounts) where they differ, their rows
# locked in id order first, as other writers of several accounts lock them.
_SET_COMMITTED_SQL = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(id, amount)),
changing AS (
  SELECT a.id FROM accounts a JOIN wanted w ON w.id = a.id
  WHERE a.committed <> w.amount ORDER BY a.id FOR UPDATE OF a
)
UPDATE accounts a SET committed = w.amount FROM wanted w
WHERE w.id = a.id AND a.id IN (SELECT id FROM changing)
"""


async def _commit(
    conn: asyncpg.Connection, store: BalanceStore, ids: list[str], amounts: dict[str, int]
) -> list[Committed]:
    """Set the accounts' committed amounts in PostgreSQL and Redis (through the policy
    script), and record whether their funds cover them; those in Redis (one not there
    yet commits, at its creation, what its plan says)."""
    await conn.execute(_SET_COMMITTED_SQL, ids, [amounts[a] for a in ids])
    # Sent together: the Redis connection pipelines them, one round trip for the batch.
    found = await asyncio.gather(*(_set_in_redis(store, a, amounts[a]) for a in ids))
    done = [c for c in found if c is not None]
    await record_locks(conn, done)
    return done


async def _set_in_redis(store: BalanceStore, account_id: str, amount: int) -> Committed | None:
    """Set the account's committed amount in Redis; whether its funds cover it, None
    when it is not in Redis."""
    if not await store.set_policy(account_id, {"committed": amount}):
        return None
    state = await store.get_account(account_id)
    covered = state is None or state.balance + state.credit_limit >= amount
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
    """A plan whose accounts the worker refreshed: how many were set, for which stamp,
    and whether all were (False: its time ran out, the next pass goes on from there)."""

    plan_id: str
    accounts: int
    stamp: str
    finished: bool = True


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A plan's refresh that a pass's time ran out in: for which stamp, where it was,
    and how many accounts it had set."""

    stamp: str
    position: Position
    accounts: int


async def refresh_plans(
    pool: asyncpg.Pool,
    store: BalanceStore,
    now: datetime,
    stopping: asyncio.Event | None = None,
    *,
    budget_s: float | None = None,
    left: dict[str, Unfinished] | None = None,
) -> list[PlanRefreshed]:
    """Refresh the accounts of every plan whose stamp (``plan_stamp``) differs from the
    one stored when they were last refreshed, then store it: at each cycle start, and
    after a change of the plan's charges, lock setting or billing settings (one pass of
    the billing worker later). A plan another worker is refreshing (its advisory lock
    taken) is left to it; one a stop interrupted keeps its old stamp, so the next pass
    does it again (the amounts set are the same).

    A plan's refresh holds one pool connection, the one its advisory lock is on: every
    batch runs on it, so a pool of one connection is enough. With ``budget_s``, no batch
    is begun once that many seconds have passed (at least one is done, so a refresh
    always moves on): the plan in hand is left in ``left`` (its stamp, where it was)
    and the next call with the same ``left`` goes on from there while its stamp holds.
    """
    until = None if budget_s is None else time.monotonic() + budget_s
    left = {} if left is None else left
    async with pool.acquire() as conn:
        rows = await conn.fetch(_PLANS_SQL)
    done: list[PlanRefreshed] = []
    batches = 0
    for row in rows:
        if stopping is not None and stopping.is_set():
            break
        if batches and until is not None and time.monotonic() >= until:
            break  # out of time before this plan: the next pass comes to it
        billing = None if row["plan_id"] is None else PlanBilling.from_row(row)
        stamp = plan_stamp(row["lock_prorated"], billing, row["charges"], now)
        plan_id: str = row["plan"]
        if stamp == row["refreshed"]:
            left.pop(plan_id, None)  # another worker finished it
            continue
        key = REFRESH_LOCK_PREFIX + plan_id
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                continue
            try:
                went_on = left.pop(plan_id, None)
                if went_on is not None and went_on.stamp != stamp:
                    went_on = None  # changed since: the whole plan again
                position: Position | None = Position()
                found = 0
                if went_on is not None:
                    position, found = went_on.position, went_on.accounts
                while position is not None:
                    if stopping is not None and stopping.is_set():
                        break
                    if batches and until is not None and time.monotonic() >= until:
                        break
                    set_now: list[Committed] = []
                    position, read = await refresh_batch(
                        conn, store, position, set_now, plan_id=plan_id, account_ids=None, at=now
                    )
                    # Only a batch that read accounts spends the budget: one that found
                    # none to release goes straight on to those to commit.
                    batches += 1 if read else 0
                    found += len(set_now)
                if position is None:
                    await conn.execute(
                        "INSERT INTO plan_commitment_refreshes (plan_id, stamp) VALUES ($1, $2)"
                        " ON CONFLICT (plan_id) DO UPDATE"
                        " SET stamp = EXCLUDED.stamp, refreshed_at = now()",
                        plan_id,
                        stamp,
                    )
                elif stopping is None or not stopping.is_set():
                    left[plan_id] = Unfinished(stamp, position, found)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
        if stopping is not None and stopping.is_set():
            break
        done.append(PlanRefreshed(plan_id, found, stamp, finished=position is None))
        if position is not None:
            break  # out of time: the next pass goes on
    return done


# Sets the accounts' lock ($1 ids, $2 locked) where it changes, their rows locked in id
# order first; the accounts changed, with their new lock.
_SET_LOCKED_SQL = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bool[]) AS w(id, locked)),
changing AS (
  SELECT a.id FROM accounts a JOIN wanted w ON w.id = a.id
  WHERE a.prorated_locked IS DISTINCT FROM w.locked ORDER BY a.id FOR UPDATE OF a
)
UPDATE accounts a SET prorated_locked = w.locked FROM wanted w
WHERE w.id = a.id AND a.id IN (SELECT id FROM changing)
RETURNING a.id, w.locked
"""


async def record_locks(conn: asyncpg.Connection, found: list[Committed]) -> None:
    """Record whether each account is locked on its committed charges (some committed
    that its funds do not cover); each change is announced (``account.locked`` /
    ``account.unlocked``) in the same transaction."""
    if not found:
        return
    amounts = {c.account_id: c.committed for c in found}
    async with conn.transaction():
        changed = await conn.fetch(
            _SET_LOCKED_SQL,
            list(amounts),
            [c.committed > 0 and not c.covered for c in found],
        )
        for r in sorted(changed, key=lambda r: r["id"]):
            account_id = r["id"]
            await emit(
                conn,
                "account.locked" if r["locked"] else "account.unlocked",
                account_id,
                {
                    "account_id": account_id,
                    "reason": "prorated_charges",
                    "committed": amounts[account_id],
                },
            )
