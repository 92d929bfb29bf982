"""What a void invoice billed that no invoice that stands bills again: the operator's list.

A void invoice's charge days and fees are not billed again by the runs, nor credited
(decision 0046, addendum 2026-12-07): they are the operator's to bill again, explicitly.
This lists them for one void invoice: each of its charge, fee and resiliation lines
(what posting charged: credits are given again by the runs, usage was debited live and
is not billed again, decision 0050) with the days of its period that no posted or draft
invoice of the account bills. Billed again means a positive line of the same thing:

- a charge (recurring, proration): the same charge, source (the subscription or the
  number's assignment) and number, over some of the same days. The operator bills
  voided days again by adding the charge to the subscription for them (a new item of
  the same charge and source, decision 0046), which this matches day by day;
- a one-time charge: the same charge and source, on the same day;
- a bundle's flat fee: the same subscription bundle and rule (by position, migration
  0066; a line from before matched by its description) for the same period, when what
  stands of that period nets above nothing: a run's charge taking back a credit of its
  unused days, given while the voided fee stood (decision 0023), bills no fee again;
- a resiliation fee: the same subscription bundle.

Anything billed again another way (a one-time charge for an agreed amount, a bundle
attached anew) names something else, and the operator knows it: the line stays listed.
Days are local days of the void invoice's plan's time zone, as its lines' periods are.
"""

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from ocs.billing import queries
from ocs.billing.currency import round_line
from ocs.billing.proration import prorate
from ocs.money import format_amount

# The kinds of line that charge for an item or a fee (what a void gave back).
_KINDS = "('recurring', 'proration', 'one_time', 'bundle_fee', 'resiliation')"
_CHARGE_KINDS = ("recurring", "proration", "one_time")

_FIELDS = """l.position, l.kind, l.description, l.period_start, l.period_end, l.amount,
       l.exact_amount, l.charge_id, l.subscription_id, l.account_number_id, l.number,
       l.subscription_bundle_id, l.bundle_rule_position"""

# The void invoice's lines that charged an item or a fee.
_VOID_LINES_SQL = f"""
SELECT {_FIELDS}
FROM invoice_lines l
WHERE l.invoice_id = $1 AND l.moves_money AND l.exact_amount > 0 AND l.kind IN {_KINDS}
ORDER BY l.position
"""

# The account's ($1) lines on invoices that stand (posted or draft) charging one of the
# charges ($2) or subscription bundles ($3): those that may bill them again; and the
# bundle fees' credits, which a charge taking one back nets to nothing (``_nets_above``).
_STANDING_LINES_SQL = f"""
SELECT {_FIELDS}
FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
WHERE i.account_id = $1 AND i.kind = 'invoice' AND i.state <> 'void'
  AND l.moves_money AND (l.exact_amount > 0 OR l.kind = 'bundle_fee') AND l.kind IN {_KINDS}
  AND (l.charge_id = ANY($2::text[]) OR l.subscription_bundle_id = ANY($3::bigint[]))
"""


class DaySpan(msgspec.Struct, kw_only=True):
    """Local days [start_date, end_date): what ``add-charge --start --end`` takes."""

    start_date: date
    end_date: date


class UnbilledView(msgspec.Struct, kw_only=True):
    """A void invoice's line that no invoice that stands bills again (all or some days).

    ``days``: its period's local days (null: a one-time charge or one-off fee, billed
    on its day); ``unbilled``: the days no invoice that stands bills, and
    ``unbilled_amount`` what they came to on the void invoice (its exact amount x
    unbilled days / days, rounded once), the whole line's ``amount`` when it has no days.
    """

    position: int
    kind: str
    description: str
    charge_id: str | None
    subscription_id: int | None
    account_number_id: int | None
    number: str | None
    subscription_bundle_id: int | None
    period_start: datetime | None
    period_end: datetime | None
    days: int | None
    amount: str
    unbilled: list[DaySpan]
    unbilled_amount: str


@dataclass(frozen=True, slots=True)
class _Line:
    """A charge or fee line as compared here."""

    row: asyncpg.Record
    first: date  # local day of its period's start
    after: date | None  # local day after its period (None: a day's, one-time)


def _charge_key(row: asyncpg.Record) -> tuple[object, ...]:
    """What a charge line bills: charge, source and number (its item may be new)."""
    return (row["charge_id"], row["subscription_id"], row["account_number_id"], row["number"])


def _same_fee(void: asyncpg.Record, other: asyncpg.Record) -> bool:
    """Whether ``other`` bills the bundle fee (or resiliation) ``void`` billed."""
    if other["kind"] != void["kind"] or other["subscription_bundle_id"] is None:
        return False
    if other["subscription_bundle_id"] != void["subscription_bundle_id"]:
        return False
    if void["kind"] == "resiliation":
        return True
    if other["period_start"] != void["period_start"]:
        return False
    if void["bundle_rule_position"] is not None and other["bundle_rule_position"] is not None:
        return bool(void["bundle_rule_position"] == other["bundle_rule_position"])
    return bool(void["description"] == other["description"])


def _nets_above(void: asyncpg.Record, standing: list[_Line]) -> bool:
    """Whether what stands of the bundle fee period ``void`` charged nets above nothing:
    its lines naming the same subscription bundle and rule and ending where it does
    (charges, credits of unused days, which end with the period they credit). A charge
    that takes back a credit given of the period after its fee was voided (decision
    0023, addendum 2026-12-07) nets that credit to nothing: it bills no fee again. A
    line naming no rule (before migration 0066) is not netted."""
    if void["kind"] != "bundle_fee" or void["bundle_rule_position"] is None:
        return True
    net = sum(
        s.row["exact_amount"]
        for s in standing
        if s.row["kind"] == "bundle_fee"
        and s.row["subscription_bundle_id"] == void["subscription_bundle_id"]
        and s.row["bundle_rule_position"] == void["bundle_rule_position"]
        and s.row["period_end"] == void["period_end"]
    )
    return bool(net > 0)


def _minus(first: date, after: date, taken: list[tuple[date, date]]) -> list[tuple[date, date]]:
    """The days [first, after) less the spans ``taken``, as spans in order."""
    left = [(first, after)]
    for start, end in sorted(taken):
        kept = []
        for a, b in left:
            if end <= a or start >= b:
                kept.append((a, b))
                continue
            if a < start:
                kept.append((a, start))
            if end < b:
                kept.append((end, b))
        left = kept
    return left


def _unbilled_spans(line: _Line, standing: list[_Line]) -> list[tuple[date, date]]:
    """The days of a void invoice's line that no line of ``standing`` bills again: all
    of them or none for a fee or a one-time charge, day by day for a charge period."""
    row = line.row
    if row["kind"] not in _CHARGE_KINDS:
        again = any(_same_fee(row, s.row) and s.row["exact_amount"] > 0 for s in standing)
        if again and not _nets_above(row, standing):
            again = False
        return [] if again else [(line.first, line.after or line.first)]
    same = [
        s
        for s in standing
        if s.row["kind"] in _CHARGE_KINDS and _charge_key(s.row) == _charge_key(row)
    ]
    if line.after is None:  # a one-time charge: its day
        again = any(s.after is None and s.first == line.first for s in same)
        return [] if again else [(line.first, line.first)]
    return _minus(line.first, line.after, [(s.first, s.after) for s in same if s.after])


def _as_line(row: asyncpg.Record, zone: ZoneInfo) -> _Line:
    """A line with its period in local days."""
    start, end = row["period_start"], row["period_end"]
    first = start.astimezone(zone).date() if start is not None else date.min
    return _Line(row, first, None if end is None else end.astimezone(zone).date())


def _view(line: _Line, spans: list[tuple[date, date]], currency: str) -> UnbilledView:
    """A listed line as shown."""
    row = line.row
    days = None if line.after is None else (line.after - line.first).days
    if days:
        unbilled_days = sum((b - a).days for a, b in spans)
        unbilled = round_line(prorate(row["exact_amount"], unbilled_days, days), currency)
    else:
        unbilled = row["amount"]
    return UnbilledView(
        position=row["position"],
        kind=row["kind"],
        description=row["description"],
        charge_id=row["charge_id"],
        subscription_id=row["subscription_id"],
        account_number_id=row["account_number_id"],
        number=row["number"],
        subscription_bundle_id=row["subscription_bundle_id"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        days=days,
        amount=format_amount(row["amount"]),
        unbilled=[DaySpan(start_date=a, end_date=b) for a, b in spans if b > a]
        if days is not None
        else [],
        unbilled_amount=format_amount(unbilled),
    )


async def unbilled(pool: asyncpg.Pool, invoice_id: int) -> list[UnbilledView]:
    """The void invoice's charge and fee lines that no invoice that stands bills again
    (some of whose days, for a charge period), in the invoice's order.

    NOT_FOUND (404) without the invoice; INVOICE_STATE (409) unless it is a void invoice
    (a posted or draft one bills what it bills; a credit note bills nothing).
    """
    found = await queries.require_state(
        pool, invoice_id, ("void",), "asked for its unbilled charges and fees"
    )
    async with pool.acquire() as conn:
        voided = await conn.fetch(_VOID_LINES_SQL, invoice_id)
        zone_name = await conn.fetchval(
            "SELECT time_zone FROM plan_billing WHERE plan_id = $1", found.plan_id
        )
        standing = await conn.fetch(
            _STANDING_LINES_SQL,
            found.account_id,
            sorted({r["charge_id"] for r in voided if r["charge_id"] is not None}),
            sorted({r["subscription_bundle_id"] for r in voided if r["subscription_bundle_id"]}),
        )
    zone = ZoneInfo(zone_name or "UTC")
    others = [_as_line(r, zone) for r in standing]
    listed = []
    for row in voided:
        line = _as_line(row, zone)
        spans = _unbilled_spans(line, others)
        if spans:
            listed.append(_view(line, spans, found.currency))
    return listed
