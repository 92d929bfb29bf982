"""Request middleware: OcsError -> JSON error responses, and per-endpoint metrics."""

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from ocs import metrics
from ocs.errors import OcsError, Reason

log = logging.getLogger("ocs.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: OcsError) -> web.Response:
    # RFC 6750: a 401 names the scheme the endpoint takes.
    headers = {"WWW-Authenticate": 'Bearer realm="ocs"'}
    return web.json_response(
        error.to_json(),
        status=error.reason.http_status,
        headers=headers if error.reason is Reason.UNAUTHORIZED else None,
    )


def endpoint_of(request: web.Request) -> str:
    # The route pattern ("/v1/calls/{call_id}/stop"), never the raw path: ids in a
    # label would make the metric's cardinality unbounded.
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = endpoint_of(request)
    started = time.perf_counter()
    result = "ok"
    try:
        response = await handler(request)
        if response.status >= 400:
            result = str(response.status)
        return response
    except OcsError as exc:
        result = exc.reason.value
        return error_response(exc)
    except web.HTTPException as exc:
        result = str(exc.status)
        if exc.status >= 400:
            return web.json_response(
                {
                    "error": {
                        "code": exc.status,
                        "reason": "not_found" if exc.status == 404 else "http_error",
                        "message": exc.reason,
                    }
                },
                status=exc.status,
            )
        raise
    except (RedisError, OSError) as exc:
        result = Reason.UNAVAILABLE.value
        log.error("backend unavailable", extra={"endpoint": endpoint, "error": str(exc)})
        return error_response(OcsError(Reason.UNAVAILABLE, "a backend is unavailable; retry"))
    except Exception:
        result = "internal_error"
        log.exception("unhandled error", extra={"endpoint": endpoint})
        return web.json_response(
            {"error": {"code": 500, "reason": "internal_error", "message": "internal error"}},
            status=500,
        )
    finally:
        metrics.HTTP_REQUESTS.labels(endpoint, request.method, result).inc()
        metrics.HTTP_LATENCY.labels(endpoint, request.method).observe(time.perf_counter() - started)
