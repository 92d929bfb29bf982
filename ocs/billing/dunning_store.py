"""Dunning as PostgreSQL stores it: plans' settings, the open invoices dunning looks at,
the steps taken and the suspensions it made (migration 0036, decision 0028).

No decision is made here: ``ocs.billing.dunning`` decides which step is due;
this module reads and writes the rows.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from ocs.billing.owed import asks_sql
from ocs.errors import OcsError, Reason, invalid

MAX_NOTICES = 52
MAX_INTERVAL_DAYS = 366
MAX_GRACE_DAYS = 366

# What a posted invoice asks to be paid: the payments' own figure (the part of its amount
# due its own charges make, in whole minor units, stored at posting), so that dunning and
# payments agree on "paid in full".
ASKED_SQL = f"({asks_sql('i')})"

# A posted, non-void invoice (not a credit note) that still asks for money.
_UNPAID = f"i.kind = 'invoice' AND i.state = 'posted' AND i.amount_paid < {ASKED_SQL}"


@dataclass(frozen=True, slots=True)
class DunningSettings:
    """A plan's dunning: grace days after the invoice date, then up to ``max_notices``
    notices ``notice_interval_days`` apart, then suspension. ``enabled`` False: the
    plan does no dunning (its two numbers are None then)."""

    plan_id: str
    grace_days: int
    max_notices: int | None
    notice_interval_days: int | None
    time_zone: str = "UTC"

    @property
    def enabled(self) -> bool:
        """Whether the plan's accounts are dunned."""
        return self.max_notices is not None and self.notice_interval_days is not None


def validate_settings(max_notices: int, notice_interval_days: int, grace_days: int | None) -> None:
    """Refuse (400, naming the field) values the database would refuse."""
    if not 0 <= max_notices <= MAX_NOTICES:
        raise invalid("max_notices", f"expected 0 to {MAX_NOTICES}")
    if not 1 <= notice_interval_days <= MAX_INTERVAL_DAYS:
        raise invalid("notice_interval_days", f"expected 1 to {MAX_INTERVAL_DAYS}")
    if grace_days is not None and not 0 <= grace_days <= MAX_GRACE_DAYS:
        raise invalid("grace_days", f"expected 0 to {MAX_GRACE_DAYS}")


def _settings_of(row: Any) -> DunningSettings:
    return DunningSettings(
        plan_id=row["plan_id"],
        grace_days=row["grace_days"],
        max_notices=row["max_notices"],
        notice_interval_days=row["notice_interval_days"],
        time_zone=row["time_zone"],
    )


async def plan_settings(pool: asyncpg.Pool, plan_id: str) -> DunningSettings:
    """A plan's dunning settings; 404 for a plan without billing settings."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT plan_id, grace_days, max_notices, notice_interval_days, time_zone"
            " FROM plan_billing WHERE plan_id = $1",
            plan_id,
        )
    if row is None:
        raise OcsError(
            Reason.NOT_FOUND, f"plan {plan_id!r} has no billing settings", field="plan_id"
        )
    return _settings_of(row)


async def set_plan_settings(
    pool: asyncpg.Pool,
    plan_id: str,
    max_notices: int | None,
    notice_interval_days: int | None,
    grace_days: int | None = None,
) -> DunningSettings:
    """Set (both numbers given) or turn off (both None) a plan's dunning; ``grace_days``
    None keeps the plan's grace period. 404 for a plan without billing settings."""
    if (max_notices is None) != (notice_interval_days is None):
        raise invalid("notice_interval_days", "max_notices and notice_interval_days go together")
    if max_notices is not None and notice_interval_days is not None:
        validate_settings(max_notices, notice_interval_days, grace_days)
    elif grace_days is not None and not 0 <= grace_days <= MAX_GRACE_DAYS:
        raise invalid("grace_days", f"expected 0 to {MAX_GRACE_DAYS}")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "UPDATE plan_billing SET max_notices = $2, notice_interval_days = $3,"
            " grace_days = COALESCE($4, grace_days) WHERE plan_id = $1"
            " RETURNING plan_id, grace_days, max_notices, notice_interval_days, time_zone",
            plan_id,
            max_notices,
            notice_interval_days,
            grace_days,
        )
    if row is None:
        raise OcsError(
            Reason.NOT_FOUND, f"plan {plan_id!r} has no billing settings", field="plan_id"
        )
    return _settings_of(row)


@dataclass(frozen=True, slots=True)
class OpenInvoice:
    """A posted invoice not paid in full, with its plan's dunning and the steps taken."""

    id: int
    number: str | None
    account_id: str
    currency: str
    invoice_date: date
    asked: int
    paid: int
    settings: DunningSettings
    notices: tuple[datetime, ...]  # when notices 1..n were taken, in order
    suspended: bool  # its suspension step was taken
    # Which round of dunning: one more each time the invoice is reopened after it was
    # paid in full (a refund or chargeback), dunned again from its first notice.
    round: int = 0
    # The day it was posted, in the plan's time zone (None: posted before posting was
    # timed). A back-filled or late-posted invoice is dated days before: its grace
    # counts from this day, never from before the customer could have seen it.
    posted_on: date | None = None

    @property
    def outstanding(self) -> int:
        """What is still to pay, micro-units."""
        return self.asked - self.paid


_OPEN_SQL = f"""
SELECT i.id, i.number, i.account_id, i.currency, i.invoice_date, {ASKED_SQL} AS asked,
       i.amount_paid, pb.plan_id AS billing_plan, COALESCE(pb.grace_days, 0) AS grace_days,
       pb.max_notices, pb.notice_interval_days, COALESCE(pb.time_zone, 'UTC') AS time_zone,
       COALESCE((SELECT array_agg(s.taken_at ORDER BY s.notice) FROM dunning_steps s
                 WHERE s.invoice_id = i.id AND s.round = i.dunning_round
                   AND s.step = 'notice'), '{{}}') AS notices,
       EXISTS (SELECT 1 FROM dunning_steps s
               WHERE s.invoice_id = i.id AND s.round = i.dunning_round
                 AND s.step = 'suspension') AS suspended,
       i.dunning_round, (i.posted_at AT TIME ZONE COALESCE(pb.time_zone, 'UTC'))::date
       AS posted_on
FROM invoices i LEFT JOIN plan_billing pb ON pb.plan_id = i.plan_id
WHERE {_UNPAID}
"""


def _open_of(row: Any) -> OpenInvoice:
    return OpenInvoice(
        id=row["id"],
        number=row["number"],
        account_id=row["account_id"],
        currency=row["currency"],
        invoice_date=row["invoice_date"],
        asked=row["asked"],
        paid=row["amount_paid"],
        settings=DunningSettings(
            plan_id=row["billing_plan"] or "",
            grace_days=row["grace_days"],
            max_notices=row["max_notices"],
            notice_interval_days=row["notice_interval_days"],
            time_zone=row["time_zone"],
        ),
        notices=tuple(row["notices"]),
        suspended=row["suspended"],
        round=row["dunning_round"],
        posted_on=row["posted_on"],
    )


async def dunned_invoices(conn: asyncpg.Connection, not_after: date) -> list[OpenInvoice]:
    """Unpaid invoices of plans that dun whose due date (the later of the invoice date
    and the posting day, + grace) is on or before ``not_after``, oldest first; a step is
    due on none of the others."""
    rows = await conn.fetch(
        _OPEN_SQL + " AND pb.max_notices IS NOT NULL AND GREATEST(i.invoice_date,"
        " (i.posted_at AT TIME ZONE COALESCE(pb.time_zone, 'UTC'))::date) + pb.grace_days <= $1"
        " ORDER BY i.invoice_date, i.id",
        not_after,
    )
    return [_open_of(r) for r in rows]


async def open_invoices_of(conn: asyncpg.Connection, account_ids: list[str]) -> list[OpenInvoice]:
    """Every unpaid invoice of these accounts (whether their plan duns or not), oldest first."""
    rows = await conn.fetch(
        _OPEN_SQL + " AND i.account_id = ANY($1::text[]) ORDER BY i.invoice_date, i.id",
        account_ids,
    )
    return [_open_of(r) for r in rows]


async def still_unpaid(conn: asyncpg.Connection, invoice_id: int) -> bool:
    """Lock the invoice row (a payment waits for the step, or the step for it) and say
    whether it still asks for money."""
    return bool(
        await conn.fetchval(
            f"SELECT {_UNPAID} FROM invoices i WHERE i.id = $1 FOR UPDATE", invoice_id
        )
    )


async def record_step(
    conn: asyncpg.Connection,
    invoice: OpenInvoice,
    step: str,
    notice: int,
    due_at: datetime,
    taken_at: datetime,
    outcome: str,
) -> int | None:
    """Record a step taken; None when it was taken already (by another run)."""
    found = await conn.fetchval(
        "INSERT INTO dunning_steps (invoice_id, account_id, step, notice, due_at, taken_at,"
        " outcome, round) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (invoice_id, round, step, notice) DO NOTHING RETURNING id",
        invoice.id,
        invoice.account_id,
        step,
        notice,
        due_at,
        taken_at,
        outcome,
        invoice.round,
    )
    return None if found is None else int(found)


@dataclass(frozen=True, slots=True)
class Suspension:
    """An open suspension dunning made: what to put back when the account has paid."""

    id: int
    account_id: str
    invoice_id: int
    previous_status: str
    previous_lock: str
    subscription_ids: tuple[int, ...]
    suspended_at: datetime


def _suspension_of(row: Any) -> Suspension:
    return Suspension(
        id=row["id"],
        account_id=row["account_id"],
        invoice_id=row["invoice_id"],
        previous_status=row["previous_status"],
        previous_lock=row["previous_lock"],
        subscription_ids=tuple(row["subscription_ids"]),
        suspended_at=row["suspended_at"],
    )


async def open_suspensions(
    conn: asyncpg.Connection, account_ids: list[str] | None = None
) -> list[Suspension]:
    """Open suspensions dunning made (of these accounts, or all), by account."""
    rows = await conn.fetch(
        "SELECT * FROM dunning_suspensions WHERE reactivated_at IS NULL"
        " AND ($1::text[] IS NULL OR account_id = ANY($1::text[])) ORDER BY account_id",
        account_ids,
    )
    return [_suspension_of(r) for r in rows]


async def lock_open_suspension(conn: asyncpg.Connection, account_id: str) -> Suspension | None:
    """The account's open suspension, its row locked for the reactivation; None if none."""
    row = await conn.fetchrow(
        "SELECT * FROM dunning_suspensions WHERE account_id = $1 AND reactivated_at IS NULL"
        " FOR UPDATE",
        account_id,
    )
    return None if row is None else _suspension_of(row)


async def restore_to_lock(conn: asyncpg.Connection, account_id: str, lock: str) -> bool:
    """Make the account's open suspension give back ``locked`` with ``lock`` when it is
    lifted (an on-demand session closed while it was suspended: paying must not reopen
    calls that no session covers); whether it had one to change. Only one that recorded
    the session's "active": one that recorded an operator's lock gives that back."""
    found = await conn.fetchval(
        "UPDATE dunning_suspensions SET previous_status = 'locked', previous_lock = $2"
        " WHERE account_id = $1 AND reactivated_at IS NULL AND previous_status = 'active'"
        " RETURNING 1",
        account_id,
        lock,
    )
    return found is not None


async def steps_of(conn: asyncpg.Connection, account_id: str) -> list[dict[str, Any]]:
    """Every step taken for the account's invoices, in the order taken."""
    rows = await conn.fetch(
        "SELECT s.invoice_id, i.number, s.step, s.notice, s.due_at, s.taken_at, s.outcome"
        " FROM dunning_steps s JOIN invoices i ON i.id = s.invoice_id"
        " WHERE s.account_id = $1 ORDER BY s.taken_at, s.id",
        account_id,
    )
    return [dict(r) for r in rows]
