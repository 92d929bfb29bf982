"""The calling cards' endpoints: creating a PIN batch, and an IVR's queries by PIN
(the card's state, and the seconds it buys to a destination).

A thin adapter over ``ocs.balances.cards`` and the call lifecycle's quote: each
endpoint declares what it takes and answers (``ENDPOINTS``).
"""

from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.balances.cards import MAX_BATCH
from ocs.errors import OcsError, Reason
from ocs.http.context import services_of
from ocs.http.endpoint import Amount, Answer, Endpoint, ObjectId, Params, Role, amount_text
from ocs.metrics import PIN_FAILURES
from ocs.services import Services


class GeneratePins(Params):
    """A batch of calling cards of a plan, each worth ``value``."""

    batch: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[A-Za-z0-9_-]{1,32}$",
            description="the batch's id: 1 to 32 letters, digits, '-' or '_'",
            examples=["ivr-2027-01"],
        ),
    ]
    plan: ObjectId
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH, description="cards in the batch")]
    value: Annotated[Amount, msgspec.Meta(description="each card's opening balance")]
    length: Annotated[
        int,
        msgspec.Meta(
            ge=6, le=20, description="digits of each PIN; at least 1000 times more PINs than cards"
        ),
    ] = 12
    password_length: (
        Annotated[int, msgspec.Meta(ge=4, le=32, description="digits of a password per card")]
        | None
    ) = None
    expires_at: (
        Annotated[
            datetime,
            msgspec.Meta(
                tz=True,
                description="when the cards expire, with a zone (2027-01-31T23:59:59Z)",
            ),
        ]
        | None
    ) = None
    expire_days: Annotated[
        int,
        msgspec.Meta(
            ge=0, le=36_600, description="days after first use the card expires; 0: never"
        ),
    ] = 0


async def generate_pins(request: web.Request, params: GeneratePins) -> web.Response:
    """Create a PIN batch; the answer is the batch's CSV, the only place PINs appear."""
    batch = await services_of(request).cards.generate(
        batch_id=params.batch,
        plan_id=params.plan,
        count=params.count,
        length=params.length,
        value=int(params.value),
        password_length=params.password_length,
        expires_at=params.expires_at,
        expire_days=params.expire_days,
    )
    return web.Response(
        text=batch.csv(),
        status=201,
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{params.batch}.csv"'},
    )


Caller = Annotated[
    str,
    msgspec.Meta(
        max_length=64,
        description="who is calling the IVR (its caller id): wrong PINs count against it;"
        " left out, against the IVR only",
    ),
]


class PinQuery(Params):
    """An IVR's card lookup by PIN (the query string; an empty value is one left out)."""

    caller: Caller = ""


async def _card(request: web.Request, caller: str) -> tuple[Services, str]:
    """The card a PIN in the path opens; wrong PINs count against the caller's guesses
    and, as a NAS's do over RADIUS, against the IVR asking (its address): a client
    that names a new ``caller`` for every guess is still stopped."""
    services = services_of(request)
    pin = request.match_info["pin"]
    ivr = request.remote
    who = caller or ivr
    await services.pin_guard.check(who, ivr)
    account_id = await services.cards.account_for_pin(pin)
    if account_id is None:
        PIN_FAILURES.labels("http").inc()
        await services.pin_guard.failed(who, ivr)
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, "no card has this PIN", field="pin")
    return services, account_id


class PinInfo(Answer):
    """A card's state for an IVR: status, balance, prompts' language, expiry."""

    account: str
    status: str
    balance: str
    available: str
    currency: str
    language: str
    expires_at: int | None
    expires_days_after_first_use: int | None


async def pin_info(request: web.Request, params: PinQuery) -> PinInfo:
    """GET /v1/pins/{pin}: an IVR's card lookup by PIN: status, balance, language, expiry."""
    services, account_id = await _card(request, params.caller)
    state = await services.accounts.show(account_id)
    expires = state.expires_at
    return PinInfo(
        account=account_id,
        status=state.status,
        balance=amount_text(state.balance),
        available=amount_text(state.available),
        currency=state.currency,
        language=await services.cards.language(account_id),
        expires_at=expires or None,
        expires_days_after_first_use=(state.expire_days or None) if not expires else None,
    )


class PinTimeQuery(Params):
    """An IVR's "how long may this card call" (the query string; an empty value is one
    left out)."""

    destination: Annotated[
        str, msgspec.Meta(min_length=1, max_length=64, description="the number to call")
    ]
    access_number: Annotated[
        str,
        msgspec.Meta(max_length=33, description="the number the card holder dialled in on"),
    ] = ""
    caller: Caller = ""


class PinTime(Answer):
    """The seconds a card's funds buy to a destination (nothing is reserved)."""

    account: str
    destination: str
    destination_name: str | None
    zone: str
    seconds: int


async def pin_time(request: web.Request, params: PinTimeQuery) -> PinTime:
    """GET /v1/pins/{pin}/time: an IVR's "you have N minutes" for a card and a destination."""
    services, account_id = await _card(request, params.caller)
    access_number = params.access_number.lstrip("+") or None
    quote = await services.calls.quote(account_id, params.destination, access_number)
    return PinTime(
        account=account_id,
        destination=quote.destination,
        destination_name=quote.destination_name,
        zone=quote.zone,
        seconds=quote.seconds,
    )


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/pin-batches",
        Role.OPERATOR,
        "Create a batch of calling cards; the answer is its CSV, the only place PINs appear",
        generate_pins,
        GeneratePins,
        None,
        status=201,
        body_required=True,
        errors=(404, 409),
        answer_description="the batch as text/csv: pin, password, account, value, currency,"
        " expires (one line per card)",
    ),
    Endpoint(
        "GET",
        "/v1/pins/{pin}",
        Role.SWITCH,
        "An IVR's card lookup by PIN: status, balance, language, expiry",
        pin_info,
        PinQuery,
        PinInfo,
        errors=(403,),
        description="Wrong PINs count against the caller and the IVR asking: past the"
        " limit, 403 pin_blocked.",
    ),
    Endpoint(
        "GET",
        "/v1/pins/{pin}/time",
        Role.SWITCH,
        'An IVR\'s "you have N minutes": the seconds a card buys to a destination',
        pin_time,
        PinTimeQuery,
        PinTime,
        errors=(403,),
        description="Reserves nothing. Wrong PINs count as for the lookup.",
    ),
)
