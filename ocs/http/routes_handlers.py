"""HTTP handlers for carriers, their cost decks, route sets and a plan's routing."""

import asyncio
import csv

from aiohttp import web

from ocs.catalog import routes_store
from ocs.catalog import store as catalog_store
from ocs.errors import invalid
from ocs.http.context import SERVICES
from ocs.http.json_io import read_object, read_text, string_field


async def create_carrier(request: web.Request) -> web.Response:
    """POST /v1/carriers {id, name}: 201 for a new carrier, 200 renaming an existing one."""
    body = await read_object(request)
    carrier_id = routes_store.validate_id(body.get("id"), "id")
    name = string_field(body, "name", required=False, max_len=routes_store.MAX_NAME_CHARS)
    carrier, created = await routes_store.create_carrier(
        request.app[SERVICES].pool, carrier_id, name or carrier_id
    )
    return web.json_response(
        {"id": carrier.id, "name": carrier.name}, status=201 if created else 200
    )


async def import_carrier_rates(request: web.Request) -> web.Response:
    """PUT /v1/carriers/{carrier_id}/rates, the cost deck CSV as the body."""
    carrier_id = routes_store.validate_id(request.match_info["carrier_id"], "carrier_id")
    text = await read_text(request, "deck")
    try:
        # A large deck is seconds of CPU: off the event loop.
        deck = await asyncio.to_thread(routes_store.parse_carrier_deck, text)
    except csv.Error as exc:
        # What the parser itself does not word (a CR inside a field): still the
        # caller's CSV, a 400, never a 500.
        raise invalid("deck", f"not valid CSV: {exc}") from None
    result = await routes_store.import_carrier_rates(request.app[SERVICES].pool, carrier_id, deck)
    return web.json_response(
        {"carrier": result.carrier_id, "prefixes": result.prefixes, "rates": result.rates}
    )


async def set_route_set(request: web.Request) -> web.Response:
    """PUT /v1/route-sets/{route_set_id} {carriers: [...]}: creates or replaces it."""
    route_set_id = routes_store.validate_id(request.match_info["route_set_id"], "route_set_id")
    body = await read_object(request)
    if "carriers" not in body:
        raise invalid("carriers", "is required")
    carriers = routes_store.validate_carrier_list(body["carriers"])
    stored = await routes_store.set_route_set(request.app[SERVICES].pool, route_set_id, carriers)
    return web.json_response({"id": route_set_id, "carriers": list(stored)})


async def set_plan_routing(request: web.Request) -> web.Response:
    """PUT /v1/plans/{plan_id}/routing {route_set, allow_negative_margin}.

    ``route_set`` null (or absent) takes the plan off routing; ``allow_negative_margin``
    defaults to false.
    """
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    route_set = body.get("route_set")
    if route_set is not None:
        route_set = routes_store.validate_id(route_set, "route_set")
    allow = body.get("allow_negative_margin")
    if allow is None:
        allow = False
    elif not isinstance(allow, bool):
        raise invalid("allow_negative_margin", "expected true or false")
    await routes_store.set_plan_routing(request.app[SERVICES].pool, plan_id, route_set, allow)
    return web.json_response(
        {"plan": plan_id, "route_set": route_set, "allow_negative_margin": allow}
    )
