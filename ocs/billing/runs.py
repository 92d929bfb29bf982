"""Invoice runs: a period of the plans' cycles, split into chunks that workers share.

``create_run`` stores the run and its chunks: the accounts of each plan with a
scheduled cycle, grouped by their invoice period (one period per plan; per
anchor for the subscription-date cycle, which an account's invoices fix:
``anchors``), ``chunk_size`` accounts a chunk.
``execute_run`` claims chunks one at a time (``SELECT ... FOR UPDATE SKIP
LOCKED`` on chunks that are not done and not leased, or whose lease ran out:
their worker died) and writes each chunk's drafts, marks it done and counts
its accounts in the run's progress in one transaction. Several workers may
execute one run at once, and two runs of one period may run at once: the
invoices' unique key and row locks keep every invoice and line single.

Decision (issue 12, to record): the chunk queue is these PostgreSQL rows with
SKIP LOCKED and a lease, not a job-queue library: one table, claimed in the
database the drafts are written to, so a chunk is done exactly when its
drafts are committed.
"""

import contextlib
import os
import re
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from ocs import metrics
from ocs.billing import drafts
from ocs.billing.anchors import account_anchor, latest_invoices
from ocs.billing.cycles import SCHEDULED, PlanBilling, schedule
from ocs.billing.periods import Period, check_period_name, local_midnight
from ocs.errors import OcsError, Reason, invalid

# Accounts a chunk drafts in one transaction: 1,000 rather than 500 halves the per-chunk
# queries and commits (55.0 against 58.4 s of CPU for 100,000 accounts; benchmarks/
# RESULTS.md), and still holds a chunk's lines (~8,000) and CDR totals in a few MB.
DEFAULT_CHUNK = 1000
DEFAULT_LEASE_S = 300.0


# Memory a chunk's queries may hash or sort in before spilling to disk (SET LOCAL, per chunk).
DRAFT_WORK_MEM = "64MB"


def worker_name() -> str:
    """This worker's name in chunk leases: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A run's state and its progress: accounts done of total."""

    run_id: int
    state: str
    accounts_done: int
    accounts_total: int
    chunks_done: int
    chunks_total: int


def today_where_billed(plans: list[PlanBilling]) -> date:
    """Today in the plans' time zone when they share one, else UTC's: the default date of
    a run's invoices, so that a plan far from UTC has none dated inside its period."""
    zones = {p.time_zone for p in plans}
    now = datetime.now(UTC)
    return now.astimezone(ZoneInfo(zones.pop())).date() if len(zones) == 1 else now.date()


# A run's accounts grouped by (plan, cycle anchor, period): the anchor is a
# subscription-date account's own (``anchors``), None for the other cycles.
Groups = dict[tuple[str, date | None, Period], list[str]]


async def _account_groups(
    conn: asyncpg.Connection, plans: list[PlanBilling], period: str, fixed: dict[str, Period]
) -> tuple[Groups, int]:
    """The plans' accounts grouped by their invoice period named ``period`` (``fixed``:
    plan -> its period, known already for a manual plan), and how many accounts."""
    groups: Groups = defaultdict(list)
    by_plan = {p.plan_id: p for p in plans}
    # Checked whatever the accounts: a name no plan could have was stored as a run
    # with nothing to bill ("garbage", a range ending before it starts), done at once.
    try:
        check_period_name(period)
    except ValueError as error:
        raise invalid("period", str(error)) from None
    rows = await conn.fetch(
        "SELECT a.id, a.plan_id, a.created_at,"
        " (SELECT min(start_date) FROM subscriptions s"
        "   WHERE s.account_id = a.id AND s.plan_id = a.plan_id) AS start"
        " FROM accounts a WHERE a.plan_id = ANY($1::text[]) ORDER BY a.id",
        list(by_plan),
    )
    # A subscription-date account's anchor is fixed by its invoices (``anchors``).
    invoiced = await latest_invoices(
        conn, [r["id"] for r in rows if by_plan[r["plan_id"]].cycle == "subscription_date"]
    )
    try:
        for row in rows:
            billing = by_plan[row["plan_id"]]
            if billing.cycle != "subscription_date":
                if billing.plan_id not in fixed:
                    fixed[billing.plan_id] = schedule(billing).period_named(period)
                groups[billing.plan_id, None, fixed[billing.plan_id]].append(row["id"])
                continue
            zone = schedule(billing).zone
            anchor = account_anchor(invoiced.get(row["id"]), row["start"], row["created_at"], zone)
            found = schedule(billing, anchor).period_named(period)
            groups[billing.plan_id, anchor, found].append(row["id"])
    except ValueError as error:
        raise invalid("period", str(error)) from None
    return groups, len(rows)


@dataclass(frozen=True, slots=True)
class Timing:
    """When a run is created and how long after a usage window's end it may bill it.

    ``delay``: ``billing_run_delay``, the seconds the ledger writer is given to write
    the window's last calls; ``early``: bill what is known so far of a window that
    has not ended (plus the delay): the window then ends at ``now``, the run's
    creation, and the calls stopped after it are the next invoice's (decision 0021,
    addendum 2026-12-07); ``now``: the run's creation (None: the clock's now).
    """

    delay: float = 0.0
    early: bool = False
    now: datetime | None = None


def usage_window_end(billing: PlanBilling, period: Period) -> datetime:
    """When the usage an invoice of ``period`` bills ends: its arrears period's end,
    which is the invoice period's start for a start-of-cycle plan (``lines.targets``)."""
    return period.start if billing.invoice_timing == "start_of_cycle" else period.end


def _first_instant(start: date | None, created_at: datetime, zone: ZoneInfo) -> datetime:
    """When an account joined its plan: its first subscription's start (local midnight),
    else its creation, as its anchor counts it (``anchors.account_anchor``)."""
    return created_at if start is None else local_midnight(start, zone)


async def _follow_up(
    conn: asyncpg.Connection, plans: list[PlanBilling], groups: Groups
) -> tuple[Groups, int]:
    """The groups of a follow-up run: less the accounts that have an invoice (any state)
    of their period, and less those that did not exist before their period's usage window
    ended (their first subscription to the plan, else their creation, at or after it);
    and how many accounts are left.

    A follow-up is made once the period has ended, maybe long after (a worker down): an
    account that joined the plan since had no usage or charge of the period, and got a
    posted invoice of 0 for it (a number used, an email sent)."""
    accounts = [a for members in groups.values() for a in members]
    invoiced = {
        (r["account_id"], r["period_start"])
        for r in await conn.fetch(
            "SELECT account_id, period_start FROM invoices"
            " WHERE kind = 'invoice' AND account_id = ANY($1::text[])"
            " AND period_start = ANY($2::timestamptz[])",
            accounts,
            list({found.start for _, _, found in groups}),
        )
    }
    first_days = {
        r["id"]: (r["start"], r["created_at"])
        for r in await conn.fetch(
            "SELECT a.id, a.created_at, (SELECT min(start_date) FROM subscriptions s"
            "   WHERE s.account_id = a.id AND s.plan_id = a.plan_id) AS start"
            " FROM accounts a WHERE a.id = ANY($1::text[])",
            accounts,
        )
    }
    by_plan = {p.plan_id: p for p in plans}
    left: Groups = {}
    for key, members in groups.items():
        billing = by_plan[key[0]]
        end = usage_window_end(billing, key[2])
        zone = schedule(billing).zone
        kept = [
            a
            for a in members
            if (a, key[2].start) not in invoiced and _first_instant(*first_days[a], zone) < end
        ]
        if kept:
            left[key] = kept
    return left, sum(len(members) for members in left.values())


def plan_window_end(billing: PlanBilling, period: str) -> datetime:
    """The latest end of the usage windows a run of ``period`` may bill on the plan,
    whether or not it has accounts (ValueError for a name none of its periods has).

    A scheduled plan's is its period's (``usage_window_end``). A subscription-date
    plan's periods depend on its accounts' anchors: a month names the periods starting
    in it, the latest of which ends when the month after next begins (its start, when
    the month ends, for a start-of-cycle plan): the worker's own rule
    (``worker._anniversary_months``); a label names one period by its days.
    """
    if billing.cycle != "subscription_date":
        return usage_window_end(billing, schedule(billing).period_named(period))
    zone = schedule(billing).zone
    if match := re.fullmatch(r"(\d{4})-(\d{2})", period):
        year, month = int(match[1]), int(match[2])
        months = year * 12 + month - 1 + (1 if billing.invoice_timing == "start_of_cycle" else 2)
        return local_midnight(date(months // 12, months % 12 + 1, 1), zone)
    first, _, end = period.partition("..")
    last = first if billing.invoice_timing == "start_of_cycle" else end
    return local_midnight(date.fromisoformat(last), zone)


def _window_ends(
    plans: list[PlanBilling],
    groups: Groups,
    fixed: dict[str, Period],
    period: str,
    plan_named: bool,
) -> list[datetime]:
    """Every usage window end a run of ``period`` must wait for: its groups', and each
    plan's own period whether or not it has accounts. A plan with no account was not
    checked, and a run of a month not yet ended was stored done and counted as taken,
    so an account joining later in it was never billed for it (decision 0021).

    A run of every plan (``plan_named`` False) skips a plan with no account whose cycle
    has no period of that name (a weekly plan's for a month): it has nothing to bill in
    that run, and refusing it refused the run of every other plan."""
    by_plan = {p.plan_id: p for p in plans}
    ends = [usage_window_end(by_plan[plan], found) for plan, _, found in groups]
    with_accounts = {plan for plan, anchor, _ in groups if anchor is not None}
    for billing in plans:
        if billing.plan_id in fixed:
            ends.append(usage_window_end(billing, fixed[billing.plan_id]))
        elif billing.plan_id not in with_accounts:
            # A subscription-date plan with accounts: their anchors' periods are
            # the run's; without, any period named so may yet come.
            try:
                ends.append(plan_window_end(billing, period))
            except ValueError as error:
                if plan_named:
                    raise invalid("period", str(error)) from None
    return ends


def _early_cutoff(
    period: str,
    ends: list[datetime],
    timing: Timing,
    usage_cutoff: datetime | None,
) -> tuple[datetime | None, bool]:
    """The run's usage cut-off once its windows' ``ends`` are checked against ``timing``,
    and whether the run is early (stored with it: ``invoice_runs.early``).

    A window that has not ended ``timing.delay`` seconds before now is refused
    naming ``period``, unless the run is early: its usage then stops at now (or at
    the operator's earlier cut-off), so a call stopped after the run's creation
    is on no window of this run, and the next invoice bills it (``late_usage``).
    A run of ended windows is not early, whatever its cut-off: an operator's cut-off
    is no reason to bill the period again (migration 0067).
    """
    now = (timing.now or datetime.now(UTC)).astimezone(UTC)
    if not ends:
        return usage_cutoff, False
    last = max(e.astimezone(UTC) for e in ends)
    if last + timedelta(seconds=timing.delay) <= now:
        return usage_cutoff, False
    if not timing.early:
        raise invalid(
            "period",
            f"{period!r} has not ended: its usage window ends {last.isoformat()}, billed"
            f" billing_run_delay ({timing.delay:g} s) later, from"
            f" {(last + timedelta(seconds=timing.delay)).isoformat()}; an early run"
            " (early / --early) bills what is known so far",
        )
    return (now if usage_cutoff is None else min(usage_cutoff.astimezone(UTC), now)), True


@contextlib.asynccontextmanager
async def _connection(
    pool: asyncpg.Pool, conn: asyncpg.Connection | None
) -> AsyncIterator[asyncpg.Connection]:
    """``conn`` when given, else a connection of the pool for the block."""
    if conn is not None:
        yield conn
        return
    async with pool.acquire() as acquired:
        yield acquired


async def create_run(
    pool: asyncpg.Pool,
    period: str,
    *,
    invoice_date: date | None = None,
    plan_id: str | None = None,
    charge_cutoff: datetime | None = None,
    usage_cutoff: datetime | None = None,
    calculate_taxes: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    auto_post: bool = False,
    timing: Timing | None = None,
    uninvoiced_only: bool = False,
    conn: asyncpg.Connection | None = None,
) -> int:
    """Store a run of ``period`` (``2026-12`` or a label) and its chunks; its id.

    On ``conn`` when given (the billing worker's, holding the period's advisory lock:
    it takes no second pool connection, which a pool of one would wait for forever),
    else on a connection of the pool.

    ``auto_post``: a billing worker posts the run's drafts once they are all
    written (the worker's own runs); otherwise posting is an operator's step.
    ``invoice_date`` left out: today where the run's plans bill (their time zone, when
    they share one; else UTC's today), not UTC's today for a plan far from UTC, which
    could date an invoice inside the period it bills.
    ``timing``: a period whose usage window has not ended ``timing.delay`` seconds ago
    is refused (400 naming ``period``) unless ``timing.early`` (``_early_cutoff``);
    None checks with no delay.
    ``uninvoiced_only``: only the accounts with no invoice of their period (any state)
    that existed before its usage window ended (``_follow_up``): the worker's follow-up
    of a period whose runs were all early, which bills the accounts that joined after
    them and leaves those they invoiced alone.
    """
    if chunk_size < 1:
        raise invalid("chunk_size", "must be at least 1")
    for name, instant in (("charge_cutoff", charge_cutoff), ("usage_cutoff", usage_cutoff)):
        if instant is not None and instant.tzinfo is None:
            raise invalid(name, "needs a time zone")
    async with _connection(pool, conn) as conn, conn.transaction():
        plans = [
            PlanBilling.from_row(r)
            for r in await conn.fetch(
                "SELECT * FROM plan_billing WHERE cycle = ANY($1::text[])"
                " AND ($2::text IS NULL OR plan_id = $2) ORDER BY plan_id",
                list(SCHEDULED),
                plan_id,
            )
        ]
        if plan_id is not None and not plans:
            manual = await conn.fetchrow(
                "SELECT * FROM plan_billing WHERE plan_id = $1 AND cycle = 'manual'", plan_id
            )
            if manual is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"plan {plan_id!r} has no scheduled or manual billing cycle",
                    field="plan",
                )
            billing = PlanBilling.from_row(manual)
            plans = [billing]
            fixed_periods = {plan_id: await manual_period(conn, billing, period)}
        else:
            fixed_periods = {}
        groups, accounts_total = await _account_groups(conn, plans, period, fixed_periods)
        ends = _window_ends(plans, groups, fixed_periods, period, plan_id is not None)
        usage_cutoff, early = _early_cutoff(period, ends, timing or Timing(), usage_cutoff)
        if uninvoiced_only:
            groups, accounts_total = await _follow_up(conn, plans, groups)
        if invoice_date is None:
            invoice_date = today_where_billed(plans)
        run_id = int(
            await conn.fetchval(
                "INSERT INTO invoice_runs (period, plan_id, invoice_date, charge_cutoff,"
                " usage_cutoff, calculate_taxes, accounts_total, auto_post, early)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                period,
                plan_id,
                invoice_date,
                charge_cutoff,
                usage_cutoff,
                calculate_taxes,
                accounts_total,
                auto_post,
                early,
            )
        )
        chunks: list[tuple[object, ...]] = []
        for (plan, cycle_anchor, found), accounts in sorted(
            groups.items(), key=lambda g: (g[0][0], g[0][1] or date.min, g[0][2].start)
        ):
            for at in range(0, len(accounts), chunk_size):
                chunks.append(
                    (
                        run_id,
                        len(chunks),
                        plan,
                        cycle_anchor,
                        found.start,
                        found.end,
                        accounts[at : at + chunk_size],
                    )
                )
        await conn.executemany(
            "INSERT INTO invoice_run_chunks (run_id, chunk, plan_id, cycle_anchor, period_start,"
            " period_end, account_ids) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            chunks,
        )
        if not chunks:
            await conn.execute(
                "UPDATE invoice_runs SET state = 'done', finished_at = now() WHERE id = $1", run_id
            )
    return run_id


def manual_period_named(billing: PlanBilling, name: str) -> Period:
    """The period an operator names for a manual plan, cut at the plan's local midnights.

    ``2026-12`` is that calendar month; ``2026-12-05..2027-01-05`` any days,
    the end excluded.
    """
    zone = ZoneInfo(billing.time_zone)
    if match := re.fullmatch(r"(\d{4})-(\d{2})", name):
        year, month = int(match[1]), int(match[2])
        if not 1 <= month <= 12:
            raise invalid("period", f"not a month: {name!r}")
        first, end = date(year, month, 1), date(year + month // 12, month % 12 + 1, 1)
    elif match := re.fullmatch(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})", name):
        try:
            first, end = date.fromisoformat(match[1]), date.fromisoformat(match[2])
        except ValueError:
            raise invalid("period", f"not a date in {name!r}") from None
    else:
        raise invalid("period", f"{name!r}: expected YYYY-MM or YYYY-MM-DD..YYYY-MM-DD")
    if end <= first:
        raise invalid("period", f"{name!r} ends before it starts")
    return Period(local_midnight(first, zone), local_midnight(end, zone))


async def manual_period(conn: asyncpg.Connection, billing: PlanBilling, name: str) -> Period:
    """A manual plan's named period, refused unless it is past and not invoiced yet.

    Past: it ended (at the plan's local midnight) before now. Not invoiced: no
    account of the plan has an invoice (not void) overlapping it, other than
    one of exactly this period (which a rerun recomputes, or leaves posted).
    """
    period = manual_period_named(billing, name)
    if period.end.astimezone(UTC) > datetime.now(UTC):
        raise invalid("period", f"{period.label} has not ended: a manual run bills a past period")
    clash = await conn.fetchrow(
        "SELECT i.account_id, i.period_label FROM invoices i JOIN accounts a"
        " ON a.id = i.account_id WHERE a.plan_id = $1 AND i.kind = 'invoice'"
        " AND i.state <> 'void' AND i.period_start < $3 AND i.period_end > $2"
        " AND (i.period_start, i.period_end) <> ($2, $3) ORDER BY i.period_start LIMIT 1",
        billing.plan_id,
        period.start,
        period.end,
    )
    if clash is not None:
        raise invalid(
            "period",
            f"{period.label} overlaps {clash['account_id']}'s invoice for {clash['period_label']}",
        )
    return period


async def claim_chunk(
    pool: asyncpg.Pool, run_id: int, worker: str, lease_s: float = DEFAULT_LEASE_S
) -> int | None:
    """Lease one chunk of the run not done and not leased (or whose lease ran out)."""
    async with pool.acquire() as conn:
        found = await conn.fetchval(
            "UPDATE invoice_run_chunks c SET lease_owner = $2,"
            " lease_until = clock_timestamp() + make_interval(secs => $3),"
            " attempts = c.attempts + 1"
            " WHERE (c.run_id, c.chunk) = ("
            "   SELECT run_id, chunk FROM invoice_run_chunks"
            "   WHERE run_id = $1 AND done_at IS NULL"
            "     AND (lease_until IS NULL OR lease_until <= clock_timestamp())"
            "   ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING c.chunk",
            run_id,
            worker,
            lease_s,
        )
    return None if found is None else int(found)


async def run_chunk(pool: asyncpg.Pool, run_id: int, chunk: int) -> drafts.Written:
    """Write one chunk's drafts, mark it done and count its accounts, in one transaction."""
    with metrics.BILLING_CHUNK_DURATION.time():
        return await _run_chunk(pool, run_id, chunk)


async def _run_chunk(pool: asyncpg.Pool, run_id: int, chunk: int) -> drafts.Written:
    async with pool.acquire() as conn, conn.transaction():
        # A chunk's CDR totals hash ~100,000 rows of 1,000 accounts: in memory, not in sorted
        # runs on disk (the server's default work_mem is 4 MB). Its commit need not wait
        # for the WAL flush: a chunk lost in a database crash is not marked done either,
        # and is drafted again whole (the drafts are recomputed, never patched).
        await conn.execute(f"SET LOCAL work_mem = '{DRAFT_WORK_MEM}'")
        await conn.execute("SET LOCAL synchronous_commit = off")
        row = await conn.fetchrow(
            "SELECT c.*, r.invoice_date, r.charge_cutoff, r.usage_cutoff, r.calculate_taxes"
            " FROM invoice_run_chunks c JOIN invoice_runs r ON r.id = c.run_id"
            " WHERE c.run_id = $1 AND c.chunk = $2",
            run_id,
            chunk,
        )
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"run {run_id} has no chunk {chunk}")
        billing = PlanBilling.from_row(
            await conn.fetchrow("SELECT * FROM plan_billing WHERE plan_id = $1", row["plan_id"])
        )
        zone = ZoneInfo(billing.time_zone)
        group = drafts.Group(
            billing,
            row["cycle_anchor"],
            Period(row["period_start"].astimezone(zone), row["period_end"].astimezone(zone)),
            list(row["account_ids"]),
        )
        options = drafts.Options(
            invoice_date=row["invoice_date"],
            charge_cutoff=row["charge_cutoff"],
            usage_cutoff=row["usage_cutoff"],
            calculate_taxes=row["calculate_taxes"],
            run_id=run_id,
        )
        written = await drafts.write(conn, group, options)
        # Done once: a worker whose lease ran out and finished anyway counts nothing twice.
        marked = await conn.fetchval(
            "UPDATE invoice_run_chunks SET done_at = now()"
            " WHERE run_id = $1 AND chunk = $2 AND done_at IS NULL"
            " RETURNING cardinality(account_ids)",
            run_id,
            chunk,
        )
        if marked is not None:
            await conn.execute(
                "UPDATE invoice_runs SET accounts_done = accounts_done + $2 WHERE id = $1",
                run_id,
                marked,
            )
    return written


async def progress(pool: asyncpg.Pool, run_id: int) -> RunProgress:
    """A run's state and progress, as stored."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT r.state, r.accounts_done, r.accounts_total,"
            " (SELECT count(*) FROM invoice_run_chunks WHERE run_id = r.id AND done_at IS NOT NULL)"
            "   AS chunks_done,"
            " (SELECT count(*) FROM invoice_run_chunks WHERE run_id = r.id) AS chunks_total"
            " FROM invoice_runs r WHERE r.id = $1",
            run_id,
        )
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no invoice run {run_id}")
    return RunProgress(
        run_id,
        row["state"],
        row["accounts_done"],
        row["accounts_total"],
        row["chunks_done"],
        row["chunks_total"],
    )


# The latest usage window end among a run's chunks not done: their arrears period's end
# (the invoice period's start for a start-of-cycle plan, ``usage_window_end``), cut at the
# run's usage cut-off (LEAST skips a NULL one).
_WINDOW_END_SQL = """
SELECT max(LEAST(CASE WHEN b.invoice_timing = 'start_of_cycle' THEN c.period_start
                      ELSE c.period_end END, r.usage_cutoff))
FROM invoice_run_chunks c JOIN invoice_runs r ON r.id = c.run_id
JOIN plan_billing b ON b.plan_id = c.plan_id
WHERE c.run_id = $1 AND c.done_at IS NULL
"""


async def held_for_ledger(
    pool: asyncpg.Pool, run_id: int, oldest_unwritten_ms: int | None
) -> datetime | None:
    """The end of the run's usage window while the ledger writer still holds an entry
    appended before it (``BalanceStore.oldest_unwritten_ms``): its CDR may be a call of
    the window, on no invoice if the run drafted now. None: drafting may go on.

    Every drafting path asks it (the worker, ``POST /v1/invoice-runs`` with
    ``execute``, ``ocs billing run`` and ``resume``), for the worker's runs and the
    operator's alike: an operator's run is drafted at once, before ``billing_run_delay``
    gave the writer any time.
    """
    if oldest_unwritten_ms is None:
        return None
    async with pool.acquire() as conn:
        end: datetime | None = await conn.fetchval(_WINDOW_END_SQL, run_id)
    if end is None or oldest_unwritten_ms > end.timestamp() * 1000:
        return None
    return end.astimezone(UTC)


async def execute_run(
    pool: asyncpg.Pool,
    run_id: int,
    *,
    worker: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    max_chunks: int | None = None,
) -> RunProgress:
    """Work on a run until no chunk is left to claim (or ``max_chunks`` are done).

    Returns with chunks still leased by other workers left to them; the run
    is ``done`` once every chunk is.
    """
    name = worker or worker_name()
    taken = 0
    while max_chunks is None or taken < max_chunks:
        chunk = await claim_chunk(pool, run_id, name, lease_s)
        if chunk is None:
            break
        await run_chunk(pool, run_id, chunk)
        taken += 1
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoice_runs SET state = 'done', finished_at = now()"
            " WHERE id = $1 AND state = 'running' AND NOT EXISTS ("
            "   SELECT 1 FROM invoice_run_chunks WHERE run_id = $1 AND done_at IS NULL)",
            run_id,
        )
    return await progress(pool, run_id)
