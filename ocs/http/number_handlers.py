"""HTTP handlers for number handling: a plan's access numbers, the on-net ranges,
the area-code tables (the standard one and plans' custom code lists), and what
the serving catalog makes of a number."""

import asyncio
import csv

from aiohttp import web

from ocs.catalog import number_plan
from ocs.catalog import store as catalog_store
from ocs.catalog.store import validate_plan_id
from ocs.charging.lifecycle import tariff_of
from ocs.decks.code_lists import STANDARD, parse_code_list
from ocs.decks.rate_deck import DIRECTIONS
from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import SERVICES
from ocs.http.json_io import money, read_object, read_text


async def set_access_numbers(request: web.Request) -> web.Response:
    """PUT a plan's access numbers: each number's calls are rated by the plan it names."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    numbers = number_plan.validate_access_numbers(body.get("numbers"))
    await number_plan.set_access_numbers(request.app[SERVICES].pool, plan_id, numbers)
    return web.json_response({"plan": plan_id, "numbers": numbers})


async def set_onnet(request: web.Request) -> web.Response:
    """PUT the on-net prefixes: calls to them count as on-net."""
    body = await read_object(request)
    prefixes = number_plan.validate_onnet(body.get("prefixes"))
    await number_plan.set_onnet_prefixes(request.app[SERVICES].pool, prefixes)
    return web.json_response({"prefixes": len(prefixes)})


def _list_of(request: web.Request) -> str:
    """The list a request names: a plan's custom code list, or the standard table."""
    plan_id = request.match_info.get("plan_id")
    return STANDARD if plan_id is None else validate_plan_id(plan_id, "plan_id")


async def import_code_list(request: web.Request) -> web.Response:
    """Replace the standard area-code table or a plan's custom code list (CSV body)."""
    list_id = _list_of(request)
    text = await read_text(request, "codes")
    try:
        entries = await asyncio.to_thread(parse_code_list, text)
    except csv.Error as exc:
        # What the parser itself does not word (a CR inside a field): still the
        # caller's CSV, a 400, never a 500.
        raise invalid("codes", f"not valid CSV: {exc}") from None
    count = await catalog_store.import_code_list(request.app[SERVICES].pool, entries, list_id)
    return web.json_response({"plan": list_id or None, "codes": count})


async def remove_code_list(request: web.Request) -> web.Response:
    """Drop the standard table or a plan's custom code list; 404 when there is none."""
    list_id = _list_of(request)
    if not await catalog_store.remove_code_list(request.app[SERVICES].pool, list_id):
        what = f"plan {list_id!r} has no custom code list" if list_id else "no standard table"
        raise OcsError(Reason.NOT_FOUND, what)
    return web.json_response({"plan": list_id or None, "removed": True})


async def lookup_number(request: web.Request) -> web.Response:
    """How a plan rates a number, from the serving snapshot, as authorize would find
    it (translation, access number, on-net, longest prefix), and its area-code name:
    the operator's "which zone is this?" without reading a deck."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    number = request.query.get("number")
    if not number:
        raise invalid("number", "is required")
    direction = request.query.get("direction", "outbound")
    if direction not in DIRECTIONS:
        raise invalid("direction", f"expected one of {', '.join(DIRECTIONS)}")
    access_number = (request.query.get("access_number") or "").lstrip("+") or None
    snapshot = request.app[SERVICES].catalog.snapshot
    plan = snapshot.plan(plan_id)
    if plan is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
    digits, rating_plan, prefix, tariff = tariff_of(
        snapshot, plan_id, plan.translation.apply(number), access_number, direction
    )
    rate = tariff.rate
    return web.json_response(
        {
            "plan": plan_id,
            "number": digits,
            "rating_plan": rating_plan,
            "prefix": prefix,
            "zone": tariff.zone,
            "connect_fee": money(rate.connect_fee),
            "first_block": rate.first_block,
            "increment": rate.increment,
            "price_per_minute": money(rate.price_per_minute),
            "destination_name": snapshot.destination_name(plan_id, digits),
        }
    )
