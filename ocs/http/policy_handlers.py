"""HTTP handlers for account policy: limits, members, usage counters, calling cards
(PIN batches and IVR queries) and cutting a live call."""

from typing import Any

from aiohttp import web

from ocs.balances.accounts import UNSET, validate_account_id, validate_member
from ocs.balances.plan_policy import PlanPolicy, set_plan_policy
from ocs.catalog.store import SLICE_SECONDS_MAX, validate_plan_id
from ocs.charging.lifecycle import validate_call_id
from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import SERVICES
from ocs.http.handlers import account_json
from ocs.http.json_io import (
    amount_field,
    int_field,
    money,
    read_object,
    string_field,
    timestamp_field,
)
from ocs.metrics import PIN_FAILURES
from ocs.rating.counter_rules import CounterDef
from ocs.services import Services


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise invalid(name, "expected true or false")
    return value


async def update_account(request: web.Request) -> web.Response:
    """PATCH an account's limits; a field set to null removes that limit where it may."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    body = await read_object(request)
    view = await _services(request).accounts.update_policy(
        account_id,
        credit_limit=amount_field(body, "credit_limit", required=False),
        max_lines=int_field(body, "max_lines", required=False, minimum=1, maximum=10_000),
        min_balance=amount_field(body, "min_balance", required=False),
        critical_balance=(
            amount_field(body, "critical_balance", required=False)
            if "critical_balance" in body
            else UNSET
        ),
        member_max_lines=int_field(body, "member_max_lines", required=False, maximum=10_000),
        max_members=(
            int_field(body, "max_members", required=False, maximum=1_000_000)
            if "max_members" in body
            else UNSET
        ),
        status=string_field(body, "status", required=False, max_len=16),
    )
    return web.json_response(account_json(view))


async def set_policy_of_plan(request: web.Request) -> web.Response:
    """PUT a plan's policy: the account defaults, and how its calls reserve funds."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    policy = PlanPolicy(
        max_members=int_field(body, "max_members", required=False, maximum=1_000_000),
        member_max_lines=int_field(body, "member_max_lines", required=False, maximum=10_000) or 0,
        critical_balance=amount_field(body, "critical_balance", required=False),
        recurring_fee=amount_field(body, "recurring_fee", required=False) or 0,
        lock_prorated=_bool_field(body, "lock_prorated", False),
        language=string_field(body, "language", required=False, max_len=16) or "en",
        # How the plan's calls hold funds (ocs.catalog.snapshot.Plan); checked by name
        # in set_plan_policy.
        reservation_policy=string_field(body, "reservation_policy", required=False, max_len=16)
        or "whole",
        slice_seconds=int_field(
            body, "slice_seconds", required=False, minimum=1, maximum=SLICE_SECONDS_MAX
        )
        or 60,
    )
    await set_plan_policy(_services(request).pool, plan_id, policy)
    return web.json_response(
        {
            "plan": plan_id,
            "max_members": policy.max_members,
            "member_max_lines": policy.member_max_lines,
            "critical_balance": (
                None if policy.critical_balance is None else money(policy.critical_balance)
            ),
            "recurring_fee": money(policy.recurring_fee),
            "lock_prorated": policy.lock_prorated,
            "language": policy.language,
            "reservation_policy": policy.reservation_policy,
            "slice_seconds": policy.slice_seconds,
        }
    )


async def add_member(request: web.Request) -> web.Response:
    """POST /v1/accounts/{id}/members: add a member with its own line limit."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    body = await read_object(request)
    member = validate_member(body.get("member"))
    max_lines = int_field(body, "max_lines", required=False, minimum=1, maximum=10_000)
    await _services(request).accounts.add_member(account_id, member, max_lines)
    return web.json_response(
        {"account": account_id, "member": member, "max_lines": max_lines}, status=201
    )


async def list_members(request: web.Request) -> web.Response:
    """GET /v1/accounts/{id}/members: the account's members."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    members = await _services(request).accounts.members(account_id)
    return web.json_response({"account": account_id, "members": members})


async def remove_member(request: web.Request) -> web.Response:
    """DELETE /v1/accounts/{id}/members/{member}: remove a member."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    member = validate_member(request.match_info["member"])
    await _services(request).accounts.remove_member(account_id, member)
    return web.json_response({"account": account_id, "member": member, "removed": True})


def counter_json(counter: CounterDef) -> dict[str, Any]:
    """A usage counter's definition as the JSON API shows it."""
    return {
        "id": counter.id,
        "plan": counter.plan_id,
        "seconds": counter.seconds,
        "zones": sorted(counter.zones),
        "price_per_minute": money(counter.price_per_minute),
        "increment": counter.increment,
        "reject_on_threshold": counter.reject_on_threshold,
        "carryover": counter.carryover,
        "mandatory": counter.mandatory,
        "recurring_fee": money(counter.recurring_fee),
        "active": counter.active,
        "taxes_follow_counter": counter.taxes_follow_counter,
    }


async def define_counter(request: web.Request) -> web.Response:
    """POST /v1/plans/{id}/counters: define a usage counter of a plan."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    zones = body.get("zones")
    if not isinstance(zones, list) or not zones or not all(isinstance(z, str) for z in zones):
        raise invalid("zones", "expected a non-empty list of zone names")
    counter_id = string_field(body, "id", max_len=64)
    seconds = int_field(body, "seconds", minimum=1, maximum=10_000_000)
    assert counter_id is not None and seconds is not None
    counter = await _services(request).counters.create(
        CounterDef(
            id=counter_id,
            plan_id=plan_id,
            seconds=seconds,
            zones=frozenset(zones),
            price_per_minute=amount_field(body, "price_per_minute", required=False) or 0,
            increment=int_field(body, "increment", required=False, minimum=1, maximum=3600) or 1,
            reject_on_threshold=_bool_field(body, "reject_on_threshold", False),
            carryover=_bool_field(body, "carryover", False),
            mandatory=_bool_field(body, "mandatory", True),
            recurring_fee=amount_field(body, "recurring_fee", required=False) or 0,
            active=_bool_field(body, "active", True),
            taxes_follow_counter=_bool_field(body, "taxes_follow_counter", False),
        )
    )
    return web.json_response(counter_json(counter), status=201)


async def account_counters(request: web.Request) -> web.Response:
    """GET /v1/accounts/{id}/counters: the account's counters in this cycle."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    state = await _services(request).counters.state(account_id)
    return web.json_response(
        {
            "account": account_id,
            "counters": [
                {
                    "counter": counter_id,
                    "limit": cycle["limit"],
                    "used": cycle["used"],
                    "held": cycle["held"],
                    "left": max(cycle["limit"] - cycle["used"] - cycle["held"], 0),
                }
                for counter_id, cycle in sorted(state.items())
            ],
        }
    )


async def buy_counter(request: web.Request) -> web.Response:
    """POST /v1/accounts/{id}/counters: buy an optional counter."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    body = await read_object(request)
    counter_id = string_field(body, "counter", max_len=64)
    assert counter_id is not None
    counter = await _services(request).counters.buy(account_id, counter_id)
    return web.json_response({"account": account_id, **counter_json(counter)}, status=201)


async def cancel_counter(request: web.Request) -> web.Response:
    """DELETE /v1/accounts/{id}/counters/{counter}: cancel a counter."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    counter_id = request.match_info["counter_id"]
    await _services(request).counters.cancel(account_id, counter_id)
    return web.json_response({"account": account_id, "counter": counter_id, "cancelled": True})


async def reset_counters(request: web.Request) -> web.Response:
    """Start a new counter cycle; the body is required, as the schema says: an empty
    request resetting every account's counters would be too easy to send by mistake,
    so all accounts take an explicit ``{}``."""
    body = await read_object(request, required=True)
    plan_id = string_field(body, "plan", required=False, max_len=64)
    account_id = body.get("account")
    if account_id is not None:
        validate_account_id(account_id, "account")
    cycle = string_field(body, "cycle", required=False, max_len=64)
    report = await _services(request).counters.reset(plan_id, account_id, cycle)
    return web.json_response(
        {"accounts": report.accounts, "counters": report.counters, "fees": report.fees}
    )


async def generate_pins(request: web.Request) -> web.Response:
    """Create a PIN batch; the answer is the batch's CSV, the only place PINs appear."""
    body = await read_object(request)
    batch_id = string_field(body, "batch", max_len=32)
    plan_id = string_field(body, "plan", max_len=64)
    count = int_field(body, "count", minimum=1, maximum=1_000_000)
    length = int_field(body, "length", required=False, minimum=6, maximum=20) or 12
    value = amount_field(body, "value")
    assert batch_id is not None and plan_id is not None
    assert count is not None and value is not None
    batch = await _services(request).cards.generate(
        batch_id=batch_id,
        plan_id=plan_id,
        count=count,
        length=length,
        value=value,
        password_length=int_field(body, "password_length", required=False, minimum=4, maximum=32),
        expires_at=timestamp_field(body, "expires_at"),
        expire_days=int_field(body, "expire_days", required=False, maximum=36_600) or 0,
    )
    return web.Response(
        text=batch.csv(),
        status=201,
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}.csv"'},
    )


async def _card(request: web.Request) -> tuple[Services, str]:
    """The card a PIN in the path opens; wrong PINs count against the caller's guesses
    and, as a NAS's do over RADIUS, against the IVR asking (its address): a client
    that names a new ``caller`` for every guess is still stopped."""
    services = _services(request)
    pin = request.match_info["pin"]
    ivr = request.remote
    caller = request.query.get("caller") or ivr
    await services.pin_guard.check(caller, ivr)
    account_id = await services.cards.account_for_pin(pin)
    if account_id is None:
        PIN_FAILURES.labels("http").inc()
        await services.pin_guard.failed(caller, ivr)
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, "no card has this PIN", field="pin")
    return services, account_id


async def pin_info(request: web.Request) -> web.Response:
    """GET /v1/pins/{pin}: an IVR's card lookup by PIN: status, balance, language, expiry."""
    services, account_id = await _card(request)
    state = await services.accounts.show(account_id)
    expires = state.expires_at
    return web.json_response(
        {
            "account": account_id,
            "status": state.status,
            "balance": money(state.balance),
            "available": money(state.available),
            "currency": state.currency,
            "language": await services.cards.language(account_id),
            "expires_at": expires or None,
            "expires_days_after_first_use": (state.expire_days or None) if not expires else None,
        }
    )


async def pin_time(request: web.Request) -> web.Response:
    """GET /v1/pins/{pin}/time: an IVR's "you have N minutes" for a card and a destination."""
    services, account_id = await _card(request)
    destination = request.query.get("destination")
    if not destination:
        raise invalid("destination", "is required")
    access_number = (request.query.get("access_number") or "").lstrip("+") or None
    quote = await services.calls.quote(account_id, destination, access_number)
    return web.json_response(
        {
            "account": account_id,
            "destination": quote.destination,
            "destination_name": quote.destination_name,
            "zone": quote.zone,
            "seconds": quote.seconds,
        }
    )


async def cut_call(request: web.Request) -> web.Response:
    """Cut a live call: charge it up to now and ask its NAS to end it (RFC 5176)."""
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    services = _services(request)
    charge, record = await services.calls.cut(call_id)
    outcome = None if services.disconnect is None else await services.disconnect(record)
    return web.json_response(
        {
            "call_id": call_id,
            "account": charge.account_id,
            "duration": charge.duration,
            "cost": money(charge.charged),
            "balance": money(charge.balance),
            "cause": charge.cause,
            "disconnect": None if outcome is None else getattr(outcome, "reason", None),
        }
    )
