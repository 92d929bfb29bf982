"""HTTP handlers for number handling: a plan's access numbers, the on-net ranges."""

from aiohttp import web

from ocs.charging import number_plan
from ocs.charging.catalog_store import validate_plan_id
from ocs.http.handlers import SERVICES
from ocs.http.json_io import read_object


async def set_access_numbers(request: web.Request) -> web.Response:
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    body = await read_object(request)
    numbers = number_plan.validate_access_numbers(body.get("numbers"))
    await number_plan.set_access_numbers(request.app[SERVICES].pool, plan_id, numbers)
    return web.json_response({"plan": plan_id, "numbers": numbers})


async def set_onnet(request: web.Request) -> web.Response:
    body = await read_object(request)
    prefixes = number_plan.validate_onnet(body.get("prefixes"))
    await number_plan.set_onnet_prefixes(request.app[SERVICES].pool, prefixes)
    return web.json_response({"prefixes": len(prefixes)})
