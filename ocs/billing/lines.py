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

A recurring charge's own periods (``cycles.charge_schedule``) are prorated by
the days its item is active in them (days used / days in the charge period,
``proration.prorate``): a start, end or cancellation inside a period gives a
``proration`` line. In **advance**, the invoice bills each of them that
**starts** in its advance target. In **arrears** (decision 0043), it bills each
whose **last day of service** lies in its arrears target: the charge period's
last day, or the item's last day when it ends inside the charge period. A
charge period as long as the invoice period (a monthly charge on a monthly
cycle) is billed by the invoice of its own period either way; a longer one (a
quarter on a monthly cycle, a week across a month's end) after it was used,
never ahead. A one-time charge is billed by the invoice whose target period
holds its date. Every line is rounded once to the currency's minor unit
(``currency.round_line``).

An arrears charge period that began before the arrears period is billed net
of what earlier invoices billed of it (``Billed``, as advance charges are
reconciled below): a period an invoice billed whole when it began (before
0043) is not billed twice, and days it billed but the item did not use are
credited. So that nothing is lost when an item's end is recorded late, such a
period is also settled by the invoice holding its own last day. On an
account's first invoice it bills only days inside the arrears period: an
account's billing begins with its first invoice.

Advance charges are then **reconciled** for the period an earlier invoice
billed ahead (the arrears period: for an end-of-cycle plan the invoice's own
period, billed ahead by the invoice before it). For each charge period that
overlaps it, the local days the item should have been billed for (its dates
now) are compared with the days earlier invoices billed (``Billed`` spans:
their positive lines add days, their credits take them away). Days billed
but no longer used give a credit line (an end, a cancellation, the old side
of an upgrade or downgrade); days used but never billed give a charge line
(an item started inside an already-invoiced period, the new side of a
change). Each is ``prorate(amount, days, days in the charge period)``, a
separate line, rounded once. An item is reconciled when the account has an
earlier invoice, or when it starts inside the arrears period: an account's
billing begins with its first invoice, as it does for arrears charges.

An end recorded after the invoices that billed days beyond it (decision 0046: a
cancellation dated back, recorded once the period holding it was billed) falls
outside both: its charge periods end before the arrears period. The next
invoice credits those days (``cut_short_credits``), net of what earlier
invoices billed, for the items whose end was recorded after the account's
newest earlier invoice was made (``cut_short``); no other item reads further
back, and the invoice after it finds the end older than its newest earlier
invoice and reads nothing more.

An item recorded after the account's earlier invoices read the items (a charge
created after a run's charge cut-off, the new side of a change recorded after
it, an item dated back) has days no earlier invoice could bill. The next
invoice bills them (``late_charges``, Kill Bill's rule: what the item should
have been billed up to its target, less what earlier invoices billed of it),
for the items recorded after the latest cut-off (or making) of the account's
earlier invoices (``recorded_late``); the invoice after it has seen them.

What a void invoice charged is charged by no rule above again, nor credited
(decision 0046, addendum): its lines come apart from those of the invoices that
stand (``voided``), every charge leaves their days out (``_voided_days``), and
every credit counts only the invoices that stand. The operator bills them again
explicitly, by adding the charge again for those days (a new item).

An item is matched with what was billed for it by ``Item.key``: its charge,
subscription charge and number, and its **source**, the instance it bills (the
subscription, or the number's assignment) that every charge line records
(decision 0041). Without the source, two subscriptions to one plan on one
account, or one number assigned twice, shared a key, and each took the other's
billing for its own (a second credit). A line written before the lines named
their source (migration 0043) has none: it matches every instance of its
charge, subscription charge and number (``Item.legacy_key``), as it did then.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import msgspec

from ocs.billing.currency import round_line
from ocs.billing.cycles import charge_schedule
from ocs.billing.periods import Period, Schedule, local_midnight
from ocs.billing.proration import prorate

# (charge id, subscription charge id or None for a plan's or a number's charge, number or
# None, subscription id, account_numbers id: both None for a line written before 0043).
BilledKey = tuple[str, int | None, str | None, int | None, int | None]


class Item(msgspec.Struct, frozen=True):
    """A charge as one account has it: from ``start`` to ``end`` (excluded; None: open).

    ``item_id``: the subscription charge row (None for a plan's custom charge,
    which comes with the subscription to the plan). Its source, the instance it
    bills: ``subscription_id`` (a plan's or a subscription's charge) or
    ``account_number_id`` (a number's charge: the ``account_numbers`` row).
    ``end_recorded``: when its end (``end``) was recorded, the latest of its
    sources' (None: no end, or one recorded before migration 0044); an end
    recorded after the account's newest earlier invoice is checked against what
    the invoices before it billed (``cut_short``, decision 0046). ``recorded``:
    when the item came to exist (its rows' ``created_at``); an item recorded after
    every earlier invoice read the items is billed for the days they left out
    (``recorded_late``, decision 0043).
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
    number: str | None = None  # a triggered charge: the assigned number that triggers it
    subscription_id: int | None = None
    account_number_id: int | None = None
    end_recorded: datetime | None = None
    recorded: datetime | None = None

    @property
    def key(self) -> BilledKey:
        """What an earlier invoice's lines name this item by: charge, item, number, source."""
        return (
            self.charge_id,
            self.item_id,
            self.number,
            self.subscription_id,
            self.account_number_id,
        )

    @property
    def legacy_key(self) -> BilledKey:
        """The key of the lines billed for it before lines named their source (0043)."""
        return (self.charge_id, self.item_id, self.number, None, None)

    @property
    def label(self) -> str:
        """The item's name on a line: the charge's, with the number it bills."""
        return self.name if self.number is None else f"{self.name} {self.number}"

    @property
    def billed_as(self) -> str:
        """How the item bills: ``recurring`` or ``one_time`` (a triggered charge per number
        recurs when it has a cadence, else it is billed once, on assignment)."""
        if self.kind == "triggered":
            return "one_time" if self.cadence is None else "recurring"
        return self.kind


class Usage(msgspec.Struct, frozen=True):
    """An account's rated calls of one zone and direction in the usage window.

    ``since``: for calls stopped before the window and imported after the invoice of
    their period was drafted (``late_usage``, decision 0050), the earliest one's stop;
    None for the window's calls. ``gap_from``: for late calls stopped after the
    account's earlier invoice's usage window ended (an early run's or a usage
    cut-off's; decision 0021, addendum 2026-12-07), where it ended: they were not
    recorded late, no window held them.
    """

    zone: str
    direction: str
    calls: int
    seconds: int
    billed_seconds: int
    amount: int
    first_cdr: str
    last_cdr: str
    rate_type: str | None = None  # the CDRs' rate type (a tax code may follow it)
    since: datetime | None = None
    gap_from: datetime | None = None


class Line(msgspec.Struct, frozen=True):
    """One invoice line: ``amount`` is ``exact`` rounded once to the minor unit.

    A msgspec Struct, not a dataclass: a 100,000-account run builds ~800,000 of
    them, and a frozen dataclass's ``__init__`` (a ``object.__setattr__`` per
    field) cost ~8 us each against ~0.4 us.
    """

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
    number: str | None = None
    # Lines that report the real-time path (``realtime``): a counter, its seconds from
    # the bundle and paid, a usage event's rated quantity, the ledger entry reported.
    counter_id: str | None = None
    bundle_seconds: int | None = None
    paid_seconds: int | None = None
    billed_quantity: int | None = None
    source_entry: str | None = None
    # Tax and surcharge lines (``taxes``, ``surcharges``): the tax code, the amount the
    # rate applied to, and the rate in millionths of a percent (20% = 20_000_000).
    tax_code: str | None = None
    basis: int | None = None
    rate: int | None = None
    rate_type: str | None = None  # a usage line's rate type
    # A charge line's source (``Item``): the subscription or the number's assignment.
    subscription_id: int | None = None
    account_number_id: int | None = None
    # A resiliation or flat fee line's subscription bundle (``bundles``), so it is billed
    # once; a flat fee line's rule too, by its position in the bundle (migration 0066):
    # what an operator may rename (the bundle's name, the rule's description) is no key.
    subscription_bundle_id: int | None = None
    bundle_rule_position: int | None = None
    # A flat fee line that adjusts a fee period rather than billing it (migration 0071,
    # decision 0023): ``take_back`` (a credit of unused days taken back, its charge voided)
    # or ``take_back_reversal`` (a take-back reversed, its credit voided). Stored, never
    # told from the description, which the bundle's and rule's names may push past its
    # 200 characters.
    adjustment: str | None = None


@dataclass(frozen=True, slots=True)
class Targets:
    """The invoice period and the periods it bills: arrears and usage, and advance.

    ``named``: the period was named by an operator or a session (a manual or
    on-demand plan): no later invoice continues its charge periods, so an arrears
    charge period longer than it is billed for its days inside it, there.
    """

    invoice: Period
    arrears: Period
    advance: Period
    named: bool = False


def targets(cycle: Schedule, invoice: Period, timing: str, named: bool = False) -> Targets:
    """Which period an invoice bills arrears (and usage) for, and which advance."""
    n = cycle.index_of_day(invoice.first_day)
    if timing == "start_of_cycle":
        return Targets(invoice, cycle.period(n - 1), invoice, named)
    return Targets(invoice, invoice, cycle.period(n + 1), named)


def arrears_first_day(cycle: Schedule, invoice_first_day: date, timing: str) -> date:
    """The first day of the arrears period of the invoice whose period begins on
    ``invoice_first_day`` (``targets``): where an account's billing began, when that
    was its first invoice."""
    if timing == "start_of_cycle":
        return cycle.period(cycle.index_of_day(invoice_first_day) - 1).first_day
    return invoice_first_day


@functools.lru_cache(maxsize=1024)
def _periods_starting_in(schedule: Schedule, target: Period) -> tuple[Period, ...]:
    """The schedule's periods whose first day lies in the target period.

    Cached: a run asks it for every account and charge with the same few
    (frozen, hashable) schedules and periods; it was ~10% of a draft's Python.
    """
    n = schedule.index_of_day(target.first_day)
    if schedule.start_day(n) < target.first_day:
        n += 1
    found = []
    while schedule.start_day(n) < target.end_day:
        found.append(schedule.period(n))
        n += 1
    return tuple(found)


@functools.lru_cache(maxsize=1024)
def _periods_overlapping(schedule: Schedule, target: Period) -> tuple[Period, ...]:
    """The schedule's periods that share at least one local day with the target period.

    Cached for the reason ``_periods_starting_in`` is. The first may begin
    before the target, the last may end after it.
    """
    n = schedule.index_of_day(target.first_day)
    found = []
    while schedule.start_day(n) < target.end_day:
        found.append(schedule.period(n))
        n += 1
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Billed:
    """Local days [first, end) an earlier invoice's line billed for an item (credit: taken)."""

    first: date
    end: date
    credit: bool


# An item's key (``BilledKey``) -> its billed spans.
BilledSpans = Mapping[BilledKey, list[Billed]]


def spans_of(item: Item, billed: BilledSpans) -> list[Billed]:
    """What earlier invoices billed for ``item``: its own lines, and those without a source.

    A line written before lines named their source (migration 0043) cannot say
    which instance it billed: it counts for each that had begun by its first day, as
    it did before. A line billed for an instance never begins before that instance
    does, so one begun later (a second subscription to the plan, a number assigned
    again) does not take an earlier one's line for its own.
    """
    spans = billed.get(item.key, [])
    if item.key != item.legacy_key:
        spans = spans + [
            span for span in billed.get(item.legacy_key, []) if span.first >= item.start
        ]
    return spans


def _days(first: date, end: date) -> set[date]:
    """The local dates of [first, end)."""
    return {first + timedelta(days=n) for n in range((end - first).days)}


def _billed_days(part: Period, spans: list[Billed]) -> set[date]:
    """The days of the charge period ``part`` that earlier invoices billed, net.

    A line counts for the charge period its first day lies in; charges add
    their days before credits take theirs away, so the order the lines were
    written in does not matter.
    """
    done: set[date] = set()
    for span in sorted(spans, key=lambda b: (b.credit, b.first)):
        if not part.first_day <= span.first < part.end_day:
            continue
        days = _days(span.first, min(span.end, part.end_day))
        done = done - days if span.credit else done | days
    return done


def _voided_days(part: Period, spans: list[Billed]) -> set[date]:
    """The days of the charge period ``part`` that void invoices charged (``spans``: their
    lines): not charged again by a run, behind the operator's back (decision 0046).

    Their credits take nothing away: a credit on a void invoice was voided with it, and
    the days it credited count as billed by the invoice that charged them.
    """
    done: set[date] = set()
    for span in spans:
        if not span.credit and part.first_day <= span.first < part.end_day:
            done |= _days(span.first, min(span.end, part.end_day))
    return done


def _item_line(
    item: Item,
    kind: str,
    description: str,
    span: tuple[datetime, datetime | None],
    exact: int,
    currency: str,
) -> Line:
    """A line of ``item`` over ``span`` (its first instant and end, None for a one-time
    charge's date): ``exact`` micro-units, rounded once; it names the item's source."""
    return Line(
        kind,
        description,
        span[0],
        span[1],
        item.quantity,
        exact,
        round_line(exact, currency),
        True,
        item.charge_id,
        item.item_id,
        number=item.number,
        subscription_id=item.subscription_id,
        account_number_id=item.account_number_id,
    )


def _period_line(
    item: Item, part: Period, first: date, after: date, zone_of: Schedule, currency: str
) -> Line:
    """The line billing the item's days [first, after) of its charge period ``part``."""
    used = (after - first).days
    exact = prorate(item.amount * item.quantity, used, part.days)
    whole = used == part.days
    return _item_line(
        item,
        "recurring" if whole else "proration",
        item.label if whole else f"{item.label} ({used}/{part.days} days)",
        (local_midnight(first, zone_of.zone), local_midnight(after, zone_of.zone)),
        exact,
        currency,
    )


def _span_line(
    item: Item, part: Period, days: set[date], zone_of: Schedule, currency: str, credit: bool
) -> Line:
    """One reconciliation line over ``days`` of the charge period ``part``."""
    first, after = min(days), max(days) + timedelta(days=1)
    exact = prorate(item.amount * item.quantity, len(days), part.days)
    if credit:
        exact = -exact
    share = f"{len(days)}/{part.days} days"
    whole = not credit and len(days) == part.days
    if credit:
        description = f"Credit: {item.label} unused ({share})"
    else:
        description = item.label if whole else f"{item.label} ({share})"
    return _item_line(
        item,
        "recurring" if whole else "proration",
        description,
        (local_midnight(first, zone_of.zone), local_midnight(after, zone_of.zone)),
        exact,
        currency,
    )


def _settle(
    item: Item,
    part: Period,
    should: set[date],
    done: set[date],
    zone_of: Schedule,
    currency: str,
    voided: set[date],
) -> list[Line]:
    """A credit for the days of ``part`` billed but not used, a charge for those used but
    not billed: two lines, each rounded once (none when the billing is right).

    ``done``: the days invoices that stand billed, net; ``voided``: those void invoices
    charged, neither charged again nor credited (their billing was reversed).
    """
    found: list[Line] = []
    if extra := done - should:
        found.append(_span_line(item, part, extra, zone_of, currency, credit=True))
    if missing := should - done - voided:
        found.append(_span_line(item, part, missing, zone_of, currency, credit=False))
    return found


def _arrears_lines(
    item: Item,
    own: Schedule,
    cycle: Schedule,
    target: Period,
    currency: str,
    billed: BilledSpans | None,
    named: bool = False,
    began: date | None = None,
    voided: BilledSpans | None = None,
) -> list[Line]:
    """An arrears charge's lines on the invoice whose arrears period is ``target``.

    Each charge period is billed by the invoice whose arrears period holds its
    last day of service: ``after`` (the charge period's end, or the item's end
    inside it) minus a day, the end being excluded; in a ``named`` period (manual,
    on-demand) one begun in it is billed for its days in it. ``billed``: what
    earlier invoices billed (None: this is the account's first invoice); ``began``:
    the first day of the account's first invoice's arrears period, before which
    nothing is billed (an account's billing begins with its first invoice);
    ``voided``: what void invoices charged, not charged again (``_voided_days``).
    """
    found: list[Line] = []
    for part in _periods_overlapping(own, target):
        first = max(item.start, part.first_day)
        after = part.end_day if item.end is None else min(item.end, part.end_day)
        if part.first_day >= target.first_day:
            # Begun in the target: no earlier invoice billed any of it (an earlier
            # invoice's arrears period lies before this one), so one plain line. A
            # monthly charge on a monthly cycle always comes here, as it did before 0043.
            if first < after <= target.end_day:
                found.append(_period_line(item, part, first, after, cycle, currency))
            elif named and first < target.end_day:
                # A named period's charge periods start with it and no later invoice
                # sees this one again: it pays for its own days of it, here.
                end = min(after, target.end_day)
                found.append(_period_line(item, part, first, end, cycle, currency))
            continue
        # Begun before the target: bill it here when its last day of service lies here,
        # and settle it here when its own last day does (an end recorded after the
        # invoice holding the item's last day was drafted is billed then, not lost).
        last_here = target.first_day < after <= target.end_day
        if not (last_here or part.end_day <= target.end_day):
            continue
        # An account's billing begins with its first invoice: no day before it, on the
        # first invoice or on a later one settling the same charge period.
        first = max(first, target.first_day if billed is None else (began or first))
        done = set() if billed is None else _billed_days(part, spans_of(item, billed))
        should = _days(first, after) if first < after else set()
        gone = set() if voided is None else _voided_days(part, spans_of(item, voided))
        found += _settle(item, part, should, done, cycle, currency, gone)
    return found


def charge_lines(
    item: Item,
    cycle: Schedule,
    which: Targets,
    currency: str,
    billed: BilledSpans | None,
    began: date | None = None,
    voided: BilledSpans | None = None,
) -> list[Line]:
    """The lines one charge item gives on the invoice ``which`` describes.

    ``billed``: what the account's earlier invoices that stand billed (None: it has
    none, this is its first invoice); ``voided``: what its void earlier invoices
    charged (None: it has none). Read only for an arrears charge period that began
    before the arrears period.
    """
    target = which.advance if item.timing == "advance" else which.arrears
    total = item.amount * item.quantity
    if item.billed_as == "one_time":
        if not target.first_day <= item.start < target.end_day:
            return []
        day = local_midnight(item.start, cycle.zone)
        return [_item_line(item, "one_time", item.label, (day, None), total, currency)]
    if item.billed_as != "recurring" or item.cadence is None:
        return []
    own = charge_schedule(cycle, item.cadence, item.every_days)
    if item.timing != "advance":
        return _arrears_lines(
            item, own, cycle, target, currency, billed, which.named, began, voided
        )
    found = []
    for part in _periods_starting_in(own, target):
        first = max(item.start, part.first_day)
        after = part.end_day if item.end is None else min(item.end, part.end_day)
        if after > first:
            found.append(_period_line(item, part, first, after, cycle, currency))
    return found


def advance_adjustments(
    item: Item,
    cycle: Schedule,
    which: Targets,
    currency: str,
    billed: list[Billed],
    voided: list[Billed] | None = None,
) -> list[Line]:
    """Credit and charge lines that bring an advance item's earlier billing up to date.

    For each charge period overlapping the arrears period: days billed earlier (by
    invoices that stand, ``billed``) but not used now are credited, days used but not
    billed are charged, unless a void invoice charged them (``voided``): the operator
    voided that billing, and a run does not bill it again behind their back.
    """
    if item.timing != "advance" or item.billed_as != "recurring" or item.cadence is None:
        return []
    own = charge_schedule(cycle, item.cadence, item.every_days)
    target = which.arrears
    found: list[Line] = []
    for part in own.periods_overlapping(target.start, target.end):
        first = max(item.start, part.first_day)
        after = part.end_day if item.end is None else min(item.end, part.end_day)
        should = _days(first, after) if first < after else set()
        done, gone = _billed_days(part, billed), _voided_days(part, voided or [])
        found += _settle(item, part, should, done, cycle, currency, gone)
    return found


def cut_short(item: Item, which: Targets, newest: datetime | None) -> bool:
    """Whether ``item`` ended before the arrears period by an end recorded after the
    account's newest earlier invoice was made (``newest``, its ``created_at``; None: no
    earlier invoice), so that earlier invoices may have billed days it did not use in
    charge periods no invoice settles again (decision 0046).

    Only such items are checked (``cut_short_credits``): an end recorded before that
    invoice was seen by it, or by one before it, and a run reads nothing more for it.
    A named period's (manual, on-demand) charge periods are its own: never continued.
    """
    return (
        newest is not None
        and not which.named
        and item.billed_as == "recurring"
        and item.cadence is not None
        and item.end is not None
        and item.end < which.arrears.first_day
        and item.end_recorded is not None
        and item.end_recorded > newest
    )


def cut_short_window_start(
    items: list[Item], cycle: Schedule, which: Targets, newest: datetime | None
) -> datetime | None:
    """From when earlier invoices' lines must be read for the ``cut_short`` items among
    ``items`` (None: there are none, nothing more to read): the start of the charge
    period holding the earliest of their ends, the first with days they did not use."""
    starts = []
    for item in items:
        if cut_short(item, which, newest) and item.end is not None and item.cadence:
            own = charge_schedule(cycle, item.cadence, item.every_days)
            starts.append(own.period(own.index_of_day(item.end)).start)
    return min(starts, key=lambda start: start.timestamp()) if starts else None


def cut_short_credits(
    item: Item, cycle: Schedule, which: Targets, currency: str, billed: BilledSpans
) -> list[Line]:
    """Credits for the days earlier invoices billed ``item`` past an end recorded late.

    For each of its charge periods from the one holding its end to the last one ending
    by the arrears period's first day (those overlapping it are settled by
    ``advance_adjustments`` and ``_arrears_lines``), the days billed net but not used
    are credited, one line each, rounded once, as ``_settle`` credits them. Credit
    only: a day used but not billed (its invoice voided) is not charged here, behind
    the operator's back. Advance and arrears items alike; the caller checks
    ``cut_short``. A credit's first day lies in the charge period it credits and names
    the item's source, so a later invoice counts it and never credits twice.
    """
    if item.end is None or item.cadence is None or which.named:
        return []
    own = charge_schedule(cycle, item.cadence, item.every_days)
    spans = spans_of(item, billed)
    found: list[Line] = []
    n = own.index_of_day(item.end)
    while (part := own.period(n)).end_day <= which.arrears.first_day:
        first, after = max(item.start, part.first_day), min(item.end, part.end_day)
        should = _days(first, after) if first < after else set()
        if extra := _billed_days(part, spans) - should:
            found.append(_span_line(item, part, extra, cycle, currency, credit=True))
        n += 1
    return found


def recorded_late(item: Item, which: Targets, seen: datetime | None) -> bool:
    """Whether ``item`` was recorded after every earlier invoice of its account read the
    items (``seen``: the latest of their charge cut-offs or, without one, their making;
    None: no earlier invoice) and has days before this invoice's target, which those
    invoices could not bill (decision 0043): a charge created after a run's cut-off, the
    new side of a change recorded after it, an item dated back.

    Only such items are checked (``late_charges``); the invoice after the one that
    bills them has seen them, and reads nothing more for them.
    """
    if seen is None or which.named or item.recorded is None or item.recorded <= seen:
        return False
    if item.billed_as == "one_time":
        target = which.advance if item.timing == "advance" else which.arrears
        return item.start < target.first_day
    return (
        item.billed_as == "recurring"
        and item.cadence is not None
        and item.start < which.arrears.first_day
    )


def _late_first_day(item: Item, began: date | None) -> date:
    """The first day ``late_charges`` may bill: the item's, not before the account's
    billing began (its first invoice's arrears period)."""
    return item.start if began is None else max(item.start, began)


def late_window_start(
    items: list[Item], cycle: Schedule, which: Targets, seen: datetime | None, began: date | None
) -> datetime | None:
    """From when earlier invoices' lines must be read for the ``recorded_late`` items
    among ``items`` (None: there are none): the start of the charge period holding the
    first day they may bill (a one-time charge's own day)."""
    starts = []
    for item in items:
        if not recorded_late(item, which, seen):
            continue
        first = _late_first_day(item, began)
        if item.billed_as == "one_time":
            starts.append(local_midnight(first, cycle.zone))
        elif item.cadence is not None:
            own = charge_schedule(cycle, item.cadence, item.every_days)
            starts.append(own.period(own.index_of_day(first)).start)
    return min(starts, key=lambda start: start.timestamp()) if starts else None


def late_charges(
    item: Item,
    cycle: Schedule,
    which: Targets,
    currency: str,
    billed: BilledSpans,
    began: date | None,
    voided: BilledSpans | None = None,
) -> list[Line]:
    """What earlier invoices left unbilled of an item recorded after they read the items
    (the caller checks ``recorded_late``): Kill Bill's rule, the item's billing as it
    should be up to this invoice's target less what they billed of it.

    A recurring item: for each of its charge periods from the one holding its first
    billable day (``_late_first_day``) to the last one ending by the arrears period's
    first day (those overlapping it are settled by ``advance_adjustments`` and
    ``_arrears_lines``), its days of service that earlier invoices did not bill, net,
    one line each, rounded once; its first day lies in the charge period it bills, so a
    later invoice counts it as billed. A one-time charge dated before its target and
    not before the account's billing began: billed once, unless an earlier invoice
    billed it. Charge only: days billed past the item's end are ``cut_short_credits``'.
    What a void invoice charged (``voided``) is not billed again either.
    """
    first = _late_first_day(item, began)
    spans = spans_of(item, billed)
    gone = [] if voided is None else spans_of(item, voided)
    if item.billed_as == "one_time":
        charged = spans + [span for span in gone if not span.credit]
        if item.start < first or any(span.first == item.start for span in charged):
            return []
        day = local_midnight(item.start, cycle.zone)
        total = item.amount * item.quantity
        return [_item_line(item, "one_time", item.label, (day, None), total, currency)]
    if item.cadence is None or which.named:
        return []
    own = charge_schedule(cycle, item.cadence, item.every_days)
    found: list[Line] = []
    n = own.index_of_day(first)
    while (part := own.period(n)).end_day <= which.arrears.first_day:
        start = max(first, part.first_day)
        after = part.end_day if item.end is None else min(item.end, part.end_day)
        should = _days(start, after) if start < after else set()
        if missing := should - _billed_days(part, spans) - _voided_days(part, gone):
            found.append(_span_line(item, part, missing, cycle, currency, credit=False))
        n += 1
    return found


def billed_window_start(items: list[Item], cycle: Schedule, which: Targets) -> datetime | None:
    """From when earlier invoices' lines must be read for ``items`` (None: not at all).

    The start of the first charge period overlapping the arrears period of an
    advance charge (to reconcile it), or of an arrears charge when that period
    began before the arrears period (what was billed of it, decision 0043). A
    monthly arrears charge on a monthly cycle needs none. The window ends with
    the arrears period.
    """
    arrears = which.arrears
    starts = []
    for item in items:
        if item.billed_as != "recurring" or item.cadence is None:
            continue
        own = charge_schedule(cycle, item.cadence, item.every_days)
        if item.timing == "advance":
            starts += [
                part.start for part in own.periods_overlapping(arrears.start, arrears.end)[:1]
            ]
            continue
        # Read only where ``_arrears_lines`` settles a period begun before the arrears
        # period: its own end, or the item's, lies in it. A quarter or a year is not
        # read back to its start by every invoice in between.
        ends_here = item.end is not None and arrears.first_day < item.end <= arrears.end_day
        starts += [
            part.start
            for part in _periods_overlapping(own, arrears)[:1]
            if part.first_day < arrears.first_day and (ends_here or part.end_day <= arrears.end_day)
        ]
    return min(starts, key=lambda start: start.timestamp()) if starts else None


def late_suffix(window_start: datetime, gap_from: datetime | None = None) -> str:
    """What a late usage line's description ends with: imported calls recorded after
    the earlier invoice (decision 0050), or, ``gap_from`` given, calls stopped after
    the earlier invoice's usage window ended there (decision 0021, addendum 2026-12-07),
    which were not recorded late and must not read so."""
    if gap_from is not None:
        return f", made after the previous invoice's usage ended on {gap_from.date().isoformat()}"
    return f", made before {window_start.date().isoformat()} and recorded late"


def usage_line(usage: Usage, window: tuple[datetime, datetime], currency: str) -> Line:
    """A usage summary line: calls, seconds and what the real-time path debited for them.

    Late calls (``Usage.since``) say so, and their line's period runs from the earliest
    one's stop to the window's start.
    """
    direction = "" if usage.direction == "outbound" else f" ({usage.direction})"
    rate_type = "" if usage.rate_type is None else f", {usage.rate_type}"
    period = window
    late = ""
    if usage.since is not None:
        period = (usage.since, window[0])
        late = late_suffix(window[0], usage.gap_from)
    return Line(
        "usage",
        f"Calls to {usage.zone}{direction}{rate_type}{late}",
        period[0],
        period[1],
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
        rate_type=usage.rate_type,
    )


def invoice_lines(
    items: list[Item],
    usage: list[Usage],
    cycle: Schedule,
    which: Targets,
    currency: str,
    usage_window: tuple[datetime, datetime],
    billed: BilledSpans | None = None,
    began: date | None = None,
    newest: datetime | None = None,
    seen: datetime | None = None,
    voided: BilledSpans | None = None,
) -> list[Line]:
    """Every line of one account's invoice, charges (by charge, then date) before usage.

    ``billed``: what earlier invoices that stand billed, for the advance charges'
    reconciliation and the arrears charge periods begun before the arrears
    period; None when the account has no earlier invoice (then only advance
    items starting inside the arrears period are reconciled, and arrears
    charges are billed for days inside it). ``began``: the first day of the
    account's first invoice's arrears period, where its billing began.
    ``newest``: when the account's newest earlier invoice was made; an item
    whose end was recorded after it is credited for the days billed past that
    end before the arrears period (``cut_short``), and ``billed`` must then
    reach back to ``cut_short_window_start``. ``seen``: when the account's earlier
    invoices last read the items (``recorded_late``); an item recorded after it is
    billed for the days they left out (``late_charges``), and ``billed`` must then
    reach back to ``late_window_start``. ``voided``: what the account's void earlier
    invoices charged, read over the same window (None: none), whose days no line here
    charges again, nor credits: the operator voided them and bills them again, if at
    all, explicitly (decision 0046).
    """
    ordered = sorted(
        items,
        key=lambda i: (
            i.charge_id,
            i.number or "",
            i.start,
            i.item_id or 0,
            i.subscription_id or 0,
            i.account_number_id or 0,
        ),
    )
    found: list[Line] = []
    for item in ordered:
        # Its earlier charge periods first, in the order of their days.
        if billed is not None and recorded_late(item, which, seen):
            found += late_charges(item, cycle, which, currency, billed, began, voided)
        if billed is not None and cut_short(item, which, newest):
            found += cut_short_credits(item, cycle, which, currency, billed)
        found += charge_lines(item, cycle, which, currency, billed, began, voided)
        # An advance charge is reconciled here (``advance_adjustments``); an arrears one
        # looks its spans up in ``charge_lines``, and only for a charge period begun
        # before the arrears period: none looked up for the others.
        if item.timing == "advance" and (
            billed is not None or item.start >= which.arrears.first_day
        ):
            spans = [] if billed is None else spans_of(item, billed)
            gone = [] if voided is None else spans_of(item, voided)
            found += advance_adjustments(item, cycle, which, currency, spans, gone)
    # The window's calls, then the late ones (``late_usage``), each group in a fixed order.
    found += [
        usage_line(u, usage_window, currency)
        for u in sorted(
            usage,
            key=lambda u: (
                u.since is not None,
                u.zone,
                u.direction,
                u.rate_type or "",
                u.gap_from is not None,
            ),
        )
    ]
    return found
