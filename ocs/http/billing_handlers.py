"""Billing in the admin API: invoice runs, invoices, charges, plan billing, subscriptions
and on-demand sessions.

A thin adapter over ``ocs.billing``: billing staff are operators (they write),
viewers read. A request on an invoice in the wrong state (posting a void one,
voiding a draft) is refused 409 ``invoice_state``. A run created here is
drafted by the billing workers (``ocs billing-worker``, ``ocs demo``), or in
the request itself with ``"execute": true`` (a small run).
"""

from datetime import date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
from aiohttp import web

from ocs import metrics
from ocs.balances.accounts import validate_account_id
from ocs.billing import (
    commitments,
    drafts,
    itemised,
    posting,
    queries,
    rules_store,
    runs,
    sessions,
    store,
    unbilled,
)
from ocs.billing.cycles import PlanBilling
from ocs.billing.queries import (
    ChargeView,
    InvoiceCallView,
    InvoiceDetailView,
    InvoiceLineView,
    InvoiceView,
    RunView,
    SubscriptionView,
)
from ocs.billing.unbilled import UnbilledView
from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import caller_may, services_of
from ocs.http.endpoint import (
    AccountId,
    Amount,
    Answer,
    Currency,
    Endpoint,
    ObjectId,
    Params,
    Role,
    amount_text,
)
from ocs.http.path_ids import path_id
from ocs.services import Services
from ocs.whole_numbers import MAX_BIGINT as MAX_ID
from ocs.whole_numbers import whole_number

PeriodName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(20\d{2}-(0[1-9]|1[0-2])|20\d{2}-\d{2}-\d{2}\.\.20\d{2}-\d{2}-\d{2})(?!\n)$",
        description="a billing period: 2026-12 (the period starting in that month), or its"
        " label 2026-12-05..2027-01-05 (end excluded)",
        examples=["2026-12"],
    ),
]
Text200 = Annotated[str, msgspec.Meta(max_length=200)]
Code64 = Annotated[str, msgspec.Meta(max_length=64)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=queries.MAX_LIST, description="at most this many")]
# Dates and instants a bill can be about: far ones would overflow the period arithmetic.
FIRST_YEAR, LAST_YEAR = 1970, 2999


def _id(request: web.Request, name: str) -> int:
    """A numeric id from the path (``run_id``, ``invoice_id``, ``subscription_id``)."""
    return path_id(request, name)


def _day(name: str, value: date | None) -> date | None:
    """A date within the years a bill can be about, else 400 naming the field."""
    if value is not None and not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise invalid(name, f"expected a year from {FIRST_YEAR} to {LAST_YEAR}")
    return value


def _instant(name: str, value: datetime | None) -> datetime | None:
    """An aware instant within the years a bill can be about, else 400 naming the field."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise invalid(name, "needs a time zone, e.g. 2026-12-01T00:00:00Z")
    if not FIRST_YEAR < value.year < LAST_YEAR:
        raise invalid(name, f"expected a year from {FIRST_YEAR + 1} to {LAST_YEAR - 1}")
    return value


# --- runs ------------------------------------------------------------------------------


class CreateRun(Params):
    """An invoice run of a billing period."""

    period: PeriodName
    plan: ObjectId | None = None
    invoice_date: date | None = None
    charge_cutoff: datetime | None = None
    usage_cutoff: datetime | None = None
    calculate_taxes: bool = True
    execute: Annotated[
        bool, msgspec.Meta(description="draft it in this request (a small run), not by workers")
    ] = False
    early: Annotated[
        bool,
        msgspec.Meta(
            description="bill what is known so far of a period whose usage window has not"
            " ended (plus billing_run_delay): its usage stops at the run's creation, later"
            " calls are billed by the next invoice (admin only)"
        ),
    ] = False


async def create_run(request: web.Request, params: CreateRun) -> RunView:
    """POST /v1/invoice-runs: create a run (201); its drafts follow by workers or now.

    A period whose usage window has not ended ``billing_run_delay`` ago is refused (400
    naming ``period``) unless ``early`` (an admin's). ``execute`` drafts it now unless
    the ledger writer still holds an entry from before its window's end: then the run
    is answered undrafted, and the billing workers draft it once the writer caught up.
    """
    services = services_of(request)
    if params.early and not caller_may(request, "admin"):
        raise OcsError(Reason.FORBIDDEN, "an early run is an admin's", field="early")
    run_id = await runs.create_run(
        services.pool,
        params.period,
        invoice_date=_day("invoice_date", params.invoice_date),
        plan_id=params.plan,
        charge_cutoff=_instant("charge_cutoff", params.charge_cutoff),
        usage_cutoff=_instant("usage_cutoff", params.usage_cutoff),
        calculate_taxes=params.calculate_taxes,
        chunk_size=services.settings.billing_chunk_size,
        timing=runs.Timing(delay=services.settings.billing_run_delay, early=params.early),
    )
    metrics.BILLING_RUNS_STARTED.labels("operator").inc()
    oldest = await services.store.oldest_unwritten_ms() if params.execute else None
    if params.execute and await runs.held_for_ledger(services.pool, run_id, oldest) is None:
        before = await runs.progress(services.pool, run_id)
        after = await runs.execute_run(services.pool, run_id)
        metrics.BILLING_ACCOUNTS_DRAFTED.inc(after.accounts_done - before.accounts_done)
        if after.state == "done":
            metrics.BILLING_RUNS_FINISHED.inc()
    return queries.run_view(await queries.run(services.pool, run_id))


async def show_run(request: web.Request, params: None) -> RunView:
    """GET /v1/invoice-runs/{run_id}: a run and its progress."""
    found = await queries.run(services_of(request).pool, _id(request, "run_id"))
    metrics.BILLING_RUN_ACCOUNTS.labels(found.state, "done").set(found.accounts_done)
    return queries.run_view(found)


class PostedInvoice(Answer):
    """An invoice posted now, with its number."""

    id: int
    number: str


class HeldInvoice(Answer):
    """A draft left unposted because its taxes could not be calculated, and why."""

    id: int
    reason: str


class Posted(Answer):
    """What a posting did: invoices numbered now, lines whose money moved now, and
    drafts held back (their taxes could not be calculated: retried by the next post)."""

    posted: list[PostedInvoice]
    lines_moved: int
    held: list[HeldInvoice]


async def _post(services: Services, *, run_id: int | None, invoice_id: int | None) -> Posted:
    """Post a run's drafts, or one invoice (refused 409 unless a draft or posted)."""
    if invoice_id is not None:
        await queries.require_state(services.pool, invoice_id, ("draft", "posted"), "posted")
    posted = await posting.post(
        services.pool,
        services.store,
        run_id=run_id,
        invoice_ids=None if invoice_id is None else [invoice_id],
        settings=services.settings,
    )
    metrics.BILLING_POSTED.labels("invoices").inc(len(posted.numbers))
    metrics.BILLING_POSTED.labels("lines").inc(posted.lines_moved)
    return Posted(
        posted=[PostedInvoice(id=i, number=n) for i, n in sorted(posted.numbers.items())],
        lines_moved=posted.lines_moved,
        held=[HeldInvoice(id=i, reason=r) for i, r in sorted(posted.held.items())],
    )


async def post_run(request: web.Request, params: None) -> Posted:
    """POST /v1/invoice-runs/{run_id}/post: number the run's drafts, move their money."""
    services = services_of(request)
    found = await queries.run(services.pool, _id(request, "run_id"))
    return await _post(services, run_id=found.id, invoice_id=None)


# --- invoices --------------------------------------------------------------------------


class InvoiceQuery(Params):
    """Filters of the invoice list; every one given must match."""

    account: AccountId | None = None
    period: Annotated[str, msgspec.Meta(max_length=64, description="a period label")] | None = None
    state: Literal["draft", "posted", "void"] | None = None
    run_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None
    limit: Limit = 100


class InvoiceList(Answer):
    """Invoices and credit notes, newest period first."""

    invoices: list[InvoiceView]


async def list_invoices(request: web.Request, params: InvoiceQuery) -> InvoiceList:
    """GET /v1/invoices: invoices matching the filters."""
    found = await queries.list_invoices(
        services_of(request).pool,
        account_id=params.account,
        period=params.period,
        state=params.state,
        run_id=params.run_id,
        limit=params.limit,
    )
    return InvoiceList(invoices=[queries.invoice_view(i) for i in found])


async def show_invoice(request: web.Request, params: None) -> InvoiceDetailView:
    """GET /v1/invoices/{invoice_id}: an invoice with its lines."""
    found, lines = await queries.invoice(services_of(request).pool, _id(request, "invoice_id"))
    return queries.detail_view(found, lines)


async def post_invoice(request: web.Request, params: None) -> Posted:
    """POST /v1/invoices/{invoice_id}/post: number one draft and move its money."""
    return await _post(services_of(request), run_id=None, invoice_id=_id(request, "invoice_id"))


class Voided(Answer):
    """The credit note that voided an invoice: its id, number and (negative) total."""

    invoice: int
    credit_note: int
    number: str
    total: str


async def void_invoice(request: web.Request, params: None) -> Voided:
    """POST /v1/invoices/{invoice_id}/void: void a posted invoice with a credit note."""
    from ocs.billing import void

    services = services_of(request)
    invoice_id = _id(request, "invoice_id")
    await queries.require_state(services.pool, invoice_id, ("posted",), "voided")
    voided = await void.void(services.pool, services.store, invoice_id)
    metrics.BILLING_VOIDED.inc()
    return Voided(
        invoice=invoice_id,
        credit_note=voided.credit_note_id,
        number=voided.number,
        total=amount_text(voided.total),
    )


class Unbilled(Answer):
    """What a void invoice billed that no invoice that stands (posted or draft) bills
    again: the operator's to bill again (decision 0046, addendum 2026-12-07)."""

    invoice: int
    items: list[UnbilledView]


async def invoice_unbilled(request: web.Request, params: None) -> Unbilled:
    """GET /v1/invoices/{invoice_id}/unbilled: a void invoice's charges and fees not
    billed again."""
    invoice_id = _id(request, "invoice_id")
    items = await unbilled.unbilled(services_of(request).pool, invoice_id)
    return Unbilled(invoice=invoice_id, items=items)


# A list's cursor: an earlier page's ``next``.
PageAfter = Annotated[
    str, msgspec.Meta(max_length=200, description="an earlier page's `next`: the page after")
]


class CallsQuery(Params):
    """Whose calls to list, and in which form."""

    member: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1, max_length=64, description="only this member's or caller id's"
            ),
        ]
        | None
    ) = None
    format: Annotated[
        Literal["json", "csv"],
        msgspec.Meta(description="json, a page at a time; or csv, every call (an attachment)"),
    ] = "json"
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=itemised.MAX_PAGE, description="at most this many (json)")
    ] = 1000
    after: PageAfter | None = None


class InvoiceCalls(Answer):
    """A page of an invoice's itemised call list, in time order."""

    calls: list[InvoiceCallView]
    next: Annotated[
        str | None, msgspec.Meta(description="`after` for the next page; null: the last page")
    ]


async def invoice_calls(
    request: web.Request, params: CallsQuery
) -> InvoiceCalls | web.StreamResponse:
    """GET /v1/invoices/{invoice_id}/calls: the calls of the invoice's usage window."""
    invoice_id = _id(request, "invoice_id")
    pool = services_of(request).pool
    after = None if params.after is None else itemised.parse_cursor(params.after)
    if params.format == "csv":
        return await _stream_calls_csv(request, invoice_id, params.member, after)
    rows = await itemised.call_rows(
        pool, invoice_id, params.member, after=after, limit=params.limit
    )
    full = len(rows) == params.limit
    return InvoiceCalls(
        calls=[queries.call_view(row) for row in rows],
        next=itemised.page_cursor(rows[-1]) if full else None,
    )


async def _stream_calls_csv(
    request: web.Request,
    invoice_id: int,
    member: str | None,
    after: tuple[datetime, str] | None,
) -> web.StreamResponse:
    """Every call as CSV, read and written a page at a time: however many there are,
    neither the memory nor the loop's turn grows with them."""
    pool = services_of(request).pool
    # The first page before the answer starts: an unknown invoice is still a 404.
    rows = await itemised.call_rows(pool, invoice_id, member, after=after, limit=itemised.MAX_PAGE)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="invoice-{invoice_id}-calls.csv"',
        }
    )
    await response.prepare(request)
    await response.write(itemised.calls_csv(rows).encode())
    while len(rows) == itemised.MAX_PAGE:
        after = itemised.position(rows[-1])
        rows = await itemised.call_rows(
            pool, invoice_id, member, after=after, limit=itemised.MAX_PAGE
        )
        await response.write(itemised.calls_csv(rows, header=False).encode())
    await response.write_eof()
    return response


class PreviewQuery(Params):
    """The instant whose period is previewed (default: now)."""

    at: datetime | None = None


class Preview(Answer):
    """An account's invoice for a period, computed now and stored nowhere."""

    account: str
    period: str
    period_start: datetime
    period_end: datetime
    currency: str
    total: str
    # The same view as a stored invoice's lines: the dry run shows what posting would.
    lines: list[InvoiceLineView]


async def invoice_preview(request: web.Request, params: PreviewQuery) -> Preview:
    """GET /v1/accounts/{account_id}/invoice-preview: a dry run of the account's invoice."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    period, currency, lines = await drafts.preview(
        services_of(request).pool, account_id, _instant("at", params.at)
    )
    return Preview(
        account=account_id,
        period=period.label,
        period_start=period.start,
        period_end=period.end,
        currency=currency,
        total=amount_text(sum(line.amount for line in lines)),
        lines=[queries.draft_line_view(n, line) for n, line in enumerate(lines, 1)],
    )


# --- charges and plan billing ----------------------------------------------------------


class CreateCharge(Params):
    """A product's fee."""

    id: ObjectId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    product_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    currency: Currency
    amount: Amount
    kind: Literal["recurring", "one_time", "triggered"]
    cadence: Literal["weekly", "monthly", "quarterly", "yearly", "days"] | None = None
    every_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] | None = None
    timing: Literal["arrears", "advance"] = "arrears"
    tax_code: Code64 = ""
    gl_code: Code64 = ""
    plan: ObjectId | None = None


async def create_charge(request: web.Request, params: CreateCharge) -> ChargeView:
    """POST /v1/charges: create a charge (201)."""
    created = await store.create_charge(
        services_of(request).pool,
        store.Charge(
            params.id,
            params.name,
            params.product_code,
            params.currency,
            int(params.amount),
            params.kind,
            cadence=params.cadence,
            every_days=params.every_days,
            timing=params.timing,
            tax_code=params.tax_code,
            gl_code=params.gl_code,
            plan_id=params.plan,
        ),
    )
    return queries.charge_view(created)


class ChargeQuery(Params):
    """Only a plan's custom charges."""

    plan: ObjectId | None = None


class ChargeList(Answer):
    """Charges, by id."""

    charges: list[ChargeView]


async def list_charges(request: web.Request, params: ChargeQuery) -> ChargeList:
    """GET /v1/charges: every charge, or a plan's custom charges."""
    found = await queries.list_charges(services_of(request).pool, params.plan)
    return ChargeList(charges=[queries.charge_view(c) for c in found])


class SetPlanBilling(Params):
    """How a plan is invoiced."""

    cycle: Literal["fixed_period", "fixed_date", "week", "subscription_date", "manual", "on_demand"]
    effective_date: date
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "UTC"
    cycle_day: Annotated[int, msgspec.Meta(ge=1, le=31)] | None = None
    cycle_weekday: (
        Annotated[int, msgspec.Meta(ge=0, le=6, description="0 Monday .. 6 Sunday")] | None
    ) = None
    every_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] | None = None
    grace_days: Annotated[int, msgspec.Meta(ge=0, le=366)] = 0
    invoice_message: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    invoice_timing: Literal["end_of_cycle", "start_of_cycle"] = "end_of_cycle"
    issuer: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{1,16}(?!\n)$")] = "INV"
    tax_engine: Annotated[
        Literal["internal", "external"],
        msgspec.Meta(
            description="who taxes its invoices: the plan's own tax rules, or the"
            " configured HTTP tax engine"
        ),
    ] = "internal"


class PlanBillingView(Answer):
    """A plan's billing settings."""

    plan: str
    cycle: str
    effective_date: date
    time_zone: str
    cycle_day: int | None
    cycle_weekday: int | None
    every_days: int | None
    grace_days: int
    invoice_message: str
    invoice_timing: str
    issuer: str
    tax_engine: str


async def set_plan_billing(request: web.Request, params: SetPlanBilling) -> PlanBillingView:
    """PUT /v1/plans/{plan_id}/billing: set a plan's billing settings. On ``on_demand``
    the plan's active accounts with no session open are locked until one opens
    (``locked_by`` session); on another cycle, those so locked are active again."""
    plan_id = request.match_info["plan_id"]
    try:
        ZoneInfo(params.time_zone)
    except (ValueError, KeyError, OSError):
        raise invalid("time_zone", f"not an IANA time zone: {params.time_zone!r}") from None
    services = services_of(request)
    saved = await store.set_plan_billing(
        services.pool,
        services.store,
        PlanBilling(
            plan_id,
            params.cycle,
            _day("effective_date", params.effective_date) or params.effective_date,
            time_zone=params.time_zone,
            cycle_day=params.cycle_day,
            cycle_weekday=params.cycle_weekday,
            every_days=params.every_days,
            grace_days=params.grace_days,
            invoice_message=params.invoice_message,
            invoice_timing=params.invoice_timing,
            issuer=params.issuer,
            tax_engine=params.tax_engine,
        ),
    )
    return PlanBillingView(
        plan=saved.plan_id,
        cycle=saved.cycle,
        effective_date=saved.effective_date,
        time_zone=saved.time_zone,
        cycle_day=saved.cycle_day,
        cycle_weekday=saved.cycle_weekday,
        every_days=saved.every_days,
        grace_days=saved.grace_days,
        invoice_message=saved.invoice_message,
        invoice_timing=saved.invoice_timing,
        issuer=saved.issuer,
        tax_engine=saved.tax_engine,
    )


# --- subscriptions ---------------------------------------------------------------------


class CreateSubscription(Params):
    """An account's subscription to a plan, with the charges it adds."""

    account: AccountId
    plan: ObjectId
    start_date: date
    end_date: date | None = None
    status: Literal["pending", "active"] = "active"
    category: Text200 = ""
    service: Text200 = ""
    billing_address: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    salesperson: Text200 = ""
    charges: Annotated[list[ObjectId], msgspec.Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )
    # The billing address's parts, which an external tax engine sources taxes by.
    billing_city: Text200 = ""
    billing_county: Text200 = ""
    billing_region: Annotated[
        str, msgspec.Meta(max_length=200, description="a state or province: TX")
    ] = ""
    billing_postal_code: Annotated[str, msgspec.Meta(max_length=32)] = ""
    billing_country: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^([A-Z]{2})?(?!\n)$",
            description="ISO 3166-1 alpha-2, in capitals: US",
            examples=["US"],
        ),
    ] = ""
    billing_email: Annotated[
        str,
        msgspec.Meta(
            max_length=254,
            pattern=r"^([^@\s]+@[^@\s]+)?(?!\n)$",
            description="where invoices and dunning notices are emailed (empty: not emailed)",
            examples=["billing@example.com"],
        ),
    ] = ""


class SubscriptionDetails(SubscriptionView, kw_only=True):
    """A subscription, its charges and its billing address's parts."""

    billing_city: str
    billing_county: str
    billing_region: str
    billing_postal_code: str
    billing_country: str
    billing_email: str


async def _details(services: Services, found: list[SubscriptionView]) -> list[SubscriptionDetails]:
    """Subscriptions as shown, each with its billing address's parts."""
    addresses = await rules_store.billing_addresses(services.pool, [s.id for s in found])
    shown = []
    for view in found:
        address = addresses.get(view.id) or rules_store.BillingAddress("", "", "", "", "", "")
        shown.append(
            SubscriptionDetails(
                **msgspec.structs.asdict(view),
                billing_city=address.city,
                billing_county=address.county,
                billing_region=address.region,
                billing_postal_code=address.postal_code,
                billing_country=address.country,
                billing_email=address.email,
            )
        )
    return shown


async def _subscription(services: Services, subscription_id: int) -> SubscriptionDetails:
    """One subscription as shown, read by its id; 404 when there is none."""
    found = await queries.subscription(services.pool, subscription_id)
    if found is None:
        raise OcsError(
            Reason.NOT_FOUND, f"no subscription {subscription_id}", field="subscription_id"
        )
    [shown] = await _details(services, [queries.subscription_view(found)])
    return shown


async def create_subscription(
    request: web.Request, params: CreateSubscription
) -> SubscriptionDetails:
    """POST /v1/subscriptions: subscribe an account (201), adding the charges named."""
    services = services_of(request)
    sub_id = await store.subscribe(
        services.pool,
        store.Subscription(
            params.account,
            params.plan,
            _day("start_date", params.start_date) or params.start_date,
            _day("end_date", params.end_date),
            params.status,
            params.category,
            params.service,
            params.billing_address,
            params.salesperson,
            billing_city=params.billing_city,
            billing_county=params.billing_county,
            billing_region=params.billing_region,
            billing_postal_code=params.billing_postal_code,
            billing_country=params.billing_country,
            billing_email=params.billing_email,
        ),
    )
    for charge_id in params.charges:
        await store.add_charge(services.pool, sub_id, charge_id)
    # Its next invoice now bills the plan's charges: a locking plan commits them.
    await commitments.refresh_subscription(services.pool, services.store, sub_id)
    return await _subscription(services, sub_id)


class SubscriptionQuery(Params):
    """Only one account's subscriptions; a page of them, from past an earlier page's end."""

    account: AccountId | None = None
    limit: Limit = queries.MAX_LIST
    after: PageAfter | None = None


class SubscriptionList(Answer):
    """A page of subscriptions with their charges, oldest first."""

    subscriptions: list[SubscriptionDetails]
    next: Annotated[
        str | None, msgspec.Meta(description="`after` for the next page; null: the last page")
    ]


async def list_subscriptions(request: web.Request, params: SubscriptionQuery) -> SubscriptionList:
    """GET /v1/subscriptions: subscriptions (of one account, or all), a page at a time."""
    services = services_of(request)
    # The cursor is the last id of the page before (``next``): ids only grow.
    after = 0 if params.after is None else whole_number(params.after)
    if after is None:
        raise invalid("after", "expected the `next` of an earlier page")
    # One more than the page: whether a next page exists, without asking for an empty one.
    found = await queries.list_subscriptions(
        services.pool, params.account, after=after, limit=params.limit + 1
    )
    page = found[: params.limit]
    shown = await _details(services, [queries.subscription_view(s) for s in page])
    more = len(found) > params.limit
    return SubscriptionList(subscriptions=shown, next=str(page[-1].id) if more else None)


class AddCharge(Params):
    """A charge added to a subscription from a day (default: the subscription's start)."""

    charge: ObjectId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    start_date: date | None = None
    end_date: date | None = None


async def add_subscription_charge(request: web.Request, params: AddCharge) -> SubscriptionDetails:
    """POST /v1/subscriptions/{subscription_id}/charges: add a charge (201)."""
    services = services_of(request)
    sub_id = _id(request, "subscription_id")
    start, end = _day("start_date", params.start_date), _day("end_date", params.end_date)
    if start is not None and end is not None and end < start:
        raise invalid("end_date", "must not be before start_date")
    await store.add_charge(
        services.pool,
        sub_id,
        params.charge,
        quantity=params.quantity,
        start_date=start,
        end_date=end,
    )
    return await _subscription(services, sub_id)


class SetStatus(Params):
    """A subscription's new status; a cancellation names its first day without service."""

    status: Literal["pending", "active", "suspended", "cancelled"]
    on: date | None = None


async def set_subscription_status(request: web.Request, params: SetStatus) -> SubscriptionDetails:
    """POST /v1/subscriptions/{subscription_id}/status: pending -> active -> suspended ->
    cancelled."""
    services = services_of(request)
    sub_id = _id(request, "subscription_id")
    await _subscription(services, sub_id)  # 404 first
    await store.set_status(services.pool, sub_id, params.status, on=_day("on", params.on))
    await commitments.refresh_subscription(services.pool, services.store, sub_id)
    return await _subscription(services, sub_id)


# --- on-demand sessions ----------------------------------------------------------------


class SessionView(Answer):
    """An on-demand session: [opened, closed), and its invoice once closed."""

    id: int
    account: str
    opened_at: datetime
    closed_at: datetime | None
    invoice_id: int | None


def _session_view(found: sessions.Session) -> SessionView:
    """A session as shown."""
    return SessionView(
        id=found.id,
        account=found.account_id,
        opened_at=found.opened_at,
        closed_at=found.closed_at,
        invoice_id=found.invoice_id,
    )


async def open_session(request: web.Request, params: None) -> SessionView:
    """POST /v1/accounts/{account_id}/billing-sessions: open a session (201): calls may go."""
    services = services_of(request)
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    return _session_view(await sessions.open_session(services.pool, services.store, account_id))


async def close_session(request: web.Request, params: None) -> SessionView:
    """POST /v1/accounts/{account_id}/billing-sessions/close: close it; its invoice drafted."""
    services = services_of(request)
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    return _session_view(await sessions.close_session(services.pool, services.store, account_id))


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/invoice-runs",
        Role.OPERATOR,
        "Create an invoice run of a billing period (drafted by the billing workers)",
        create_run,
        CreateRun,
        RunView,
        status=201,
        body_required=True,
        errors=(404,),
        description="Drafts are computed by `ocs billing-worker` processes sharing the run's"
        ' chunks, or in this request with "execute": true. Repeating a run recomputes'
        " drafts and leaves posted invoices as they are. A period whose usage window has"
        " not ended billing_run_delay ago is refused (400 naming period) unless"
        " \"early\": true (an admin's): its usage then stops at the run's creation and the"
        " next invoice bills later calls. Drafting (here or by the workers) waits while"
        " the ledger writer holds an entry from before the window's end.",
    ),
    Endpoint(
        "GET",
        "/v1/invoice-runs/{run_id}",
        Role.VIEWER,
        "An invoice run and its progress (accounts done of total)",
        show_run,
        None,
        RunView,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/invoice-runs/{run_id}/post",
        Role.OPERATOR,
        "Post a run's drafts: gapless numbers, then their money moves once",
        post_run,
        None,
        Posted,
        body="none",
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/invoices",
        Role.VIEWER,
        "Invoices and credit notes, filtered by account, period, state or run",
        list_invoices,
        InvoiceQuery,
        InvoiceList,
    ),
    Endpoint(
        "GET",
        "/v1/invoices/{invoice_id}",
        Role.VIEWER,
        "An invoice with its lines",
        show_invoice,
        None,
        InvoiceDetailView,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/invoices/{invoice_id}/post",
        Role.OPERATOR,
        "Post one draft invoice (a posted one: its money is finished)",
        post_invoice,
        None,
        Posted,
        body="none",
        errors=(404, 409),
        description="409 invoice_state for a void invoice or a credit note.",
    ),
    Endpoint(
        "POST",
        "/v1/invoices/{invoice_id}/void",
        Role.OPERATOR,
        "Void a posted invoice with a numbered credit note that reverses its money",
        void_invoice,
        None,
        Voided,
        status=201,
        body="none",
        errors=(404, 409),
        description="409 invoice_state unless the invoice is posted.",
    ),
    Endpoint(
        "GET",
        "/v1/invoices/{invoice_id}/unbilled",
        Role.OPERATOR,
        "What a void invoice billed that no posted or draft invoice bills again",
        invoice_unbilled,
        None,
        Unbilled,
        errors=(404, 409),
        description="Its charge lines with the days of their period no invoice that stands"
        " bills (the charge added again for them counts), its bundle and resiliation fees"
        " no invoice bills for the same subscription bundle, rule and period. 409"
        " invoice_state unless the invoice is void.",
    ),
    Endpoint(
        "GET",
        "/v1/invoices/{invoice_id}/calls",
        Role.VIEWER,
        "An invoice's itemised call list: the CDRs its usage lines sum",
        invoice_calls,
        CallsQuery,
        InvoiceCalls,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/invoice-preview",
        Role.VIEWER,
        "A dry run: the account's invoice for the period holding an instant, stored nowhere",
        invoice_preview,
        PreviewQuery,
        Preview,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/charges",
        Role.OPERATOR,
        "Create a charge: recurring, one-time or triggered",
        create_charge,
        CreateCharge,
        ChargeView,
        status=201,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/charges",
        Role.VIEWER,
        "Charges, or a plan's custom charges",
        list_charges,
        ChargeQuery,
        ChargeList,
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/billing",
        Role.OPERATOR,
        "Set a plan's billing cycle, time zone, invoice timing, grace days and message",
        set_plan_billing,
        SetPlanBilling,
        PlanBillingView,
        body_required=True,
        errors=(404,),
        description="Start of cycle is refused for manual and on-demand plans, and the"
        " timing for a plan an account uses.",
    ),
    Endpoint(
        "POST",
        "/v1/subscriptions",
        Role.OPERATOR,
        "Subscribe an account to a plan, with the charges it adds",
        create_subscription,
        CreateSubscription,
        SubscriptionDetails,
        status=201,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/subscriptions",
        Role.VIEWER,
        "Subscriptions with their charges, a page at a time",
        list_subscriptions,
        SubscriptionQuery,
        SubscriptionList,
        description="Oldest first, at most `limit` a page; while `next` is not null, more"
        " follow: ask again with `after` set to it.",
    ),
    Endpoint(
        "POST",
        "/v1/subscriptions/{subscription_id}/charges",
        Role.OPERATOR,
        "Add a charge to a subscription",
        add_subscription_charge,
        AddCharge,
        SubscriptionDetails,
        status=201,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/subscriptions/{subscription_id}/status",
        Role.OPERATOR,
        "Move a subscription: pending -> active -> suspended -> cancelled",
        set_subscription_status,
        SetStatus,
        SubscriptionDetails,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/billing-sessions",
        Role.OPERATOR,
        "Open an on-demand session: the account may call until it is closed",
        open_session,
        None,
        SessionView,
        status=201,
        body="none",
        errors=(404, 409),
        description="409 account_state for an account suspended, or locked by an operator:"
        " a session lifts only the lock of an account with no session open.",
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/billing-sessions/close",
        Role.OPERATOR,
        "Close the account's on-demand session; its invoice is drafted",
        close_session,
        None,
        SessionView,
        body="none",
        errors=(404,),
    ),
)
