"""Counter cycles follow the plans' billing periods (decision 0032, addendum 2026-12-07).

A counter reset that names no cycle opens the plan's billing period holding now, in
the plan's time zone, and is labelled as that period (``2027-01``, or
``2026-12-15..2027-01-15``): every retry within the period is the same cycle, so its
fees are charged once and its seconds given once, whatever the UTC date.

Here rather than in ``ocs.counters``: the periods are billing's, and the layers point
down (decision 0018).
"""

from datetime import date, datetime

import asyncpg

from ocs.billing.cycles import PlanBilling, schedule
from ocs.billing.periods import Period, Schedule, Unit
from ocs.counters.service import CounterService, ResetReport

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
    so a retry within the period charges nothing more.
    """
    if cycle_label is not None:
        return await counters.reset(plan_id, account_id, cycle_label)
    report = ResetReport(accounts=0, counters=0)
    for row in await _plans_to_reset(pool, plan_id, account_id):
        label = counter_period(_billing(row), now).label
        report += await counters.reset(row["plan"], account_id, label)
    return report
