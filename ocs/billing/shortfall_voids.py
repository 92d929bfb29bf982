"""Which commitment periods a void changed since they were last settled again.

A bundle's minimum-spend shortfall over an arrears period is charged by the period's own
invoice and may be settled again by later invoices (``bundles.settled_shortfall_line``,
decision 0023, addendum 2026-12-07): each such line is the difference between what the
bundle's dates ask and what stood of the period when it was written. A void takes one of
those lines back with its invoice, so what stands of the period is no longer what the
settling line was computed against: the period's own invoice voided after a settling
line credited it (the customer kept the credit and got the charge back too), or the
invoice holding the settling line voided (the period stands charged as before the
dates changed). Such a period is settled again by the next invoice
(``bundles._settled_shortfalls``); this module only tells which, from the lines read.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from ocs.billing.lines import targets
from ocs.billing.periods import Period, Schedule


@dataclass(frozen=True, slots=True)
class CommitmentBilled:
    """An earlier invoice's commitment line (``bundles._SHORTFALLS_SQL``): the subscription
    bundle and rule position it names (None: written before commitment lines named them),
    its description, first day and exact amount; its invoice's number, own period (start,
    end) and making; and when that invoice was voided (None: it stands)."""

    sb_id: int | None
    position: int | None
    description: str
    start: datetime
    exact: int
    number: str | None
    billed: tuple[datetime, datetime]
    made: datetime
    voided: datetime | None = None


@dataclass(frozen=True, slots=True)
class VoidedInvoice:
    """A void invoice of an earlier period (``bundles._VOIDED_SQL``): its number, own
    period (start, end), when it was voided, and the first day of each of a subscription
    bundle's commitment lines it held (those naming their rule)."""

    number: str
    billed: tuple[datetime, datetime]
    voided: datetime
    line_starts: tuple[datetime, ...] = ()


def arrears_of(cycle: Schedule, timing: str, billed: tuple[datetime, datetime]) -> Period:
    """The arrears period (``lines.targets``) of the invoice whose own period is
    ``billed``, by the plan's cycle and invoice timing."""
    zone = cycle.zone
    own = Period(billed[0].astimezone(zone), billed[1].astimezone(zone))
    return targets(cycle, own, timing).arrears


def _period_of(
    cycle: Schedule, timing: str, billed: tuple[datetime, datetime], start: datetime
) -> Period:
    """The arrears period a commitment line starting on ``start`` bills: its invoice's own
    arrears period when it lies there (the period's shortfall), else the cycle's period
    holding it (a line settling an earlier period starts on that period's first day)."""
    arrears = arrears_of(cycle, timing, billed)
    return arrears if arrears.contains(start) else cycle.period_containing(start)


def unseen_voids(voided: Sequence[VoidedInvoice], newest: datetime | None) -> list[VoidedInvoice]:
    """The void invoices of ``voided`` voided after ``newest`` (when the account's newest
    earlier invoice that stands, a draft too, was made; None: none stands, every void).
    An invoice made after a void already looked at it (and settled what it changed), so
    an older void is not looked at again: one void, however old, would otherwise have
    every later invoice read the account's history back to its period."""
    return [invoice for invoice in voided if newest is None or invoice.voided > newest]


def voided_periods(
    cycle: Schedule, timing: str, before: date, voided: Sequence[VoidedInvoice]
) -> list[Period]:
    """The arrears periods before ``before`` (the drafted invoice's arrears period's first
    day) that a void may have changed: each void invoice's own arrears period and the
    periods of the commitment lines it held; in order, each once."""
    found: dict[date, Period] = {}
    for invoice in voided:
        periods = [arrears_of(cycle, timing, invoice.billed)]
        periods += [_period_of(cycle, timing, invoice.billed, s) for s in invoice.line_starts]
        for period in periods:
            if period.first_day < before:
                found[period.first_day] = period
    return [found[day] for day in sorted(found)]


def changed_by_void(
    cycle: Schedule,
    timing: str,
    rule: tuple[int, int],
    period: Period,
    lines: Sequence[CommitmentBilled],
    voided: Sequence[VoidedInvoice],
) -> tuple[str, ...]:
    """The numbers of the void invoices that changed what stands of a commitment ``rule``
    (subscription bundle, rule position) over ``period`` since it was last settled again;
    empty when none did.

    Only a period settled again at least once (a line of the rule in it on an invoice other
    than the period's own, void or standing) is looked at. A void counts when it came
    after the newest such settling line that stands was made (none standing: every void
    counts): of an invoice holding one of the rule's lines in the period, or of the
    period's own invoice (the shortfall it charged, or its part of the period's billing,
    given back). A line written after the void (the settling that took account of it)
    makes it old: the next invoice does not look again."""
    sb_id, position = rule
    mine = [
        line
        for line in lines
        if line.sb_id == sb_id and line.position == position and period.contains(line.start)
    ]
    settling = [
        line
        for line in mine
        if arrears_of(cycle, timing, line.billed).first_day != period.first_day
    ]
    if not settling:
        return ()
    newest = max((line.made for line in settling if line.voided is None), default=None)
    voids: dict[str, datetime] = {}
    for line in mine:
        if line.voided is not None and line.number is not None:
            voids[line.number] = line.voided
    for invoice in voided:
        if arrears_of(cycle, timing, invoice.billed).first_day == period.first_day:
            voids[invoice.number] = invoice.voided
    return tuple(sorted(number for number, at in voids.items() if newest is None or at > newest))
