"""What every HTTP handler reaches through its request: the shared services."""

from typing import Any

from aiohttp import web

from ocs.services import Services

SERVICES = web.AppKey("services", Services)


def services_of(request: web.Request) -> Services:
    """The process's services (Redis, PostgreSQL, the catalog, the call lifecycle)."""
    return request.app[SERVICES]


# The API's OpenAPI document, generated once from the endpoints' declarations.
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict[str, Any])
