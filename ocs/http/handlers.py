"""HTTP handlers: parse and validate the request, call a service, shape the JSON answer.

Handlers hold no business logic; every decision is made by the services.
"""

import asyncio
import ipaddress
import json
import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ocs import metrics
from ocs.balances.accounts import AccountSpec, validate_account_id
from ocs.balances.store import AccountState
from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.decks.rate_deck import parse_deck
from ocs.errors import invalid
from ocs.http.context import services_of as _services
from ocs.http.json_io import (
    amount_field,
    int_field,
    money,
    read_object,
    string_field,
    timestamp_field,
)
from ocs.money import MoneyError, parse_amount
from ocs.radius import clients as radius_clients
from ocs.rating.bands import validate_schedule
from ocs.rating.rates import Tier
from ocs.rating.translation import validate_rules


def account_json(view: AccountState) -> dict[str, Any]:
    """An account's state as the JSON API shows it (amounts as decimal strings)."""
    return {
        "id": view.account_id,
        "plan": view.plan_id,
        "currency": view.currency,
        "status": view.status,
        "balance": money(view.balance),
        "credit_limit": money(view.credit_limit),
        "reserved": money(view.reserved),
        "available": money(view.available),
        "max_lines": view.max_lines,
        "lines_in_use": view.lines_in_use,
        "min_balance": money(view.min_balance),
        "critical_balance": (
            None if view.critical_balance is None else money(view.critical_balance)
        ),
        "committed": money(view.committed),
        "locked_by": view.lock or None,
        "member_max_lines": view.member_lines,
        "expires_at": view.expires_at or None,
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """A plan as the JSON API shows it (amounts as decimal strings)."""
    return {
        "id": plan.id,
        "name": plan.name,
        "currency": plan.currency,
        "credit_limit": money(plan.credit_limit),
        "min_balance": money(plan.min_balance),
        "max_lines": plan.max_lines,
        "max_call_duration": plan.max_call_duration,
        "reservation_policy": plan.reservation_policy,
        "slice_seconds": plan.slice_seconds,
    }


async def create_account(request: web.Request) -> web.Response:
    """POST /v1/accounts: create an account on a plan (201)."""
    body = await read_object(request)
    account_id = validate_account_id(body.get("id"), "id")
    plan_id = string_field(body, "plan", max_len=64)
    assert plan_id is not None
    status = string_field(body, "status", required=False, max_len=16) or "active"
    view = await _services(request).accounts.create(
        AccountSpec(
            account_id,
            plan_id,
            opening_balance=amount_field(body, "balance", required=False) or 0,
            credit_limit=amount_field(body, "credit_limit", required=False),
            max_lines=int_field(body, "max_lines", required=False, minimum=1, maximum=10_000),
            status=status,
            password=string_field(body, "password", required=False, max_len=128),
            expires_at=timestamp_field(body, "expires_at"),
        )
    )
    return web.json_response(account_json(view), status=201)


async def add_caller(request: web.Request) -> web.Response:
    """POST /v1/accounts/{id}/callers: let a caller id identify the account (pinless)."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    body = await read_object(request)
    caller = string_field(body, "caller", max_len=33)
    assert caller is not None
    await _services(request).accounts.add_caller(account_id, caller)
    return web.json_response({"account": account_id, "caller": caller.lstrip("+")}, status=201)


async def add_nas_client(request: web.Request) -> web.Response:
    """POST /v1/nas-clients: let a RADIUS NAS send requests."""
    body = await read_object(request)
    name = string_field(body, "name", max_len=64)
    address = string_field(body, "address", max_len=64)
    secret = string_field(body, "secret", max_len=128)
    assert name is not None and address is not None and secret is not None
    if not name.isprintable():
        raise invalid("name", "expected printable characters")
    try:
        network = str(ipaddress.ip_network(address, strict=False))
    except ValueError:
        raise invalid("address", f"not an IP address or CIDR: {address!r}") from None
    require = body.get("require_message_authenticator", True)
    if not isinstance(require, bool):
        raise invalid("require_message_authenticator", "expected true or false")
    coa_port = int_field(body, "coa_port", required=False, minimum=1, maximum=65535)
    rules = body.get("translation")
    translation = None if rules is None else validate_rules(rules)
    await radius_clients.add_client(
        _services(request).pool, name, network, secret, require, coa_port, translation
    )
    # The secret is never echoed back.
    return web.json_response(
        {
            "name": name,
            "address": network,
            "require_message_authenticator": require,
            "coa_port": coa_port,
            "translation": rules,
        },
        status=201,
    )


async def list_nas_clients(request: web.Request) -> web.Response:
    """GET /v1/nas-clients: the RADIUS NAS clients, without their secrets."""
    return web.json_response(
        {"clients": await radius_clients.list_clients(_services(request).pool)}
    )


async def show_account(request: web.Request) -> web.Response:
    """GET /v1/accounts/{id}: an account's state."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    view = await _services(request).accounts.show(account_id)
    return web.json_response(account_json(view))


async def topup_account(request: web.Request) -> web.Response:
    """POST /v1/accounts/{id}/topups: credit an account once per top-up id."""
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


async def create_plan(request: web.Request) -> web.Response:
    """POST /v1/plans: create a plan."""
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
        reservation_policy=body.get("reservation_policy", "whole"),
        slice_seconds=body.get("slice_seconds", 60),
    )
    await catalog_store.create_plan(_services(request).pool, plan)
    return web.json_response(plan_json(plan), status=201)


async def list_plans(request: web.Request) -> web.Response:
    """GET /v1/plans: every plan."""
    plans = await catalog_store.list_plans(_services(request).pool)
    return web.json_response({"plans": [plan_json(p) for p in plans]})


async def import_tariffs(request: web.Request) -> web.Response:
    """POST /v1/plans/{id}/tariffs: import a plan's tariff deck."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    # Bytes: the parser names each line that is not UTF-8.
    body = await request.read()
    # A million-row deck is most of a second of CPU: off the event loop.
    rows = await asyncio.to_thread(parse_deck, body)
    result = await catalog_store.import_deck(_services(request).pool, plan_id, rows)
    return web.json_response(deck_import_json(result))


def deck_import_json(result: catalog_store.DeckImport) -> dict[str, object]:
    """What an import did: the deck's size, and its prefixes new to the plan, moved
    to another zone and gone, against the deck it replaced."""
    return {
        "plan": result.plan_id,
        "prefixes": result.prefixes,
        "zones": result.zones,
        "added": result.added,
        "changed": result.changed,
        "removed": result.removed,
    }


async def set_bands(request: web.Request) -> web.Response:
    """PUT /v1/plans/{id}/bands: a plan's time bands."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    schedule = validate_schedule(await read_object(request))
    await catalog_store.set_bands(_services(request).pool, plan_id, schedule)
    return web.json_response({"plan": plan_id, **json.loads(schedule.to_json())})


async def set_translation(request: web.Request) -> web.Response:
    """PUT /v1/plans/{id}/translation: a plan's number translation rules."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    rules = validate_rules(body.get("rules"))
    await catalog_store.set_translation(_services(request).pool, plan_id, rules)
    return web.json_response(
        {
            "plan": plan_id,
            "rules": [{"match": r.match, "replace": r.replace} for r in rules.rules],
        }
    )


async def set_tariff_shape(request: web.Request) -> web.Response:
    """PUT /v1/plans/{id}/tariffs/{zone}/shape: a tariff's tiers, caps and surcharges."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    zone = request.match_info["zone"]
    body = await read_object(request)
    raw_tiers = body.get("tiers", [])
    if not isinstance(raw_tiers, list) or len(raw_tiers) > 32:
        raise invalid("tiers", "expected a list of at most 32 tiers")
    tiers = []
    for n, raw in enumerate(raw_tiers):
        if not isinstance(raw, dict):
            raise invalid(f"tiers[{n}]", "expected an object")
        tiers.append(
            Tier(
                start=int_field(raw, "from_second", minimum=1, maximum=7 * 24 * 3600) or 1,
                price_per_minute=amount_field(raw, "price_per_minute", required=False) or 0,
                increment=int_field(raw, "increment", required=False, minimum=1, maximum=86_400)
                or 1,
                flat=amount_field(raw, "flat", required=False) or 0,
            )
        )
    mode = string_field(body, "max_cost_mode", required=False, max_len=8) or "free"
    if mode not in ("free", "cut"):
        raise invalid("max_cost_mode", "expected free (the rest of the call is free) or cut")
    max_cost = amount_field(body, "max_cost", required=False) or 0
    percent = body.get("surcharge_percent")
    try:
        # "2.5" (percent) is 2.5e6 micro-units of a percent, 250 basis points.
        micro = 0 if percent is None else parse_amount(percent)
        if micro % 10_000:
            raise MoneyError("at most two decimal places")
        percent_bp = micro // 10_000
    except MoneyError as exc:
        raise invalid("surcharge_percent", f'a percentage such as "2.5": {exc}') from None
    surcharge_flat = amount_field(body, "surcharge_flat", required=False) or 0
    per = int_field(body, "per", required=False, minimum=1, maximum=1_000_000) or 60
    raw_bands = body.get("band_prices", {})
    if not isinstance(raw_bands, dict) or len(raw_bands) > 16:
        raise invalid("band_prices", 'expected {"<band>": "<price per minute>", ...}')
    band_prices = tuple(
        sorted((str(band), amount_field(raw_bands, band) or 0) for band in raw_bands)
    )
    await catalog_store.set_tariff_shape(
        _services(request).pool,
        plan_id,
        zone,
        tuple(tiers),
        max_cost,
        mode == "cut",
        percent_bp,
        surcharge_flat,
        band_prices,
        per,
    )
    return web.json_response(
        {
            "plan": plan_id,
            "zone": zone,
            "tiers": [
                {
                    "from_second": t.start,
                    "price_per_minute": money(t.price_per_minute),
                    "increment": t.increment,
                    "flat": money(t.flat),
                }
                for t in tiers
            ],
            "max_cost": money(max_cost) if max_cost else None,
            "max_cost_mode": mode,
            "surcharge_percent": f"{percent_bp / 100:g}",
            "surcharge_flat": money(surcharge_flat),
            "band_prices": {band: money(price) for band, price in band_prices},
            "per": per,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up."""
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
            "pid": os.getpid(),
            "status": "ok" if healthy else "unavailable",
            "checks": checks,
            "catalog_version": services.catalog.version,
        },
        status=200 if healthy else 503,
    )


async def metrics_text(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus metrics."""
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
