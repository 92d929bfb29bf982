"""The aiohttp application: routes of the JSON API over the shared services."""

from aiohttp import web

from ocs.http import handlers
from ocs.http.middleware import errors_and_metrics
from ocs.services import Services


def create_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=64 << 20)
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
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics_text)
    app.router.add_get("/openapi.json", handlers.openapi_json)
    return app
