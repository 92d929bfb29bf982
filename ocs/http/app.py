"""The aiohttp application: the routes of every declared endpoint over the shared services."""

from typing import Any

from aiohttp import web

from ocs import __version__
from ocs.http import (
    call_handlers,
    handlers,
    health_handlers,
    number_handlers,
    policy_handlers,
    routes_handlers,
)
from ocs.http.admin_auth import admin_auth
from ocs.http.context import OPENAPI_DOCUMENT, SERVICES
from ocs.http.endpoint import Endpoint, Role, route_handler
from ocs.http.middleware import errors_and_metrics
from ocs.http.openapi import openapi_document
from ocs.services import Services

# Every endpoint of the API, in the order /openapi.json lists them.
ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    *call_handlers.ENDPOINTS,
    *getattr(handlers, "ENDPOINTS", ()),
    *getattr(policy_handlers, "ENDPOINTS", ()),
    *getattr(routes_handlers, "ENDPOINTS", ()),
    *getattr(number_handlers, "ENDPOINTS", ()),
    *getattr(health_handlers, "ENDPOINTS", ()),
)


# Routes not yet declared as endpoints (being converted): (method, path, role, handler).
LEGACY_ROUTES: tuple[tuple[str, str, Role, Any], ...] = (
    ("POST", "/v1/accounts", Role.OPERATOR, handlers.create_account),
    ("GET", "/v1/accounts/{account_id}", Role.VIEWER, handlers.show_account),
    ("POST", "/v1/accounts/{account_id}/topups", Role.OPERATOR, handlers.topup_account),
    ("POST", "/v1/accounts/{account_id}/callers", Role.OPERATOR, handlers.add_caller),
    ("POST", "/v1/nas-clients", Role.ADMIN, handlers.add_nas_client),
    ("GET", "/v1/nas-clients", Role.VIEWER, handlers.list_nas_clients),
    ("POST", "/v1/plans", Role.ADMIN, handlers.create_plan),
    ("GET", "/v1/plans", Role.VIEWER, handlers.list_plans),
    ("POST", "/v1/plans/{plan_id}/tariffs", Role.ADMIN, handlers.import_tariffs),
    ("PUT", "/v1/plans/{plan_id}/tariffs/{zone}/shape", Role.ADMIN, handlers.set_tariff_shape),
    ("PUT", "/v1/plans/{plan_id}/translation", Role.ADMIN, handlers.set_translation),
    ("PUT", "/v1/plans/{plan_id}/bands", Role.ADMIN, handlers.set_bands),
    ("PATCH", "/v1/accounts/{account_id}", Role.OPERATOR, policy_handlers.update_account),
    ("GET", "/v1/accounts/{account_id}/members", Role.VIEWER, policy_handlers.list_members),
    ("POST", "/v1/accounts/{account_id}/members", Role.OPERATOR, policy_handlers.add_member),
    (
        "DELETE",
        "/v1/accounts/{account_id}/members/{member}",
        Role.OPERATOR,
        policy_handlers.remove_member,
    ),
    ("GET", "/v1/accounts/{account_id}/counters", Role.VIEWER, policy_handlers.account_counters),
    ("POST", "/v1/accounts/{account_id}/counters", Role.OPERATOR, policy_handlers.buy_counter),
    (
        "DELETE",
        "/v1/accounts/{account_id}/counters/{counter_id}",
        Role.OPERATOR,
        policy_handlers.cancel_counter,
    ),
    ("POST", "/v1/counters/reset", Role.ADMIN, policy_handlers.reset_counters),
    ("POST", "/v1/plans/{plan_id}/counters", Role.ADMIN, policy_handlers.define_counter),
    ("PUT", "/v1/plans/{plan_id}/policy", Role.ADMIN, policy_handlers.set_policy_of_plan),
    ("POST", "/v1/pin-batches", Role.OPERATOR, policy_handlers.generate_pins),
    ("GET", "/v1/pins/{pin}", Role.SWITCH, policy_handlers.pin_info),
    ("GET", "/v1/pins/{pin}/time", Role.SWITCH, policy_handlers.pin_time),
    ("DELETE", "/v1/calls/{call_id}", Role.OPERATOR, policy_handlers.cut_call),
    ("PUT", "/v1/plans/{plan_id}/routing", Role.ADMIN, routes_handlers.set_plan_routing),
    ("POST", "/v1/carriers", Role.ADMIN, routes_handlers.create_carrier),
    ("PUT", "/v1/carriers/{carrier_id}/rates", Role.ADMIN, routes_handlers.import_carrier_rates),
    ("PUT", "/v1/route-sets/{route_set_id}", Role.ADMIN, routes_handlers.set_route_set),
    ("PUT", "/v1/plans/{plan_id}/access-numbers", Role.ADMIN, number_handlers.set_access_numbers),
    ("PUT", "/v1/on-net", Role.ADMIN, number_handlers.set_onnet),
    ("GET", "/v1/plans/{plan_id}/lookup", Role.VIEWER, number_handlers.lookup_number),
    ("PUT", "/v1/area-codes", Role.ADMIN, number_handlers.import_code_list),
    ("DELETE", "/v1/area-codes", Role.ADMIN, number_handlers.remove_code_list),
    ("PUT", "/v1/plans/{plan_id}/area-codes", Role.ADMIN, number_handlers.import_code_list),
    ("DELETE", "/v1/plans/{plan_id}/area-codes", Role.ADMIN, number_handlers.remove_code_list),
    ("GET", "/healthz", Role.OPEN, handlers.healthz),
    ("GET", "/readyz", Role.OPEN, health_handlers.readyz),
    ("GET", "/metrics", Role.OPEN, handlers.metrics_text),
)


def create_app(services: Services) -> web.Application:
    """The aiohttp application serving the JSON API, the health checks and ``/metrics``."""
    roles = {endpoint.key: endpoint.role for endpoint in ENDPOINTS}
    if len(roles) != len(ENDPOINTS):
        raise RuntimeError("two endpoints declare the same method and path")
    # Errors and metrics outermost: a refused token is answered and counted like any error.
    app = web.Application(
        middlewares=[errors_and_metrics, admin_auth(services.settings, roles)],  # roles: below
        client_max_size=64 << 20,
    )
    app[SERVICES] = services
    app[OPENAPI_DOCUMENT] = openapi_document(__version__, ENDPOINTS)
    for endpoint in ENDPOINTS:
        if endpoint.method == "GET":
            app.router.add_get(endpoint.path, route_handler(endpoint))  # and HEAD
        else:
            app.router.add_route(endpoint.method, endpoint.path, route_handler(endpoint))
    declared = set(roles)
    for method, path, role, legacy in LEGACY_ROUTES:
        if (method, path) not in declared:
            roles[(method, path)] = role
            app.router.add_route(method, path, legacy)
    return app
