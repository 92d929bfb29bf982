"""The billing worker: runs each plan's due invoice cycle by itself, and shares runs' chunks.

Every ``billing_poll_interval`` seconds a worker:

0. opens the counter cycle of each plan whose billing period has begun since it
   last opened one (``counter_cycles.open_due_cycles``, ``billing_counter_cycles``,
   on by default; needs the real-time balances): the plan's counters are reset under
   the period's label, their recurring fees charged, once per period (and those of
   the periods it missed while stopped, without their seconds);
1. creates the run of each scheduled plan's due period, once. Due: for an
   end-of-cycle plan, the latest period that has ended; for a start-of-cycle
   plan, the latest period that has started; ``billing_run_delay`` later, and
   once the ledger writer holds no entry from before then, so the CDRs of the
   last calls have reached PostgreSQL. A subscription-date
   plan's accounts each have their own anniversary, so its run names a month
   (the periods starting in it), due once every period starting in it has
   ended (end of cycle: the month after next) or started (the next month).
   "Once" holds across workers and restarts: the check for an existing run and
   the creation happen under a PostgreSQL advisory lock of (plan, period), and
   an existing run of the period (a worker's or an operator's, for the plan or
   for every plan) means the period is taken, unless every such run was early
   (made so, stopping before its usage window's end): the period is then due once
   more, for the accounts with no invoice of it that existed before its window
   ended (``_taken_by``);
2. executes every run with a chunk not done, one chunk at a time, claiming
   chunks from PostgreSQL (``runs.claim_chunk``: SKIP LOCKED and a lease), so
   several workers share a run and a dead worker's chunk is claimed again
   once its lease (``billing_lease``) runs out. A run whose usage window ends
   after the oldest entry the ledger writer still holds waits (an operator's run
   or an early one is drafted with no delay of its own: ``runs.held_for_ledger``).

A stop (SIGTERM) is noticed between chunks: the chunk in hand is finished and
committed, none is claimed after it. The worker logs one line per state
change (started, counter cycle opened, run created, run joined, run finished, a
failed step, stopping, stopped), never one per account.

3. posts the runs it created (``billing_auto_post``, on by default) once all
   their chunks are drafted: numbers, then the money (``posting.post``). An
   operator's runs (``ocs billing run``) wait for ``ocs billing post``. A tax
   engine found unavailable is asked no more in the pass (``taxing.EngineOutage``):
   the external drafts left are held for a later pass, and the pass goes on;
4. runs dunning (``dunning.run_dunning``): notices, suspensions and
   reactivations due by now, each once;
5. commits, on each plan locking accounts on its charges, what its accounts' next
   invoices bill for them (``commitments.refresh_plans``; needs the real-time
   balances): at each cycle start, and after the plan's charges or settings change;
   an account whose plan no longer locks, or is billed by hand or on demand, has its
   commitment set back to 0. Last in the pass, and for ``billing_commitments_budget``
   seconds at most (a batch of accounts at least): a plan of 100k accounts takes
   longer, and goes on at the next pass from where it was, while every plan's due
   runs, posting and dunning go on before it.

It also drafts the invoice of each on-demand session closed with none
(``sessions.uninvoiced_sessions``: the close committed, its draft failed),
once ``sessions.UNINVOICED_AFTER_S`` have passed since the close, once each.
"""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import aiohttp
import asyncpg

from ocs import metrics, systemd_notify
from ocs.balances.store import BalanceStore
from ocs.billing import (
    commitments,
    counter_cycles,
    dunning,
    notify_email,
    payments,
    posting,
    queries,
    runs,
    sessions,
    taxing,
)
from ocs.billing.cycles import SCHEDULED, PlanBilling, schedule
from ocs.billing.periods import Period, local_midnight, month_day
from ocs.billing.taxes import TaxEngine, external_engine
from ocs.config import ConfigError, Settings
from ocs.errors import OcsError
from ocs.events.delivery import deliver_pending, serve_deliveries

log = logging.getLogger("ocs.billing.worker")

# Advisory-lock namespace of "the run of this plan and period is being created".
RUN_LOCK_PREFIX = "ocs-billing-run:"
# A posted invoice's lines still unmoved after this long were left by a crash (a
# posting moves its money within seconds of its numbers): the pass moves them.
UNMOVED_AFTER_S = 60.0
# Failed drafts of a closed session's missing invoice before the worker stops trying it
# (a refusal, an ``OcsError``, stops it at once: the draft fails the same way until an
# operator changes the account or its plan). Counted with the session (migration 0069):
# a restarted worker goes on counting; ``ocs billing retry-sessions`` starts it again.
SESSION_TRIES = 3


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a billing worker is configured with (from ``ocs.config.Settings``)."""

    poll_interval: float = 30.0
    chunk_size: int = runs.DEFAULT_CHUNK
    lease_s: float = runs.DEFAULT_LEASE_S
    run_delay: float = 300.0
    auto_post: bool = True
    counter_cycles: bool = True  # open each plan's counter cycle at its period's start
    # Seconds a pass spends at most refreshing committed charges (one batch at least);
    # a plan not finished goes on at the next pass.
    commitments_budget: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> "WorkerSettings":
        """The worker's part of a process's settings."""
        return cls(
            poll_interval=settings.billing_poll_interval,
            chunk_size=settings.billing_chunk_size,
            lease_s=settings.billing_lease,
            run_delay=settings.billing_run_delay,
            auto_post=settings.billing_auto_post,
            counter_cycles=settings.billing_counter_cycles,
            commitments_budget=settings.billing_commitments_budget,
        )


@dataclass(frozen=True, slots=True)
class Due:
    """A plan's period whose run is due: its name as ``create_run`` takes it, and its
    first instant (to find a run of it created under another name)."""

    plan_id: str
    period: str
    start: datetime
    invoice_date: date
    # Every run of the period so far was early: due again once it has ended, for the
    # accounts with no invoice of it (``runs.create_run``'s ``uninvoiced_only``).
    follow_up: bool = False


def _month(day: date, months: int) -> tuple[int, int]:
    """(year, month) ``months`` after (or before, negative) ``day``'s month."""
    year, month0 = divmod(day.year * 12 + day.month - 1 + months, 12)
    return year, month0 + 1


def _anniversary_months(billing: PlanBilling, moment: datetime) -> list[Due]:
    """The months of a subscription-date plan whose periods have all ended (or started),
    from the plan's effective month to the latest, oldest first."""
    zone = schedule(billing).zone
    today = moment.astimezone(zone).date()
    advance = billing.invoice_timing == "start_of_cycle"
    # A period starting in month M ends in M+1: all have ended once M+2 begins.
    last = _month(today, -1 if advance else -2)
    month = (billing.effective_date.year, billing.effective_date.month)
    found = []
    while month <= last:
        first = date(*month, 1)
        after = month_day(*_month(first, 1), 1)
        invoice_day = after if advance else month_day(*_month(first, 2), 1)
        label = f"{month[0]:04d}-{month[1]:02d}"
        found.append(Due(billing.plan_id, label, local_midnight(first, zone), invoice_day))
        month = _month(first, 1)
    return found


def due_periods(billing: PlanBilling, now: datetime, delay: float = 0.0) -> list[Due]:
    """Every period of the plan whose run is due at ``now`` (``delay`` seconds late), from
    the first after the plan's effective date to the latest, oldest first; none for a
    manual or on-demand plan.

    A worker that was down, or a plan given billing settings with a past
    effective date, leaves earlier periods due: they are run too (back-fill),
    oldest first, so no period's usage is left uninvoiced.
    """
    if billing.cycle not in SCHEDULED:
        return []
    moment = now.astimezone(UTC) - timedelta(seconds=delay)
    if billing.cycle == "subscription_date":
        return _anniversary_months(billing, moment)
    cycle = schedule(billing)
    advance = billing.invoice_timing == "start_of_cycle"
    last = cycle.index_containing(moment) - (0 if advance else 1)
    first = cycle.index_containing(local_midnight(billing.effective_date, cycle.zone))
    found = []
    for n in range(first, last + 1):
        period: Period = cycle.period(n)
        if period.end_day <= billing.effective_date:
            continue
        invoice_day = period.first_day if advance else period.end_day
        found.append(Due(billing.plan_id, period.label, period.start, invoice_day))
    return found


def due_period(billing: PlanBilling, now: datetime, delay: float = 0.0) -> Due | None:
    """The plan's latest period whose run is due at ``now`` (``delay`` seconds late); None
    for a manual or on-demand plan, or one whose first period is not due yet."""
    found = due_periods(billing, now, delay)
    return found[-1] if found else None


# The runs that took a period, with whether each was early and its usage cut-off: by name
# (the plan's or every plan's; start NULL), or by a chunk of the plan starting at its
# first instant.
_TAKEN_SQL = """
SELECT r.plan_id, r.period, NULL::timestamptz AS start, r.early, r.usage_cutoff
FROM invoice_runs r
UNION ALL
SELECT DISTINCT c.plan_id, NULL, c.period_start, r.early, r.usage_cutoff
FROM invoice_run_chunks c JOIN invoice_runs r ON r.id = c.run_id
"""

# The same, of one plan's period ($1 its name, $2 the plan, $3 its first instant).
_TAKEN_ONE_SQL = """
SELECT early, usage_cutoff FROM invoice_runs
WHERE period = $1 AND (plan_id = $2 OR plan_id IS NULL)
UNION ALL
SELECT r.early, r.usage_cutoff FROM invoice_run_chunks c JOIN invoice_runs r ON r.id = c.run_id
WHERE c.plan_id = $2 AND c.period_start = $3
"""

# A run that took a period: (early, usage cut-off).
Taken = tuple[bool, datetime | None]


def _early(run: Taken, window_end: datetime) -> bool:
    """Whether a run stopped before the plan's usage window of the period ended
    (``runs.plan_window_end``): an early run, made so (``invoice_runs.early``), whose
    cut-off is before it (a run of every plan is early for the plans whose window had
    not ended, not for the others). An operator's cut-off alone is not early (0067)."""
    early, cutoff = run
    return early and cutoff is not None and cutoff < window_end


def _taken_by(billing: PlanBilling, due: Due, taken: list[Taken]) -> Due | None:
    """``due`` as the worker should run it given the runs that took it so far: None when
    one of them was not early; a follow-up when they all were (decision 0021, addendum
    2026-12-07: an account that joined the plan after an early run was never billed for
    that period); else ``due``."""
    if not taken:
        return due
    end = runs.plan_window_end(billing, due.period)
    if not all(_early(run, end) for run in taken):
        return None
    return Due(due.plan_id, due.period, due.start, due.invoice_date, follow_up=True)


async def due_runs(pool: asyncpg.Pool, now: datetime, delay: float = 0.0) -> list[Due]:
    """Every scheduled plan's due periods at ``now`` that have no run yet, by plan id,
    oldest period first; or whose runs all stopped early (a follow-up, ``_taken_by``).

    A period is taken by a run of it under its name (the plan's or every plan's)
    or by a chunk of the plan starting at its first instant; ``ensure_run``
    checks again under its lock.
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM plan_billing WHERE cycle = ANY($1::text[]) ORDER BY plan_id",
            list(SCHEDULED),
        )
        taken = await conn.fetch(_TAKEN_SQL)
    named: dict[tuple[str | None, str], list[Taken]] = {}
    started: dict[tuple[str, datetime], list[Taken]] = {}
    for r in taken:
        run = (bool(r["early"]), r["usage_cutoff"])
        if r["period"] is not None:
            named.setdefault((r["plan_id"], r["period"]), []).append(run)
        else:
            started.setdefault((r["plan_id"], r["start"]), []).append(run)
    found = []
    for row in rows:
        billing = PlanBilling.from_row(row)
        for due in due_periods(billing, now, delay):
            by = (
                named.get((due.plan_id, due.period), [])
                + named.get((None, due.period), [])
                + started.get((due.plan_id, due.start), [])
            )
            if (running := _taken_by(billing, due, by)) is not None:
                found.append(running)
    return found


async def ensure_run(
    pool: asyncpg.Pool,
    due: Due,
    chunk_size: int,
    *,
    auto_post: bool = False,
    timing: runs.Timing | None = None,
) -> int | None:
    """Create the run of a due period unless one exists; the new run's id, else None.

    A period whose runs all stopped early gets a follow-up run of the accounts with no
    invoice of it (``_taken_by``), once.

    ``auto_post``: the run is posted by a worker once drafted (``BillingWorker.post_runs``).
    ``timing``: the worker's clock and ``billing_run_delay``, which made the period due
    (``runs.create_run`` checks its window again with them).

    The check and the creation hold an advisory lock of (plan, period), so two
    workers (or a restart) never create a second run of it. The lock is a
    session lock on its own connection: ``create_run`` commits on that same
    connection (no second one: a pool of one connection would wait for itself) before
    the lock is let go, so the next holder sees the run.
    """
    key = RUN_LOCK_PREFIX + f"{due.plan_id}:{due.start.astimezone(UTC).isoformat()}"
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        try:
            taken = [
                (bool(r["early"]), r["usage_cutoff"])
                for r in await conn.fetch(_TAKEN_ONE_SQL, due.period, due.plan_id, due.start)
            ]
            billing = PlanBilling.from_row(
                await conn.fetchrow("SELECT * FROM plan_billing WHERE plan_id = $1", due.plan_id)
            )
            running = _taken_by(billing, due, taken)
            if running is None:
                return None
            return await runs.create_run(
                pool,
                due.period,
                invoice_date=due.invoice_date,
                plan_id=due.plan_id,
                chunk_size=chunk_size,
                auto_post=auto_post,
                timing=timing,
                uninvoiced_only=running.follow_up,
                conn=conn,
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


class BillingWorker:
    """One billing worker over a PostgreSQL pool: ``run`` until stopped, or ``run_once``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: WorkerSettings,
        *,
        name: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        store: BalanceStore | None = None,
        tax_settings: Settings | None = None,
        cutter: dunning.CallCutter | None = None,
    ) -> None:
        """``store`` (the real-time balances) lets the worker post its runs and run
        dunning: without it, it only drafts. ``tax_settings`` configure the external tax
        engine at posting, and dunning. ``cutter`` cuts the live calls of an account
        dunning suspends, when ``dunning_live_calls`` is "disconnect"."""
        self.pool = pool
        self.store = store
        self.cutter = cutter
        self.tax_settings = tax_settings
        self._held: dict[int, int] = {}
        self._stuck_payments = 0
        self.settings = settings
        self.name = name or runs.worker_name()
        self.clock = clock
        self._joined: set[int] = set()
        self._waiting_for_ledger = False
        self._held_for_ledger: set[int] = set()
        # Plans whose committed charges refresh a pass's budget left unfinished.
        self._refresh_left: dict[str, commitments.Unfinished] = {}

    async def create_due_runs(self) -> list[int]:
        """Create the run of every plan's due period that has none; the new runs' ids.

        None while the ledger writer still holds an entry from before the due moment
        (``run_delay`` ago): a call stopped before a period ended would reach PostgreSQL
        after its invoice was drafted, and be on none."""
        created: list[int] = []
        now = self.clock()
        due_now = await due_runs(self.pool, now, self.settings.run_delay)
        if due_now and await self._ledger_behind(now):
            return created
        for due in due_now:
            run_id = await ensure_run(
                self.pool,
                due,
                self.settings.chunk_size,
                auto_post=self.settings.auto_post and self.store is not None,
                timing=runs.Timing(delay=self.settings.run_delay, now=now),
            )
            if run_id is None:
                continue
            created.append(run_id)
            metrics.BILLING_RUNS_STARTED.labels("worker").inc()
            found = await runs.progress(self.pool, run_id)
            log.info(
                "billing run created",
                extra={
                    "worker": self.name,
                    "run_id": run_id,
                    "plan": due.plan_id,
                    "period": due.period,
                    "follow_up": due.follow_up,
                    "accounts_total": found.accounts_total,
                },
            )
        return created

    async def refresh_commitments(
        self, stopping: asyncio.Event | None = None
    ) -> list[commitments.PlanRefreshed]:
        """Commit the next invoice's plan charges of the accounts of every plan whose
        cycle began, or whose charges or settings changed, since their last refresh
        (``commitments.refresh_plans``), for ``commitments_budget`` seconds at most (a
        plan left unfinished goes on at the next pass); the plans refreshed, a log line
        for each that set an account. None without the real-time balances; a failure is
        logged and the next pass tries again (a refresh sets the same amounts twice)."""
        if self.store is None:
            return []
        try:
            done = await commitments.refresh_plans(
                self.pool,
                self.store,
                self.clock(),
                stopping,
                budget_s=self.settings.commitments_budget,
                left=self._refresh_left,
            )
        except Exception as error:
            metrics.BILLING_FAILURES.labels("commitments").inc()
            log.error(
                "committed charges refresh failed", extra={"worker": self.name, "error": str(error)}
            )
            return []
        for plan in done:
            if not plan.finished:
                log.info(
                    "committed charges refresh goes on next pass",
                    extra={"worker": self.name, "plan": plan.plan_id, "accounts": plan.accounts},
                )
            elif plan.accounts:
                # A plan with no locking sets nothing: no log line each cycle.
                log.info(
                    "committed charges refreshed",
                    extra={"worker": self.name, "plan": plan.plan_id, "accounts": plan.accounts},
                )
        return done

    async def open_counter_cycles(self) -> list[counter_cycles.OpenedCycle]:
        """Open the counter cycle of every plan whose period has begun since the last one
        opened (``counter_cycles.open_due_cycles``); the cycles opened. None without the
        real-time balances, or with ``counter_cycles`` off; a failure is logged and the
        next pass tries again (the reset charges a cycle's fees once)."""
        if self.store is None or not self.settings.counter_cycles:
            return []
        try:
            return await counter_cycles.open_due_cycles(
                self.pool, self.store, self.clock(), worker=self.name
            )
        except Exception as error:
            metrics.BILLING_FAILURES.labels("counters").inc()
            log.error("counter cycles failed", extra={"worker": self.name, "error": str(error)})
            return []

    async def _ledger_behind(self, now: datetime) -> bool:
        """Whether an entry older than the due moment is still to be written to PostgreSQL
        (logged once when runs start waiting for it, and once when they go on)."""
        if self.store is None:
            return False  # a drafting-only worker: the run delay is its only margin
        oldest = await self.store.oldest_unwritten_ms()
        cutoff = (now.timestamp() - self.settings.run_delay) * 1000
        behind = oldest is not None and oldest <= cutoff
        if behind != self._waiting_for_ledger:
            self._waiting_for_ledger = behind
            if behind:
                log.warning(
                    "billing runs wait for the ledger writer",
                    extra={"worker": self.name, "oldest_unwritten_ms": oldest},
                )
            else:
                log.info(
                    "the ledger writer caught up; billing runs go on", extra={"worker": self.name}
                )
        return behind

    async def _run_held(self, run_id: int) -> bool:
        """Whether the run's drafting waits for the ledger writer (``runs.held_for_ledger``):
        an operator's run, or an early one, is drafted here with no delay of its own.
        Logged once when a run starts waiting, and once when it goes on."""
        if self.store is None:
            return False  # a drafting-only worker: the run delay is its only margin
        end = await runs.held_for_ledger(self.pool, run_id, await self.store.oldest_unwritten_ms())
        if end is not None and run_id not in self._held_for_ledger:
            self._held_for_ledger.add(run_id)
            log.warning(
                "billing run waits for the ledger writer",
                extra={"worker": self.name, "run_id": run_id, "window_end": end.isoformat()},
            )
        elif end is None and run_id in self._held_for_ledger:
            self._held_for_ledger.discard(run_id)
            log.info(
                "the ledger writer caught up; billing run goes on",
                extra={"worker": self.name, "run_id": run_id},
            )
        return end is not None

    async def work_on(self, run_id: int, stopping: asyncio.Event) -> runs.RunProgress:
        """Draft the run's chunks one at a time until none is left to claim, or a stop;
        none while the ledger writer holds an entry from before the run's window end."""
        if await self._run_held(run_id):
            return await runs.progress(self.pool, run_id)
        while not stopping.is_set():
            chunk = await runs.claim_chunk(self.pool, run_id, self.name, self.settings.lease_s)
            if chunk is None:
                break
            if run_id not in self._joined:
                self._joined.add(run_id)
                log.info("billing run joined", extra={"worker": self.name, "run_id": run_id})
            # Not cancelled by a stop: the chunk in hand commits, or rolls back whole.
            written = await runs.run_chunk(self.pool, run_id, chunk)
            metrics.BILLING_ACCOUNTS_DRAFTED.inc(written.drafts)
        before = await runs.progress(self.pool, run_id)
        # No chunk claimed: only marks the run done when every chunk is.
        after = await runs.execute_run(self.pool, run_id, worker=self.name, max_chunks=0)
        if before.state != "done" and after.state == "done":
            metrics.BILLING_RUNS_FINISHED.inc()
            log.info(
                "billing run finished",
                extra={
                    "worker": self.name,
                    "run_id": run_id,
                    "accounts_done": after.accounts_done,
                    "accounts_total": after.accounts_total,
                },
            )
        return after

    async def run_once(self, stopping: asyncio.Event | None = None) -> None:
        """One pass: create the due runs, then work on every unfinished run."""
        stopping = stopping or asyncio.Event()
        await self.open_counter_cycles()
        try:
            await self.create_due_runs()
        except Exception as error:
            # A long-lived worker outlives a failed pass: the next pass tries again.
            metrics.BILLING_FAILURES.labels("schedule").inc()
            log.error("billing schedule failed", extra={"worker": self.name, "error": str(error)})
        # A plan's runs are drafted in period order: a run left unfinished (a chunk failed,
        # or another worker holds one) holds back the later runs of its plans until a later
        # pass. A later invoice drafted while an earlier one is missing or uncommitted would
        # compare with the one before it and bill that period's late usage too (0050).
        held: set[str] = set()
        for run in await queries.unfinished_runs(self.pool):
            if stopping.is_set():
                break
            if run.plans & held:
                continue
            run_id = run.run_id
            try:
                progress = await self.work_on(run_id, stopping)
            except Exception as error:
                # The chunk's lease runs out and it is claimed again (by any worker).
                metrics.BILLING_FAILURES.labels("chunk").inc()
                log.error(
                    "billing chunk failed",
                    extra={"worker": self.name, "run_id": run_id, "error": str(error)},
                )
                held |= run.plans
                continue
            if progress.state != "done":
                held |= run.plans
        if not stopping.is_set():
            await self.invoice_sessions(stopping)
        if not stopping.is_set():
            try:
                await self.post_runs()
            except Exception as error:
                # Posting is idempotent (numbers under a lock, money by line): the next
                # pass finishes what this one left.
                metrics.BILLING_FAILURES.labels("post").inc()
                log.error(
                    "billing posting failed", extra={"worker": self.name, "error": str(error)}
                )
        if not stopping.is_set() and self.store is not None:
            try:
                # Money a crash left unmoved after its numbers committed (a void's credit
                # note has no run to post it again).
                await posting.finish_unmoved(self.pool, self.store, UNMOVED_AFTER_S)
            except Exception as error:
                metrics.BILLING_FAILURES.labels("post").inc()
                log.error(
                    "billing posting failed", extra={"worker": self.name, "error": str(error)}
                )
        if not stopping.is_set() and self.store is not None:
            try:
                await self.finish_payments()
            except Exception as error:
                metrics.BILLING_FAILURES.labels("payments").inc()
                log.error(
                    "payment credits failed", extra={"worker": self.name, "error": str(error)}
                )
        if not stopping.is_set() and self.store is not None and self.tax_settings is not None:
            try:
                # Notices, suspensions and reactivations due by now, each once (decision
                # 0028); with dunning_live_calls "disconnect", the cutter ends the live
                # calls of the accounts suspended (without one they are left, logged).
                await dunning.run_dunning(
                    self.pool, self.store, self.tax_settings, self.clock(), cutter=self.cutter
                )
            except Exception as error:
                metrics.BILLING_FAILURES.labels("dunning").inc()
                log.error("dunning run failed", extra={"worker": self.name, "error": str(error)})
        if not stopping.is_set():
            # Last, and within its budget: a plan of 100k accounts takes minutes, and the
            # due runs, posting and dunning of every plan do not wait for it.
            await self.refresh_commitments(stopping)
        await self.report_progress()
        # A pass finished: the NOC's "billing worker stalled" alert watches this.
        metrics.BILLING_WORKER_PASS.set_to_current_time()

    async def invoice_sessions(self, stopping: asyncio.Event) -> list[int]:
        """Draft the missing invoice of each on-demand session closed over
        ``sessions.UNINVOICED_AFTER_S`` ago; the sessions drafted, one log line each.

        ``close_session`` commits the close, then drafts: a failure between the
        two (a bug, PostgreSQL lost, the process killed) leaves a closed session
        that nothing else invoices. Each is drafted under its row's lock and only
        while its invoice is missing, so never twice. A session whose draft is refused
        (an ``OcsError``: its account left its on-demand plan) or fails ``SESSION_TRIES``
        times is given up: logged once, tried no more, and counted in
        ``ocs_billing_sessions_given_up`` until it has an invoice; it no longer counts as
        a failure at every pass. The failures and the give-up are kept with the session
        (``sessions.draft_failed``): a restarted worker goes on counting, and tries a
        session given up again only after ``ocs billing retry-sessions``.
        """
        closed_before = self.clock() - timedelta(seconds=sessions.UNINVOICED_AFTER_S)
        try:
            left = await sessions.uninvoiced_sessions(self.pool, closed_before)
        except Exception as error:
            metrics.BILLING_FAILURES.labels("sessions").inc()
            log.error("session invoices failed", extra={"worker": self.name, "error": str(error)})
            return []
        drafted = []
        given_up = sum(1 for found in left if found.given_up)
        for found in left:
            if stopping.is_set():
                break
            if found.given_up:
                continue
            failed: Exception | None = None
            try:
                invoice_id = await sessions.invoice_left(self.pool, found.id)
            except Exception as error:
                failed = error
            if failed is not None:
                metrics.BILLING_FAILURES.labels("sessions").inc()
                given_up += await self._session_failed(found.id, failed)
                continue
            if invoice_id is None:
                continue  # the close (or another worker) drafted it meanwhile
            drafted.append(found.id)
            log.info(
                "session invoice drafted after a failed close",
                extra={"worker": self.name, "session_id": found.id, "invoice_id": invoice_id},
            )
        metrics.BILLING_SESSIONS_GIVEN_UP.set(given_up)
        return drafted

    async def _session_failed(self, session_id: int, error: Exception) -> int:
        """Count a failed draft of the session's missing invoice in its row: logged at its
        first failure, and once more when the worker gives it up (a refusal, or the
        ``SESSION_TRIES``-th failure, counted across restarts); 1 when it was given up.
        A count that cannot be written (PostgreSQL lost) is logged: the next pass tries
        the session again and counts then."""
        refused = isinstance(error, OcsError)
        extra = {"worker": self.name, "session_id": session_id, "error": str(error)}
        try:
            failures = await sessions.draft_failed(
                self.pool, session_id, tries=SESSION_TRIES, refused=refused
            )
        except Exception as lost:
            log.error("session invoice failed", extra={**extra, "count_error": str(lost)})
            return 0
        if refused or failures >= SESSION_TRIES:
            log.error(
                "session invoice given up: an operator must fix its account or plan",
                extra={**extra, "failures": failures},
            )
            return 1
        if failures == 1:
            log.error("session invoice failed", extra=extra)
        return 0

    async def finish_payments(self) -> payments.PendingMoves:
        """Make the balance credits of payments and the debits of refunds that a crash or
        a failed Redis call left unmade (``payments.finish_pending``), those stored more
        than ``UNMOVED_AFTER_S`` ago; logs when the number it cannot make changes."""
        assert self.store is not None
        pending = await payments.finish_pending(self.pool, self.store, UNMOVED_AFTER_S)
        if pending.made:
            log.info(
                "payment credits made after a failure",
                extra={"worker": self.name, "moves": pending.made},
            )
        if pending.stuck != self._stuck_payments:
            # One line when the number changes, not one per pass.
            self._stuck_payments = pending.stuck
            log.warning(
                "payment credits without a real-time balance",
                extra={"worker": self.name, "moves": pending.stuck},
            )
        return pending

    async def post_runs(self) -> list[int]:
        """Post every drafted run marked ``auto_post`` whose drafts are not all posted; the
        runs now fully posted.

        A draft held back (its tax engine failed) keeps its run unposted: the
        next pass tries it again, and posts it exactly once when the engine is
        back. Once the engine is found unavailable it is not asked again in this
        pass, by any run: their external drafts are held at once (logged once),
        so the other runs post and the pass's later steps run. Posting a run
        twice at once (two workers) is harmless: numbers are assigned under a
        lock to drafts only, and money moves once per line.
        """
        if self.store is None:
            return []
        settings = self.tax_settings
        if settings is None or not settings.tax_engine_url:
            return await self._post_runs(None)
        # One HTTP session and one outage for the whole pass, over every run.
        async with aiohttp.ClientSession() as session:
            engine = taxing.EngineOutage().guard(external_engine(settings, session=session))
            return await self._post_runs(engine)

    async def _post_runs(self, engine: TaxEngine | None) -> list[int]:
        """``post_runs`` with the pass's tax engine (None: as the settings say)."""
        assert self.store is not None
        async with self.pool.acquire() as conn:
            to_post = [
                int(r["id"])
                for r in await conn.fetch(
                    "SELECT id FROM invoice_runs WHERE auto_post AND posted_at IS NULL"
                    " AND state = 'done' ORDER BY id"
                )
            ]
        finished = []
        for run_id in to_post:
            posted = await posting.post(
                self.pool, self.store, run_id=run_id, tax_engine=engine, settings=self.tax_settings
            )
            metrics.BILLING_POSTED.labels("invoices").inc(len(posted.numbers))
            metrics.BILLING_POSTED.labels("lines").inc(posted.lines_moved)
            if posted.held:
                # One line when the number held changes, not one per pass.
                if self._held.get(run_id) != len(posted.held):
                    self._held[run_id] = len(posted.held)
                    log.warning(
                        "billing run held",
                        extra={"worker": self.name, "run_id": run_id, "held": len(posted.held)},
                    )
                continue
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE invoice_runs SET posted_at = now() WHERE id = $1 AND posted_at IS NULL",
                    run_id,
                )
            self._held.pop(run_id, None)
            finished.append(run_id)
            log.info(
                "billing run posted",
                extra={"worker": self.name, "run_id": run_id, "invoices": len(posted.numbers)},
            )
        return finished

    async def report_progress(self) -> None:
        """Set the run-progress gauge from the stored runs."""
        for state, (done, total) in (await queries.run_totals(self.pool)).items():
            metrics.BILLING_RUN_ACCOUNTS.labels(state, "done").set(done)
            metrics.BILLING_RUN_ACCOUNTS.labels(state, "total").set(total)

    async def run(self, stopping: asyncio.Event) -> None:
        """Pass after pass, ``poll_interval`` apart, until ``stopping`` is set."""
        log.info(
            "billing worker started",
            extra={"worker": self.name, "poll_interval_s": self.settings.poll_interval},
        )
        # The heartbeat counts from the start: a worker whose first pass hangs (a lock
        # wait, a tax engine that never answers) is stalled an hour later, not never.
        metrics.BILLING_WORKER_PASS.set_to_current_time()
        while not stopping.is_set():
            await self.run_once(stopping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.settings.poll_interval)
        log.info("billing worker stopped", extra={"worker": self.name})


async def serve_worker(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    once: bool = False,
    store: BalanceStore | None = None,
    cutter: dunning.CallCutter | None = None,
) -> None:
    """``ocs billing-worker``: run a worker until SIGTERM or SIGINT (or one pass, ``once``).

    With ``store`` it posts the runs it creates (``billing_auto_post``).

    The signal sets the stop: the chunk in hand is finished, the worker then
    exits without claiming another.
    """
    from ocs.billing.document_fonts import check_fallback_fonts  # reportlab: only here

    # Said once at start, not at the first invoice PDF, maybe days later.
    check_fallback_fonts(settings.invoice_fallback_fonts)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    worker = BillingWorker(
        pool, WorkerSettings.of(settings), store=store, tax_settings=settings, cutter=cutter
    )

    def stop(signum: int) -> None:
        if not stopping.is_set():
            log.info(
                "billing worker stopping",
                extra={"worker": worker.name, "signal": signal.Signals(signum).name},
            )
            systemd_notify.stopping("finishing the chunk in hand")
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    if settings.billing_metrics_port and not once:
        try:
            metrics.serve_metrics(settings.billing_metrics_port)
        except OSError as exc:
            # A second worker on the host sharing the config is the usual cause: said as
            # the setting to change, not as a backend out of reach.
            raise ConfigError(
                f"billing_metrics_port: cannot serve metrics on port"
                f" {settings.billing_metrics_port}: {exc.strerror or exc}"
            ) from None
    # Events (webhooks, invoice and dunning emails) go out beside the runs (decision 0029).
    deliveries = (
        None
        if once
        else asyncio.create_task(
            serve_deliveries(pool, settings, stopping, senders=notify_email.senders(settings))
        )
    )
    if not once:
        # Type=notify: stores open, signals handled, metrics served; passes begin now.
        systemd_notify.ready(f"billing worker {worker.name}")
    try:
        if once:
            await worker.run_once(stopping)
            await deliver_pending(
                pool, settings, senders=notify_email.senders(settings), stopping=stopping
            )
        else:
            await worker.run(stopping)
    finally:
        if deliveries is not None:
            stopping.set()
            await deliveries
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
