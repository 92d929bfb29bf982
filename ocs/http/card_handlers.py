"""The calling cards' endpoints: creating a PIN batch, an IVR's queries by PIN (the
card's state, and the seconds it buys to a destination), and the IVR settings an IVR
is told in those answers (a plan's default, an account's override: decision 0030).

The PIN queries come in two forms that answer alike: ``POST /v1/pins/lookup`` and
``POST /v1/pins/time`` take the PIN in the JSON body; the older ``GET /v1/pins/{pin}``
and ``/v1/pins/{pin}/time`` carry it in the URL, which a proxy in front of ocs logs,
and are kept, deprecated, for IVRs built on them (decision 0042, 2026-12-07).

A thin adapter over ``ocs.balances.cards`` and the call lifecycle's quote: each
endpoint declares what it takes and answers (``ENDPOINTS``).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.balances import ivr
from ocs.balances.accounts import validate_account_id
from ocs.balances.cards import MAX_BATCH
from ocs.balances.pin_guard import guess_source
from ocs.catalog import plan_ivr, plan_ivr_store
from ocs.catalog.store import validate_plan_id
from ocs.errors import OcsError, Reason
from ocs.http.client_address import client_address
from ocs.http.context import CALLER_TOKEN, services_of
from ocs.http.endpoint import Amount, Answer, Endpoint, ObjectId, Params, Role, amount_text
from ocs.metrics import PIN_FAILURES
from ocs.services import Services


class GeneratePins(Params):
    """A batch of calling cards of a plan, each worth ``value``."""

    batch: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^[A-Za-z0-9_-]{1,32}(?!\n)$",
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
        " left out, against the IVR (its address and its API token) only",
    ),
]


Pin = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=32,
        description="the calling card's PIN",
        examples=["123456789012"],
    ),
]


class PinQuery(Params):
    """An IVR's card lookup by PIN (the query string; an empty value is one left out)."""

    caller: Caller = ""


class PinLookup(Params):
    """An IVR's card lookup, the PIN in the body (never in the URL, which proxies log)."""

    pin: Pin
    caller: Caller = ""


async def _card(request: web.Request, pin: str, caller: str) -> tuple[Services, str]:
    """The card a PIN opens; wrong PINs count against the caller's guesses (when the
    query names one), and, as a NAS's do over RADIUS, against the IVR asking (its
    address, an IPv6 one by its /64): a client that names a new ``caller`` for every
    guess is still stopped. They count too against the API token that let the query
    in, so that one spread over many addresses is stopped as well. Both forms of a
    query (the PIN in the path or in the body) count against the same guesses."""
    services = services_of(request)
    # No caller: the IVR's limit only, as over RADIUS. Its address under the caller's
    # far lower limit let a few typos lock every card holder of the IVR out.
    # Counted before the lookup, so that guesses sent in parallel are all counted.
    attempt = await services.pin_guard.attempt(
        caller or None, guess_source(client_address(request)), request.get(CALLER_TOKEN)
    )
    try:
        account_id = await services.cards.account_for_pin(pin)
    except BaseException:
        await attempt.take_back()
        raise
    if account_id is None:
        PIN_FAILURES.labels("http").inc()  # the attempt stays counted
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, "no card has this PIN", field="pin")
    await attempt.take_back()
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
    # The IVR settings (decision 0030): what to announce; ``language`` above is theirs
    # when they name one.
    play_balance: bool = True
    play_time: bool = False


async def _pin_info(request: web.Request, pin: str, caller: str) -> PinInfo:
    """A card's state by its PIN, whichever form the query came in."""
    services, account_id = await _card(request, pin, caller)
    state = await services.accounts.show(account_id)
    expires = state.expires_at
    settings = await services.calls.ivr_of(account_id)
    return PinInfo(
        account=account_id,
        status=state.status,
        balance=amount_text(state.balance),
        available=amount_text(state.available),
        currency=state.currency,
        language=settings.language or await services.cards.language(account_id),
        expires_at=expires or None,
        expires_days_after_first_use=(state.expire_days or None) if not expires else None,
        play_balance=settings.play_balance,
        play_time=settings.play_time,
    )


async def pin_info(request: web.Request, params: PinQuery) -> PinInfo:
    """GET /v1/pins/{pin} (deprecated: the PIN is in the URL): an IVR's card lookup."""
    return await _pin_info(request, request.match_info["pin"], params.caller)


async def lookup_pin(request: web.Request, params: PinLookup) -> PinInfo:
    """POST /v1/pins/lookup: an IVR's card lookup by PIN: status, balance, language,
    expiry."""
    return await _pin_info(request, params.pin, params.caller)


Destination = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="the number to call")
]
AccessNumber = Annotated[
    str,
    msgspec.Meta(max_length=33, description="the number the card holder dialled in on"),
]


class PinTimeQuery(Params):
    """An IVR's "how long may this card call" (the query string; an empty value is one
    left out)."""

    destination: Destination
    access_number: AccessNumber = ""
    caller: Caller = ""


class PinTimeLookup(Params):
    """An IVR's "how long may this card call", the PIN in the body (never in the URL)."""

    pin: Pin
    destination: Destination
    access_number: AccessNumber = ""
    caller: Caller = ""


class PinTime(Answer):
    """The seconds a card's funds buy to a destination (nothing is reserved)."""

    account: str
    destination: str
    destination_name: str | None
    zone: str
    seconds: int
    # The IVR settings (decision 0030): what to announce, in which language.
    play_balance: bool = True
    play_time: bool = False
    language: str = "en"


async def _pin_time(
    request: web.Request, pin: str, params: PinTimeQuery | PinTimeLookup
) -> PinTime:
    """The seconds a card buys to a destination, whichever form the query came in."""
    services, account_id = await _card(request, pin, params.caller)
    access_number = params.access_number.lstrip("+") or None
    quote = await services.calls.quote(account_id, params.destination, access_number)
    settings = await services.calls.ivr_of(account_id)
    return PinTime(
        account=account_id,
        destination=quote.destination,
        destination_name=quote.destination_name,
        zone=quote.zone,
        seconds=quote.seconds,
        play_balance=settings.play_balance,
        play_time=settings.play_time,
        language=settings.language or await services.cards.language(account_id),
    )


async def pin_time(request: web.Request, params: PinTimeQuery) -> PinTime:
    """GET /v1/pins/{pin}/time (deprecated: the PIN is in the URL)."""
    return await _pin_time(request, request.match_info["pin"], params)


async def lookup_pin_time(request: web.Request, params: PinTimeLookup) -> PinTime:
    """POST /v1/pins/time: an IVR's "you have N minutes" for a card and a destination."""
    return await _pin_time(request, params.pin, params)


Announce = Annotated[
    Literal["none", "balance", "time", "both"],
    msgspec.Meta(description="what the IVR announces: the balance, the time it buys, both"),
]
Language = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*(?!\n)$",
        max_length=35,
        description="the prompts' language tag",
        examples=["en", "pt-BR"],
    ),
]


class SetPlanIvr(Params):
    """A plan's IVR default and voicemail server."""

    announce: Announce = "balance"
    language: Language | None = None
    voicemail_enabled: bool = False
    voicemail_server: Annotated[
        str,
        msgspec.Meta(
            max_length=plan_ivr.VOICEMAIL_MAX,
            description="where the switch forwards unanswered calls: a SIP URI or host[:port]",
            examples=["sip:vm.example.net:5060"],
        ),
    ] = ""


class PlanIvrView(Answer):
    """A plan's IVR default and voicemail server (language null: each account's)."""

    plan: str
    announce: str
    language: str | None
    voicemail_enabled: bool
    voicemail_server: str


def plan_ivr_view(settings: plan_ivr.PlanIvr) -> PlanIvrView:
    """A plan's IVR settings as the API (and the CLI) shows them."""
    return PlanIvrView(
        plan=settings.plan_id,
        announce=settings.announce,
        language=settings.language,
        voicemail_enabled=settings.voicemail_enabled,
        voicemail_server=settings.voicemail_server,
    )


async def set_plan_ivr(request: web.Request, params: SetPlanIvr) -> PlanIvrView:
    """PUT /v1/plans/{plan_id}/ivr."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    services = services_of(request)
    done = await plan_ivr_store.set_plan_ivr(
        services.pool,
        plan_ivr.PlanIvr(
            plan_id,
            params.announce,
            params.language,
            params.voicemail_enabled,
            params.voicemail_server,
        ),
    )
    return plan_ivr_view(done)


async def get_plan_ivr(request: web.Request, params: None) -> PlanIvrView:
    """GET /v1/plans/{plan_id}/ivr."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    return plan_ivr_view(await plan_ivr_store.plan_ivr(services_of(request).pool, plan_id))


class SetAccountIvr(Params):
    """An account's override of its plan's IVR default (null or left out: the plan's)."""

    announce: Announce | None = None
    language: Language | None = None


class AccountIvrView(Answer):
    """An account's override and what its IVR is told with it."""

    account: str
    announce: str | None
    language: str | None
    effective_announce: str
    effective_language: str | None


async def _account_ivr_view(request: web.Request, settings: ivr.AccountIvr) -> AccountIvrView:
    """The override with the settings in effect (the plan's default under it)."""
    found = await services_of(request).calls.ivr_of(settings.account_id)
    return AccountIvrView(
        account=settings.account_id,
        announce=settings.announce,
        language=settings.language,
        effective_announce=found.announce,
        effective_language=found.language,
    )


async def set_account_ivr(request: web.Request, params: SetAccountIvr) -> AccountIvrView:
    """PUT /v1/accounts/{account_id}/ivr."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    services = services_of(request)
    done = await ivr.set_account_ivr(
        services.pool, services.store, ivr.AccountIvr(account_id, params.announce, params.language)
    )
    return await _account_ivr_view(request, done)


async def get_account_ivr(request: web.Request, params: None) -> AccountIvrView:
    """GET /v1/accounts/{account_id}/ivr."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    found = await ivr.account_ivr(services_of(request).pool, account_id)
    return await _account_ivr_view(request, found)


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
        "POST",
        "/v1/pins/lookup",
        Role.SWITCH,
        "An IVR's card lookup by PIN: status, balance, language, expiry",
        lookup_pin,
        PinLookup,
        PinInfo,
        body_required=True,
        errors=(403, 404),
        description="The PIN travels in the body, out of the URL that proxies and load"
        " balancers log. A PIN no card has: 404 account_not_found (field pin). Wrong PINs"
        " count against the caller and the IVR asking, together with those of"
        " GET /v1/pins/{pin}: past the limit, 403 pin_blocked.",
    ),
    Endpoint(
        "POST",
        "/v1/pins/time",
        Role.SWITCH,
        'An IVR\'s "you have N minutes": the seconds a card buys to a destination',
        lookup_pin_time,
        PinTimeLookup,
        PinTime,
        body_required=True,
        errors=(403, 404),
        description="Reserves nothing. The PIN travels in the body; wrong PINs count as for"
        " the lookup.",
    ),
    Endpoint(
        "GET",
        "/v1/pins/{pin}",
        Role.SWITCH,
        "Deprecated: an IVR's card lookup by PIN in the URL; use POST /v1/pins/lookup",
        pin_info,
        PinQuery,
        PinInfo,
        errors=(403,),
        description="Deprecated: the PIN is in the URL, which a reverse proxy, load balancer"
        " or WAF in front of ocs logs; POST /v1/pins/lookup answers the same with the PIN"
        " in the body. Wrong PINs count against the caller and the IVR asking: past the"
        " limit, 403 pin_blocked.",
        deprecated=True,
    ),
    Endpoint(
        "GET",
        "/v1/pins/{pin}/time",
        Role.SWITCH,
        "Deprecated: the seconds a card buys, its PIN in the URL; use POST /v1/pins/time",
        pin_time,
        PinTimeQuery,
        PinTime,
        errors=(403,),
        description="Deprecated: the PIN is in the URL, which proxies log; POST"
        " /v1/pins/time answers the same with the PIN in the body. Reserves nothing. Wrong"
        " PINs count as for the lookup.",
        deprecated=True,
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/ivr",
        # Admin, as the rest of a plan's call handling: the voicemail server it names
        # receives every unanswered call of the plan.
        Role.ADMIN,
        "Set a plan's IVR default (announce, language) and its voicemail server",
        set_plan_ivr,
        SetPlanIvr,
        PlanIvrView,
        body_required=True,
        errors=(404,),
        description="The IVR is told them in RADIUS answers (Cisco-AVPair ocs-ivr-*) and in"
        " the PIN answers; an enabled voicemail server is returned in authorize answers.",
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/ivr",
        Role.VIEWER,
        "A plan's IVR default and voicemail server",
        get_plan_ivr,
        None,
        PlanIvrView,
        errors=(404,),
    ),
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/ivr",
        Role.OPERATOR,
        "Override the plan's IVR default for one account (null fields: the plan's)",
        set_account_ivr,
        SetAccountIvr,
        AccountIvrView,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/ivr",
        Role.VIEWER,
        "An account's IVR override and the settings in effect",
        get_account_ivr,
        None,
        AccountIvrView,
        errors=(404,),
    ),
)
