"""Who may call which endpoint of the HTTP API: bearer tokens and their roles.

The call lifecycle and the IVR's PIN queries (``SWITCH_WORK``) are for switches
and IVRs: they take no token, unless the ``switch_token_required`` setting asks
for one with the ``switch`` (or ``admin``) role. ``/healthz``, ``/metrics`` and
``/openapi.json`` never take one. Every other endpoint is the admin API and
needs ``Authorization: Bearer <token>`` whose role (ocs.api_tokens) may do it: a
read (GET) needs ``viewer``, the work on accounts (``OPERATOR_WORK``)
``operator``, anything else ``admin``.

Until the first token exists the admin API is open, so that a fresh install and
``ocs demo`` work at once; ``ocs serve`` says so in its log at start, and the
``admin_token_required`` setting closes the API even then.
"""

from collections.abc import Awaitable, Callable

from aiohttp import web

from ocs import api_tokens
from ocs.errors import OcsError, Reason
from ocs.http.handlers import SERVICES
from ocs.http.middleware import Handler, endpoint_of

# (method, route) of what switches and IVRs call: a switch token's work.
SWITCH_WORK = frozenset(
    {
        ("POST", "/v1/calls"),
        ("POST", "/v1/calls/{call_id}/start"),
        ("POST", "/v1/calls/{call_id}/update"),
        ("POST", "/v1/calls/{call_id}/stop"),
        ("POST", "/v1/usage"),
        ("GET", "/v1/pins/{pin}"),
        ("GET", "/v1/pins/{pin}/time"),
    }
)
# (method, route) of the probes and the API's description: never a token.
OPEN = frozenset({("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json")})
# (method, route) of the changes an operator token may make.
OPERATOR_WORK = frozenset(
    {
        ("POST", "/v1/accounts"),
        ("PATCH", "/v1/accounts/{account_id}"),
        ("POST", "/v1/accounts/{account_id}/topups"),
        ("POST", "/v1/accounts/{account_id}/callers"),
        ("POST", "/v1/accounts/{account_id}/members"),
        ("DELETE", "/v1/accounts/{account_id}/members/{member}"),
        ("POST", "/v1/accounts/{account_id}/counters"),
        ("DELETE", "/v1/accounts/{account_id}/counters/{counter_id}"),
        ("POST", "/v1/pin-batches"),
        ("DELETE", "/v1/calls/{call_id}"),
    }
)


def needed_role(method: str, route: str, switch_token: bool = False) -> str | None:
    """The least role that may call ``route`` with ``method``; None: no token needed.
    ``switch_token``: the switches' endpoints need a switch token."""
    if method == "HEAD":
        method = "GET"
    if (method, route) in OPEN:
        return None
    if (method, route) in SWITCH_WORK:
        return "switch" if switch_token else None
    if method == "GET":
        return "viewer"
    if (method, route) in OPERATOR_WORK:
        return "operator"
    return "admin"


def admin_auth(
    required: bool, switch_token: bool = False
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware; ``required``: refuse tokenless admin requests even before any
    token exists; ``switch_token``: the switches' endpoints need a switch token."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = endpoint_of(request)
        needed = None
        if route != "unmatched":
            needed = needed_role(request.method, route, switch_token)
        if needed is None:
            return await handler(request)
        pool = request.app[SERVICES].pool
        header = request.headers.get("Authorization")
        if header is None:
            # Only the admin API is open before the first token; switch_token is a choice.
            if needed != "switch" and not required and not await api_tokens.any_token(pool):
                return await handler(request)
            raise OcsError(Reason.UNAUTHORIZED, "this endpoint needs Authorization: Bearer <token>")
        scheme, _, token = header.partition(" ")
        role = None
        if scheme.lower() == "bearer" and token.strip():
            role = await api_tokens.role_of(pool, token.strip())
        if role is None:
            raise OcsError(Reason.UNAUTHORIZED, "unknown or revoked token")
        if not api_tokens.may(role, needed):
            raise OcsError(Reason.FORBIDDEN, f"a {role} token may not do this: it needs {needed}")
        return await handler(request)

    return check
