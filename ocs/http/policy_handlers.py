"""The account-policy endpoints: an account's limits, its members, a plan's policy,
and cutting a live call.

A thin adapter over the services (``ocs.balances``, ``ocs.charging.lifecycle``):
each endpoint declares what it takes and answers (``ENDPOINTS``), the handler
calls the service and shapes its result. The usage counters' endpoints are in
``ocs.http.counter_handlers``, the calling cards' in ``ocs.http.card_handlers``.
"""

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
from aiohttp import web

from ocs.balances.accounts import STATUSES, UNSET, Unset, validate_account_id, validate_member
from ocs.balances.plan_policy import LANGUAGE_MAX, PlanPolicy, set_plan_policy
from ocs.catalog.store import RESERVATION_POLICIES, SLICE_SECONDS_MAX, validate_plan_id
from ocs.charging.lifecycle import validate_call_id
from ocs.http.context import services_of
from ocs.http.endpoint import (
    ZERO_AMOUNT,
    Amount,
    Answer,
    Endpoint,
    Member,
    Params,
    Role,
    amount_text,
)
from ocs.views import AccountView, account_view

AccountStatus = Literal["active", "locked", "suspended"]
ReservationPolicy = Literal["whole", "slice", "share"]
# The Literals are the API's spelling of the services' own lists: they must not drift.
if set(get_args(AccountStatus)) != set(STATUSES) or get_args(ReservationPolicy) != tuple(
    RESERVATION_POLICIES
):
    raise RuntimeError("the API's account statuses or reservation policies differ from ocs's")

LineLimit = Annotated[int, msgspec.Meta(ge=1, le=10_000, description="live calls at most")]
MemberLineLimit = Annotated[
    int, msgspec.Meta(ge=0, le=10_000, description="live calls per member; 0: no limit")
]
MemberLimit = Annotated[int, msgspec.Meta(ge=0, le=1_000_000, description="members at most")]
Expiry = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="when the account stops working: ISO 8601 with a time zone;"
        " null: never. A later time revives an expired account",
        examples=["2027-01-31T23:59:59Z"],
    ),
]


# --- an account's limits ----------------------------------------------------------------


class ChangeAccount(Params):
    """An account's limits to change; a field left out keeps its value. null removes
    ``critical_balance`` (no lock), ``max_members`` (no limit) and ``expires_at`` (no
    expiry); no other limit can go."""

    credit_limit: Amount | msgspec.UnsetType = msgspec.UNSET
    max_lines: LineLimit | msgspec.UnsetType = msgspec.UNSET
    min_balance: Amount | msgspec.UnsetType = msgspec.UNSET
    critical_balance: (
        Annotated[
            Amount | None, msgspec.Meta(description="lock the account below this; null: never")
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    member_max_lines: MemberLineLimit | msgspec.UnsetType = msgspec.UNSET
    max_members: (
        Annotated[MemberLimit | None, msgspec.Meta(description="null: no limit")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    status: (
        Annotated[
            AccountStatus,
            msgspec.Meta(
                description="an operator's decision: it clears a critical-balance lock;"
                " active on an on-demand account with no billing session open gives back"
                " its session lock"
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    expires_at: Expiry | msgspec.UnsetType | None = msgspec.UNSET


T = TypeVar("T")


def _given(value: T | msgspec.UnsetType) -> T | None:
    """A field of a change as the service takes it: None when left out."""
    return None if isinstance(value, msgspec.UnsetType) else value


def _micro(value: int | None) -> int | None:
    """An amount as a plain int (None kept): the Redis client packs exact ints only, and
    a body's amount decodes to ``Amount``, an int subclass."""
    return None if value is None else int(value)


def _removable(value: T | msgspec.UnsetType | None) -> T | Unset | None:
    """A removable limit as the service takes it: UNSET when left out, None to remove it."""
    return UNSET if isinstance(value, msgspec.UnsetType) else value


async def update_account(request: web.Request, params: ChangeAccount) -> AccountView:
    """PATCH an account's limits; a field set to null removes that limit where it may."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    critical = params.critical_balance
    state = await services_of(request).accounts.update_policy(
        account_id,
        credit_limit=_micro(_given(params.credit_limit)),
        max_lines=_given(params.max_lines),
        min_balance=_micro(_given(params.min_balance)),
        critical_balance=(UNSET if isinstance(critical, msgspec.UnsetType) else _micro(critical)),
        member_max_lines=_given(params.member_max_lines),
        max_members=_removable(params.max_members),
        status=_given(params.status),
        expires_at=_removable(params.expires_at),
    )
    return account_view(state)


# --- members ------------------------------------------------------------------------------


class AddMember(Params):
    """A member (SIP user, extension, caller id) of the account, with its own line limit;
    adding one that exists changes its limit."""

    member: Member
    max_lines: (
        Annotated[LineLimit, msgspec.Meta(description="its own limit; null: the account's")] | None
    ) = None


class MemberAdded(Answer):
    """A member of an account and its own line limit (null: the account's member limit)."""

    account: str
    member: str
    max_lines: int | None


async def add_member(request: web.Request, params: AddMember) -> MemberAdded:
    """POST /v1/accounts/{id}/members: add a member with its own line limit."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    member = validate_member(params.member)
    await services_of(request).accounts.add_member(account_id, member, params.max_lines)
    return MemberAdded(account=account_id, member=member, max_lines=params.max_lines)


class MemberLine(Answer):
    """A member and its own line limit (null: the account's member limit)."""

    member: str
    max_lines: int | None


class AccountMembers(Answer):
    """An account's members, by name."""

    account: str
    members: list[MemberLine]


async def list_members(request: web.Request, params: None) -> AccountMembers:
    """GET /v1/accounts/{id}/members: the account's members."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    members = await services_of(request).accounts.members(account_id)
    return AccountMembers(account=account_id, members=msgspec.convert(members, list[MemberLine]))


class MemberRemoved(Answer):
    """A member removed from its account: it no longer names the account."""

    account: str
    member: str
    removed: bool


async def remove_member(request: web.Request, params: None) -> MemberRemoved:
    """DELETE /v1/accounts/{id}/members/{member}: remove a member."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    member = validate_member(request.match_info["member"])
    await services_of(request).accounts.remove_member(account_id, member)
    return MemberRemoved(account=account_id, member=member, removed=True)


# --- a plan's policy ---------------------------------------------------------------------


class SetPlanPolicy(Params):
    """A plan's whole policy (a field left out takes its default): the defaults its new
    accounts copy, and how its calls reserve funds (applied to calls from then on)."""

    max_members: Annotated[MemberLimit | None, msgspec.Meta(description="null: no limit")] = None
    member_max_lines: MemberLineLimit = 0
    critical_balance: Annotated[
        Amount | None, msgspec.Meta(description="lock accounts below this; null: never")
    ] = None
    recurring_fee: Amount = ZERO_AMOUNT
    lock_prorated: Annotated[
        bool, msgspec.Meta(description="the next recurring fee is not available for calls")
    ] = False
    language: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=LANGUAGE_MAX, description="the card prompts' language tag"
        ),
    ] = "en"
    reservation_policy: Annotated[
        ReservationPolicy,
        msgspec.Meta(
            description="whole: a call holds its longest length, as far as the funds go;"
            " slice: slice_seconds at a time, extended by updates; share: at most the"
            " available funds divided by the free lines"
        ),
    ] = "whole"
    slice_seconds: Annotated[
        int,
        msgspec.Meta(ge=1, le=SLICE_SECONDS_MAX, description="seconds a slice reserves"),
    ] = 60


class PlanPolicyView(Answer):
    """A plan's policy as set."""

    plan: str
    max_members: int | None
    member_max_lines: int
    critical_balance: str | None
    recurring_fee: str
    lock_prorated: bool
    language: str
    reservation_policy: str
    slice_seconds: int


async def set_policy_of_plan(request: web.Request, params: SetPlanPolicy) -> PlanPolicyView:
    """PUT a plan's policy: the account defaults, and how its calls reserve funds."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    policy = PlanPolicy(
        max_members=params.max_members,
        member_max_lines=params.member_max_lines,
        critical_balance=_micro(params.critical_balance),
        recurring_fee=int(params.recurring_fee),
        lock_prorated=params.lock_prorated,
        language=params.language,
        reservation_policy=params.reservation_policy,
        slice_seconds=params.slice_seconds,
    )
    await set_plan_policy(services_of(request).pool, plan_id, policy)
    return PlanPolicyView(
        plan=plan_id,
        max_members=policy.max_members,
        member_max_lines=policy.member_max_lines,
        critical_balance=(
            None if policy.critical_balance is None else amount_text(policy.critical_balance)
        ),
        recurring_fee=amount_text(policy.recurring_fee),
        lock_prorated=policy.lock_prorated,
        language=policy.language,
        reservation_policy=policy.reservation_policy,
        slice_seconds=policy.slice_seconds,
    )


# --- cutting a live call -----------------------------------------------------------------


class CallCut(Answer):
    """A cut call: charged up to now, and what its NAS said to the Disconnect-Request."""

    call_id: str
    account: str
    duration: int
    cost: str
    balance: str
    cause: str
    disconnect: Annotated[
        str | None,
        msgspec.Meta(
            description='the NAS\'s answer: "ack", "nak", "nak:<cause>" or "unreachable";'
            " null: not a RADIUS call, no NAS to tell"
        ),
    ]


class CutQuery(Params):
    """Which call of the id to cut."""

    account: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=64,
                description="the call of this account: two NAS clients' calls may share a"
                " global id (h323-conf-id, SIP Call-ID); without it, the call the id names"
                " first",
            ),
        ]
        | None
    ) = None


async def cut_call(request: web.Request, params: CutQuery) -> CallCut:
    """Cut a live call: charge it up to now and ask its NAS to end it (RFC 5176)."""
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    account = None if params.account is None else validate_account_id(params.account, "account")
    services = services_of(request)
    charge, record = await services.calls.cut(call_id, account)
    outcome = None if services.disconnect is None else await services.disconnect(record)
    reason = getattr(outcome, "reason", None)
    return CallCut(
        call_id=call_id,
        account=charge.account_id,
        duration=charge.duration,
        cost=amount_text(charge.charged),
        balance=amount_text(charge.balance),
        cause=charge.cause,
        disconnect=reason if isinstance(reason, str) else None,
    )


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "PATCH",
        "/v1/accounts/{account_id}",
        Role.OPERATOR,
        "Change an account's limits (null removes critical_balance, max_members or expires_at)",
        update_account,
        ChangeAccount,
        AccountView,
        description="A field left out keeps its value. A changed `critical_balance` is"
        " judged at once: a critical-balance lock it no longer holds (none now, or the"
        " balance back to it) is lifted, and an active account below the new one is"
        " locked by `critical`. A later `expires_at` revives an expired account (top-ups"
        " and calls are refused `account_expired` past it). A status set here is an operator's"
        " decision: it clears a critical-balance lock. `active` on an account billed on"
        " demand with no billing session open leaves it locked by `session` (its calls wait"
        " for a session), as the answer shows.",
        answer_description="the account as changed",
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/members",
        Role.VIEWER,
        "An account's members and their own line limits",
        list_members,
        None,
        AccountMembers,
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/members",
        Role.OPERATOR,
        "Add a member (SIP user, extension, caller id), or change its line limit",
        add_member,
        AddMember,
        MemberAdded,
        status=201,
        body_required=True,
        errors=(409,),
        description="409: the account has its max_members, or the member is another account's.",
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/members/{member}",
        Role.OPERATOR,
        "Remove a member: it no longer names the account",
        remove_member,
        None,
        MemberRemoved,
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/policy",
        Role.ADMIN,
        "Set a plan's policy: its accounts' defaults and how its calls reserve funds",
        set_policy_of_plan,
        SetPlanPolicy,
        PlanPolicyView,
        description="Accounts created later copy the defaults; existing ones keep theirs."
        " The reservation policy applies to the plan's calls authorized from then on.",
    ),
    Endpoint(
        "DELETE",
        "/v1/calls/{call_id}",
        Role.OPERATOR,
        "Cut a live call: charge it up to now and ask its NAS to end it (RFC 5176)",
        cut_call,
        CutQuery,
        CallCut,
        description="The switch's own stop that follows is charged only for what it adds.",
    ),
    # Until app.py lists these modules itself (see the imports).
)
