"""On-demand billing (call shops, hotels): calls only while a session is open; closing it
produces that session's invoice.

The real-time refusal is the account lock that already exists: while no
session is open the account is ``locked`` with the lock reason ``session``
(the Redis field ``lock``, as a critical-balance lock is ``critical``), so
``authorize.lua`` refuses its calls. ``open_session`` lifts that lock;
``close_session`` puts it back, then drafts the invoice of [opened, closed)
with the same code as an invoice run (``drafts.write``): usage of the CDRs
stopped in the session, one-time charges dated in it. The draft is
recomputed by ``session_invoice`` (CDRs reach PostgreSQL through the ledger
writer a moment after the call) and posted like any draft. A close whose draft
failed (the close is committed first) is drafted by the billing worker a
minute later (``uninvoiced_sessions``, ``invoice_left``), once.

A session lifts only its own lock: an account suspended (by an operator or by
dunning) or locked by an operator is refused a session (409 ``account_state``),
and closing a session leaves such a status as it is.

An account starts with the session lock when it is created on a plan billed on demand
(``accounts.starting_state``); ``follow_cycle`` gives it to a plan's accounts when the
plan's cycle becomes ``on_demand``, and takes it off when the cycle becomes another.
The cycle does not leave ``on_demand`` while a session of the plan is open (409
``account_state``): the session could no longer close, and its calls would be on no
invoice or, closed by the change, on its invoice and the new cycle's both.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg

from ocs.balances.accounts import SESSION_LOCK
from ocs.balances.store import BalanceStore
from ocs.billing import drafts, dunning_store
from ocs.billing.cycles import PlanBilling
from ocs.billing.periods import Period
from ocs.errors import OcsError, Reason, invalid

log = logging.getLogger("ocs.billing.sessions")

# Accounts whose Redis state is read or written at once when a plan's cycle changes.
_REDIS_CHUNK = 1_000
# Whether an account (a) has no session open.
_NO_OPEN_SESSION = (
    "NOT EXISTS (SELECT 1 FROM billing_sessions s WHERE s.account_id = a.id"
    " AND s.closed_at IS NULL)"
)

# A closed session still without an invoice this long after its close was left so by a
# failed draft (``close_session`` drafts it just after committing the close): the billing
# worker drafts it. The grace keeps the worker from drafting beside a close in progress.
UNINVOICED_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Session:
    """One on-demand session of an account: [opened, closed), and its invoice once closed."""

    id: int
    account_id: str
    opened_at: datetime
    closed_at: datetime | None
    invoice_id: int | None


async def _on_demand_billing(conn: asyncpg.Connection, account_id: str) -> PlanBilling:
    """The account's plan billing settings; refused unless the plan is billed on demand."""
    row = await conn.fetchrow(
        # Shared on the billing row until the caller commits: a change of the plan's cycle
        # waits for a session opening, and counts it (``follow_cycle``), or is waited for.
        "SELECT b.* FROM accounts a JOIN plan_billing b ON b.plan_id = a.plan_id"
        " WHERE a.id = $1 FOR SHARE OF b",
        account_id,
    )
    if row is None:
        raise OcsError(
            Reason.NOT_FOUND, f"account {account_id!r} has no plan with billing settings"
        )
    billing = PlanBilling.from_row(row)
    if billing.cycle != "on_demand":
        raise invalid("account_id", f"plan {billing.plan_id} is not billed on demand")
    return billing


async def _held_status(conn: asyncpg.Connection, store: BalanceStore, account_id: str) -> str:
    """Under the account row's lock: "suspended", "locked" (an operator's lock, no
    lock reason), or "" when the status is the session's to set (active, or locked with
    the session or critical-balance reason)."""
    status = await conn.fetchval("SELECT status FROM accounts WHERE id = $1 FOR UPDATE", account_id)
    if status is None:
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist")
    if status == "suspended":
        return "suspended"
    if status == "locked":
        state = await store.get_account(account_id)
        if state is not None and state.lock == "":
            return "locked"
    return ""


async def _set_lock(
    conn: asyncpg.Connection, store: BalanceStore, account_id: str, locked: bool
) -> None:
    """Lock (no session) or unlock (a session open) the account, in PostgreSQL and Redis."""
    status = "locked" if locked else "active"
    await conn.execute("UPDATE accounts SET status = $2 WHERE id = $1", account_id, status)
    fields: dict[str, str | int] = {"status": status, "lock": SESSION_LOCK if locked else ""}
    if not await store.set_policy(account_id, fields):
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist")


async def lock_without_session(pool: asyncpg.Pool, store: BalanceStore, account_id: str) -> None:
    """Lock one on-demand account that has no open session. Creation and a change of
    the plan's cycle do it themselves; this puts right one account left active."""
    async with pool.acquire() as conn, conn.transaction():
        await _on_demand_billing(conn, account_id)
        if await _held_status(conn, store, account_id):
            return  # suspended or locked by an operator: it stays so
        if await conn.fetchval(
            "SELECT 1 FROM billing_sessions WHERE account_id = $1 AND closed_at IS NULL",
            account_id,
        ):
            return
        await _set_lock(conn, store, account_id, locked=True)


async def _set_states(
    store: BalanceStore, account_ids: Sequence[str], fields: dict[str, str | int]
) -> int:
    """Write ``fields`` into the Redis state of each account; how many Redis lacked (the
    balance check of ``ocs reconcile`` reports those)."""
    missing = 0
    for start in range(0, len(account_ids), _REDIS_CHUNK):
        chunk = account_ids[start : start + _REDIS_CHUNK]
        found = await asyncio.gather(*(store.set_policy(a, fields) for a in chunk))
        missing += found.count(False)
    return missing


async def _session_locked(store: BalanceStore, account_ids: Sequence[str]) -> list[str]:
    """Of ``account_ids``, those whose Redis state holds the session lock."""
    held: list[str] = []
    for start in range(0, len(account_ids), _REDIS_CHUNK):
        chunk = account_ids[start : start + _REDIS_CHUNK]
        states = await asyncio.gather(*(store.get_account(a) for a in chunk))
        held.extend(s.account_id for s in states if s is not None and s.lock == SESSION_LOCK)
    return held


async def _lock_plan(
    conn: asyncpg.Connection, store: BalanceStore, plan_id: str
) -> tuple[int, int]:
    """The plan is billed on demand: each of its active accounts with no session open is
    locked with the session lock, as closing a session leaves it; (how many locked, how
    many of them Redis lacks). A suspended or operator-locked account keeps its status:
    lifting it gives the session lock (``AccountService.update_policy``)."""
    rows = await conn.fetch(
        "UPDATE accounts a SET status = 'locked' WHERE a.plan_id = $1 AND a.status = 'active'"
        f" AND {_NO_OPEN_SESSION} RETURNING a.id",
        plan_id,
    )
    locked = [r["id"] for r in rows]
    return len(locked), await _set_states(store, locked, {"status": "locked", "lock": SESSION_LOCK})


async def _unlock_plan(
    conn: asyncpg.Connection, store: BalanceStore, plan_id: str
) -> tuple[int, int]:
    """The plan is no longer billed on demand: each of its accounts holding the session
    lock is active; (how many unlocked, how many of them Redis lacks). An operator's lock
    stays."""
    rows = await conn.fetch(
        "SELECT id FROM accounts WHERE plan_id = $1 AND status = 'locked' ORDER BY id FOR UPDATE",
        plan_id,
    )
    # PostgreSQL's "locked" is the session's or an operator's: the Redis lock tells which.
    waiting = await _session_locked(store, [r["id"] for r in rows])
    await conn.execute("UPDATE accounts SET status = 'active' WHERE id = ANY($1::text[])", waiting)
    return len(waiting), await _set_states(store, waiting, {"status": "active", "lock": ""})


# How many accounts an open-session refusal names.
_NAMED_ACCOUNTS = 5


async def _refuse_open_sessions(conn: asyncpg.Connection, plan_id: str) -> None:
    """Refuse (409 ``account_state``, naming ``cycle``) a cycle other than on_demand
    while accounts of the plan have a session open; the message says how many, and
    names the first few."""
    rows = await conn.fetch(
        "SELECT s.account_id FROM billing_sessions s JOIN accounts a ON a.id = s.account_id"
        " WHERE a.plan_id = $1 AND s.closed_at IS NULL ORDER BY s.account_id",
        plan_id,
    )
    if not rows:
        return
    named = ", ".join(r["account_id"] for r in rows[:_NAMED_ACCOUNTS])
    more = f" and {len(rows) - _NAMED_ACCOUNTS} more" if len(rows) > _NAMED_ACCOUNTS else ""
    raise OcsError(
        Reason.ACCOUNT_STATE,
        f"cycle: plan {plan_id} has {len(rows)} session{'s' if len(rows) > 1 else ''} open"
        f" ({named}{more}): its cycle stays on_demand until they are closed",
        field="cycle",
    )


async def follow_cycle(
    conn: asyncpg.Connection, store: BalanceStore, plan_id: str, on_demand: bool
) -> None:
    """In the transaction that sets the plan's billing cycle, holding the plan row
    (which account creation holds too): billed on demand, its accounts with no session
    open get the session lock; billed otherwise, its accounts lose it. Done whatever the
    cycle was before, so setting the cycle again puts right an account left otherwise.

    Leaving on_demand is refused (409 ``account_state``) while a session of the plan is
    open: closing it needs the on-demand cycle, and closing it here would invoice its
    calls once for the session and again in the new cycle's period holding them. The
    caller has written the cycle (holding the billing row), so a session opening
    meanwhile is either counted here or waits and finds the new cycle.

    No dunning suspension needs changing: one exists for an invoice, and a plan with
    invoices keeps its cycle (migration 0045)."""
    if not on_demand:
        await _refuse_open_sessions(conn, plan_id)
    moved, missing = await (_lock_plan if on_demand else _unlock_plan)(conn, store, plan_id)
    if moved:
        log.info(
            "session lock put on the plan's accounts with no session open"
            if on_demand
            else "session lock lifted from the plan's accounts",
            extra={"plan": plan_id, "accounts": moved},
        )
    if missing:
        log.warning(
            "accounts of the plan missing from Redis kept their state there",
            extra={"plan": plan_id, "accounts": missing},
        )


async def open_session(pool: asyncpg.Pool, store: BalanceStore, account_id: str) -> Session:
    """Open a session: the account may call from now. Refused when one is open already
    (400), and for an account suspended or locked by an operator (409 ``account_state``):
    a session lifts only the lock of an account with no session."""
    async with pool.acquire() as conn, conn.transaction():
        await _on_demand_billing(conn, account_id)
        held = await _held_status(conn, store, account_id)
        if held:
            raise OcsError(
                Reason.ACCOUNT_STATE,
                f"account {account_id!r} is {held}"
                + (" by an operator" if held == "locked" else "")
                + ": no session opens until its status is lifted",
                field="account_id",
            )
        try:
            row = await conn.fetchrow(
                "INSERT INTO billing_sessions (account_id) VALUES ($1) RETURNING *", account_id
            )
        except asyncpg.UniqueViolationError:
            raise invalid("account_id", f"{account_id} has a session open already") from None
        await _set_lock(conn, store, account_id, locked=False)
    return Session(row["id"], account_id, row["opened_at"], None, None)


async def session_invoice(
    pool: asyncpg.Pool, session_id: int, invoice_date: date | None = None
) -> int:
    """Draft (or recompute) a closed session's invoice; its id. A posted one stays."""
    invoice_id = await _draft_session(pool, session_id, invoice_date, only_missing=False)
    assert invoice_id is not None  # only_missing=False always drafts
    return invoice_id


async def _draft_session(
    pool: asyncpg.Pool, session_id: int, invoice_date: date | None, *, only_missing: bool
) -> int | None:
    """Draft (or recompute) a closed session's invoice under the session row's lock; its
    id. ``only_missing``: None, drafting nothing, when the session has an invoice."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM billing_sessions WHERE id = $1 FOR UPDATE", session_id
        )
        if row is None or row["closed_at"] is None:
            raise OcsError(Reason.NOT_FOUND, f"no closed session {session_id}")
        if only_missing and row["invoice_id"] is not None:
            return None  # invoiced meanwhile (the close itself, or another worker)
        billing = await _on_demand_billing(conn, row["account_id"])
        zone = ZoneInfo(billing.time_zone)
        period = Period(row["opened_at"].astimezone(zone), row["closed_at"].astimezone(zone))
        group = drafts.Group(billing, None, period, [row["account_id"]])
        day = invoice_date or period.local_day(row["closed_at"])
        await drafts.write(conn, group, drafts.Options(invoice_date=day))
        invoice_id = int(
            await conn.fetchval(
                "SELECT id FROM invoices WHERE account_id = $1 AND period_start = $2"
                " AND kind = 'invoice'",
                row["account_id"],
                row["opened_at"],
            )
        )
        await conn.execute(
            "UPDATE billing_sessions SET invoice_id = $2 WHERE id = $1", session_id, invoice_id
        )
    return invoice_id


async def close_session(
    pool: asyncpg.Pool, store: BalanceStore, account_id: str, invoice_date: date | None = None
) -> Session:
    """Close the account's open session: it is locked again and the session is invoiced.

    An account suspended or locked by an operator while the session was open keeps
    that status; if dunning suspended it, its reactivation gives back the session lock.
    The close commits before the draft: if drafting fails, the call raises and the
    billing worker drafts the invoice later (dated the local day of the close).
    """
    async with pool.acquire() as conn, conn.transaction():
        await _on_demand_billing(conn, account_id)
        held = await _held_status(conn, store, account_id)
        row = await conn.fetchrow(
            "UPDATE billing_sessions SET closed_at = clock_timestamp()"
            " WHERE account_id = $1 AND closed_at IS NULL RETURNING *",
            account_id,
        )
        if row is None:
            raise invalid("account_id", f"{account_id} has no open session")
        if held == "suspended":
            # Dunning recorded "active" when it suspended the account mid-session.
            await dunning_store.restore_to_lock(conn, account_id, SESSION_LOCK)
        elif not held:
            await _set_lock(conn, store, account_id, locked=True)
    invoice_id = await session_invoice(pool, row["id"], invoice_date)
    return Session(row["id"], account_id, row["opened_at"], row["closed_at"], invoice_id)


@dataclass(frozen=True, slots=True)
class Uninvoiced:
    """A closed session without an invoice: its failed drafts so far, and whether the
    billing worker gave it up (kept with the session, so a restart goes on counting)."""

    id: int
    failures: int
    given_up: bool


async def uninvoiced_sessions(pool: asyncpg.Pool, closed_before: datetime) -> list[Uninvoiced]:
    """The closed sessions with no invoice that were closed before ``closed_before``,
    oldest first: their close committed but drafting their invoice failed (the billing
    worker drafts them with ``invoice_left``, those it has not given up)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, draft_failures, given_up_at IS NOT NULL AS given_up"
            " FROM billing_sessions WHERE closed_at IS NOT NULL"
            " AND invoice_id IS NULL AND closed_at < $1 ORDER BY id",
            closed_before,
        )
    return [Uninvoiced(int(r["id"]), r["draft_failures"], r["given_up"]) for r in rows]


async def draft_failed(pool: asyncpg.Pool, session_id: int, *, tries: int, refused: bool) -> int:
    """Count a failed draft of the session's missing invoice, in its row; the failures
    now. The session is given up at a refusal (``refused``) or at the ``tries``-th
    failure: the billing worker tries it no more, restarted or not, until
    ``retry_given_up``."""
    async with pool.acquire() as conn:
        failures = await conn.fetchval(
            "UPDATE billing_sessions SET draft_failures = draft_failures + 1,"
            # A give-up stands: a racing worker's later failure below the limit keeps it.
            " given_up_at = CASE WHEN given_up_at IS NOT NULL THEN given_up_at"
            " WHEN $2 OR draft_failures + 1 >= $3 THEN clock_timestamp() END"
            " WHERE id = $1 RETURNING draft_failures",
            session_id,
            refused,
            tries,
        )
    return int(failures or 0)


async def retry_given_up(pool: asyncpg.Pool) -> list[int]:
    """Let the billing worker try again the sessions it gave up that still have no
    invoice (their account or plan fixed), from a count of 0; their ids, oldest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "UPDATE billing_sessions SET draft_failures = 0, given_up_at = NULL"
            " WHERE given_up_at IS NOT NULL AND invoice_id IS NULL RETURNING id"
        )
    found = sorted(int(r["id"]) for r in rows)
    if found:
        log.info("given up session invoices to be tried again", extra={"sessions": found})
    return found


async def invoice_left(pool: asyncpg.Pool, session_id: int) -> int | None:
    """Draft a closed session's missing invoice, dated the local day of its close; its
    id, or None when the session has one by now."""
    return await _draft_session(pool, session_id, None, only_missing=True)
