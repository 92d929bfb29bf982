"""The accounts' endpoints (create, show, top up, add a caller id, set a password, lift
a password block) and the RADIUS NAS clients' (add, list).

A thin adapter over the account service (``ocs.balances.accounts``) and the NAS
client table (``ocs.radius.clients``): decode the request, call the service,
answer its result. Every decision is the service's.
"""

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import asyncpg
import msgspec
from aiohttp import web

from ocs.balances.accounts import (
    STATUSES,
    AccountSpec,
    PinTakenAsId,
    caller_digits_of,
    validate_account_id,
)
from ocs.balances.card_ids import may_be_pin
from ocs.balances.pin_guard import guess_source
from ocs.errors import invalid
from ocs.http.client_address import client_address
from ocs.http.context import CALLER_TOKEN, services_of
from ocs.http.endpoint import (
    AccountId,
    Amount,
    Answer,
    Endpoint,
    Params,
    Reply,
    Role,
    amount_text,
)
from ocs.http.plan_handlers import TranslationRule, TranslationRules, rule_dicts
from ocs.limits import MAX_LINES
from ocs.radius import clients as radius_clients
from ocs.rating.translation import validate_rules
from ocs.views import AccountView, account_view

AccountStatus = Literal["active", "locked", "suspended"]
if set(get_args(AccountStatus)) != set(STATUSES):  # one list of statuses, the accounts'
    raise RuntimeError(f"AccountStatus is not {STATUSES}")


# --- accounts ----------------------------------------------------------------------------

AccountPassword = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=128, description="the account's (or card's) password"),
]


class CreateAccount(Params):
    """A new account on a plan; every limit left out is the plan's."""

    id: AccountId
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=64, examples=["retail"])]
    balance: (
        Annotated[Amount, msgspec.Meta(description="the opening balance (0 when left out)")] | None
    ) = None
    credit_limit: Amount | None = None
    max_lines: (
        Annotated[
            int, msgspec.Meta(ge=1, le=MAX_LINES, description="calls the account may hold at once")
        ]
        | None
    ) = None
    status: AccountStatus | None = None
    password: AccountPassword | None = None
    expires_at: (
        Annotated[
            datetime,
            msgspec.Meta(
                tz=True,
                description="when the account stops working: ISO 8601 with a time zone",
                examples=["2027-01-31T23:59:59Z"],
            ),
        ]
        | None
    ) = None


async def create_account(request: web.Request, params: CreateAccount) -> AccountView:
    """POST /v1/accounts: create an account on a plan (201).

    An id of a PIN's form that is a live card's PIN is refused as an existing account
    is (409), and counts as a found PIN against the API token and the address asking,
    as a PIN query's wrong guess does: an operator who creates accounts to find PINs
    is blocked (403 ``pin_blocked``) as a guessing IVR is (decision 0042)."""
    services = services_of(request)
    spec = AccountSpec(
        params.id,
        params.plan,
        opening_balance=int(params.balance or 0),
        credit_limit=None if params.credit_limit is None else int(params.credit_limit),
        max_lines=params.max_lines,
        status=params.status or "active",
        password=params.password,
        expires_at=params.expires_at,
    )
    if not may_be_pin(params.id):
        return account_view(await services.accounts.create(spec))
    # Counted before the look-up, so that probes sent in parallel are all counted.
    attempt = await services.pin_guard.attempt(
        None, guess_source(client_address(request)), request.get(CALLER_TOKEN)
    )
    try:
        state = await services.accounts.create(spec)
    except PinTakenAsId:
        raise  # a PIN found: the attempt stays counted
    except BaseException:
        await attempt.take_back()
        raise
    await attempt.take_back()
    return account_view(state)


async def show_account(request: web.Request, params: None) -> AccountView:
    """GET /v1/accounts/{id}: an account's state."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    return account_view(await services_of(request).accounts.show(account_id))


class TopupAccount(Params):
    """Credit an account once per ``topup_id``: a repeat with the same id changes nothing."""

    amount: Annotated[Amount, msgspec.Meta(description="more than zero")]
    topup_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=128,
                description="printable; one is made when left out (no repeat is then known)",
            ),
        ]
        | None
    ) = None


class Topup(Answer):
    """A top-up: ``amount`` credited, ``balance`` after it."""

    account: str
    amount: str
    balance: str
    repeated: bool


async def topup_account(request: web.Request, params: TopupAccount) -> Reply[Topup]:
    """POST /v1/accounts/{id}/topups: credit an account once per top-up id (201; 200 for
    a repeat); 403 ``account_expired`` for an account past its expiry."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    result = await services_of(request).accounts.topup(
        account_id, int(params.amount), params.topup_id
    )
    answer = Topup(
        account=account_id,
        amount=amount_text(result.amount),
        balance=amount_text(result.balance),
        repeated=result.repeated,
    )
    return Reply(answer, 200 if result.repeated else 201)


class AddCaller(Params):
    """A caller id (Calling-Station-Id) that identifies the account: pinless calling."""

    caller: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=33,
            description="1 to 32 digits, optionally with a leading '+'",
            examples=["447700900123"],
        ),
    ]


class Caller(Answer):
    """A caller id added to an account (its digits, without '+')."""

    account: str
    caller: str


async def add_caller(request: web.Request, params: AddCaller) -> Caller:
    """POST /v1/accounts/{id}/callers: let a caller id identify the account (pinless)."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    await services_of(request).accounts.add_caller(account_id, params.caller)
    return Caller(account=account_id, caller=params.caller.lstrip("+"))


async def remove_caller(request: web.Request, params: None) -> Caller:
    """DELETE /v1/accounts/{id}/callers/{caller}: the caller id identifies the account
    no more (the number went to another customer); a live call from it goes on."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    caller = caller_digits_of(request.match_info["caller"])
    await services_of(request).accounts.remove_caller(account_id, caller)
    return Caller(account=account_id, caller=caller)


class PasswordBlockLifted(Answer):
    """An account whose wrong passwords were forgotten: its password may be tried again."""

    account: str
    wrong_passwords_cleared: int


async def lift_password_block(request: web.Request, params: None) -> PasswordBlockLifted:
    """DELETE /v1/accounts/{id}/password-block: forget the account's wrong passwords."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    cleared = await services_of(request).accounts.lift_password_block(account_id)
    return PasswordBlockLifted(account=account_id, wrong_passwords_cleared=cleared)


class SetPassword(Params):
    """An account's new password; null removes it (calls then need none)."""

    password: AccountPassword | None


class PasswordSet(Answer):
    """An account whose password was replaced; its wrong passwords were forgotten."""

    account: str
    has_password: bool


async def set_password(request: web.Request, params: SetPassword) -> PasswordSet:
    """PUT /v1/accounts/{id}/password: replace the account's password."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    await services_of(request).accounts.set_password(account_id, params.password)
    return PasswordSet(account=account_id, has_password=params.password is not None)


# --- RADIUS NAS clients ------------------------------------------------------------------


class AddNasClient(Params):
    """A RADIUS NAS allowed to send requests, or a new version of one of that name."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="printable")]
    address: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=64,
            description="an IP address or a CIDR network",
            examples=["192.0.2.10"],
        ),
    ]
    secret: Annotated[
        str, msgspec.Meta(min_length=1, max_length=128, description="the RADIUS shared secret")
    ]
    require_message_authenticator: bool = True
    coa_port: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, le=65535, description="the NAS's port for Disconnect-Requests (RFC 5176)"
            ),
        ]
        | None
    ) = None
    translation: (
        Annotated[
            TranslationRules,
            msgspec.Meta(description="rules replacing the plan's for this NAS's calls"),
        ]
        | None
    ) = None


class NasClient(Answer):
    """A RADIUS NAS client; its secret is never shown."""

    name: str
    address: str
    require_message_authenticator: bool
    coa_port: int | None
    translation: list[TranslationRule] | None


async def add_nas_client(request: web.Request, params: AddNasClient) -> NasClient:
    """POST /v1/nas-clients: let a RADIUS NAS send requests (201)."""
    if not params.name.isprintable():
        raise invalid("name", "expected printable characters")
    try:
        network = str(ipaddress.ip_network(params.address, strict=False))
    except ValueError:
        raise invalid("address", f"not an IP address or CIDR: {params.address!r}") from None
    rules = params.translation
    translation = None if rules is None else validate_rules(rule_dicts(rules))
    services = services_of(request)
    radius_clients.refuse_configured(services.settings, network)
    try:
        await radius_clients.add_client(
            services.pool,
            params.name,
            network,
            params.secret,
            params.require_message_authenticator,
            params.coa_port,
            translation,
        )
    except asyncpg.UniqueViolationError:
        # A name is replaced; a network is one client's only (the source says who sent).
        raise invalid("address", f"another NAS client has the address {network}") from None
    # The secret is never echoed back.
    return NasClient(
        name=params.name,
        address=network,
        require_message_authenticator=params.require_message_authenticator,
        coa_port=params.coa_port,
        translation=rules,
    )


class NasClientRemoved(Answer):
    """A stored NAS client removed: its requests are dropped from now on."""

    name: str


async def remove_nas_client(request: web.Request, params: None) -> NasClientRemoved:
    """DELETE /v1/nas-clients/{name}: stop answering a stored RADIUS NAS client."""
    name = request.match_info["name"]
    services = services_of(request)
    await radius_clients.remove_client(services.pool, services.settings, name)
    return NasClientRemoved(name=name)


class NasClients(Answer):
    """Every RADIUS NAS client, by name."""

    clients: list[NasClient]


async def list_nas_clients(request: web.Request, params: None) -> NasClients:
    """GET /v1/nas-clients: the RADIUS NAS clients, without their secrets."""
    clients = await radius_clients.list_clients(services_of(request).pool)
    return NasClients(clients=msgspec.convert(clients, list[NasClient]))


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/accounts",
        Role.OPERATOR,
        "Create an account on a plan",
        create_account,
        CreateAccount,
        AccountView,
        status=201,
        errors=(404, 409),
        answer_description="the account created",
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}",
        Role.VIEWER,
        "An account's state: balance, what live calls hold, limits",
        show_account,
        None,
        AccountView,
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/topups",
        Role.OPERATOR,
        "Credit an account once per top-up id",
        topup_account,
        TopupAccount,
        Topup,
        status=201,
        description="An account past its `expires_at` is refused 403 `account_expired` and"
        " nothing is credited: it could spend none of it (`PATCH /v1/accounts/{id}` with a"
        " later `expires_at` revives it, and the same `topup_id` then credits it).",
        answer_description="credited (200: a repeat of a top-up id, credited once)",
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/callers",
        Role.OPERATOR,
        "Let a caller id identify the account (pinless calling)",
        add_caller,
        AddCaller,
        Caller,
        status=201,
        errors=(409,),
        description="409 for a caller id another account has: remove it there first"
        " (DELETE /v1/accounts/{account_id}/callers/{caller}).",
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/callers/{caller}",
        Role.OPERATOR,
        "Stop a caller id identifying the account (pinless calling)",
        remove_caller,
        None,
        Caller,
        errors=(404,),
        description="For a number that went to another customer: calls from it identify"
        " this account no more, and another account may be given it. A call from it that"
        " is live goes on, charged to this account. 404 for a caller id the account does"
        " not have.",
        answer_description="the account and the caller id it no longer has",
    ),
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/password",
        Role.OPERATOR,
        "Replace an account's password, or remove it; its wrong passwords are forgotten",
        set_password,
        SetPassword,
        PasswordSet,
        errors=(404,),
        answer_description="the account and whether it now has a password",
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/password-block",
        Role.OPERATOR,
        "Lift a block for wrong passwords: the account's password may be tried again at once",
        lift_password_block,
        None,
        PasswordBlockLifted,
        errors=(404,),
        answer_description="the wrong passwords the window still counted, now forgotten",
    ),
    Endpoint(
        "POST",
        "/v1/nas-clients",
        Role.ADMIN,
        "Let a RADIUS NAS send requests (replaces one of the same name)",
        add_nas_client,
        AddNasClient,
        NasClient,
        status=201,
        errors=(409,),
        description="409 (set_in_config, field address) for a network the configuration"
        " file's radius_clients has: its entry wins, so change it there.",
        answer_description="the NAS client, without its secret",
    ),
    Endpoint(
        "DELETE",
        "/v1/nas-clients/{name}",
        Role.ADMIN,
        "Stop answering a RADIUS NAS client added through the API",
        remove_nas_client,
        None,
        NasClientRemoved,
        errors=(404, 409),
        description="Every process reloads its clients: the NAS's requests are dropped from"
        " then on. 409 (set_in_config) for a client of the configuration file: remove it"
        " there.",
    ),
    Endpoint(
        "GET",
        "/v1/nas-clients",
        Role.VIEWER,
        "The RADIUS NAS clients, without their secrets",
        list_nas_clients,
        None,
        NasClients,
    ),
)
