"""The open endpoints: the probes (``/healthz``, ``/readyz``), ``/metrics`` and
``/openapi.json``. None takes a token (``Role.OPEN``).

Liveness and readiness are kept apart, as orchestrators use them: a failed
liveness probe restarts the process, a failed readiness probe only routes traffic
elsewhere. ``/healthz`` is liveness: 200 whenever the process answers, with each
backend's check for a person to read (``"status": "degraded"`` while one does not
answer): restarting ocs brings no backend back. ``/readyz`` is what a load
balancer or an orchestrator asks before sending traffic: 200 ``{"ready": true}``
when the catalog is loaded and both backends take writes within ``PROBE_TIMEOUT_S``:
a Redis ``SET`` of a short-lived probe key on every master (through the auto-pipeline's
connections; a Redis that answers PING but refuses writes, OOM or READONLY, serves no
call) taken by at least one master, and PostgreSQL not read-only; else 503
``{"ready": false, "backends": {...}}`` with, for each backend, whether it is up
and, while down, for how long, the error's class and, for a Redis refusing writes,
its code (``"refusal": "OOM"``), and
``"catalog": "loading"`` before the first catalog snapshot. On a Redis Cluster some
masters failing (refusing writes, or no answer within ``MASTER_PROBE_TIMEOUT_S``) while
others take writes is still 200, naming them (``"failing_masters": {"host:port":
"OOM"}``): every ocs instance sees the same cluster, and a 503 would drain them all for
the accounts of one master (decision 0013). It is
503 too while a PostgreSQL LISTEN the process follows changes on (the catalog's,
the NAS client table's) has lost its connection: ``"listeners": {"catalog":
{"state": "reconnecting", "down_for_s": ...}}``, then ``"reloading"`` once LISTEN
runs again, until what was missed meanwhile is reloaded (ocs.db.listener); the
process serves on with what it had, and would miss every change. Each
readiness probe is reported to the process's backend tracker, so a probe can
start or end an outage (and its log line) like any other operation. The 503
carries the probe's own body, not an error body.
"""

import asyncio
import os
from collections.abc import Awaitable
from typing import Any, Literal

import asyncpg
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ocs import metrics
from ocs.backend_health import POSTGRESQL, REDIS, BackendHealth, WriteProbe
from ocs.http.context import OPENAPI_DOCUMENT, services_of
from ocs.http.endpoint import Answer, Endpoint, Reply, Role
from ocs.services import Services

PROBE_TIMEOUT_S = 2.0  # well under the usual probe timeouts of load balancers (5 s and more)


class Health(Answer):
    """Liveness: this process's id, each backend's check (``ok`` or ``error: <class>``)
    and the version of the catalog it serves."""

    pid: int
    status: Literal["ok", "degraded"]
    checks: dict[str, str]
    catalog_version: int


async def _check(probe: Awaitable[object]) -> str:
    """``ok``, or ``error: <class>`` when ``probe`` fails or takes over ``PROBE_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await probe
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def _select_one(services: Services) -> None:
    async with services.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def healthz(request: web.Request, params: None) -> Reply[Health]:
    """GET /healthz: 200 while the process answers; each backend's check in the body."""
    services = services_of(request)
    redis, postgres = await asyncio.gather(
        _check(services.redis.ping()), _check(_select_one(services))
    )
    checks = {"redis": redis, "postgres": postgres}
    answer = Health(
        pid=os.getpid(),
        status="ok" if redis == postgres == "ok" else "degraded",
        checks=checks,
        catalog_version=services.catalog.version,
    )
    return Reply(answer, 200)


class BackendState(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A backend as the readiness probe found it: up, or since when and why not."""

    up: bool
    down_for_s: float | None = None  # seconds since the outage began
    failures: int | None = None  # failed operations during the outage
    error: str | None = None  # the error's class, never its text (addresses)
    refusal: str | None = None  # the code a Redis refusing writes answers (OOM, READONLY...)
    # A cluster's masters failing the probe: each one's refusal code, or "unreachable".
    failing_masters: dict[str, str] | None = None


class ListenerState(msgspec.Struct, kw_only=True):
    """A LISTEN that is not following its changes: its connection lost
    (``reconnecting``), or back and the owner reloading what it missed."""

    state: Literal["reconnecting", "reloading"]
    down_for_s: float  # seconds since the loss was noticed


class Readiness(Answer, omit_defaults=True):
    """Whether this process can serve now, each backend's state, ``catalog:
    loading`` until its first catalog snapshot is in, and the LISTENs (by name)
    that do not follow their changes now."""

    ready: bool
    backends: dict[str, BackendState]
    catalog: Literal["loading"] | None = None
    listeners: dict[str, ListenerState] | None = None


async def _probe_redis(services: Services) -> WriteProbe:
    """Redis takes a write: a Redis out of memory (maxmemory, noeviction), unable to
    persist (MISCONF) or a replica (READONLY: the old primary after a failover)
    answers PING and reads, while every call it would grant or charge is refused."""
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        # On every master, each bounded alone (MASTER_PROBE_TIMEOUT_S): each one's outcome.
        return await services.pipeline.probe_writes()


async def _probe_postgresql(services: Services) -> None:
    """PostgreSQL answers and takes writes: a standby (the old primary after a failover,
    still in the pool's DNS) or a database set read-only answers reads, while every
    change ocs stores would fail there."""
    async with asyncio.timeout(PROBE_TIMEOUT_S), services.pool.acquire() as conn:
        read_only = await conn.fetchval("SHOW transaction_read_only")
    if read_only == "on":
        raise asyncpg.exceptions.ReadOnlySQLTransactionError(
            "PostgreSQL takes no writes (a standby, or read-only)"
        )


def _listeners_behind(services: Services) -> dict[str, ListenerState]:
    """The process's LISTENs that are not following their changes now, by name."""
    behind: dict[str, ListenerState] = {}
    for listener in (services.catalog.listener, *services.listeners):
        if listener is None:
            continue
        state = listener.state
        if state == "reconnecting" or state == "reloading":
            down_for = listener.down_for() or 0.0
            behind[listener.name] = ListenerState(state=state, down_for_s=round(down_for, 1))
    return behind


def _redis_state(health: BackendHealth, result: WriteProbe | BaseException) -> dict[str, Any]:
    """Redis's entry in a readiness answer after its probe, the probe reported to the
    tracker: down while any master fails (as ``ocs_backend_up``), with ``failing_masters``
    naming each failing master of a cluster and why."""
    if isinstance(result, WriteProbe):
        error = result.error()
        if error is None:
            # The probe is a write: the one success that ends a Redis's refused writes.
            health.report_success(REDIS, write=True)
            return health.snapshot()[REDIS]
        entry = _failed_state(health, REDIS, error)
        if len(result.outcomes) > 1:
            entry["failing_masters"] = result.failing()
        return entry
    if isinstance(result, Exception):
        return _failed_state(health, REDIS, result)
    raise result  # cancellation: the client went away


def _postgresql_state(health: BackendHealth, result: object) -> dict[str, Any]:
    """PostgreSQL's entry in a readiness answer after its probe, reported to the tracker."""
    if isinstance(result, Exception):
        return _failed_state(health, POSTGRESQL, result)
    if isinstance(result, BaseException):
        raise result  # cancellation: the client went away
    health.report_success(POSTGRESQL, write=True)
    return health.snapshot()[POSTGRESQL]


def _failed_state(health: BackendHealth, backend: str, exc: BaseException) -> dict[str, Any]:
    """A failed probe's entry: a connection failure, a timeout or a refused write starts
    (or continues) an outage. Any other refusal (a failed AUTH, a SQL error) leaves the
    tracker alone, or every probe would flap it against the requests that succeed
    meanwhile; down in the answer all the same."""
    health.report(exc, default=backend)
    entry: dict[str, Any] = {**health.snapshot()[backend], "up": False}
    entry.setdefault("error", type(exc).__name__)
    return entry


async def readyz(request: web.Request, params: None) -> Reply[Readiness]:
    """200 ``{"ready": true, ...}`` when the catalog is loaded, PostgreSQL takes writes and
    Redis does on some master (a cluster's failing masters listed, still 200: decision
    0013); 503 otherwise."""
    services = services_of(request)
    health = services.health
    redis, postgresql = await asyncio.gather(
        _probe_redis(services), _probe_postgresql(services), return_exceptions=True
    )
    backends = {
        REDIS: _redis_state(health, redis),
        POSTGRESQL: _postgresql_state(health, postgresql),
    }
    # Redis serves while any master takes writes: every ocs instance sees the same
    # cluster, so one master down must not drain them all (a total outage for 1/N of it).
    redis_serving = isinstance(redis, WriteProbe) and redis.serving()
    # Version 0: no snapshot yet, every call would be refused as an unknown plan.
    loading = services.catalog.version == 0
    behind = _listeners_behind(services)
    ready = not loading and not behind and redis_serving and backends[POSTGRESQL]["up"]
    answer = Readiness(
        ready=bool(ready),
        backends=msgspec.convert(backends, dict[str, BackendState]),
        catalog="loading" if loading else None,
        listeners=behind or None,
    )
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
        description="200 while the process answers; status degraded when a backend does not.",
        answer_description="alive",
    ),
    Endpoint(
        "GET",
        "/readyz",
        Role.OPEN,
        "Readiness for traffic: 200 {ready: true} when the catalog is loaded, Redis and"
        " PostgreSQL answer and every LISTEN follows its changes, else 503 {ready: false,"
        " backends: {...}, listeners: {...}} (not an Error body)",
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
