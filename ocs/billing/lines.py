"""The lines an invoice should have, computed from charges, dates and usage totals.

Pure: no database. ``drafts`` loads what an account has (its charge items and
its usage per zone and direction) and asks here which lines follow for one
invoice period; the same inputs always give the same lines, in the same
order, which is what makes a recomputed draft equal to the first.

Which period a charge is billed for (decision to record with 0019):

- the invoice for period P of an ``end_of_cycle`` plan (run at P's end) bills
  usage and arrears charges of P, and advance charges of the period after P;
- the invoice for P of a ``start_of_cycle`` plan (run at P's start) bills
  advance charges of P, and usage and arrears charges of the period before P.

A recurring charge bills each of its own periods (``cycles.charge_schedule``)
that **starts** in the target period, prorated by the days its item is active
in it (days used / days in the charge period, ``proration.prorate``): a start,
end or cancellation inside the period gives a ``proration`` line. A one-time
charge is billed by the invoice whose target period holds its date. Every
line is rounded once to the currency's minor unit (``currency.round_line``).
"""

from dataclasses import dataclass
from datetime import date, datetime

from ocs.billing.currency import round_line
from ocs.billing.cycles import charge_schedule
from ocs.billing.periods import Period, Schedule, local_midnight
from ocs.billing.proration import prorate


@dataclass(frozen=True, slots=True)
class Item:
    """A charge as one account has it: from ``start`` to ``end`` (excluded; None: open).

    ``item_id``: the subscription charge row (None for a plan's custom charge,
    which comes with the subscription to the plan).
    """

    charge_id: str
    item_id: int | None
    name: str
    amount: int
    quantity: int
    kind: str
    cadence: str | None
    every_days: int | None
    timing: str
    start: date
    end: date | None


@dataclass(frozen=True, slots=True)
class Usage:
    """An account's rated calls of one zone and direction in the usage window."""

    zone: str
    direction: str
    calls: int
    seconds: int
    billed_seconds: int
    amount: int
    first_cdr: str
    last_cdr: str


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line: ``amount`` is ``exact`` rounded once to the minor unit."""

    kind: str
    description: str
    period_start: datetime | None
    period_end: datetime | None
    quantity: int
    exact: int
    amount: int
    moves_money: bool
    charge_id: str | None = None
    item_id: int | None = None
    zone: str | None = None
    direction: str | None = None
    calls: int | None = None
    seconds: int | None = None
    billed_seconds: int | None = None
    first_cdr: str | None = None
    last_cdr: str | None = None


@dataclass(frozen=True, slots=True)
class Targets:
    """The invoice period and the periods it bills: arrears and usage, and advance."""

    invoice: Period
    arrears: Period
    advance: Period


def targets(cycle: Schedule, invoice: Period, timing: str) -> Targets:
    """Which period an invoice bills arrears (and usage) for, and which advance."""
    n = cycle.index_of_day(invoice.first_day)
    if timing == "start_of_cycle":
        return Targets(invoice, cycle.period(n - 1), invoice)
    return Targets(invoice, invoice, cycle.period(n + 1))


def _periods_starting_in(schedule: Schedule, target: Period) -> list[Period]:
    """The schedule's periods whose first day lies in the target period."""
    n = schedule.index_of_day(target.first_day)
    if schedule.start_day(n) < target.first_day:
        n += 1
    found = []
    while schedule.start_day(n) < target.end_day:
        found.append(schedule.period(n))
        n += 1
    return found


def charge_lines(item: Item, cycle: Schedule, which: Targets, currency: str) -> list[Line]:
    """The lines one charge item gives on the invoice ``which`` describes."""
    target = which.advance if item.timing == "advance" else which.arrears
    total = item.amount * item.quantity
    if item.kind == "one_time":
        if not target.first_day <= item.start < target.end_day:
            return []
        day = local_midnight(item.start, cycle.zone)
        return [
            Line(
                "one_time",
                item.name,
                day,
                None,
                item.quantity,
                total,
                round_line(total, currency),
                True,
                item.charge_id,
                item.item_id,
            )
        ]
    if item.kind != "recurring" or item.cadence is None:
        return []  # triggered charges are billed when number sets assign numbers
    found = []
    for part in _periods_starting_in(charge_schedule(cycle, item.cadence, item.every_days), target):
        first = max(item.start, part.first_day)
        after = part.end_day if item.end is None else min(item.end, part.end_day)
        used = (after - first).days
        if used <= 0:
            continue
        exact = prorate(total, used, part.days)
        whole = used == part.days
        found.append(
            Line(
                "recurring" if whole else "proration",
                item.name if whole else f"{item.name} ({used}/{part.days} days)",
                local_midnight(first, cycle.zone),
                local_midnight(after, cycle.zone),
                item.quantity,
                exact,
                round_line(exact, currency),
                True,
                item.charge_id,
                item.item_id,
            )
        )
    return found


def usage_line(usage: Usage, window: tuple[datetime, datetime], currency: str) -> Line:
    """A usage summary line: calls, seconds and what the real-time path debited for them."""
    direction = "" if usage.direction == "outbound" else f" ({usage.direction})"
    return Line(
        "usage",
        f"Calls to {usage.zone}{direction}",
        window[0],
        window[1],
        usage.calls,
        usage.amount,
        round_line(usage.amount, currency),
        False,
        zone=usage.zone,
        direction=usage.direction,
        calls=usage.calls,
        seconds=usage.seconds,
        billed_seconds=usage.billed_seconds,
        first_cdr=usage.first_cdr,
        last_cdr=usage.last_cdr,
    )


def invoice_lines(
    items: list[Item],
    usage: list[Usage],
    cycle: Schedule,
    which: Targets,
    currency: str,
    usage_window: tuple[datetime, datetime],
) -> list[Line]:
    """Every line of one account's invoice, charges (by charge, then date) before usage."""
    ordered = sorted(items, key=lambda i: (i.charge_id, i.start, i.item_id or 0))
    found = [line for item in ordered for line in charge_lines(item, cycle, which, currency)]
    found += [
        usage_line(u, usage_window, currency)
        for u in sorted(usage, key=lambda u: (u.zone, u.direction))
    ]
    return found
