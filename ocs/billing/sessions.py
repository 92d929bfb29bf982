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
writer a moment after the call) and posted like any draft.

A session lifts only its own lock: an account suspended (by an operator or by
dunning) or locked by an operator is refused a session (409 ``account_state``),
and closing a session leaves such a status as it is.
"""

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
        "SELECT b.* FROM accounts a JOIN plan_billing b ON b.plan_id = a.plan_id WHERE a.id = $1",
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
    """Lock an on-demand account that has no open session (e.g. when it is created)."""
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
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM billing_sessions WHERE id = $1 FOR UPDATE", session_id
        )
        if row is None or row["closed_at"] is None:
            raise OcsError(Reason.NOT_FOUND, f"no closed session {session_id}")
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
