"""The open endpoints: the probes (``/healthz``, ``/readyz``), ``/metrics`` and
``/openapi.json``. None takes a token (``Role.OPEN``).

``/healthz`` says the process is alive and shows each backend check (200, or
503 ``"status": "unavailable"``). ``/readyz`` is what a load balancer or an
orchestrator asks before sending traffic: 200 ``{"ready": true}`` when a Redis
PING (through the auto-pipeline the requests use) and a PostgreSQL ``SELECT 1``
both answer within ``PROBE_TIMEOUT_S``, else 503 ``{"ready": false, "backends":
{...}}`` with, for each backend, whether it is up and, while down, for how long
and the error's class. Each readiness probe is reported to the process's backend
tracker, so a probe can start or end an outage (and its log line) like any other
operation. The probes' 503 carries their own body, not an error body.
"""

import asyncio
import os
from typing import Any, Literal

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ocs import metrics
from ocs.backend_health import POSTGRESQL, REDIS
from ocs.http.context import OPENAPI_DOCUMENT, services_of
from ocs.http.endpoint import Answer, Endpoint, Reply, Role
from ocs.services import Services

PROBE_TIMEOUT_S = 2.0  # well under the usual probe timeouts of load balancers (5 s and more)


class Health(Answer):
    """Liveness: this process's id, each backend's check (``ok`` or ``error: <class>``)
    and the version of the catalog it serves."""

    pid: int
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    catalog_version: int


async def healthz(request: web.Request, params: None) -> Reply[Health]:
    """GET /healthz: the process is up; 503 when a backend does not answer."""
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
    answer = Health(
        pid=os.getpid(),
        status="ok" if healthy else "unavailable",
        checks=checks,
        catalog_version=services.catalog.version,
    )
    return Reply(answer, 200 if healthy else 503)


class BackendState(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A backend as the readiness probe found it: up, or since when and why not."""

    up: bool
    down_for_s: float | None = None  # seconds since the outage began
    failures: int | None = None  # failed operations during the outage
    error: str | None = None  # the error's class, never its text (addresses)


class Readiness(Answer):
    """Whether this process can serve now, and each backend's state."""

    ready: bool
    backends: dict[str, BackendState]


async def _probe_redis(services: Services) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        await services.pipeline.execute("PING")


async def _probe_postgresql(services: Services) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S), services.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def readyz(request: web.Request, params: None) -> Reply[Readiness]:
    """200 ``{"ready": true, ...}`` when Redis and PostgreSQL answer; 503 otherwise."""
    services = services_of(request)
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
    answer = Readiness(ready=ready, backends=msgspec.convert(backends, dict[str, BackendState]))
    return Reply(answer, 200 if ready else 503)


async def metrics_text(request: web.Request, params: None) -> web.Response:
    """GET /metrics: Prometheus metrics, in their text exposition format."""
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request, params: None) -> web.Response:
    """GET /openapi.json: the API's description, generated from the declarations."""
    return web.json_response(request.app[OPENAPI_DOCUMENT])


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "GET",
        "/healthz",
        Role.OPEN,
        "Liveness, and each backend's check",
        healthz,
        None,
        Health,
        description="503 (this body, status unavailable) when a backend does not answer.",
        answer_description="ok",
    ),
    Endpoint(
        "GET",
        "/readyz",
        Role.OPEN,
        "Readiness for traffic: 200 {ready: true} when Redis and PostgreSQL answer,"
        " else 503 {ready: false, backends: {...}} (not an Error body)",
        readyz,
        None,
        Readiness,
        answer_description="ready",
    ),
    Endpoint(
        "GET",
        "/metrics",
        Role.OPEN,
        "Prometheus metrics",
        metrics_text,
        answer_description="the Prometheus text exposition",
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        Role.OPEN,
        "This document",
        openapi_json,
        answer_description="OpenAPI 3.1",
    ),
)
