"""Who may call which endpoint of the HTTP API: bearer tokens, roles and networks.

Secure by default (docs/decisions/0011-secure-defaults.md):

* Each endpoint declares the least role that may call it (``Endpoint.role``,
  ``ocs.http.endpoint``). The admin API (viewer, operator and admin endpoints)
  needs ``Authorization: Bearer <token>`` whose role (ocs.api_tokens) may do
  it. With no token at all it refuses everything; the first start makes a
  bootstrap admin token (``ensure_bootstrap_admin_token``, ``ocs.bootstrap_token``). Only
  ``admin_token_required = false`` restores the trial behaviour: open until the
  first token exists.
* The call lifecycle and the IVR's PIN queries (role ``switch``) are for
  switches and IVRs, which are known like RADIUS NAS clients: by a ``switch``
  (or ``admin``) token, or by a source address in ``switch_networks`` (by
  default the loopback only) unless ``switch_token_required``.
  ``switch_open`` accepts anyone, for trials.
* ``open`` endpoints (the probes, ``/metrics``, ``/openapi.json``) never take a token.
"""

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from ocs import api_tokens
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.http.context import CALLER_ROLE, CALLER_TOKEN, SERVICES
from ocs.http.endpoint import Role
from ocs.http.middleware import Handler, endpoint_of


def needed_role(roles: Mapping[tuple[str, str], Role], method: str, route: str) -> Role:
    """The least role that may call ``route`` with ``method``, from the endpoints'
    declarations (``Endpoint.role``); a route nobody declared needs admin."""
    if method == "HEAD":
        method = "GET"
    return roles.get((method, route), Role.ADMIN)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Said by every refusal of a switch's request: how to let it in.
SWITCH_HINT = (
    "give the switch a token (`ocs tokens create --name NAME --role switch`, sent as"
    " Authorization: Bearer <token>) or add its network to switch_networks"
)
ADMIN_HINT = (
    "the first start wrote a bootstrap admin token to bootstrap-admin-token in its data"
    " directory (or set admin_bootstrap_token); `ocs tokens create --name NAME --role admin`"
    " makes more"
)


def source_allowed(remote: str | None, networks: Iterable[Network]) -> bool:
    """Whether a peer address (``request.remote``) lies in one of ``networks``.

    The TCP peer only, never X-Forwarded-For: a header is the client's to write.
    """
    if not remote:
        return False  # a Unix socket, or an unknown peer
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener shows IPv4 peers as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def admin_auth(settings: Settings, roles: Mapping[tuple[str, str], Role]) -> Middleware:
    """The middleware, from the endpoints' roles and the settings ``admin_token_required``,
    ``switch_token_required``, ``switch_networks`` and ``switch_open``."""
    required = settings.admin_token_required
    switch_token = settings.switch_token_required
    switch_open = settings.switch_open
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.switch_networks)

    # Every switch request asks, and a switch's address is the same for each: parsing
    # it was 3% of an HTTP call's CPU. Bounded, so that many peers only evict one another.
    @functools.lru_cache(maxsize=4096)
    def trusted(remote: str | None) -> bool:
        return source_allowed(remote, networks)

    async def role_from(request: web.Request, header: str) -> str:
        scheme, _, token = header.partition(" ")
        holder = None
        if scheme.lower() == "bearer" and token.strip():
            holder = await api_tokens.holder_of(request.app[SERVICES].pool, token.strip())
        if holder is None:
            raise OcsError(Reason.UNAUTHORIZED, "unknown or revoked token")
        request[CALLER_TOKEN] = holder.name
        return holder.role

    async def switch_check(request: web.Request) -> None:
        if switch_open:
            return  # trials: anyone who reaches the port
        header = request.headers.get("Authorization")
        # A switch in a trusted network needs no token; one it sends anyway is not
        # looked up, which keeps PostgreSQL off the calls' path.
        if not switch_token and trusted(request.remote):
            return
        if header is None:
            if switch_token:
                raise OcsError(
                    Reason.UNAUTHORIZED,
                    "this endpoint needs a switch token (switch_token_required):"
                    " Authorization: Bearer <token>",
                )
            raise OcsError(
                Reason.UNAUTHORIZED,
                f"calls from {request.remote or 'this address'} are not accepted: {SWITCH_HINT}",
            )
        role = await role_from(request, header)
        if not api_tokens.may(role, "switch"):
            raise OcsError(
                Reason.FORBIDDEN, f"a {role} token may not do this: it needs switch; {SWITCH_HINT}"
            )

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = endpoint_of(request)
        if route == "unmatched":
            return await handler(request)  # answered 404 or 405 by the router
        needed = needed_role(roles, request.method, route)
        if needed is Role.OPEN:
            return await handler(request)
        if needed is Role.SWITCH:
            await switch_check(request)
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None:
            # The trial behaviour, only when asked for: open until the first token.
            if not required and not await api_tokens.any_token(request.app[SERVICES].pool):
                request[CALLER_ROLE] = "admin"  # open to anyone: as if an admin asked
                return await handler(request)
            raise OcsError(
                Reason.UNAUTHORIZED,
                f"the admin API needs Authorization: Bearer <token>; {ADMIN_HINT}",
            )
        role = await role_from(request, header)
        if not api_tokens.may(role, needed):
            raise OcsError(Reason.FORBIDDEN, f"a {role} token may not do this: it needs {needed}")
        request[CALLER_ROLE] = role
        return await handler(request)

    return check
