"""The aiohttp application: routes of the JSON API over the shared services."""

from aiohttp import web

from ocs.http import (
    handlers,
    health_handlers,
    number_handlers,
    policy_handlers,
    routes_handlers,
)
from ocs.http.admin_auth import admin_auth
from ocs.http.middleware import errors_and_metrics
from ocs.services import Services


def create_app(services: Services) -> web.Application:
    """The aiohttp application serving the JSON API, the health checks and ``/metrics``."""
    # Errors and metrics outermost: a refused token is answered and counted like any error.
    app = web.Application(
        middlewares=[
            errors_and_metrics,
            admin_auth(services.settings),
        ],
        client_max_size=64 << 20,
    )
    app[handlers.SERVICES] = services
    app.router.add_post("/v1/accounts", handlers.create_account)
    app.router.add_get("/v1/accounts/{account_id}", handlers.show_account)
    app.router.add_post("/v1/accounts/{account_id}/topups", handlers.topup_account)
    app.router.add_post("/v1/calls", handlers.authorize_call)
    app.router.add_post("/v1/usage", handlers.charge_usage)
    app.router.add_post("/v1/calls/{call_id}/start", handlers.start_call)
    app.router.add_post("/v1/calls/{call_id}/update", handlers.update_call)
    app.router.add_post("/v1/calls/{call_id}/stop", handlers.stop_call)
    app.router.add_post("/v1/accounts/{account_id}/callers", handlers.add_caller)
    app.router.add_post("/v1/nas-clients", handlers.add_nas_client)
    app.router.add_get("/v1/nas-clients", handlers.list_nas_clients)
    app.router.add_post("/v1/plans", handlers.create_plan)
    app.router.add_get("/v1/plans", handlers.list_plans)
    app.router.add_post("/v1/plans/{plan_id}/tariffs", handlers.import_tariffs)
    app.router.add_put("/v1/plans/{plan_id}/tariffs/{zone}/shape", handlers.set_tariff_shape)
    app.router.add_put("/v1/plans/{plan_id}/translation", handlers.set_translation)
    app.router.add_put("/v1/plans/{plan_id}/bands", handlers.set_bands)
    app.router.add_patch("/v1/accounts/{account_id}", policy_handlers.update_account)
    app.router.add_get("/v1/accounts/{account_id}/members", policy_handlers.list_members)
    app.router.add_post("/v1/accounts/{account_id}/members", policy_handlers.add_member)
    app.router.add_delete(
        "/v1/accounts/{account_id}/members/{member}", policy_handlers.remove_member
    )
    app.router.add_get("/v1/accounts/{account_id}/counters", policy_handlers.account_counters)
    app.router.add_post("/v1/accounts/{account_id}/counters", policy_handlers.buy_counter)
    app.router.add_delete(
        "/v1/accounts/{account_id}/counters/{counter_id}", policy_handlers.cancel_counter
    )
    app.router.add_post("/v1/counters/reset", policy_handlers.reset_counters)
    app.router.add_post("/v1/plans/{plan_id}/counters", policy_handlers.define_counter)
    app.router.add_put("/v1/plans/{plan_id}/policy", policy_handlers.set_policy_of_plan)
    app.router.add_post("/v1/pin-batches", policy_handlers.generate_pins)
    app.router.add_get("/v1/pins/{pin}", policy_handlers.pin_info)
    app.router.add_get("/v1/pins/{pin}/time", policy_handlers.pin_time)
    app.router.add_delete("/v1/calls/{call_id}", policy_handlers.cut_call)
    app.router.add_put("/v1/plans/{plan_id}/routing", routes_handlers.set_plan_routing)
    app.router.add_post("/v1/carriers", routes_handlers.create_carrier)
    app.router.add_put("/v1/carriers/{carrier_id}/rates", routes_handlers.import_carrier_rates)
    app.router.add_put("/v1/route-sets/{route_set_id}", routes_handlers.set_route_set)
    app.router.add_put("/v1/plans/{plan_id}/access-numbers", number_handlers.set_access_numbers)
    app.router.add_put("/v1/on-net", number_handlers.set_onnet)
    app.router.add_get("/v1/plans/{plan_id}/lookup", number_handlers.lookup_number)
    app.router.add_put("/v1/area-codes", number_handlers.import_code_list)
    app.router.add_delete("/v1/area-codes", number_handlers.remove_code_list)
    app.router.add_put("/v1/plans/{plan_id}/area-codes", number_handlers.import_code_list)
    app.router.add_delete("/v1/plans/{plan_id}/area-codes", number_handlers.remove_code_list)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", health_handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics_text)
    app.router.add_get("/openapi.json", handlers.openapi_json)
    return app
