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
charges have then been paid, so the next cycle's are committed instead.

When an account's funds stop covering its committed charges it is locked
(``accounts.prorated_locked``, migration 0037), and unlocked when they cover
them again: each change is announced (``account.locked``, ``account.unlocked``)
in the transaction that records it.
"""

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg

from ocs.balances.store import BalanceStore
from ocs.billing import drafts
from ocs.events.outbox import emit


@dataclass(frozen=True, slots=True)
class Committed:
    """An account's committed amount now, and whether its funds cover it."""

    account_id: str
    committed: int
    covered: bool


_ACCOUNTS_SQL = """
SELECT a.id FROM accounts a JOIN plans p ON p.id = a.plan_id AND p.lock_prorated
JOIN plan_billing b ON b.plan_id = a.plan_id
WHERE ($1::text IS NULL OR a.plan_id = $1) AND ($2::text[] IS NULL OR a.id = ANY($2))
  AND b.cycle NOT IN ('manual', 'on_demand')
ORDER BY a.id
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
) -> list[Committed]:
    """Commit the prorated custom charges of every account (of a plan, or these) whose
    plan locks on them; the accounts and amounts set. Others are left as they are."""
    when = at or datetime.now(UTC)
    done: list[Committed] = []
    async with pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch(_ACCOUNTS_SQL, plan_id, account_ids)]
        for account_id in ids:
            amount = await prorated_commitment(conn, account_id, when)
            await conn.execute(
                "UPDATE accounts SET committed = $2 WHERE id = $1", account_id, amount
            )
            if not await store.set_policy(account_id, {"committed": amount}):
                continue  # not in Redis (yet): created with the plan's fee committed
            state = await store.get_account(account_id)
            covered = state is None or state.balance + state.credit_limit >= amount
            await record_lock(conn, account_id, amount, locked=amount > 0 and not covered)
            done.append(Committed(account_id, amount, covered))
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
