"""A plan's billing settings as ``plan_billing`` stores them, and the schedule they give.

Pure: no database. ``PlanBilling`` is one ``plan_billing`` row; ``schedule``
turns it into the ``periods.Schedule`` of its cycle (an account's own start
date for the subscription-date cycle); ``charge_schedule`` gives a recurring
charge's periods, anchored where the invoice cycle is anchored so that a
monthly charge on a monthly cycle has exactly the invoice's periods.
"""

import functools
from dataclasses import dataclass
from datetime import date
from typing import Any

from ocs.billing import periods
from ocs.billing.periods import Schedule, Unit

CYCLES = ("fixed_period", "fixed_date", "week", "subscription_date", "manual", "on_demand")
# The cycles an invoice run computes periods for by itself.
SCHEDULED = ("fixed_period", "fixed_date", "week", "subscription_date")
# The cycles whose periods an operator (manual) or a session (on demand) names.
UNSCHEDULED = ("manual", "on_demand")
TIMINGS = ("end_of_cycle", "start_of_cycle")

# Who taxes a plan's invoices: its own tax rules, or the configured HTTP tax engine.
TAX_ENGINES = ("internal", "external")


@dataclass(frozen=True, slots=True)
class PlanBilling:
    """How a plan is invoiced: its cycle, time zone, timing, grace days and message."""

    plan_id: str
    cycle: str
    effective_date: date
    time_zone: str = "UTC"
    cycle_day: int | None = None
    cycle_weekday: int | None = None
    every_days: int | None = None
    grace_days: int = 0
    invoice_message: str = ""
    invoice_timing: str = "end_of_cycle"
    issuer: str = "INV"
    tax_engine: str = "internal"  # TAX_ENGINES: the plan's own tax rules, or the HTTP engine

    @classmethod
    def from_row(cls, row: Any) -> "PlanBilling":
        """The settings of one ``plan_billing`` row (an asyncpg Record or a mapping)."""
        return cls(
            plan_id=row["plan_id"],
            cycle=row["cycle"],
            effective_date=row["effective_date"],
            time_zone=row["time_zone"],
            cycle_day=row["cycle_day"],
            cycle_weekday=row["cycle_weekday"],
            every_days=row["every_days"],
            grace_days=row["grace_days"],
            invoice_message=row["invoice_message"],
            invoice_timing=row["invoice_timing"],
            issuer=row["issuer"],
            tax_engine=row["tax_engine"],
        )


def schedule(billing: PlanBilling, account_start: date | None = None) -> Schedule:
    """The plan's invoice periods; ``account_start`` anchors the subscription-date cycle.

    ValueError for a manual or on-demand plan: their periods are named by an
    operator or a session, not computed.
    """
    tz = billing.time_zone
    if billing.cycle == "fixed_period":
        if billing.every_days is None:
            raise ValueError(f"plan {billing.plan_id}: a fixed period needs every_days")
        return periods.fixed_period(billing.effective_date, billing.every_days, tz=tz)
    if billing.cycle == "fixed_date":
        if billing.cycle_day is None:
            raise ValueError(f"plan {billing.plan_id}: a fixed date needs cycle_day")
        return periods.fixed_date(billing.cycle_day, billing.effective_date, tz=tz)
    if billing.cycle == "week":
        if billing.cycle_weekday is None:
            raise ValueError(f"plan {billing.plan_id}: a week cycle needs cycle_weekday")
        return periods.weekly_on(billing.cycle_weekday, billing.effective_date, tz=tz)
    if billing.cycle == "subscription_date":
        return periods.anniversary(account_start or billing.effective_date, tz=tz)
    raise ValueError(f"plan {billing.plan_id}: a {billing.cycle} cycle has no schedule")


_MONTHS = {"monthly": 1, "quarterly": 3, "yearly": 12}


@functools.lru_cache(maxsize=4096)
def charge_schedule(cycle: Schedule, cadence: str, every_days: int | None = None) -> Schedule:
    """A recurring charge's periods, anchored at the invoice cycle's anchor.

    Cached: a chunk asks it for every account and charge with the same few inputs
    (``Schedule`` is a frozen value, so a cached answer is shared safely).

    A month cadence keeps the cycle's day of the month (day 31 stays 31 through
    February), so a monthly charge on a monthly cycle bills exactly the
    invoice's periods; weekly and every-N-days charges count from the anchor.
    """
    if cadence in _MONTHS:
        day = cycle.month_day if cycle.unit is Unit.MONTHS else cycle.anchor.day
        anchor = periods.month_day(cycle.anchor.year, cycle.anchor.month, day)
        return Schedule(Unit.MONTHS, _MONTHS[cadence], anchor, cycle.tz, day_of_month=day)
    return periods.recurring(cadence, cycle.anchor, tz=cycle.tz, every_days=every_days)
