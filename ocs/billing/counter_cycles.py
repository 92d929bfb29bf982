"""Counter cycles follow the plans' billing periods (decision 0032, addendum 2026-12-07).

A counter reset that names no cycle opens the plan's billing period holding now, in
the plan's time zone, and is labelled as that period (``2027-01``, or
``2026-12-15..2027-01-15``): every retry within the period is the same cycle, so its
fees are charged once and its seconds given once, whatever the UTC date. The billing
worker opens each plan's cycle by itself once the period has begun
(``open_due_cycles``), so nobody has to schedule the reset.

Here rather than in ``ocs.counters``: the periods are billing's, and the layers point
down (decision 0018).
"""

import logging
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from ocs import metrics
from ocs.balances.store import BalanceStore
from ocs.billing.cycles import PlanBilling, schedule
from ocs.billing.periods import Period, Schedule, Unit
from ocs.counters.service import CounterService, ResetReport

log = logging.getLogger("ocs.billing.counter_cycles")

# Advisory-lock namespace of "this plan's counter cycle is being opened".
CYCLE_LOCK_PREFIX = "ocs-counter-cycle:"
# The cycles whose periods are computed from the plan alone: a subscription-date plan's
# periods are each account's own, and a manual or on-demand plan has none.
_PLAN_PERIODS = ("fixed_period", "fixed_date", "week")
# Any first of a month: calendar months are the periods of every other plan.
_MONTHS_ANCHOR = date(2000, 1, 1)

_BILLING_OF_PLANS = (
    "SELECT p.id AS plan, b.* FROM plans p LEFT JOIN plan_billing b ON b.plan_id = p.id"
)


def counter_period(billing: PlanBilling | None, now: datetime) -> Period:
    """The period a counter reset at ``now`` (aware) opens for a plan.

    The plan's billing period holding ``now`` in its time zone for a fixed-period,
    fixed-date or weekly cycle; otherwise the calendar month holding ``now`` in the
    plan's time zone (UTC for a plan without billing settings): a subscription-date
    plan's periods are each account's own (its runs name calendar months too), and a
    manual or on-demand plan's are named by whoever runs them.
    """
    if billing is not None and billing.cycle in _PLAN_PERIODS:
        return schedule(billing).period_containing(now)
    zone = billing.time_zone if billing is not None else "UTC"
    return Schedule(Unit.MONTHS, 1, _MONTHS_ANCHOR, zone).period_containing(now)


def _billing(row: asyncpg.Record) -> PlanBilling | None:
    """A plan's billing settings from a row of ``_BILLING_OF_PLANS`` (None: it has none)."""
    return None if row["plan_id"] is None else PlanBilling.from_row(row)


async def _plans_to_reset(
    pool: asyncpg.Pool, plan_id: str | None, account_id: str | None
) -> list[asyncpg.Record]:
    """The plans (with their billing settings) whose accounts a reset of this scope
    reaches: the account's plan, the plan, or every plan with an account."""
    async with pool.acquire() as conn:
        return list(
            await conn.fetch(
                _BILLING_OF_PLANS + " WHERE ($1::text IS NULL OR p.id = $1)"
                " AND EXISTS (SELECT 1 FROM accounts a WHERE a.plan_id = p.id"
                "   AND ($2::text IS NULL OR a.id = $2))"
                " ORDER BY p.id",
                plan_id,
                account_id,
            )
        )


async def reset_counters(
    pool: asyncpg.Pool,
    counters: CounterService,
    plan_id: str | None,
    account_id: str | None,
    cycle_label: str | None,
    now: datetime,
) -> ResetReport:
    """``POST /v1/counters/reset`` and ``ocs counters reset``: start a counter cycle for
    every account (of a plan, or one account).

    With ``cycle_label`` every account reached starts that cycle. Without, each plan's
    accounts start the cycle of the plan's period holding ``now`` (``counter_period``),
    the one the billing worker opens: a retry within the period charges nothing more.
    """
    if cycle_label is not None:
        return await counters.reset(plan_id, account_id, cycle_label)
    report = ResetReport(accounts=0, counters=0)
    for row in await _plans_to_reset(pool, plan_id, account_id):
        label = counter_period(_billing(row), now).label
        report += await counters.reset(row["plan"], account_id, label)
    return report


@dataclass(frozen=True, slots=True)
class OpenedCycle:
    """A plan's counter cycle the billing worker opened: its label and what the reset did."""

    plan_id: str
    label: str
    report: ResetReport


async def open_due_cycles(
    pool: asyncpg.Pool, store: BalanceStore, now: datetime, *, worker: str = ""
) -> list[OpenedCycle]:
    """Open the counter cycle of every plan with counters whose period has begun since
    the worker last opened one; the cycles opened.

    Once per period: the label of the last cycle opened is kept per plan in Redis
    (``keys.counter_cycle_opened``), and the reset itself charges a label's fees and
    gives its seconds once, should two workers, or a worker that failed half-way, run
    it again. A plan the worker sees for the first time (an upgrade, a new plan) has its
    current period taken as opened, not reset: its counters started this period when
    bought or first used, or by an operator's reset under a label the worker cannot
    know, and resetting them mid-period would charge their fees a second time.
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            _BILLING_OF_PLANS
            + " WHERE EXISTS (SELECT 1 FROM counters c WHERE c.plan_id = p.id) ORDER BY p.id"
        )
    opened = []
    for row in rows:
        plan_id: str = row["plan"]
        label = counter_period(_billing(row), now).label
        last = await store.counter_cycle_opened(plan_id)
        if last == label:
            continue
        if last is None:
            await store.set_counter_cycle_opened(plan_id, label)
            log.info(
                "counter cycles follow the plan's periods from the next one",
                extra={"worker": worker, "plan": plan_id, "cycle": label},
            )
            continue
        report = await _open_cycle(pool, store, plan_id, label)
        if report is None:
            continue  # another worker is opening it
        opened.append(OpenedCycle(plan_id, label, report))
        metrics.COUNTER_CYCLES_OPENED.inc()
        log.info(
            "counter cycle opened",
            extra={
                "worker": worker,
                "plan": plan_id,
                "cycle": label,
                "accounts": report.accounts,
                "counters": report.counters,
                "fees": report.fees,
            },
        )
    return opened


async def _open_cycle(
    pool: asyncpg.Pool, store: BalanceStore, plan_id: str, label: str
) -> ResetReport | None:
    """Reset the plan's counters to cycle ``label`` and keep it as opened; None when
    another worker holds the plan's lock, or has opened it meanwhile."""
    key = CYCLE_LOCK_PREFIX + plan_id
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            return None
        try:
            if await store.counter_cycle_opened(plan_id) == label:
                return None
            report = await CounterService(pool, store).reset(plan_id, None, label)
            await store.set_counter_cycle_opened(plan_id, label)
            return report
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
