"""``GET /readyz``: whether this process can serve now (both backends answer).

``/healthz`` says the process is alive and shows each backend check;
``/readyz`` is what a load balancer or an orchestrator asks before sending
traffic: 200 ``{"ready": true}`` when a Redis PING (through the auto-pipeline
the requests use) and a PostgreSQL ``SELECT 1`` both answer within
``PROBE_TIMEOUT_S``, else 503 ``{"ready": false, "backends": {...}}`` with, for
each backend, whether it is up and, while down, for how long and the error's
class. Each probe is reported to the process's backend tracker, so a probe can
start or end an outage (and its log line) like any other operation.
"""

import asyncio

from aiohttp import web

from ocs.backend_health import POSTGRESQL, REDIS
from ocs.http.context import SERVICES
from ocs.services import Services

PROBE_TIMEOUT_S = 2.0  # well under the usual probe timeouts of load balancers (5 s and more)


async def _probe_redis(services: Services) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        await services.pipeline.execute("PING")


async def _probe_postgresql(services: Services) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S), services.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def readyz(request: web.Request) -> web.Response:
    """200 ``{"ready": true, ...}`` when Redis and PostgreSQL answer; 503 otherwise."""
    services = request.app[SERVICES]
    health = services.health
    results = await asyncio.gather(
        _probe_redis(services), _probe_postgresql(services), return_exceptions=True
    )
    backends = health.snapshot()
    for backend, result in zip((REDIS, POSTGRESQL), results, strict=True):
        if isinstance(result, Exception):
            # A connection failure or timeout starts (or continues) an outage. Any other
            # refusal (a failed AUTH, a SQL error) leaves the tracker alone, or every probe
            # would flap it against the requests that succeed meanwhile; not ready all the same.
            health.report(result, default=backend)
            backends[backend] = {**health.snapshot()[backend], "up": False}
            backends[backend].setdefault("error", type(result).__name__)
        elif isinstance(result, BaseException):
            raise result  # cancellation: the client went away
        else:
            health.report_success(backend)
            backends[backend] = health.snapshot()[backend]
    ready = all(backends[b]["up"] for b in (REDIS, POSTGRESQL))
    return web.json_response({"ready": ready, "backends": backends}, status=200 if ready else 503)
