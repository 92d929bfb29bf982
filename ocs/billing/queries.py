"""Reading what billing stored: invoices and their lines, their calls, charges,
subscriptions and runs, for the CLI, the admin API and the billing worker.

Reads only. The one exception-like helper, ``require_state``, turns a request on
an invoice in the wrong state into ``Reason.INVOICE_STATE`` (409) before the
engine is asked, so an operator learns the invoice's state, not a field error.
"""

from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from ocs.billing import owed
from ocs.billing.itemised import CallRow
from ocs.billing.lines import Line
from ocs.billing.store import Charge
from ocs.billing.taxes import rate_text
from ocs.errors import OcsError, Reason
from ocs.money import format_amount

INVOICE_STATES = ("draft", "posted", "void")
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Invoice:
    """One invoice or credit note as stored (amounts in micro-units, already rounded)."""

    id: int
    account_id: str
    plan_id: str
    kind: str
    state: str
    number: str | None
    period_label: str
    period_start: datetime
    period_end: datetime
    currency: str
    invoice_date: date
    subtotal: int
    tax_total: int
    total: int
    taxes_calculated: bool
    message: str
    run_id: int | None
    voids_invoice_id: int | None
    posted_at: datetime | None
    voided_at: datetime | None
    tax_error: str | None  # why its taxes could not be calculated: it stays a draft
    # Its balance-forward statement (decision 0020); a credit note's are all 0: it has none.
    previous_balance: int = 0
    payments: int = 0
    new_charges: int = 0
    closing_balance: int = 0
    amount_due: int = 0
    # What a posted invoice asks (``owed.asked``, stored at posting); None before posting.
    amount_asked: int | None = None
    amount_paid: int = 0
    paid_at: datetime | None = None

    @property
    def asks(self) -> int | None:
        """What the invoice asks to be paid, in whole minor units: as posted, or, for a
        draft, what its statement would ask now; None for a credit note (it asks nothing)."""
        if self.kind == "credit_note":
            return None
        if self.amount_asked is not None:
            return self.amount_asked
        return owed.asked(self.amount_due, self.new_charges, self.currency.strip())

    @classmethod
    def from_row(cls, row: Any) -> "Invoice":
        """The invoice of one ``invoices`` row."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of an invoice, with what it traces back to (charge, CDRs, ledger)."""

    position: int
    kind: str
    description: str
    period_start: datetime | None
    period_end: datetime | None
    quantity: int
    amount: int
    exact_amount: int
    moves_money: bool
    charge_id: str | None
    zone: str | None
    direction: str | None
    calls: int | None
    seconds: int | None
    billed_seconds: int | None
    first_cdr: str | None
    last_cdr: str | None
    number: str | None
    ledger_entry: str | None
    moved_at: datetime | None
    tax_code: str | None  # tax and surcharge lines: the tax's code,
    basis: int | None  # the amount the rate applied to,
    rate: int | None  # and the rate in millionths of a percent
    rate_type: str | None  # a usage line's rate type


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    """A charge a subscription adds, from its own start to its own end (None: the
    subscription's)."""

    id: int
    charge_id: str
    quantity: int
    start_date: date | None
    end_date: date | None


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """A subscription as stored, with its charges."""

    id: int
    account_id: str
    plan_id: str
    status: str
    start_date: date
    end_date: date | None
    cancelled_on: date | None
    category: str
    service: str
    billing_address: str
    salesperson: str
    items: list[SubscriptionItem]


@dataclass(frozen=True, slots=True)
class Run:
    """An invoice run's settings and progress."""

    id: int
    period: str
    plan_id: str | None
    invoice_date: date
    charge_cutoff: datetime | None
    usage_cutoff: datetime | None
    calculate_taxes: bool
    state: str
    accounts_done: int
    accounts_total: int
    chunks_done: int
    chunks_total: int
    created_at: datetime
    finished_at: datetime | None


async def list_invoices(
    pool: asyncpg.Pool,
    *,
    account_id: str | None = None,
    period: str | None = None,
    state: str | None = None,
    run_id: int | None = None,
    limit: int = 100,
) -> list[Invoice]:
    """Invoices and credit notes matching every filter given, newest period first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM invoices WHERE ($1::text IS NULL OR account_id = $1)"
            " AND ($2::text IS NULL OR period_label = $2)"
            " AND ($3::text IS NULL OR state = $3)"
            " AND ($4::bigint IS NULL OR run_id = $4)"
            " ORDER BY period_start DESC, account_id, id LIMIT $5",
            account_id,
            period,
            state,
            run_id,
            min(limit, MAX_LIST),
        )
    return [Invoice.from_row(r) for r in rows]


async def invoice(pool: asyncpg.Pool, invoice_id: int) -> tuple[Invoice, list[InvoiceLine]]:
    """One invoice and its lines in order; NOT_FOUND (404) when there is none."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}", field="invoice_id")
        lines = await conn.fetch(
            "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", invoice_id
        )
    names = [f.name for f in fields(InvoiceLine)]
    return Invoice.from_row(row), [InvoiceLine(**{n: r[n] for n in names}) for r in lines]


async def require_state(
    pool: asyncpg.Pool, invoice_id: int, allowed: tuple[str, ...], action: str
) -> Invoice:
    """The invoice, if it is an invoice (not a credit note) in one of ``allowed`` states.

    NOT_FOUND (404) without it; INVOICE_STATE (409) naming its state otherwise.
    """
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no invoice {invoice_id}", field="invoice_id")
    found = Invoice.from_row(row)
    if found.kind != "invoice" or found.state not in allowed:
        raise OcsError(
            Reason.INVOICE_STATE,
            f"invoice {invoice_id} is a {found.state} {found.kind.replace('_', ' ')}:"
            f" only a {' or '.join(allowed)} invoice can be {action}",
            field="invoice_id",
        )
    return found


async def list_charges(pool: asyncpg.Pool, plan_id: str | None = None) -> list[Charge]:
    """Every charge (or a plan's custom charges), by id."""
    names = [f.name for f in fields(Charge)]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {', '.join(names)} FROM charges"
            " WHERE ($1::text IS NULL OR plan_id = $1) ORDER BY id LIMIT $2",
            plan_id,
            MAX_LIST,
        )
    return [Charge(**dict(r)) for r in rows]


async def list_subscriptions(
    pool: asyncpg.Pool,
    account_id: str | None = None,
    *,
    after: int = 0,
    limit: int = MAX_LIST,
) -> list[SubscriptionRow]:
    """Subscriptions (of one account, or all) with their charges, oldest first: at most
    ``limit`` of them, from the first whose id is past ``after`` (a page's last id)."""
    async with pool.acquire() as conn:
        subs = await conn.fetch(
            "SELECT * FROM subscriptions WHERE ($1::text IS NULL OR account_id = $1)"
            " AND id > $2 ORDER BY id LIMIT $3",
            account_id,
            after,
            limit,
        )
        return await _with_charges(conn, subs)


async def subscription(pool: asyncpg.Pool, subscription_id: int) -> SubscriptionRow | None:
    """One subscription with its charges, read by its id; None when there is none."""
    async with pool.acquire() as conn:
        subs = await conn.fetch("SELECT * FROM subscriptions WHERE id = $1", subscription_id)
        found = await _with_charges(conn, subs)
    return found[0] if found else None


async def _with_charges(conn: asyncpg.Connection, subs: list[Any]) -> list[SubscriptionRow]:
    """The subscriptions of ``subs`` (rows of ``subscriptions``), each with its charges."""
    items = await conn.fetch(
        "SELECT * FROM subscription_charges WHERE subscription_id = ANY($1::bigint[]) ORDER BY id",
        [s["id"] for s in subs],
    )
    by_sub: dict[int, list[SubscriptionItem]] = {}
    for i in items:
        by_sub.setdefault(i["subscription_id"], []).append(
            SubscriptionItem(i["id"], i["charge_id"], i["quantity"], i["start_date"], i["end_date"])
        )
    return [
        SubscriptionRow(
            s["id"],
            s["account_id"],
            s["plan_id"],
            s["status"],
            s["start_date"],
            s["end_date"],
            s["cancelled_on"],
            s["category"],
            s["service"],
            s["billing_address"],
            s["salesperson"],
            by_sub.get(s["id"], []),
        )
        for s in subs
    ]


_RUN_SQL = """
SELECT r.*,
       (SELECT count(*) FROM invoice_run_chunks WHERE run_id = r.id AND done_at IS NOT NULL)
         AS chunks_done,
       (SELECT count(*) FROM invoice_run_chunks WHERE run_id = r.id) AS chunks_total
FROM invoice_runs r
"""


def _run(row: Any) -> Run:
    """The run of one row of ``_RUN_SQL``."""
    return Run(**{f.name: row[f.name] for f in fields(Run)})


async def run(pool: asyncpg.Pool, run_id: int) -> Run:
    """One invoice run with its progress; NOT_FOUND (404) when there is none."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_RUN_SQL + " WHERE r.id = $1", run_id)
    if row is None:
        raise OcsError(Reason.NOT_FOUND, f"no invoice run {run_id}", field="run_id")
    return _run(row)


@dataclass(frozen=True, slots=True)
class UnfinishedRun:
    """A run with a chunk not done, and the plans of its chunks not done."""

    run_id: int
    plans: frozenset[str]


async def unfinished_runs(pool: asyncpg.Pool) -> list[UnfinishedRun]:
    """The runs with a chunk not done, by their earliest period, then oldest first: what a
    billing worker works on, in the order a plan's periods follow each other."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT run_id, array_agg(DISTINCT plan_id) AS plans FROM invoice_run_chunks"
            " WHERE done_at IS NULL GROUP BY run_id ORDER BY min(period_start), run_id"
        )
    return [UnfinishedRun(int(r["run_id"]), frozenset(r["plans"])) for r in rows]


async def run_totals(pool: asyncpg.Pool) -> dict[str, tuple[int, int]]:
    """Run state -> (accounts done, accounts total) over every run: progress for metrics."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT state, sum(accounts_done)::bigint AS done, sum(accounts_total)::bigint AS total"
            " FROM invoice_runs GROUP BY state"
        )
    return {r["state"]: (int(r["done"]), int(r["total"])) for r in rows}


# --- views: what the CLI prints and the admin API answers (amounts as decimal strings) ---


class StatementView(msgspec.Struct, kw_only=True):
    """An invoice's balance-forward statement (exact micro-units as decimal strings):
    previous balance + payments - new charges = closing balance; amount due = what the
    account owes after posting. Its document prints the first four, then what the
    invoice asks (the view's ``amount_asked``) as its amount due."""

    previous_balance: str
    payments: str
    new_charges: str
    closing_balance: str
    amount_due: str


class InvoiceView(msgspec.Struct, kw_only=True):
    """An invoice or credit note as shown: amounts as decimal strings of micro-units.
    ``statement``: an invoice's; None for a credit note, which has none (its document
    says what it credited to the account instead: ``-total``)."""

    id: int
    account: str
    plan: str
    kind: str
    state: str
    number: str | None
    period: str
    period_start: datetime
    period_end: datetime
    currency: str
    invoice_date: date
    subtotal: str
    tax_total: str
    total: str
    taxes_calculated: bool
    message: str
    run_id: int | None
    voids_invoice_id: int | None
    posted_at: datetime | None
    voided_at: datetime | None
    tax_error: str | None = None
    statement: StatementView | None = None
    # What the invoice asks to be paid, rounded once to the currency's minor unit (the
    # figure payments settle and dunning pursues), what was paid of it and when it was
    # paid in full; None for a credit note.
    amount_asked: str | None = None
    amount_paid: str | None = None
    paid_at: datetime | None = None


class InvoiceLineView(msgspec.Struct, kw_only=True):
    """One invoice line as shown; ``moved``: its money has moved (posted charges)."""

    position: int
    kind: str
    description: str
    period_start: datetime | None
    period_end: datetime | None
    quantity: int
    amount: str
    exact_amount: str
    moves_money: bool
    moved: bool
    charge_id: str | None
    zone: str | None
    direction: str | None
    calls: int | None
    seconds: int | None
    billed_seconds: int | None
    first_cdr: str | None
    last_cdr: str | None
    number: str | None
    tax_code: str | None = None
    basis: str | None = None  # tax and surcharge lines: the amount the rate applied to
    rate: str | None = None  # and the rate in percent ("20", "8.875")
    rate_type: str | None = None  # a usage line's rate type


class InvoiceDetailView(InvoiceView, kw_only=True):
    """An invoice with its lines."""

    lines: list[InvoiceLineView]


class InvoiceCallView(msgspec.Struct, kw_only=True):
    """One call of an invoice's itemised list (``ocs.billing.itemised``)."""

    time: datetime
    caller: str | None
    member: str | None
    destination: str
    zone: str
    direction: str
    duration: int
    billed_seconds: int
    amount: str
    currency: str
    cdr: str


class RunView(msgspec.Struct, kw_only=True):
    """An invoice run and its progress (accounts done of total)."""

    id: int
    period: str
    plan: str | None
    invoice_date: date
    charge_cutoff: datetime | None
    usage_cutoff: datetime | None
    calculate_taxes: bool
    state: str
    accounts_done: int
    accounts_total: int
    chunks_done: int
    chunks_total: int
    created_at: datetime
    finished_at: datetime | None


class ChargeView(msgspec.Struct, kw_only=True):
    """A charge as shown."""

    id: str
    name: str
    product_code: str
    currency: str
    amount: str
    kind: str
    cadence: str | None
    every_days: int | None
    timing: str
    tax_code: str
    gl_code: str
    plan: str | None


class SubscriptionItemView(msgspec.Struct, kw_only=True):
    """A charge a subscription adds."""

    id: int
    charge_id: str
    quantity: int
    start_date: date | None
    end_date: date | None


class SubscriptionView(msgspec.Struct, kw_only=True):
    """A subscription and its charges."""

    id: int
    account: str
    plan: str
    status: str
    start_date: date
    end_date: date | None
    cancelled_on: date | None
    category: str
    service: str
    billing_address: str
    salesperson: str
    charges: list[SubscriptionItemView]


def invoice_view(found: Invoice) -> InvoiceView:
    """An invoice as shown."""
    return InvoiceView(**_invoice_fields(found))


def _invoice_fields(found: Invoice) -> dict[str, Any]:
    """The shown fields of an invoice."""
    return {
        "id": found.id,
        "account": found.account_id,
        "plan": found.plan_id,
        "kind": found.kind,
        "state": found.state,
        "number": found.number,
        "period": found.period_label,
        "period_start": found.period_start,
        "period_end": found.period_end,
        "currency": found.currency,
        "invoice_date": found.invoice_date,
        "subtotal": format_amount(found.subtotal),
        "tax_total": format_amount(found.tax_total),
        "total": format_amount(found.total),
        "taxes_calculated": found.taxes_calculated,
        "message": found.message,
        "run_id": found.run_id,
        "voids_invoice_id": found.voids_invoice_id,
        "posted_at": found.posted_at,
        "voided_at": found.voided_at,
        "tax_error": found.tax_error,
        "statement": statement_view(found),
        "amount_asked": None if found.asks is None else format_amount(found.asks),
        "amount_paid": None if found.kind == "credit_note" else format_amount(found.amount_paid),
        "paid_at": found.paid_at,
    }


def statement_view(found: Invoice) -> StatementView | None:
    """An invoice's statement as shown; None for a credit note (it has none)."""
    if found.kind == "credit_note":
        return None
    return StatementView(
        previous_balance=format_amount(found.previous_balance),
        payments=format_amount(found.payments),
        new_charges=format_amount(found.new_charges),
        closing_balance=format_amount(found.closing_balance),
        amount_due=format_amount(found.amount_due),
    )


def line_view(line: InvoiceLine) -> InvoiceLineView:
    """An invoice line as shown."""
    return InvoiceLineView(
        position=line.position,
        kind=line.kind,
        description=line.description,
        period_start=line.period_start,
        period_end=line.period_end,
        quantity=line.quantity,
        amount=format_amount(line.amount),
        exact_amount=format_amount(line.exact_amount),
        moves_money=line.moves_money,
        moved=line.moved_at is not None,
        charge_id=line.charge_id,
        zone=line.zone,
        direction=line.direction,
        calls=line.calls,
        seconds=line.seconds,
        billed_seconds=line.billed_seconds,
        first_cdr=line.first_cdr,
        last_cdr=line.last_cdr,
        number=line.number,
        tax_code=line.tax_code,
        basis=None if line.basis is None else format_amount(line.basis),
        rate=None if line.rate is None else rate_text(line.rate),
        rate_type=line.rate_type,
    )


def draft_line_view(position: int, line: Line) -> InvoiceLineView:
    """A computed line (a dry run's) as shown: the stored line it would be, not yet moved."""
    stored = InvoiceLine(
        position=position,
        kind=line.kind,
        description=line.description,
        period_start=line.period_start,
        period_end=line.period_end,
        quantity=line.quantity,
        amount=int(line.amount),
        exact_amount=int(line.exact),
        moves_money=line.moves_money,
        charge_id=line.charge_id,
        zone=line.zone,
        direction=line.direction,
        calls=line.calls,
        seconds=line.seconds,
        billed_seconds=line.billed_seconds,
        first_cdr=line.first_cdr,
        last_cdr=line.last_cdr,
        number=line.number,
        ledger_entry=None,
        moved_at=None,
        tax_code=line.tax_code,
        basis=line.basis,
        rate=line.rate,
        rate_type=line.rate_type,
    )
    return line_view(stored)


def detail_view(found: Invoice, lines: list[InvoiceLine]) -> InvoiceDetailView:
    """An invoice with its lines, as shown."""
    return InvoiceDetailView(**_invoice_fields(found), lines=[line_view(li) for li in lines])


def call_view(call: CallRow) -> InvoiceCallView:
    """An itemised call as shown (amounts as decimal strings)."""
    return InvoiceCallView(
        time=call.time,
        caller=call.caller,
        member=call.member,
        destination=call.destination,
        zone=call.zone,
        direction=call.direction,
        duration=call.duration,
        billed_seconds=call.billed_seconds,
        amount=format_amount(call.amount),
        currency=call.currency,
        cdr=call.cdr,
    )


def run_view(found: Run) -> RunView:
    """An invoice run as shown."""
    fields_ = {f.name: getattr(found, f.name) for f in fields(Run)}
    fields_["plan"] = fields_.pop("plan_id")
    return RunView(**fields_)


def charge_view(charge: Charge) -> ChargeView:
    """A charge as shown."""
    return ChargeView(
        id=charge.id,
        name=charge.name,
        product_code=charge.product_code,
        currency=charge.currency,
        amount=format_amount(charge.amount),
        kind=charge.kind,
        cadence=charge.cadence,
        every_days=charge.every_days,
        timing=charge.timing,
        tax_code=charge.tax_code,
        gl_code=charge.gl_code,
        plan=charge.plan_id,
    )


def subscription_view(sub: SubscriptionRow) -> SubscriptionView:
    """A subscription as shown."""
    return SubscriptionView(
        id=sub.id,
        account=sub.account_id,
        plan=sub.plan_id,
        status=sub.status,
        start_date=sub.start_date,
        end_date=sub.end_date,
        cancelled_on=sub.cancelled_on,
        category=sub.category,
        service=sub.service,
        billing_address=sub.billing_address,
        salesperson=sub.salesperson,
        charges=[
            SubscriptionItemView(
                id=i.id,
                charge_id=i.charge_id,
                quantity=i.quantity,
                start_date=i.start_date,
                end_date=i.end_date,
            )
            for i in sub.items
        ],
    )
