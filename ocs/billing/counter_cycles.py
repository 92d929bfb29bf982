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

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

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

# How many of a plan's periods back the worker looks for the last cycle opened (and so
# the most missed cycles it charges): three years of months.
_LOOK_BACK = 36
# How many of a plan's accounts a lost label is looked for in (their counters' cycle).
_SAMPLE_ACCOUNTS = 100
# Accounts whose missed fees are charged a round at a time.
_CHUNK = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    """A plan's counter cycle the billing worker opened: its label, what the reset did,
    and the cycles missed before it (their labels, oldest first) whose fees it charged."""

    plan_id: str
    label: str
    report: ResetReport
    missed: tuple[str, ...] = ()
    missed_fees: int = 0  # fees charged for the missed cycles


async def open_due_cycles(
    pool: asyncpg.Pool, store: BalanceStore, now: datetime, *, worker: str = ""
) -> list[OpenedCycle]:
    """Open the counter cycle of every plan with counters whose period has begun since
    the worker last opened one; the cycles opened.

    Once per period: the label of the last cycle opened is kept per plan in Redis
    (``keys.counter_cycle_opened``), and the reset itself charges a label's fees and
    gives its seconds once, should two workers, or a worker that failed half-way, run
    it again. A lost label is found again in what the cycles left (``_recover_opened``).
    The periods that began and ended while the worker was away are missed cycles: their
    recurring fees are charged, once per label, their seconds not given (``_open_cycle``).
    A plan the worker sees for the first time (an upgrade, a new plan) has its
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
        cycle = await _open_plan_cycle(pool, store, row["plan"], _billing(row), now, worker)
        if cycle is not None:
            opened.append(cycle)
    return opened


async def _open_plan_cycle(
    pool: asyncpg.Pool,
    store: BalanceStore,
    plan_id: str,
    billing: PlanBilling | None,
    now: datetime,
    worker: str,
) -> OpenedCycle | None:
    """Open one plan's cycle of ``now`` when it is due; None when it is not (or another
    worker is opening it)."""
    label = counter_period(billing, now).label
    last = await store.counter_cycle_opened(plan_id)
    if last == label:
        return None
    recent = _recent_periods(billing, now)
    recovered = last is None
    if last is None:
        last = await _recover_opened(pool, store, plan_id, recent)
        if last is None or last == label:
            await store.set_counter_cycle_opened(plan_id, label)
            message = (
                "counter cycles follow the plan's periods from the next one"
                if last is None
                else "counter cycle opened already: its lost label found again"
            )
            log.info(message, extra={"worker": worker, "plan": plan_id, "cycle": label})
            return None
    labels = [p.label for p in recent]
    if last not in labels:
        # A label of another schedule (the plan's cycle or zone changed), an operator's
        # own, or older than the periods looked back on: what was missed is unknown.
        log.warning(
            "counter cycle opened after one not among the plan's recent periods:"
            " cycles missed between, if any, not charged",
            extra={"worker": worker, "plan": plan_id, "cycle": label, "last": last},
        )
    missed = recent[1 : labels.index(last)][::-1] if last in labels else []
    if recovered and missed:
        # A label found again may be an operator's reset by hand, months old: charging
        # every period since on that guess would bill what nobody agreed to.
        log.warning(
            "counter cycles missed, not charged: the label of the last one opened was lost",
            extra={"worker": worker, "plan": plan_id, "cycles": [p.label for p in missed]},
        )
        missed = []
    done = await _open_cycle(pool, store, plan_id, label, missed)
    if done is None:
        return None  # another worker is opening it
    report, missed_fees = done
    cycle = OpenedCycle(plan_id, label, report, tuple(p.label for p in missed), missed_fees)
    _log_opened(cycle, worker)
    return cycle


def _log_opened(cycle: OpenedCycle, worker: str) -> None:
    """Count and log a cycle opened, and the cycles missed before it (a warning: the
    worker was away over their starts)."""
    metrics.COUNTER_CYCLES_OPENED.inc()
    if cycle.missed:
        metrics.COUNTER_CYCLES_MISSED.inc(len(cycle.missed))
        log.warning(
            "counter cycles missed: their fees charged late, their seconds not given",
            extra={
                "worker": worker,
                "plan": cycle.plan_id,
                "cycles": list(cycle.missed),
                "fees": cycle.missed_fees,
            },
        )
    log.info(
        "counter cycle opened",
        extra={
            "worker": worker,
            "plan": cycle.plan_id,
            "cycle": cycle.label,
            "accounts": cycle.report.accounts,
            "counters": cycle.report.counters,
            "fees": cycle.report.fees,
        },
    )


def _recent_periods(billing: PlanBilling | None, now: datetime) -> list[Period]:
    """The plan's counter periods back from the one holding ``now`` (first), newest
    first: at most ``_LOOK_BACK``, none before the plan's schedule begins."""
    periods = [counter_period(billing, now)]
    while len(periods) < _LOOK_BACK:
        before = periods[-1].start.astimezone(UTC) - timedelta(microseconds=1)
        try:
            periods.append(counter_period(billing, before))
        except ValueError:
            break  # before the schedule's first period
    return periods


async def _recover_opened(
    pool: asyncpg.Pool, store: BalanceStore, plan_id: str, recent: list[Period]
) -> str | None:
    """The latest of the plan's recent periods a reset opened, when the worker's label of
    it is lost (Redis restarted without its data, the key removed); None when none did.

    Two witnesses: the cycle label the reset left in the counters of some of the plan's
    accounts (Redis, at once), and the recurring fees it charged under that label
    (PostgreSQL's ledger, durable, once the ledger writer has moved them). An operator's
    reset of a period counts: it charged that period's fees.
    """
    labels = [p.label for p in recent]
    async with pool.acquire() as conn:
        accounts = await conn.fetch(
            "SELECT id FROM accounts WHERE plan_id = $1 ORDER BY id LIMIT $2",
            plan_id,
            _SAMPLE_ACCOUNTS,
        )
        fee_counters = await conn.fetch(
            "SELECT id FROM counters WHERE plan_id = $1 AND recurring_fee > 0", plan_id
        )
        label_of = {
            f"counter:{c['id']}:cycle:{label}": label for c in fee_counters for label in labels
        }
        charged = await conn.fetch(
            "SELECT DISTINCT l.reference FROM accounts a JOIN ledger l ON l.account_id = a.id"
            " WHERE a.plan_id = $1 AND l.kind = 'fee' AND l.occurred_at >= $2"
            "   AND l.reference = ANY($3::text[])",
            plan_id,
            recent[-1].start,
            list(label_of),
        )
    found = {label_of[r["reference"]] for r in charged}
    kept = await store.counter_cycle_labels(a["id"] for a in accounts)
    found.update(label for label in kept if label is not None)
    return next((label for label in labels if label in found), None)


async def _open_cycle(
    pool: asyncpg.Pool, store: BalanceStore, plan_id: str, label: str, missed: list[Period]
) -> tuple[ResetReport, int] | None:
    """Charge the missed cycles' fees, reset the plan's counters to cycle ``label`` and
    keep it as opened: what the reset did and the missed fees charged; None when another
    worker holds the plan's lock, or has opened it meanwhile."""
    key = CYCLE_LOCK_PREFIX + plan_id
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            return None
        try:
            if await store.counter_cycle_opened(plan_id) == label:
                return None
            # Before the reset: a counter's purchase time is read against each missed
            # period's start, and the reset keeps only when counters were bought.
            missed_fees = await _charge_missed(pool, store, plan_id, missed)
            report = await CounterService(pool, store).reset(plan_id, None, label)
            await store.set_counter_cycle_opened(plan_id, label)
            return report, missed_fees
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _charge_missed(
    pool: asyncpg.Pool, store: BalanceStore, plan_id: str, missed: list[Period]
) -> int:
    """Charge the recurring fees of cycles missed: for each period, each counter with a
    fee an account holds now and held before the period began (bought or first used
    before its start, or started by a reset), under the reference a reset of that label
    would use, so it is charged once whoever charges it. No seconds are given: those
    periods are over, and their calls drew on the cycle then open. The fees charged."""
    if not missed:
        return 0
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT a.id, c.id AS counter, c.recurring_fee FROM accounts a"
            " JOIN counters c ON c.plan_id = a.plan_id AND c.active AND c.recurring_fee > 0"
            "  AND (c.mandatory OR EXISTS (SELECT 1 FROM account_counters ac"
            "       WHERE ac.account_id = a.id AND ac.counter_id = c.id))"
            " WHERE a.plan_id = $1 ORDER BY a.id",
            plan_id,
        )
    charged = 0
    for first in range(0, len(rows), _CHUNK):
        chunk = rows[first : first + _CHUNK]
        held = await store.counters_bought_at({r["id"] for r in chunk})
        for period in missed:
            began = (period.start.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
            owed = [
                r
                for r in chunk
                if r["counter"] in held[r["id"]] and (held[r["id"]][r["counter"]] or 0) < began
            ]
            await asyncio.gather(
                *(
                    store.fee(
                        r["id"],
                        r["recurring_fee"],
                        f"counter:{r['counter']}:cycle:{period.label}",
                        require_funds=False,
                    )
                    for r in owed
                )
            )
            charged += len(owed)
    return charged
