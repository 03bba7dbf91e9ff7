"""HTTP metrics, the /metrics endpoint, and the security headers every response carries."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_async.aio.web import server_stats

from taskflow.metrics import HTTP_DURATION

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@web.middleware
async def http_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Duration and status of every request, labelled by route template (bounded cardinality)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        HTTP_DURATION.labels(route, request.method, str(status)).observe(
            time.perf_counter() - started
        )


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # aiohttp would announce "Python/3.x aiohttp/3.x": versions tell an attacker what to try.
    response.headers["Server"] = "TaskFlow"
    return response


def setup_metrics_route(app: web.Application) -> None:
    app.router.add_get("/metrics", server_stats)
