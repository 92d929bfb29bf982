"""An invoice's facts laid out for its document: grouped, totalled, formatted with babel.

``layout`` turns ``InvoiceFacts`` (exact micro-units, dates) into the plain,
JSON-ready structure the Typst template (templates/invoice.typ) prints as it
is: every amount and date is already text in the locale's form, every section
a table of strings. Keeping all arithmetic and formatting here (in Python,
with Decimal) leaves the template no logic to get wrong, and lets the tests
read the same figures the PDF shows.

The lines are grouped as a customer reads a bill: charges (recurring,
proration, one-time and other charges), usage by zone (calls, minutes,
amount), counters, discounts and surcharges (the bundle_* lines and
surcharges), and taxes by code and jurisdiction level. A credit note's reversal
line is grouped with the kind of line it reverses (a reversed tax under taxes).

A credit note has nothing due: instead of the balance-forward statement (an
invoice's), its closing block says what it gave back to the account (its total
negated: only lines whose money moved are reversed, decision 0020), and its facts
name the invoice it voids. It prints no message: the plan's invoice message is an
invoice's (a credit note made before voids stopped copying it still holds one).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent

from ocs.billing.document_data import DocumentLine, InvoiceFacts

MICRO = Decimal(1_000_000)

# Which section each line kind is printed in; a kind not named here is a charge, so a
# new kind of line is never left off the document.
USAGE_KINDS = frozenset({"usage", "usage_event"})
COUNTER_KINDS = frozenset({"counter", "counter_usage"})
ADJUSTMENT_KINDS = frozenset(
    {"bundle_free", "bundle_discount", "bundle_commitment", "bundle_fee", "surcharge"}
)
TAX_KINDS = frozenset({"tax"})

LABELS = {
    "invoice": "Invoice",
    "credit_note": "Credit note",
    "bill_to": "Bill to",
    "statement": "Your account",
    "number": "Number",
    "invoice_date": "Invoice date",
    "period": "Period",
    "due_date": "Due date",
    "account": "Account",
    "charges": "Charges",
    "usage": "Usage",
    "counters": "Counters",
    "adjustments": "Discounts and surcharges",
    "taxes": "Taxes",
    "description": "Description",
    "quantity": "Quantity",
    "amount": "Amount",
    "zone": "Zone",
    "calls": "Calls",
    "minutes": "Minutes",
    "late": "{zone}, recorded late (from {day})",
    "gap": "{zone}, made after the previous invoice's usage ended (from {day})",
    "tax": "Tax",
    "jurisdiction": "Jurisdiction",
    "basis": "Basis",
    "rate": "Rate",
    "subtotal": "Subtotal",
    "tax_total": "Tax",
    "total": "Total",
    "previous_balance": "Previous balance",
    "payments": "Payments",
    "new_charges": "New charges",
    "closing_balance": "Closing balance",
    "amount_due": "Amount due",
    "credit_date": "Date",
    "voids": "Voids invoice",
    "credited": "Credited to your account",
    "debited": "Debited from your account",
}

# The banner across a document that is not the customer's final invoice.
BANNERS = {"draft": "DRAFT", "void": "VOID"}


@dataclass(frozen=True, slots=True)
class Issuer:
    """Who issues the invoices: the settings' invoice_issuer_name and address lines."""

    name: str
    lines: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, name: str, address: str | None) -> "Issuer":
        """The issuer from its settings: the address's lines are separated by '|'."""
        lines = tuple(part.strip() for part in (address or "").split("|") if part.strip())
        return cls(name, lines)


class Formatter:
    """Amounts, numbers and dates written for one locale and currency."""

    def __init__(self, locale: str, currency: str) -> None:
        self.locale = Locale.parse(locale)
        self.currency = currency

    def money(self, micro: int) -> str:
        """An amount in micro-units: the currency's usual decimals, more only where the
        amount has them (a statement's exact ledger sum), never rounded away."""
        value = (Decimal(micro) / MICRO).normalize()
        return format_currency(value, self.currency, locale=self.locale, decimal_quantization=False)

    def day(self, value: date) -> str:
        """A date in the locale's long form (1 April 2026)."""
        return format_date(value, "long", locale=self.locale)

    def short_day(self, value: date) -> str:
        """A date in the locale's medium form (1 Apr 2026)."""
        return format_date(value, "medium", locale=self.locale)

    def count(self, value: int) -> str:
        """A whole number with the locale's grouping."""
        return format_decimal(value, locale=self.locale)

    def minutes(self, seconds: int) -> str:
        """Seconds as minutes with one decimal (90 s -> 1.5)."""
        value = (Decimal(seconds) / 60).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        return format_decimal(value, format="#,##0.0", locale=self.locale)

    def rate(self, millionths_of_percent: int) -> str:
        """A tax or surcharge rate (20000000 -> 20%)."""
        value = (Decimal(millionths_of_percent) / Decimal(100_000_000)).normalize()
        return format_percent(value, locale=self.locale, decimal_quantization=False)

    def country(self, code: str) -> str:
        """A country's name in the locale (GB -> United Kingdom); the code if unknown."""
        return str(self.locale.territories.get(code.upper(), code)) if code else ""


def local_days(start: datetime, end: datetime, zone: str) -> tuple[date, date]:
    """A period [start, end) as its first and last day in the plan's time zone."""
    tz = ZoneInfo(zone)
    return start.astimezone(tz).date(), (end.astimezone(tz) - timedelta(microseconds=1)).date()


def customer_lines(facts: InvoiceFacts, fmt: Formatter) -> list[str]:
    """The customer block: the account, then the billing address as posted mail reads."""
    address = facts.address
    lines = [f"{LABELS['account']} {facts.account_id}"]
    lines += [part.strip() for part in address.street.replace("|", "\n").splitlines()]
    town = " ".join(part for part in (address.postal_code, address.city) if part)
    lines += [town, address.county, address.region, fmt.country(address.country)]
    return [line for line in lines if line]


def _section(
    title: str, columns: list[str], align: str, rows: list[list[str]], total: list[str]
) -> dict[str, Any]:
    """One table of the document: its title, header, rows and total row; ``align``
    has a letter a column: l(eft), r(ight, a figure) or w(ide, left: a date range)."""
    return {"title": title, "columns": columns, "align": list(align), "rows": rows, "total": total}


def _period_text(line: DocumentLine, fmt: Formatter, zone: str) -> str:
    if line.period_start is None or line.period_end is None:
        return ""
    first, last = local_days(line.period_start, line.period_end, zone)
    return f"{fmt.short_day(first)} – {fmt.short_day(last)}"


def charge_section(lines: list[DocumentLine], fmt: Formatter, zone: str) -> dict[str, Any]:
    """Charges: each line with its period, quantity and amount."""
    rows = [
        [line.description, _period_text(line, fmt, zone), fmt.count(line.quantity),
         fmt.money(line.amount)]
        for line in lines
    ]  # fmt: skip
    total = sum(line.amount for line in lines)
    return _section(
        LABELS["charges"],
        [LABELS["description"], LABELS["period"], LABELS["quantity"], LABELS["amount"]],
        "lwrr",
        rows,
        [LABELS["charges"], "", "", fmt.money(total)],
    )


def _usage_kind(
    start: datetime | None, usage_from: datetime | None, gap_from: datetime | None
) -> str:
    """A usage line's row: "" the window's, "gap" stopped after the earlier invoice's
    window ended (``gap_from``, an early run's), "late" recorded late (decision 0050)."""
    if usage_from is None or start is None or start >= usage_from:
        return ""
    return "gap" if gap_from is not None and start >= gap_from else "late"


def usage_section(
    lines: list[DocumentLine],
    fmt: Formatter,
    usage_from: datetime | None = None,
    time_zone: str = "UTC",
    gap_from: datetime | None = None,
) -> dict[str, Any]:
    """Usage by zone: the zone's calls, minutes and amount (its directions together).

    Usage from before the window (``usage_from``) was recorded late and billed here
    (decision 0050), or stopped after the earlier invoice's window ended (``gap_from``:
    an early run's, decision 0021): its own row per zone, saying which and from when.
    """
    # (zone, kind) -> calls, seconds, amount; and each late or gap row's earliest start.
    zones: dict[tuple[str, str], list[int]] = {}
    late_from: dict[tuple[str, str], datetime] = {}
    for line in lines:
        zone = line.zone or line.description
        start = line.period_start
        kind = _usage_kind(start, usage_from, gap_from)
        if kind and start is not None:
            late_from[zone, kind] = min(start, late_from.get((zone, kind), start))
        figures = zones.setdefault((zone, kind), [0, 0, 0])
        figures[0] += line.calls or 0
        figures[1] += line.seconds or 0
        figures[2] += line.amount
    rows = [
        [
            LABELS[kind].format(
                zone=zone,
                day=fmt.short_day(late_from[zone, kind].astimezone(ZoneInfo(time_zone)).date()),
            )
            if kind
            else zone,
            fmt.count(calls),
            fmt.minutes(seconds),
            fmt.money(amount),
        ]
        for (zone, kind), (calls, seconds, amount) in zones.items()
    ]
    calls, seconds, amount = (sum(f[i] for f in zones.values()) for i in range(3))
    return _section(
        LABELS["usage"],
        [LABELS["zone"], LABELS["calls"], LABELS["minutes"], LABELS["amount"]],
        "lrrr",
        rows,
        [LABELS["usage"], fmt.count(calls), fmt.minutes(seconds), fmt.money(amount)],
    )


def simple_section(key: str, lines: list[DocumentLine], fmt: Formatter) -> dict[str, Any]:
    """Counters, or discounts and surcharges: each line's description and amount."""
    rows = [[line.description, fmt.money(line.amount)] for line in lines]
    total = sum(line.amount for line in lines)
    return _section(
        LABELS[key],
        [LABELS["description"], LABELS["amount"]],
        "lr",
        rows,
        [LABELS[key], fmt.money(total)],
    )


def tax_section(lines: list[DocumentLine], fmt: Formatter) -> dict[str, Any]:
    """Taxes by code and jurisdiction level: the basis, rate and amount of each."""
    groups: dict[tuple[str, str], list[DocumentLine]] = {}
    for line in lines:
        groups.setdefault((line.tax_code or "", line.tax_level or ""), []).append(line)
    rows = []
    for (code, level), group in groups.items():
        first = group[0]
        name = f"{code} {first.tax_name}" if first.tax_name else first.description
        rates = {line.rate for line in group}
        rate = fmt.rate(first.rate) if len(rates) == 1 and first.rate is not None else ""
        basis = sum(line.basis or 0 for line in group)
        amount = sum(line.amount for line in group)
        rows.append([name, level, fmt.money(basis), rate, fmt.money(amount)])
    total = sum(line.amount for line in lines)
    return _section(
        LABELS["taxes"],
        [LABELS["tax"], LABELS["jurisdiction"], LABELS["basis"], LABELS["rate"],
         LABELS["amount"]],
        "llrrr",
        rows,
        [LABELS["taxes"], "", "", "", fmt.money(total)],
    )  # fmt: skip


def sections(facts: InvoiceFacts, fmt: Formatter) -> list[dict[str, Any]]:
    """The document's tables, in reading order, leaving out the empty ones."""
    usage = [line for line in facts.lines if line.shown_kind in USAGE_KINDS]
    counters = [line for line in facts.lines if line.shown_kind in COUNTER_KINDS]
    adjustments = [line for line in facts.lines if line.shown_kind in ADJUSTMENT_KINDS]
    taxes = [line for line in facts.lines if line.shown_kind in TAX_KINDS]
    grouped = USAGE_KINDS | COUNTER_KINDS | ADJUSTMENT_KINDS | TAX_KINDS
    charges = [line for line in facts.lines if line.shown_kind not in grouped]
    found: list[dict[str, Any]] = []
    if charges:
        found.append(charge_section(charges, fmt, facts.time_zone))
    if usage:
        found.append(usage_section(usage, fmt, facts.usage_from, facts.time_zone, facts.gap_from))
    if counters:
        found.append(simple_section("counters", counters, fmt))
    if adjustments:
        found.append(simple_section("adjustments", adjustments, fmt))
    if taxes:
        found.append(tax_section(taxes, fmt))
    return found


def _pairs(items: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[label, value] for label, value in items]


def _facts(facts: InvoiceFacts, fmt: Formatter, number: str) -> list[list[str]]:
    """The header's facts: an invoice's dates and due date; a credit note's date and the
    invoice it voids (nothing is due on it)."""
    first, last = local_days(facts.period_start, facts.period_end, facts.time_zone)
    period = (LABELS["period"], f"{fmt.day(first)} – {fmt.day(last)}")
    account = (LABELS["account"], facts.account_id)
    if facts.kind == "credit_note":
        return _pairs(
            (
                (LABELS["number"], number),
                (LABELS["credit_date"], fmt.day(facts.invoice_date)),
                (LABELS["voids"], facts.voids_number or ""),
                period,
                account,
            )
        )
    return _pairs(
        (
            (LABELS["number"], number),
            (LABELS["invoice_date"], fmt.day(facts.invoice_date)),
            period,
            (LABELS["due_date"], fmt.day(facts.due_date)),
            account,
        )
    )


def _statement(facts: InvoiceFacts, fmt: Formatter) -> tuple[list[list[str]], list[str]]:
    """The closing block's figures and its last line: an invoice's balance-forward
    statement (the ledger's exact figures) and its amount due, what it asks in whole
    minor units (what the customer pays: decision 0027); a credit note's money given
    back (or, for a credit note of an invoice that was a net credit, taken back) and
    nothing else."""
    if facts.kind == "credit_note":
        if facts.total <= 0:
            return [], [LABELS["credited"], fmt.money(-facts.total)]
        return [], [LABELS["debited"], fmt.money(facts.total)]
    figures = _pairs(
        (
            (LABELS["previous_balance"], fmt.money(facts.previous_balance)),
            (LABELS["payments"], fmt.money(facts.payments)),
            (LABELS["new_charges"], fmt.money(facts.new_charges)),
            (LABELS["closing_balance"], fmt.money(facts.closing_balance)),
        )
    )
    return figures, [LABELS["amount_due"], fmt.money(facts.asks)]


def layout(facts: InvoiceFacts, issuer: Issuer, locale: str) -> dict[str, Any]:
    """The document's content, every value as text in the locale (what the template
    prints); a draft's or a void invoice's carries its banner."""
    fmt = Formatter(locale, facts.currency)
    title = LABELS["credit_note" if facts.kind == "credit_note" else "invoice"]
    banner = BANNERS.get(facts.state)
    number = facts.number or banner or ""
    statement, due = _statement(facts, fmt)
    return {
        "title": title,
        "number": number,
        "banner": banner,
        "lang": fmt.locale.language,
        "issuer": {"name": issuer.name, "lines": list(issuer.lines)},
        "labels": {"bill_to": LABELS["bill_to"], "statement": LABELS["statement"]},
        "customer": customer_lines(facts, fmt),
        "facts": _facts(facts, fmt, number),
        "sections": sections(facts, fmt),
        "totals": _pairs(
            (
                (LABELS["subtotal"], fmt.money(facts.subtotal)),
                (LABELS["tax_total"], fmt.money(facts.tax_total)),
            )
        ),
        "total": [LABELS["total"], fmt.money(facts.total)],
        "statement": statement,
        "due": due,
        "message": facts.message if facts.kind != "credit_note" else "",
    }
