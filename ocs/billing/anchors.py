"""Where a subscription-date account's invoice periods are counted from: its anchor.

Before the account's first invoice, the anchor is the first start date of its
subscriptions to its plan, or the day the account was created when it has none.
Once it has an invoice of the plan that is not void, the anchor is the one that
invoice's period was computed from (``invoices.cycle_anchor``, migration 0058),
fixed for good (decision 0019, addendum 2026-12-07): a subscription dated earlier,
or a first subscription arriving after the account was invoiced, no longer moves
the periods, which would overlap the invoiced ones (a call billed twice) or leave
a gap. An invoice made before migration 0058 with no run chunk to say its anchor
has none: its period's end is taken as the anchor, so the next period follows it
without a gap or an overlap. A void invoice fixes nothing: while every invoice of
the account is void, the anchor follows the subscriptions again.
"""

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg

# Of the accounts ($1), each one's latest invoice of its plan that is not void.
_LATEST_SQL = """
SELECT a.id AS account_id, f.cycle_anchor, f.period_end
FROM accounts a
JOIN LATERAL (
    SELECT i.cycle_anchor, i.period_end FROM invoices i
    WHERE i.account_id = a.id AND i.plan_id = a.plan_id AND i.kind = 'invoice'
      AND i.state <> 'void'
    ORDER BY i.period_start DESC LIMIT 1
) f ON true
WHERE a.id = ANY($1::text[])
"""


@dataclass(frozen=True, slots=True)
class Invoiced:
    """An account's latest invoice of its plan (not void): the anchor its period was
    computed from (None: made before migration 0058), and its period's end."""

    cycle_anchor: date | None
    period_end: datetime


async def latest_invoices(conn: asyncpg.Connection, account_ids: list[str]) -> dict[str, Invoiced]:
    """Account -> its latest invoice of its plan that is not void, for those with one."""
    if not account_ids:
        return {}
    return {
        r["account_id"]: Invoiced(r["cycle_anchor"], r["period_end"])
        for r in await conn.fetch(_LATEST_SQL, account_ids)
    }


def account_anchor(
    invoiced: Invoiced | None, first_start: date | None, created_at: datetime, zone: ZoneInfo
) -> date:
    """The anchor of a subscription-date account's periods: its invoices' when it has one
    (``invoiced``), else its first subscription's start (``first_start``), else the day
    it was created, in the plan's time zone."""
    if invoiced is not None:
        if invoiced.cycle_anchor is not None:
            return invoiced.cycle_anchor
        return invoiced.period_end.astimezone(zone).date()
    return first_start or created_at.astimezone(zone).date()
