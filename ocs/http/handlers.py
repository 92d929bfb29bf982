"""What is left of the first HTTP handlers while they move to endpoint declarations:
the probes (``healthz``, ``metrics_text``) and ``account_json`` for the policy handlers.

The accounts' and NAS clients' endpoints are in ``ocs.http.account_handlers``, the
plans' in ``ocs.http.plan_handlers``; this module goes once its last users have moved.
Until ``ocs.http.app`` lists those two modules itself, their endpoints are offered
here too (``ENDPOINTS``, and the names its legacy route table reads).
"""

import os
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ocs import metrics
from ocs.balances.store import AccountState
from ocs.http import account_handlers, plan_handlers
from ocs.http.context import services_of
from ocs.http.endpoint import Endpoint
from ocs.views import account_view


def account_json(view: AccountState) -> dict[str, Any]:
    """An account's state as the JSON API shows it (``ocs.views.account_view``)."""
    shown: dict[str, Any] = msgspec.to_builtins(account_view(view))
    return shown


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up."""
    services = services_of(request)
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


# Transitional, deleted with this module: app.py reads ``handlers.ENDPOINTS`` and, in its
# legacy route table, these names (each route is then declared, so none is routed here).
ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    *account_handlers.ENDPOINTS,
    *plan_handlers.ENDPOINTS,
)
create_account = account_handlers.create_account
show_account = account_handlers.show_account
topup_account = account_handlers.topup_account
add_caller = account_handlers.add_caller
add_nas_client = account_handlers.add_nas_client
list_nas_clients = account_handlers.list_nas_clients
create_plan = plan_handlers.create_plan
list_plans = plan_handlers.list_plans
import_tariffs = plan_handlers.import_tariffs
set_tariff_shape = plan_handlers.set_tariff_shape
set_translation = plan_handlers.set_translation
set_bands = plan_handlers.set_bands
