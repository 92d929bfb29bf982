"""What an invoice document shows, read from PostgreSQL in exact values (issue 14).

One invoice's figures (its header, totals and balance-forward statement, the
plan's grace days and time zone), the billing address of the account's
subscription to the invoice's plan, and its lines with each tax line's
jurisdiction level: everything ``ocs.billing.document_layout`` formats, read
in two queries. Amounts stay integer micro-units here.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from ocs.billing import owed
from ocs.errors import OcsError, Reason

# The subscription whose address is printed: the account's to the invoice's plan, the
# one in force at the period's end (the latest started by then), else the latest one.
_INVOICE_SQL = """
SELECT i.id, i.kind, i.state, i.number, i.account_id, i.plan_id, i.currency, i.invoice_date,
       i.period_start, i.period_end, i.period_label, i.subtotal, i.tax_total, i.total,
       i.previous_balance, i.payments, i.new_charges, i.closing_balance, i.amount_due,
       i.amount_asked,
       i.message, COALESCE(i.window_start, i.period_start) AS usage_from,
       (SELECT e.window_end FROM invoices e
        WHERE e.account_id = i.account_id AND e.kind = 'invoice'
          AND e.period_start < i.period_start
        ORDER BY e.period_start DESC LIMIT 1) AS gap_from,
       v.number AS voids_number,
       COALESCE(pb.grace_days, 0) AS grace_days, COALESCE(pb.time_zone, 'UTC') AS time_zone,
       (i.posted_at AT TIME ZONE COALESCE(pb.time_zone, 'UTC'))::date AS posted_on,
       s.billing_address, s.billing_city, s.billing_county, s.billing_region,
       s.billing_postal_code, s.billing_country
FROM invoices i
LEFT JOIN invoices v ON v.id = i.voids_invoice_id
LEFT JOIN plan_billing pb ON pb.plan_id = i.plan_id
LEFT JOIN LATERAL (
    SELECT s.billing_address, s.billing_city, s.billing_county, s.billing_region,
           s.billing_postal_code, s.billing_country
    FROM subscriptions s
    WHERE s.account_id = i.account_id AND s.plan_id = i.plan_id
    ORDER BY (s.start_date < i.period_end::date) DESC, s.start_date DESC, s.id DESC
    LIMIT 1
) s ON true
WHERE i.id = $1
"""

# A credit note's reversal line carries the kind of the line it reverses, so that it is
# laid out (and its tax named) as that line was.
_LINES_SQL = """
SELECT l.kind, l.description, l.period_start, l.period_end, l.quantity, l.amount, l.zone,
       l.direction, l.calls, l.seconds, l.tax_code, l.basis, l.rate, t.level AS tax_level,
       t.name AS tax_name, o.kind AS reverses_kind
FROM invoice_lines l
LEFT JOIN invoice_lines o ON o.id = l.reverses_line
LEFT JOIN taxes t ON COALESCE(o.kind, l.kind) = 'tax' AND t.code = l.tax_code
                 AND t.currency = $2
WHERE l.invoice_id = $1
ORDER BY l.position
"""


@dataclass(frozen=True, slots=True)
class Address:
    """A subscription's billing address (empty strings: not given)."""

    street: str = ""
    city: str = ""
    county: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True, slots=True)
class DocumentLine:
    """One invoice line as the document needs it; amounts in micro-units."""

    kind: str
    description: str
    period_start: datetime | None
    period_end: datetime | None
    quantity: int
    amount: int
    zone: str | None = None
    direction: str | None = None
    calls: int | None = None
    seconds: int | None = None
    tax_code: str | None = None
    basis: int | None = None
    rate: int | None = None  # millionths of a percent
    tax_level: str | None = None  # the tax's jurisdiction level
    tax_name: str | None = None
    reverses_kind: str | None = None  # a reversal line's: the kind of the line it reverses

    @property
    def shown_kind(self) -> str:
        """The kind the document groups it by: a reversal's is the reversed line's."""
        return self.reverses_kind or self.kind


@dataclass(frozen=True, slots=True)
class InvoiceFacts:
    """Everything an invoice document shows, in exact values."""

    id: int
    kind: str  # invoice | credit_note
    state: str  # draft | posted | void
    number: str | None
    account_id: str
    plan_id: str
    currency: str
    invoice_date: date
    period_start: datetime
    period_end: datetime
    period_label: str
    time_zone: str
    grace_days: int
    subtotal: int
    tax_total: int
    total: int
    previous_balance: int
    payments: int
    new_charges: int
    closing_balance: int
    amount_due: int
    message: str
    address: Address
    lines: tuple[DocumentLine, ...]
    # Where the usage window starts: a usage line from before it is late (decision 0050).
    usage_from: datetime | None = None
    # Where the usage window of the account's earlier invoice ended: a usage line from
    # there to ``usage_from`` was stopped after it (an early run), not recorded late
    # (decision 0021, addendum 2026-12-07).
    gap_from: datetime | None = None
    # A credit note's: the number of the invoice it voids.
    voids_number: str | None = None
    # What a posted invoice asks (stored at posting); None for a draft.
    amount_asked: int | None = None
    # The local day it was posted; None for a draft.
    posted_on: date | None = None

    @property
    def asks(self) -> int:
        """What the invoice asks to be paid, in whole minor units: as posted, or what a
        draft's statement would ask now (the one rule, ``owed.asked``)."""
        if self.amount_asked is not None:
            return self.amount_asked
        return owed.asked(self.amount_due, self.new_charges, self.currency.strip())

    @property
    def due_date(self) -> date:
        """When payment is due: the plan's grace days after the later of the invoice date
        and the day it was posted, the due date dunning counts from (decision 0028)."""
        start = self.invoice_date
        if self.posted_on is not None and self.posted_on > start:
            start = self.posted_on
        return start + timedelta(days=self.grace_days)


async def load_facts(conn: asyncpg.Connection, invoice_id: int) -> InvoiceFacts:
    """An invoice's document facts; NOT_FOUND for no such invoice."""
    row = await conn.fetchrow(_INVOICE_SQL, invoice_id)
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}")
    lines = await conn.fetch(_LINES_SQL, invoice_id, row["currency"])
    address = Address(
        *(
            row[name] or ""
            for name in (
                "billing_address",
                "billing_city",
                "billing_county",
                "billing_region",
                "billing_postal_code",
                "billing_country",
            )
        )
    )
    return InvoiceFacts(
        id=row["id"],
        kind=row["kind"],
        state=row["state"],
        number=row["number"],
        account_id=row["account_id"],
        plan_id=row["plan_id"],
        currency=row["currency"],
        invoice_date=row["invoice_date"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        period_label=row["period_label"],
        time_zone=row["time_zone"],
        grace_days=row["grace_days"],
        subtotal=row["subtotal"],
        tax_total=row["tax_total"],
        total=row["total"],
        previous_balance=row["previous_balance"],
        payments=row["payments"],
        new_charges=row["new_charges"],
        closing_balance=row["closing_balance"],
        amount_due=row["amount_due"],
        message=row["message"],
        address=address,
        lines=tuple(DocumentLine(**dict(line)) for line in lines),
        usage_from=row["usage_from"],
        gap_from=row["gap_from"],
        voids_number=row["voids_number"],
        amount_asked=row["amount_asked"],
        posted_on=row["posted_on"],
    )
