"""Dunning: notices for unpaid invoices, then suspension; payment in full reactivates.

An invoice is overdue from the first local midnight (the plan's billing time
zone) after its due date: ``grace_days`` after the later of its invoice date and
the local day it was posted (a back-filled or late-posted invoice is dated days
before it is posted, and gets its whole grace all the same). A plan that duns
(``plan_billing.max_notices`` set) then sends notice 1 at once, each next
notice ``notice_interval_days`` after the previous one (counted in local days,
never sooner than the schedule), and suspends the account that interval after
the last notice (decision 0028).

``run_dunning`` takes at most one step per invoice per run, on the clock it is
given; each step is a row with a unique key (invoice, step, notice number)
written in the transaction of its events (``ocs.events.outbox.emit``), so a
second run on the same clock, or a second worker, does nothing. A suspension
sets the account's status in PostgreSQL and in Redis in one transaction, the
way ``AccountService.update_policy`` does (Redis written last, inside the
PostgreSQL transaction): the real-time path refuses new calls at once with
``account_suspended``. Only what dunning suspended is reactivated by it.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg

from ocs import metrics
from ocs.balances.accounts import SESSION_LOCK
from ocs.balances.store import BalanceStore
from ocs.billing import dunning_store
from ocs.billing.dunning_store import OpenInvoice, Suspension
from ocs.billing.periods import local_midnight
from ocs.config import Settings
from ocs.errors import OcsError, Reason, account_not_found, invalid
from ocs.events.outbox import emit

log = logging.getLogger("ocs.billing.dunning")

# Cuts one live call of an account (account id, call id): charges it up to now and asks
# its switch to end it; what the switch answered ("ack", ...), or None: nobody to ask.
CallCutter = Callable[[str, str], Awaitable[str | None]]

# The Redis lock a charge below the critical balance puts (lib.lua): lifted by a top-up.
CRITICAL_LOCK = "critical"


@dataclass(frozen=True, slots=True)
class Step:
    """The next dunning step of an invoice: a notice (number 1..n) or the suspension."""

    step: str  # "notice" or "suspension"
    notice: int  # 0 for the suspension
    due_at: datetime


def due_date(invoice: OpenInvoice) -> date:
    """The last day to pay: the plan's grace days after the later of the invoice date and
    the local day it was posted. An invoice posted days after its date (a worker that was
    down, a back-filled plan) would otherwise be overdue, notice 1 sent, the moment the
    customer receives it (decision 0028, addendum 2026-12-07)."""
    start = invoice.invoice_date
    if invoice.posted_on is not None and invoice.posted_on > start:
        start = invoice.posted_on
    return start + timedelta(days=invoice.settings.grace_days)


def overdue_from(invoice: OpenInvoice) -> datetime:
    """The first instant the invoice is overdue: the local midnight after its due date."""
    zone = ZoneInfo(invoice.settings.time_zone)
    return local_midnight(due_date(invoice) + timedelta(days=1), zone)


def next_step(invoice: OpenInvoice) -> Step | None:
    """The invoice's next step and when it is due; None once suspended or if its plan
    does not dun."""
    settings = invoice.settings
    if invoice.suspended or settings.max_notices is None or settings.notice_interval_days is None:
        return None
    zone = ZoneInfo(settings.time_zone)
    interval = timedelta(days=settings.notice_interval_days)
    first_day = due_date(invoice) + timedelta(days=1)
    taken = len(invoice.notices)
    if taken == 0:
        day = first_day
    else:
        # Never sooner than the schedule, nor than a whole interval after the notice
        # actually sent: a run missed for days does not send two notices at once.
        last_day = invoice.notices[-1].astimezone(zone).date()
        day = max(first_day + taken * interval, last_day + interval)
    due_at = local_midnight(day, zone)
    if taken < settings.max_notices:
        return Step("notice", taken + 1, due_at)
    return Step("suspension", 0, due_at)


@dataclass(frozen=True, slots=True)
class StepTaken:
    """A step a run took."""

    invoice_id: int
    account_id: str
    step: str
    notice: int
    outcome: str


@dataclass(slots=True)
class DunningReport:
    """What one dunning run did, on its clock ``at``."""

    at: datetime
    steps: list[StepTaken] = field(default_factory=list)
    suspended: list[str] = field(default_factory=list)  # accounts suspended now
    reactivated: list[str] = field(default_factory=list)
    calls_cut: list[str] = field(default_factory=list)  # live calls cut at suspension
    # Live calls of suspended accounts left to finish although dunning_live_calls is
    # "disconnect": this process has no way to cut them (no call cutter given).
    calls_left: list[str] = field(default_factory=list)


# How far ahead of this host's clock a run's clock may be: the caller's clock skew.
# A run takes real steps (notices recorded, accounts suspended) at once, whatever its
# clock says: one on a clock in the future would suspend today an account that is not
# overdue yet, and record notices dated days ahead.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise invalid("at", "needs a time zone, e.g. 2026-04-12T00:00:00Z")


def check_run_clock(at: datetime, field: str = "at") -> None:
    """Refuse (400 naming ``field``) a run's clock later than now plus
    ``MAX_CLOCK_AHEAD``: a run changes things now. Reading a state at a later instant
    (``account_state``) is another matter, and stays allowed."""
    latest = datetime.now(UTC) + MAX_CLOCK_AHEAD
    if at > latest:
        raise invalid(
            field,
            f"{at.isoformat()} is in the future: a run takes its steps now, so its clock"
            f" may be at most {int(MAX_CLOCK_AHEAD.total_seconds() // 60)} minutes ahead",
        )


def _money(invoice: OpenInvoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id,
        "invoice_number": invoice.number,
        "currency": invoice.currency,
        "amount_asked": invoice.asked,
        "amount_paid": invoice.paid,
        "amount_outstanding": invoice.outstanding,
        "due_date": due_date(invoice).isoformat(),
    }


async def _set_status(
    conn: asyncpg.Connection, store: BalanceStore, account_id: str, status: str, lock: str
) -> None:
    """An account's status in PostgreSQL and Redis, inside the caller's transaction.

    As ``AccountService.update_policy`` writes a status (and ``sessions`` a lock):
    the row, then the Redis fields last, so a Redis refusal rolls the row back.
    """
    await conn.execute("UPDATE accounts SET status = $2 WHERE id = $1", account_id, status)
    if not await store.set_policy(account_id, {"status": status, "lock": lock}):
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} is not in Redis", field="account"
        )


async def _take_notice(
    pool: asyncpg.Pool, invoice: OpenInvoice, step: Step, now: datetime
) -> StepTaken | None:
    """Record a notice and its ``dunning.step`` event in one transaction, once."""
    async with pool.acquire() as conn, conn.transaction():
        if not await dunning_store.still_unpaid(conn, invoice.id):
            return None  # paid while the run was looking
        if (
            await dunning_store.record_step(
                conn, invoice, "notice", step.notice, step.due_at, now, "sent"
            )
            is None
        ):
            return None
        following = next_step(replace(invoice, notices=(*invoice.notices, now)))
        await emit(
            conn,
            "dunning.step",
            invoice.account_id,
            {
                "account_id": invoice.account_id,
                "step": "notice",
                "notice": step.notice,
                "of": invoice.settings.max_notices,
                "at": now.isoformat(),
                **_money(invoice),
                "next_step": None if following is None else following.step,
                "next_step_at": None if following is None else following.due_at.isoformat(),
            },
        )
    return StepTaken(invoice.id, invoice.account_id, "notice", step.notice, "sent")


async def _suspend(
    pool: asyncpg.Pool, store: BalanceStore, invoice: OpenInvoice, step: Step, now: datetime
) -> StepTaken | None:
    """Take an invoice's suspension step once: suspend the account (both stores) and its
    active subscriptions, unless it is suspended already."""
    account_id = invoice.account_id
    async with pool.acquire() as conn, conn.transaction():
        if not await dunning_store.still_unpaid(conn, invoice.id):
            return None
        status = await conn.fetchval(
            "SELECT status FROM accounts WHERE id = $1 FOR UPDATE", account_id
        )
        outcome = "already_suspended" if status == "suspended" else "suspended"
        if (
            await dunning_store.record_step(
                conn, invoice, "suspension", 0, step.due_at, now, outcome
            )
            is None
        ):
            return None
        if outcome == "already_suspended":
            # An operator's suspension, or dunning's for another invoice: it stays as is.
            return StepTaken(invoice.id, account_id, "suspension", 0, outcome)
        state = await store.get_account(account_id)
        lock = state.lock if state is not None else ""
        subscriptions = [
            int(r["id"])
            for r in await conn.fetch(
                "UPDATE subscriptions SET status = 'suspended'"
                " WHERE account_id = $1 AND status = 'active' RETURNING id",
                account_id,
            )
        ]
        await conn.execute(
            "INSERT INTO dunning_suspensions (account_id, invoice_id, previous_status,"
            " previous_lock, subscription_ids, suspended_at, round)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            account_id,
            invoice.id,
            status,
            lock,
            subscriptions,
            now,
            invoice.round,
        )
        await emit(
            conn,
            "dunning.step",
            account_id,
            {
                "account_id": account_id,
                "step": "suspension",
                "at": now.isoformat(),
                **_money(invoice),
                "next_step": None,
                "next_step_at": None,
            },
        )
        for subscription_id in subscriptions:
            await emit(
                conn,
                "subscription.suspended",
                account_id,
                {
                    "subscription_id": subscription_id,
                    "account_id": account_id,
                    "from": "active",
                    "status": "suspended",
                    "reason": "dunning",
                    "invoice_id": invoice.id,
                    "at": now.isoformat(),
                },
            )
        await _set_status(conn, store, account_id, "suspended", "")
    log.info(
        "account suspended by dunning",
        extra={"account_id": account_id, "invoice_id": invoice.id},
    )
    return StepTaken(invoice.id, account_id, "suspension", 0, outcome)


async def _end_live_calls(
    store: BalanceStore,
    settings: Settings,
    account_id: str,
    cutter: CallCutter | None,
    report: DunningReport,
) -> None:
    """Cut a suspended account's live calls when ``dunning_live_calls`` says so."""
    if settings.dunning_live_calls != "disconnect":
        return  # "finish": live calls run to their end; only new ones are refused
    for call_id in sorted(await store.live_calls_of(account_id)):
        if cutter is None:
            report.calls_left.append(call_id)
            log.warning(
                "live call of a suspended account left to finish: no call cutter here",
                extra={"account_id": account_id, "call_id": call_id},
            )
            continue
        try:
            outcome = await cutter(account_id, call_id)
        except OcsError as error:
            if error.reason is Reason.CALL_NOT_FOUND:
                continue  # it ended meanwhile
            raise
        report.calls_cut.append(call_id)
        log.info(
            "live call of a suspended account cut",
            extra={"account_id": account_id, "call_id": call_id, "disconnect": outcome},
        )


def _overdue(invoices: list[OpenInvoice], now: datetime) -> list[OpenInvoice]:
    return [i for i in invoices if overdue_from(i) <= now]


def restored_status(suspension: Suspension) -> tuple[str, str]:
    """The (status, Redis lock) a reactivation gives back: what the account had before
    dunning suspended it, so that only what dunning did is undone. An operator's lock
    (``locked``, no lock reason) stays locked: paying an invoice does not lift a lock
    put for fraud; an on-demand account's session lock comes back. A critical-balance
    lock does not (``active``): the payment's top-up lifts it, and the next charge below
    the critical balance puts it back."""
    if suspension.previous_status == "locked" and suspension.previous_lock != CRITICAL_LOCK:
        return "locked", suspension.previous_lock
    return "active", ""


def service_restored(status: str, lock: str) -> bool:
    """Whether a reactivation to (``status``, ``lock``) gives the customer the service
    back: active, or an on-demand account's session lock (its sessions open again, as
    before the suspension). Not an operator's lock that stays: its calls are still
    refused, and a "Service restored" email would tell the customer otherwise."""
    return status == "active" or (status == "locked" and lock == SESSION_LOCK)


async def _reactivate(
    conn: asyncpg.Connection,
    store: BalanceStore,
    suspension: Suspension,
    now: datetime,
    by: str,
) -> bool:
    """Undo a dunning suspension in the caller's transaction; False when an operator
    changed the account's status meanwhile (the suspension is closed, the status kept)."""
    account_id = suspension.account_id
    current = await conn.fetchval(
        "SELECT status FROM accounts WHERE id = $1 FOR UPDATE", account_id
    )
    if current != "suspended":
        await conn.execute(
            "UPDATE dunning_suspensions SET reactivated_at = $2, reactivated_by = 'operator'"
            " WHERE id = $1",
            suspension.id,
            now,
        )
        return False
    status, lock = restored_status(suspension)
    restored = service_restored(status, lock)
    resumed = [
        int(r["id"])
        for r in await conn.fetch(
            "UPDATE subscriptions SET status = 'active'"
            " WHERE id = ANY($1::bigint[]) AND status = 'suspended' RETURNING id",
            list(suspension.subscription_ids),
        )
    ]
    await conn.execute(
        "UPDATE dunning_suspensions SET reactivated_at = $2, reactivated_by = $3 WHERE id = $1",
        suspension.id,
        now,
        by,
    )
    await emit(
        conn,
        "dunning.step",
        account_id,
        {
            "account_id": account_id,
            "step": "reactivation",
            "by": by,
            "at": now.isoformat(),
            # What the account is back to: "locked" where an operator had locked it.
            "status": status,
            # False while an operator's lock stays: no "Service restored" email then.
            "service_restored": restored,
        },
    )
    for subscription_id in sorted(resumed):
        await emit(
            conn,
            "subscription.resumed",
            account_id,
            {
                "subscription_id": subscription_id,
                "account_id": account_id,
                "from": "suspended",
                "status": "active",
                "reason": "dunning",
                "at": now.isoformat(),
            },
        )
    await _set_status(conn, store, account_id, status, lock)
    log.info(
        "account reactivated by dunning",
        extra={"account_id": account_id, "by": by, "status": status, "service_restored": restored},
    )
    return True


async def _reactivate_settled(
    pool: asyncpg.Pool, store: BalanceStore, account_ids: list[str] | None, now: datetime, by: str
) -> list[str]:
    """Reactivate the accounts (these, or all) dunning suspended that owe nothing overdue."""
    async with pool.acquire() as conn:
        candidates = [s.account_id for s in await dunning_store.open_suspensions(conn, account_ids)]
    reactivated = []
    for account_id in candidates:
        async with pool.acquire() as conn, conn.transaction():
            suspension = await dunning_store.lock_open_suspension(conn, account_id)
            if suspension is None:
                continue  # another run or payment got there first
            owed = await dunning_store.open_invoices_of(conn, [account_id])
            if _overdue(owed, now):
                continue
            if await _reactivate(conn, store, suspension, now, by):
                reactivated.append(account_id)
    metrics.DUNNING_STEPS.labels("reactivation", "reactivated").inc(len(reactivated))
    return reactivated


# What settled the accounts ``reactivate_paid`` is given: a payment, or a void (the void
# invoice asks nothing any more). Recorded as the suspension's ``reactivated_by`` and
# the reactivation event's ``by`` (decision 0028, addendum 2026-12-07).
Settler = Literal["payment", "void"]


async def reactivate_paid(
    pool: asyncpg.Pool,
    store: BalanceStore,
    account_ids: list[str],
    now: datetime,
    *,
    by: Settler = "payment",
) -> list[str]:
    """After a payment (or a void, ``by="void"``): reactivate those of ``account_ids``
    dunning suspended that now owe nothing overdue (status back in both stores,
    subscriptions resumed, ``subscription.resumed`` emitted); the accounts reactivated.

    An account an operator suspended is not touched; calling it twice does nothing
    the second time.
    """
    _require_aware(now)
    if not account_ids:
        return []
    return await _reactivate_settled(pool, store, sorted(set(account_ids)), now, by)


async def run_dunning(
    pool: asyncpg.Pool,
    store: BalanceStore,
    settings: Settings,
    now: datetime,
    *,
    cutter: CallCutter | None = None,
    publish_backlog: bool = True,
) -> DunningReport:
    """One dunning run on the clock ``now``: reactivate the dunning-suspended accounts
    that owe nothing overdue, then take each unpaid invoice's due step (a notice, or
    the suspension), at most one per invoice. Idempotent for a given ``now``.

    At a suspension with ``dunning_live_calls = "disconnect"``, ``cutter`` cuts the
    account's live calls; without one they are left to finish (``calls_left``).

    ``publish_backlog``: keep ``ocs_dunning_backlog`` (the steps due and untaken) as
    the run goes. Only a process that runs dunning again and again (the billing worker)
    may: a run that fails leaves the gauge above 0 until the next run sets it again,
    which is what OcsDunningBacklog watches. A one-off run (the HTTP API in ``ocs
    serve``, the CLI) tells its caller how it went and leaves the gauge alone: no next
    run would ever clear what it left.

    A ``now`` in the future is refused (``check_run_clock``): a replay runs on past clocks.
    """
    _require_aware(now)
    check_run_clock(now)
    backlog_gauge = metrics.DUNNING_BACKLOG if publish_backlog else None
    report = DunningReport(at=now)
    report.reactivated = await _reactivate_settled(pool, store, None, now, "run")
    # Time zones run from UTC-12 to UTC+14: a due date up to a day past today's (UTC)
    # may already be over somewhere; the exact instant is checked per invoice.
    not_after = now.astimezone(ZoneInfo("UTC")).date() + timedelta(days=1)
    async with pool.acquire() as conn:
        invoices = await dunning_store.dunned_invoices(conn, not_after)
    # Steps due and not yet taken: what is left of it if this run fails half-way.
    backlog = sum(1 for i in invoices if _due(next_step(i), now))
    if backlog_gauge is not None:
        backlog_gauge.set(backlog)
    for invoice in invoices:
        step = next_step(invoice)
        if step is None or step.due_at > now:
            continue
        if step.step == "notice":
            taken = await _take_notice(pool, invoice, step, now)
        else:
            taken = await _suspend(pool, store, invoice, step, now)
        backlog -= 1
        if backlog_gauge is not None:
            backlog_gauge.set(backlog)
        if taken is None:
            continue
        metrics.DUNNING_STEPS.labels(taken.step, taken.outcome).inc()
        report.steps.append(taken)
        if taken.outcome == "suspended":
            report.suspended.append(invoice.account_id)
            await _end_live_calls(store, settings, invoice.account_id, cutter, report)
    metrics.DUNNING_LAST_RUN.set_to_current_time()
    return report


def _due(step: Step | None, now: datetime) -> bool:
    return step is not None and step.due_at <= now


@dataclass(frozen=True, slots=True)
class InvoiceDunning:
    """An unpaid invoice of an account, as dunning sees it."""

    invoice: OpenInvoice
    due_date: date
    overdue: bool
    next_step: Step | None


@dataclass(frozen=True, slots=True)
class DunningState:
    """An account's dunning: its unpaid invoices, the steps taken, what comes next."""

    account_id: str
    status: str
    suspended: bool
    suspended_by_dunning: bool
    suspended_at: datetime | None
    invoices: list[InvoiceDunning]
    steps: list[dict[str, Any]]
    next_step: Step | None
    next_step_invoice: int | None


async def account_state(pool: asyncpg.Pool, account_id: str, now: datetime) -> DunningState:
    """An account's dunning state at ``now``; 404 for an unknown account."""
    _require_aware(now)
    async with pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account_id)
        if status is None:
            raise account_not_found(account_id)
        owed = await dunning_store.open_invoices_of(conn, [account_id])
        steps = await dunning_store.steps_of(conn, account_id)
        open_ones = await dunning_store.open_suspensions(conn, [account_id])
    invoices = [InvoiceDunning(i, due_date(i), overdue_from(i) <= now, next_step(i)) for i in owed]
    upcoming = [(i.next_step, i.invoice.id) for i in invoices if i.next_step is not None]
    first = min(upcoming, key=lambda pair: pair[0].due_at, default=None)
    return DunningState(
        account_id=account_id,
        status=status,
        suspended=status == "suspended",
        suspended_by_dunning=bool(open_ones) and status == "suspended",
        suspended_at=open_ones[0].suspended_at if open_ones else None,
        invoices=invoices,
        steps=steps,
        next_step=None if first is None else first[0],
        next_step_invoice=None if first is None else first[1],
    )
