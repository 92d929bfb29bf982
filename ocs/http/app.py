"""The aiohttp application: the routes of every declared endpoint over the shared services."""

import re
from typing import Any

from aiohttp import web

from ocs import __version__
from ocs.http import (
    account_handlers,
    billing_handlers,
    bundle_handlers,
    call_handlers,
    card_handlers,
    counter_handlers,
    document_handlers,
    dunning_handlers,
    event_handlers,
    health_handlers,
    mediation_handlers,
    number_handlers,
    number_set_handlers,
    payment_handlers,
    plan_handlers,
    policy_handlers,
    report_handlers,
    routes_handlers,
    tax_handlers,
    usage_import_handlers,
)
from ocs.http.admin_auth import admin_auth
from ocs.http.client_address import CLIENT_ADDRESSES, ClientAddresses
from ocs.http.context import OPENAPI_DOCUMENT, SERVICES
from ocs.http.endpoint import Endpoint, route_handler
from ocs.http.middleware import errors_and_metrics
from ocs.http.openapi import openapi_document
from ocs.services import Services

# A path with text after its last parameter ("/v1/invoices/{invoice_id}.pdf").
_SUFFIXED = re.compile(r"\}[^/{}]+$")

# Every endpoint of the API, in the order /openapi.json lists them.
ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    *call_handlers.ENDPOINTS,
    *account_handlers.ENDPOINTS,
    *policy_handlers.ENDPOINTS,
    *counter_handlers.ENDPOINTS,
    *card_handlers.ENDPOINTS,
    *plan_handlers.ENDPOINTS,
    *routes_handlers.ENDPOINTS,
    *number_handlers.ENDPOINTS,
    *billing_handlers.ENDPOINTS,
    *tax_handlers.ENDPOINTS,
    *bundle_handlers.ENDPOINTS,
    *document_handlers.ENDPOINTS,
    *payment_handlers.ENDPOINTS,
    *dunning_handlers.ENDPOINTS,
    *event_handlers.ENDPOINTS,
    *number_set_handlers.ENDPOINTS,
    *report_handlers.ENDPOINTS,
    *mediation_handlers.ENDPOINTS,
    *usage_import_handlers.ENDPOINTS,
    *health_handlers.ENDPOINTS,
)


def create_app(services: Services) -> web.Application:
    """The aiohttp application serving the JSON API, the health checks and ``/metrics``."""
    roles = {endpoint.key: endpoint.role for endpoint in ENDPOINTS}
    if len(roles) != len(ENDPOINTS):
        raise RuntimeError("two endpoints declare the same method and path")
    # Errors and metrics outermost: a refused token is answered and counted like any error.
    app = web.Application(
        middlewares=[errors_and_metrics, admin_auth(services.settings, roles)],
        client_max_size=64 << 20,
    )
    app[SERVICES] = services
    app[CLIENT_ADDRESSES] = ClientAddresses(services.settings.http_trusted_proxies)
    app[OPENAPI_DOCUMENT] = openapi_document(__version__, ENDPOINTS)
    # A suffixed path is routed first: "/v1/invoices/{invoice_id}" would otherwise take
    # "12.pdf" as the id (aiohttp tries the routes in the order they were added).
    for endpoint in sorted(ENDPOINTS, key=lambda e: _SUFFIXED.search(e.path) is None):
        if endpoint.method == "GET":
            app.router.add_get(endpoint.path, route_handler(endpoint))  # and HEAD
        else:
            app.router.add_route(endpoint.method, endpoint.path, route_handler(endpoint))
    return app
