"""What every HTTP handler reaches through its request: the shared services, and the
role and name of the token that sent it."""

from typing import Any

from aiohttp import web

from ocs import api_tokens
from ocs.services import Services

SERVICES = web.AppKey("services", Services)


def services_of(request: web.Request) -> Services:
    """The process's services (Redis, PostgreSQL, the catalog, the call lifecycle)."""
    return request.app[SERVICES]


# The role of the request's token, set by the admin API's middleware (``admin_auth``):
# an endpoint open to a role may still keep one of its fields to a higher one.
CALLER_ROLE = web.RequestKey("caller_role", str)

# The name of the API token that let the request in, set by ``admin_auth`` whenever it
# looked one up (absent when a trusted network or ``switch_open`` let it in without):
# per-token limits, the PIN guard's, count against it.
CALLER_TOKEN = web.RequestKey("caller_token", str)


def caller_may(request: web.Request, needed: str) -> bool:
    """Whether the request's token has ``needed`` (a role of ``ocs.api_tokens``). A
    request the middleware did not judge has no role, and may not."""
    role = request.get(CALLER_ROLE)
    return role is not None and api_tokens.may(role, needed)


# The API's OpenAPI document, generated once from the endpoints' declarations.
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict[str, Any])
