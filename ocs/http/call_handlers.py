"""The switches' endpoints: authorize, start, update and stop a call, and charge a usage event.

A thin adapter over the call lifecycle (``ocs.charging.lifecycle``): decode the
request, call the service, answer its result. Every decision is the service's.
"""

from decimal import ROUND_CEILING, Decimal
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs import metrics
from ocs.balances.accounts import validate_member
from ocs.charging.lifecycle import validate_call_id
from ocs.charging.values import AuthorizeRequest, CallProgress, Identity
from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import services_of
from ocs.http.endpoint import (
    AccountId,
    Answer,
    CallId,
    Direction,
    Endpoint,
    Member,
    Params,
    Reply,
    Role,
    amount_text,
)
from ocs.limits import MAX_CALL_DURATION
from ocs.numbers.prefixes import MAX_DESTINATION_CHARS
from ocs.rating.rates import MAX_QUANTITY

Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class AuthorizeCall(Params):
    """A switch asks whether a call may go through, and for how long."""

    destination: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=MAX_DESTINATION_CHARS, description="the number dialled"
        ),
    ]
    account: AccountId | None = None
    member: Member | None = msgspec.field(default=None)
    caller: Text64 | None = None
    call_id: CallId | None = None
    direction: Direction = "outbound"
    quota: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=MAX_CALL_DURATION,
                description="grant slices of this many seconds (quota mode), not the whole call",
            ),
        ]
        | None
    ) = None
    access_number: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1, max_length=33, description="the number a card holder dialled in on"
            ),
        ]
        | None
    ) = None


class CallGranted(Answer):
    """An authorized call: it may last ``max_duration`` seconds; ``reserved`` is held."""

    call_id: str
    account: str
    destination: str
    zone: str
    max_duration: int
    reserved: str
    currency: str
    repeated: bool
    carriers: list[str]
    counter_seconds: int
    final: bool
    direction: str
    # The plan's voicemail server (decision 0030): where the switch forwards the call
    # when it is not answered; "" when the plan has none enabled.
    voicemail_enabled: bool = False
    voicemail_server: str = ""


async def authorize_call(request: web.Request, params: AuthorizeCall) -> Reply[CallGranted]:
    """POST /v1/calls: authorize a call from a switch (201; 200 for a repeat)."""
    services = services_of(request)
    try:
        account = params.account
        if params.member is not None:
            validate_member(params.member)
            # A member names its account (a SIP user, an extension); it must be one of
            # the account's members, or its line limit would mean nothing.
            try:
                identity: Identity | None = await services.calls.identify(
                    params.member, vouched=True
                )
            except OcsError as error:
                # A card's form of id names no account (decision 0042): here it is a
                # member name that no account has, refused as such below.
                if error.reason is not Reason.ACCOUNT_NOT_FOUND:
                    raise
                identity = None
            if (identity is None or identity.member is None) and account is None:
                raise OcsError(
                    Reason.ACCOUNT_NOT_FOUND, "no account has this member", field="member"
                )
            if (
                identity is None
                or identity.member is None
                or account not in (None, identity.account_id)
            ):
                raise OcsError(Reason.NOT_FOUND, "the account has no such member", field="member")
            account = identity.account_id
        if account is None and params.direction == "inbound":
            # An inbound call to a number the account holds (number sets): the callee.
            account = await services.calls.account_for_number(params.destination)
        if account is None:
            raise invalid("account", "is required")
        if params.call_id is not None:
            validate_call_id(params.call_id)
        access_number = params.access_number
        grant = await services.calls.authorize(
            AuthorizeRequest(
                account,
                params.destination,
                params.caller,
                params.call_id,
                member=params.member,
                direction=params.direction,
                quota=params.quota,
                access_number=None if access_number is None else access_number.lstrip("+"),
            )
        )
    except OcsError as exc:
        # A refusal may carry a finer code than its enum member (funds held by live calls).
        metrics.CALL_DECISIONS.labels(getattr(exc, "code", exc.reason.value)).inc()
        raise
    metrics.CALL_DECISIONS.labels("granted").inc()
    answer = CallGranted(
        call_id=grant.call_id,
        account=grant.account_id,
        destination=grant.destination,
        zone=grant.zone,
        max_duration=grant.max_duration,
        reserved=amount_text(grant.reserved),
        currency=grant.currency,
        repeated=grant.repeated,
        carriers=list(grant.carriers),
        counter_seconds=grant.counter_seconds,
        final=grant.final,
        direction=grant.direction,
        voicemail_enabled=grant.ivr.voicemail_enabled,
        voicemail_server=grant.ivr.voicemail_server,
    )
    return Reply(answer, 200 if grant.repeated else 201)


class CallProgressAnswer(Answer):
    """A live call's progress."""

    call_id: str
    account: str
    started_at: int
    used: int
    debited: str
    granted: int | None
    # Slices (quota mode): the seconds the call may still run from this report; with
    # ``final`` the switch cuts it then, for the funds cover no more.
    remaining: int | None
    final: bool


def progress_answer(progress: CallProgress) -> CallProgressAnswer:
    """A live call's progress as the API answers it."""
    return CallProgressAnswer(
        call_id=progress.call_id,
        account=progress.account_id,
        started_at=progress.started_at,
        used=progress.used,
        debited=amount_text(progress.debited),
        granted=progress.granted or None,
        remaining=max(progress.granted - progress.used, 0) if progress.granted else None,
        final=progress.final,
    )


async def start_call(request: web.Request, params: None) -> CallProgressAnswer:
    """POST /v1/calls/{id}/start: the call was answered; until then it is provisional
    (decision 0055)."""
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    return progress_answer(await services_of(request).calls.start(call_id, nas=None))


class UpdateCall(Params):
    """A live call's progress: the seconds it has run."""

    used: Annotated[int, msgspec.Meta(ge=0, le=MAX_CALL_DURATION, description="seconds so far")]


async def update_call(request: web.Request, params: UpdateCall) -> CallProgressAnswer:
    """POST /v1/calls/{id}/update: a live call's progress (an interim)."""
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    return progress_answer(await services_of(request).calls.update(call_id, params.used, nas=None))


class StopCall(Params):
    """The end of a call. Without ``duration``, the time since its answer (its /start;
    without one, since its authorization) is charged."""

    duration: (
        Annotated[
            Any,
            msgspec.Meta(
                description="seconds the switch measured: whole, or decimal (12.34); any"
                " started second counts (12.01 is 13)",
                extra_json_schema={"type": "number", "minimum": 0, "maximum": MAX_CALL_DURATION},
            ),
        ]
        | None
    ) = None


def stop_duration(value: object) -> int | None:
    """The ``duration`` of a stop in whole seconds; None when the switch sent none.

    Switches report what they measured: whole seconds, or a decimal number of them
    (``12.34``). Any started second counts: a fraction rounds up (``12.01`` is 13),
    computed exactly in Decimal from the number's text, never in float.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise invalid("duration", "expected a number of seconds, such as 42 or 41.5")
    seconds = Decimal(value)
    if not seconds.is_finite() or not 0 <= seconds <= MAX_CALL_DURATION:
        raise invalid("duration", f"expected 0 to {MAX_CALL_DURATION} seconds")
    return int(seconds.to_integral_value(rounding=ROUND_CEILING))


class CallCharged(Answer):
    """A stopped call: ``cost`` left the balance; ``rated_cost`` is what the tariff asked."""

    call_id: str
    account: str
    zone: str
    duration: int
    billed_seconds: int
    cost: str
    rated_cost: str
    balance: str
    currency: str
    repeated: bool
    # The duration charged is the first stop's; a repeat that reports another one is
    # not charged again, and is told so.
    charged_duration: int
    duration_differs: bool


async def stop_call(request: web.Request, params: StopCall) -> CallCharged:
    """Charge a call once. A repeated stop answers the first charge, and says when it
    reported another duration than the one charged."""
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    try:
        duration = stop_duration(params.duration)
        charge = await services_of(request).calls.stop(call_id, duration, nas=None)
    except OcsError as exc:
        metrics.CALL_STOPS.labels(exc.reason.value).inc()
        raise
    metrics.CALL_STOPS.labels("repeated" if charge.repeated else "charged").inc()
    return CallCharged(
        call_id=charge.call_id,
        account=charge.account_id,
        zone=charge.zone,
        duration=charge.duration,
        billed_seconds=charge.billed_seconds,
        cost=amount_text(charge.charged),
        rated_cost=amount_text(charge.rated),
        balance=amount_text(charge.balance),
        currency=charge.currency,
        repeated=charge.repeated,
        charged_duration=charge.duration,
        duration_differs=(charge.repeated and duration is not None and duration != charge.duration),
    )


class ChargeUsage(Params):
    """A usage event (MB, kWh, messages) to rate and debit once per ``event_id``."""

    account: AccountId
    event_id: CallId
    service: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    # At most what a CDR holds (its billed quantity too: ``charge_usage`` checks it).
    quantity: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUANTITY)]


class UsageCharged(Answer):
    """A charged usage event."""

    event_id: str
    account: str
    service: str
    quantity: int
    billed_quantity: int
    cost: str
    balance: str
    currency: str
    repeated: bool
    # A repeat answers the first charge: its service and quantity, whatever the retry
    # says; a retry that reports another quantity is not charged again, and is told so.
    quantity_differs: bool


async def charge_usage(request: web.Request, params: ChargeUsage) -> Reply[UsageCharged]:
    """POST /v1/usage: rate and debit a usage event once per event id."""
    event_id = validate_call_id(params.event_id, "event_id")
    charge = await services_of(request).calls.charge_usage(
        params.account, event_id, params.service, params.quantity
    )
    answer = UsageCharged(
        event_id=event_id,
        account=params.account,
        service=charge.service,
        quantity=charge.quantity,
        billed_quantity=charge.billed,
        cost=amount_text(charge.charged),
        balance=amount_text(charge.balance),
        currency=charge.currency,
        repeated=charge.repeated,
        quantity_differs=charge.quantity_differs,
    )
    return Reply(answer, 200 if charge.repeated else 201)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/calls",
        Role.SWITCH,
        "Authorize a call: how long it may last; its funds are held",
        authorize_call,
        AuthorizeCall,
        CallGranted,
        status=201,
        body_required=True,
        errors=(402, 403, 404, 409),
        answer_description="granted (200: a repeat of an authorized call_id)",
        description=(
            "409 no_free_line: every line busy; 409 call_id_in_use: another account's live"
            " call holds the call_id (the switches' ids collided), nothing reserved."
        ),
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/start",
        Role.SWITCH,
        "The call was answered",
        start_call,
        None,
        CallProgressAnswer,
        body="none",
        errors=(404, 409),
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/update",
        Role.SWITCH,
        "A live call's progress (an interim update)",
        update_call,
        UpdateCall,
        CallProgressAnswer,
        body_required=True,
        errors=(404, 409),
    ),
    Endpoint(
        "POST",
        "/v1/calls/{call_id}/stop",
        Role.SWITCH,
        "Charge a call once (a repeat answers the first charge)",
        stop_call,
        StopCall,
        CallCharged,
        errors=(404, 409),
    ),
    Endpoint(
        "POST",
        "/v1/usage",
        Role.SWITCH,
        "Rate and debit a usage event once per event id",
        charge_usage,
        ChargeUsage,
        UsageCharged,
        status=201,
        body_required=True,
        errors=(402, 404),
        answer_description="charged (200: a repeat of a charged event_id)",
    ),
)
