"""HTTP handlers: parse and validate the request, call a service, shape the JSON answer.

Handlers hold no business logic; every decision is made by the services.
"""

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ocs import metrics
from ocs.balances.accounts import AccountView, validate_account_id
from ocs.charging import catalog_store
from ocs.charging.catalog import Plan
from ocs.charging.deck import parse_deck
from ocs.charging.lifecycle import validate_call_id
from ocs.errors import OcsError, invalid
from ocs.http.json_io import amount_field, int_field, money, read_object, string_field
from ocs.services import Services

SERVICES = web.AppKey("services", Services)


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def account_json(view: AccountView) -> dict[str, Any]:
    return {
        "id": view.id,
        "plan": view.plan_id,
        "currency": view.currency,
        "status": view.status,
        "balance": money(view.balance),
        "credit_limit": money(view.credit_limit),
        "reserved": money(view.reserved),
        "available": money(view.available),
        "max_lines": view.max_lines,
        "lines_in_use": view.lines_in_use,
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "currency": plan.currency,
        "credit_limit": money(plan.credit_limit),
        "min_balance": money(plan.min_balance),
        "max_lines": plan.max_lines,
        "max_call_duration": plan.max_call_duration,
    }


async def create_account(request: web.Request) -> web.Response:
    body = await read_object(request)
    account_id = validate_account_id(body.get("id"), "id")
    plan_id = string_field(body, "plan", max_len=64)
    assert plan_id is not None
    status = string_field(body, "status", required=False, max_len=16) or "active"
    view = await _services(request).accounts.create(
        account_id,
        plan_id=plan_id,
        opening_balance=amount_field(body, "balance", required=False) or 0,
        credit_limit=amount_field(body, "credit_limit", required=False),
        max_lines=int_field(body, "max_lines", required=False, minimum=1, maximum=10_000),
        status=status,
    )
    return web.json_response(account_json(view), status=201)


async def show_account(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    view = await _services(request).accounts.show(account_id)
    return web.json_response(account_json(view))


async def topup_account(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    body = await read_object(request)
    amount = amount_field(body, "amount")
    assert amount is not None
    topup_id = string_field(body, "topup_id", required=False, max_len=128)
    result = await _services(request).accounts.topup(account_id, amount, topup_id)
    return web.json_response(
        {
            "account": account_id,
            "amount": money(result.amount),
            "balance": money(result.balance),
            "repeated": result.repeated,
        },
        status=200 if result.repeated else 201,
    )


async def authorize_call(request: web.Request) -> web.Response:
    body = await read_object(request)
    try:
        account_id = validate_account_id(body.get("account"), "account")
        destination = string_field(body, "destination", max_len=64)
        assert destination is not None
        caller = string_field(body, "caller", required=False, max_len=64)
        call_id = body.get("call_id")
        if call_id is not None:
            validate_call_id(call_id)
        grant = await _services(request).calls.authorize(account_id, destination, caller, call_id)
    except OcsError as exc:
        metrics.CALL_DECISIONS.labels(exc.reason.value).inc()
        raise
    metrics.CALL_DECISIONS.labels("granted").inc()
    return web.json_response(
        {
            "call_id": grant.call_id,
            "account": grant.account_id,
            "destination": grant.destination,
            "zone": grant.zone,
            "max_duration": grant.max_duration,
            "reserved": money(grant.reserved),
            "currency": grant.currency,
            "repeated": grant.repeated,
        },
        status=200 if grant.repeated else 201,
    )


async def stop_call(request: web.Request) -> web.Response:
    call_id = validate_call_id(request.match_info["call_id"], "call_id")
    body = await read_object(request)
    try:
        duration = int_field(body, "duration", maximum=7 * 24 * 3600)
        assert duration is not None
        charge = await _services(request).calls.stop(call_id, duration)
    except OcsError as exc:
        metrics.CALL_STOPS.labels(exc.reason.value).inc()
        raise
    metrics.CALL_STOPS.labels("repeated" if charge.repeated else "charged").inc()
    return web.json_response(
        {
            "call_id": charge.call_id,
            "account": charge.account_id,
            "zone": charge.zone,
            "duration": charge.duration,
            "billed_seconds": charge.billed_seconds,
            "cost": money(charge.charged),
            "rated_cost": money(charge.rated),
            "balance": money(charge.balance),
            "currency": charge.currency,
            "repeated": charge.repeated,
        }
    )


async def create_plan(request: web.Request) -> web.Response:
    body = await read_object(request)
    plan_id = catalog_store.validate_plan_id(string_field(body, "id", max_len=64) or "")
    currency = catalog_store.validate_currency(string_field(body, "currency", max_len=3) or "")
    plan = Plan(
        id=plan_id,
        name=string_field(body, "name", required=False) or plan_id,
        currency=currency,
        credit_limit=amount_field(body, "credit_limit", required=False) or 0,
        min_balance=amount_field(body, "min_balance", required=False) or 0,
        max_lines=int_field(body, "max_lines", required=False, minimum=1, maximum=10_000) or 1,
        max_call_duration=int_field(
            body, "max_call_duration", required=False, minimum=1, maximum=7 * 24 * 3600
        )
        or 14_400,
    )
    await catalog_store.create_plan(_services(request).pool, plan)
    return web.json_response(plan_json(plan), status=201)


async def list_plans(request: web.Request) -> web.Response:
    plans = await catalog_store.list_plans(_services(request).pool)
    return web.json_response({"plans": [plan_json(p) for p in plans]})


async def import_tariffs(request: web.Request) -> web.Response:
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise invalid("deck", "the CSV must be UTF-8 text") from None
    rows = parse_deck(text)
    result = await catalog_store.import_deck(_services(request).pool, plan_id, rows)
    return web.json_response(
        {"plan": result.plan_id, "prefixes": result.prefixes, "zones": result.zones}
    )


async def healthz(request: web.Request) -> web.Response:
    services = _services(request)
    checks: dict[str, str] = {}
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        async with services.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return web.json_response(
        {
            "status": "ok" if healthy else "unavailable",
            "checks": checks,
            "catalog_version": services.catalog.version,
        },
        status=200 if healthy else 503,
    )


async def metrics_text(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
