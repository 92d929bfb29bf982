"""Payments in the admin API, and the payment gateway's webhook (decision 0027).

A thin adapter over ``ocs.billing.payments``: operators record payments by hand,
refund them and import bank statement files (CSV or camt.053 as the body);
viewers read. ``POST /v1/payments/webhooks/stripe`` takes no token (the
gateway has none): it is open (``Role.OPEN``) and trusts only the payload's
signature (``Stripe-Signature``, ``ocs.billing.gateway.verify``) under
``stripe_webhook_secret``, refusing a bad signature or a stale timestamp (400).
"""

import time
from datetime import date
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.billing import bank_files, gateway, payments
from ocs.billing.payments import (
    ImportReport,
    NewPayment,
    Payment,
    PaymentApplied,
    RefundApplied,
)
from ocs.errors import body_too_large, invalid
from ocs.http.context import services_of
from ocs.http.endpoint import (
    AccountId,
    Amount,
    Answer,
    Currency,
    Endpoint,
    Params,
    Reply,
    Role,
    amount_text,
)
from ocs.http.json_io import MAX_BODY
from ocs.http.path_ids import path_id

Reference = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=payments.MAX_EXTERNAL_ID,
        pattern=r"^[^\x00-\x1f\x7f]+(?!\n)$",
        description="the payment's own reference (a receipt, a cheque number): it is"
        " recorded once, a repeat answers the payment already recorded",
        examples=["R-2026-001"],
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=payments.MAX_LIST, description="at most this many")]


class AllocationView(Answer):
    """What a payment paid of one invoice."""

    invoice_id: int
    number: str
    amount: str


class PaymentView(Answer):
    """A payment: what it paid of invoices (``allocated``) and what it left on the
    account as credit (``credit``)."""

    id: int
    account: str
    source: str
    external_id: str
    amount: str
    currency: str
    reference: str
    received_on: date
    allocated: str
    refunded: str
    credit: str
    credited: bool
    allocations: list[AllocationView]


def payment_view(found: Payment) -> PaymentView:
    """A payment as shown."""
    return PaymentView(
        id=found.id,
        account=found.account_id,
        source=found.source,
        external_id=found.external_id,
        amount=amount_text(found.amount),
        currency=found.currency,
        reference=found.reference,
        received_on=found.received_on,
        allocated=amount_text(found.allocated),
        refunded=amount_text(found.refunded),
        credit=amount_text(found.credit),
        credited=found.credited,
        allocations=[
            AllocationView(invoice_id=a.invoice_id, number=a.number, amount=amount_text(a.amount))
            for a in found.allocations
        ],
    )


class PaymentResult(Answer):
    """A payment recorded: the payment, the account's balance after it, and the
    accounts that now owe nothing on any posted invoice."""

    payment: PaymentView
    balance: str | None
    settled_accounts: list[str]


def payment_result(done: PaymentApplied) -> PaymentResult:
    """A payment's outcome as shown."""
    return PaymentResult(
        payment=payment_view(done.payment),
        balance=None if done.balance is None else amount_text(done.balance),
        settled_accounts=list(done.settled_accounts),
    )


class CreatePayment(Params):
    """A payment received by hand: it pays the account's open invoices, oldest first."""

    account: AccountId
    amount: Amount
    reference: Reference
    currency: Currency | None = None
    received_on: date | None = None


async def create_payment(
    request: web.Request, params: CreatePayment
) -> PaymentResult | Reply[PaymentResult]:
    """POST /v1/payments: record a payment (201; 200 when its reference was recorded)."""
    if params.received_on is not None and not 1970 <= params.received_on.year <= 2999:
        raise invalid("received_on", "expected a year from 1970 to 2999")
    services = services_of(request)
    done = await payments.record_payment(
        services.pool,
        services.store,
        NewPayment(
            account_id=params.account,
            amount=params.amount,
            source="manual",
            external_id=params.reference,
            currency=params.currency,
            reference=params.reference,
            received_on=params.received_on,
        ),
    )
    result = payment_result(done)
    return result if done.created else Reply(result, 200)


class PaymentQuery(Params):
    """Filters of the payment list."""

    account: AccountId | None = None
    limit: Limit = 100


class PaymentList(Answer):
    """Payments, newest first."""

    payments: list[PaymentView]


async def list_payments(request: web.Request, params: PaymentQuery) -> PaymentList:
    """GET /v1/payments: payments, newest first, of one account or all."""
    found = await payments.list_payments(services_of(request).pool, params.account, params.limit)
    return PaymentList(payments=[payment_view(p) for p in found])


def _payment_id(request: web.Request) -> int:
    """The payment id of the path."""
    return path_id(request, "payment_id")


async def show_payment(request: web.Request, params: None) -> PaymentView:
    """GET /v1/payments/{payment_id}: one payment (404: none)."""
    return payment_view(await payments.get_payment(services_of(request).pool, _payment_id(request)))


class RefundPayment(Params):
    """A refund of what a payment left as credit."""

    amount: Amount
    reference: Reference | None = None


class RefundView(Answer):
    """A refund: the balance debited, and the payment after it."""

    id: int
    amount: str
    reopened: str
    payment: PaymentView
    balance: str | None


def refund_view(done: RefundApplied) -> RefundView:
    """A refund's outcome as shown."""
    return RefundView(
        id=done.refund.id,
        amount=amount_text(done.refund.amount),
        reopened=amount_text(done.refund.reopened),
        payment=payment_view(done.payment),
        balance=None if done.balance is None else amount_text(done.balance),
    )


async def refund_payment(
    request: web.Request, params: RefundPayment
) -> RefundView | Reply[RefundView]:
    """POST /v1/payments/{payment_id}/refund: refund part of its credit (201; 200: a
    repeat of the same reference)."""
    services = services_of(request)
    done = await payments.refund_payment(
        services.pool, services.store, _payment_id(request), params.amount, params.reference
    )
    view = refund_view(done)
    return view if done.created else Reply(view, 200)


class ImportedView(Answer):
    """A statement entry applied: its place in the file and its payment."""

    position: str
    payment_id: int
    account: str
    amount: str
    created: bool


class ProblemView(Answer):
    """A statement entry not applied, and why."""

    position: str
    problem: str


class ImportView(Answer):
    """What an import did: entries applied (``created`` false: imported before, nothing
    moved again) and entries reported, not applied."""

    applied: list[ImportedView]
    unmatched: list[ProblemView]
    settled_accounts: list[str]


def import_view(report: ImportReport) -> ImportView:
    """An import's report as shown."""
    return ImportView(
        applied=[
            ImportedView(
                position=e.position,
                payment_id=e.applied.payment.id,
                account=e.applied.payment.account_id,
                amount=amount_text(e.applied.payment.amount),
                created=e.applied.created,
            )
            for e in report.applied
        ],
        unmatched=[ProblemView(position=p.position, problem=p.problem) for p in report.unmatched],
        settled_accounts=list(report.settled_accounts),
    )


async def _body(request: web.Request) -> bytes:
    """The raw request body, at most 1 MiB (413 past it)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise body_too_large("larger than 1 MiB")
    # Read no further than the limit: a chunked body declares no length, and the
    # processor's webhook is open to anyone until its signature is checked.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_BODY:
            raise body_too_large("larger than 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def import_payments(request: web.Request, params: None) -> ImportView:
    """POST /v1/payments/import: a bank statement file as the body."""
    data = await _body(request)
    if not data.strip():
        raise invalid("file", "is required: a CSV or camt.053 statement as the body")
    content_type = request.content_type
    file_format = "camt053" if content_type.endswith("xml") else None
    parsed = bank_files.parse(data, file_format)
    services = services_of(request)
    return import_view(await payments.import_bank_file(services.pool, services.store, parsed))


class WebhookResult(Answer):
    """What a gateway event did: payment, refund, duplicate (nothing again) or ignored."""

    outcome: str
    event_id: str
    payment_id: int | None = None


async def stripe_webhook(request: web.Request, params: None) -> WebhookResult:
    """POST /v1/payments/webhooks/stripe: a signed gateway event."""
    services = services_of(request)
    secret = services.settings.stripe_webhook_secret
    if not secret:
        raise invalid("Stripe-Signature", "no stripe_webhook_secret is set: webhooks refused")
    payload = await _body(request)
    try:
        gateway.verify(
            request.headers.get("Stripe-Signature"),
            payload,
            secret,
            services.settings.stripe_webhook_tolerance,
            time.time(),
        )
    except gateway.SignatureError as exc:
        raise invalid("Stripe-Signature", str(exc)) from None
    try:
        event = gateway.parse_event(payload)
    except gateway.EventError as exc:
        raise invalid(exc.field, exc.problem) from None
    outcome = await payments.apply_gateway_event(services.pool, services.store, event)
    payment_id: int | None = None
    if outcome.payment is not None:
        payment_id = outcome.payment.payment.id
    elif outcome.refund is not None:
        payment_id = outcome.refund.payment.id
    return WebhookResult(outcome=outcome.outcome, event_id=outcome.event_id, payment_id=payment_id)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/payments",
        Role.OPERATOR,
        "Record a payment received by hand; it pays the account's open invoices, oldest first",
        create_payment,
        CreatePayment,
        PaymentResult,
        status=201,
        body_required=True,
        errors=(404,),
        description="The balance is credited at once (a postpaid account's calls can use"
        " it); what no open invoice asks stays as credit. A reference recorded before"
        " answers 200 and moves nothing.",
    ),
    Endpoint(
        "GET",
        "/v1/payments",
        Role.VIEWER,
        "Payments, newest first, of one account or all",
        list_payments,
        PaymentQuery,
        PaymentList,
    ),
    Endpoint(
        "GET",
        "/v1/payments/{payment_id}",
        Role.VIEWER,
        "A payment, with what it paid of each invoice",
        show_payment,
        None,
        PaymentView,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/payments/{payment_id}/refund",
        Role.OPERATOR,
        "Refund part of what a payment left as credit",
        refund_payment,
        RefundPayment,
        RefundView,
        status=201,
        body_required=True,
        errors=(402, 404),
        description="Only the payment's credit (400 naming `amount` past it), and only"
        " while the account's own money holds it: the balance less what live calls hold"
        " and what is committed, never the credit limit (402 insufficient_funds, checked"
        " with the debit). The balance is debited at once. A reference given before"
        " answers 200 and moves nothing.",
    ),
    Endpoint(
        "POST",
        "/v1/payments/import",
        Role.OPERATOR,
        "Import a bank statement: CSV (date,amount,currency,transaction_id[,reference,"
        "account,invoice]) or ISO 20022 camt.053 XML as the body",
        import_payments,
        None,
        ImportView,
        body="csv",
        description="Each credit is matched to an account by the invoice number or account id"
        " in its reference and applied once (its bank transaction id): importing a file"
        " again moves nothing. Entries that match nothing are listed, not applied.",
    ),
    Endpoint(
        "POST",
        "/v1/payments/webhooks/stripe",
        Role.OPEN,
        "The payment gateway's webhook (Stripe's event format and signature)",
        stripe_webhook,
        None,
        WebhookResult,
        body="none",
        errors=(413,),  # the body is read raw, at most 1 MiB
        description="No token: only a Stripe-Signature valid under stripe_webhook_secret"
        " and within stripe_webhook_tolerance is accepted (400 otherwise). An event id seen"
        " before answers 200 and moves nothing.",
    ),
)
