"""Request middleware: OcsError -> JSON error responses, and per-endpoint metrics.

Each request is counted by endpoint and result, timed by endpoint (count and sum)
and by kind (``REQUEST_KINDS``: the call lifecycle's steps against the latency
budget, everything else together), and an authorization is counted as a decision.

Every error body has the same shape (``code``, ``reason``, ``message``,
``sip_status``, ``field`` where one is to blame). Bad input is a 4xx here even
where a handler let it through: the path and query parameters are checked for
what no backend can store, and a body's decoding, CSV or PostgreSQL data errors
that escape a handler are the caller's input, answered 400, not 500.
"""

import csv
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from ocs import backend_health, metrics
from ocs.errors import OcsError, Reason, body_too_large, invalid, sip_status_of_http
from ocs.http.json_io import refuse_foreign_charset, text_problem
from ocs.log_limit import LogLimiter

log = logging.getLogger("ocs.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# PostgreSQL could not reach or keep the connection: a backend outage, retryable.
_POSTGRES_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
# Requests failed by a backend error no outage explains: one line per error class a while
# (one per process; the middleware is a function, not an object).
_UNAVAILABLE_LINES = LogLimiter("http")


def error_response(error: OcsError) -> web.Response:
    """The JSON answer to a refusal (a 401 also names the scheme it takes)."""
    # RFC 6750: a 401 names the scheme the endpoint takes.
    headers = {"WWW-Authenticate": 'Bearer realm="ocs"'}
    return web.json_response(
        error.to_json(),
        status=error.reason.http_status,
        headers=headers if error.reason is Reason.UNAUTHORIZED else None,
    )


def http_error_response(status: int, reason: str, message: str) -> web.Response:
    """The JSON answer to an error that no reason code names (routing, server faults)."""
    return web.json_response(
        {
            "error": {
                "code": status,
                "reason": reason,
                "message": message,
                "sip_status": sip_status_of_http(status),
            }
        },
        status=status,
    )


def check_parameters(request: web.Request) -> None:
    """400 naming the path or query parameter that holds a NUL character or a lone
    surrogate: no handler need think of it, and none reaches Redis or PostgreSQL. And
    415 for a body in a charset other than UTF-8, which no handler reads (an unknown
    one would fail its decoding)."""
    if request.body_exists:
        refuse_foreign_charset(request)
    for name, value in request.match_info.items():
        problem = text_problem(value)
        if problem is not None:
            raise invalid(name, problem)
    for name, value in request.query.items():
        problem = text_problem(name)
        if problem is not None:
            raise invalid("query", f"a parameter name {problem}")
        problem = text_problem(value)
        if problem is not None:
            raise invalid(name, problem)


def input_error(exc: Exception) -> OcsError | None:
    """The 400 for an exception that escaped a handler but comes from the caller's
    input (a body that is not UTF-8 or not CSV, a value PostgreSQL cannot store); None
    for any other exception."""
    if isinstance(exc, UnicodeDecodeError):
        return invalid("body", f"not UTF-8 text (byte {exc.start} of the body)")
    if isinstance(exc, UnicodeEncodeError):
        return invalid("body", "contains a lone surrogate (such as \\ud800): not valid Unicode")
    if isinstance(exc, csv.Error):
        return invalid("body", f"not valid CSV: {exc}")
    if isinstance(exc, asyncpg.DataError):
        # SQLSTATE class 22: the data, not the server (NUL, a number out of range).
        return invalid("body", f"a value ocs cannot store: {exc.sqlstate} {exc}")
    return None


# The call lifecycle's endpoints by the step they are, for the latency histogram and the
# decisions; every other endpoint is "admin", an unrouted path "other".
REQUEST_KINDS = {
    ("POST", "/v1/calls"): "authorize",
    ("POST", "/v1/calls/{call_id}/start"): "start",
    ("POST", "/v1/calls/{call_id}/update"): "update",
    ("POST", "/v1/calls/{call_id}/stop"): "stop",
    ("DELETE", "/v1/calls/{call_id}"): "cut",
    ("POST", "/v1/usage"): "usage",
    ("POST", "/v1/pins/lookup"): "query",
    ("POST", "/v1/pins/time"): "query",
    ("GET", "/v1/pins/{pin}"): "query",
    ("GET", "/v1/pins/{pin}/time"): "query",
    ("GET", "/healthz"): "health",
    ("GET", "/readyz"): "health",
    ("GET", "/metrics"): "health",
}
# Methods a label may name; any other token a client sends is counted as "other" (a
# label's values must stay a bounded set).
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def endpoint_of(request: web.Request) -> str:
    """The route pattern a request matched, the metrics label; ``unmatched`` when none."""
    # The route pattern ("/v1/calls/{call_id}/stop"), never the raw path: ids in a
    # label would make the metric's cardinality unbounded.
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers every error as JSON with its reason code, and counts every request."""
    endpoint = endpoint_of(request)
    started = time.perf_counter()
    result = "ok"
    refused_for = ""  # the reason code a refusal counts under (finer than ``result``)
    try:
        check_parameters(request)
        response = await handler(request)
        if response.status >= 400:
            result = str(response.status)
        return response
    except OcsError as exc:
        result = exc.reason.value
        # A refusal may carry a finer code than its enum member (funds held by live calls).
        refused_for = getattr(exc, "code", result)
        return error_response(exc)
    except web.HTTPException as exc:
        result = str(exc.status)
        if exc.status == 413:
            # aiohttp's own limit (client_max_size) on a body read whole: the same
            # refusal, with the same reason code, as ocs's limits give.
            result = Reason.BODY_TOO_LARGE.value
            text = exc.text or "larger than ocs reads"
            return error_response(body_too_large(text[:1].lower() + text[1:]))
        if exc.status >= 400:
            return http_error_response(
                exc.status, "not_found" if exc.status == 404 else "http_error", exc.reason
            )
        raise
    except (RedisError, OSError, *_POSTGRES_DOWN) as exc:
        result = Reason.UNAVAILABLE.value
        # A lost backend (or a Redis refusing writes) is logged once by the process's
        # health tracker, not per request; any other error (a slot still migrating
        # included: no outage) once per reason a while.
        if not backend_health.default().report_request(exc, default=backend_health.POSTGRESQL):
            reason = type(exc).__name__
            held = _UNAVAILABLE_LINES.admit(reason)
            if held is not None:
                log.error(
                    "backend unavailable",
                    extra={
                        "endpoint": endpoint,
                        "reason": reason,
                        "error": str(exc)[:300],
                        "held_back": held,
                    },
                )
        return error_response(OcsError(Reason.UNAVAILABLE, "a backend is unavailable; retry"))
    except Exception as exc:
        refusal = input_error(exc)
        if refusal is not None:
            # A handler let bad input through: the caller still gets its 400, and the
            # log says where to check it earlier.
            result = refusal.reason.value
            log.warning(
                "bad input caught late",
                extra={"endpoint": endpoint, "error": type(exc).__name__},
            )
            return error_response(refusal)
        result = "internal_error"
        log.exception("unhandled error", extra={"endpoint": endpoint})
        return http_error_response(500, "internal_error", "internal error")
    finally:
        elapsed = time.perf_counter() - started
        method = request.method if request.method in _METHODS else "other"
        metrics.HTTP_REQUEST_CHILDREN.get(endpoint, method, result).inc()
        metrics.HTTP_LATENCY_CHILDREN.get(endpoint, method).observe(elapsed)
        kind = REQUEST_KINDS.get((method, endpoint)) or (
            "other" if endpoint == "unmatched" else "admin"
        )
        metrics.request_latency("http", kind).observe(elapsed)
        if kind == "authorize":
            metrics.decision("http", None if result == "ok" else refused_for or result)
