"""HTTP metrics, the /metrics endpoint, and the security headers every response carries."""

from __future__ import annotations

import os

from aiohttp import web
from multidict import CIMultiDict
from prometheus_async.aio.web import server_stats
from prometheus_client import CollectorRegistry, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from taskflow.api.contracts import PUBLIC, Operation, Reply, Routes
from taskflow.metrics import HTTP_DURATION

ROUTES = Routes("operations")

# Where Prometheus' multiprocess mode keeps each process's values (taskflow/server_workers.py).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# aiohttp would announce "Python/3.x aiohttp/3.x": versions tell an attacker what to try.
SERVER = "TaskFlow"

# The histogram's child per (route, method, status), kept so that a request does not pay for
# prometheus_client's label lookup and its lock (about 2.5 us of 4 per observation). Bounded as
# the histogram's own label set is: route templates, not paths.
_durations: dict[tuple[str, str, int], Histogram] = {}


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    """Duration and status of a request, labelled by route template (bounded cardinality)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    labels = (route, request.method, status)
    child = _durations.get(labels)
    if child is None:
        child = _durations[labels] = HTTP_DURATION.labels(route, request.method, str(status))
    child.observe(seconds)


def add_security_headers(headers: CIMultiDict[str]) -> None:
    """The security headers, unless the handler chose its own (the docs page's CSP)."""
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    headers["Server"] = SERVER


def setup_metrics_route(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics of this process",
        (Reply(200, "Metrics in the Prometheus text format", media_type="text/plain"),),
        security=PUBLIC,
        rate_limited=False,
    )
)
async def metrics(request: web.Request) -> web.Response:
    # Several worker processes (API_WORKERS > 1) each count their own requests into a file of
    # this directory; a scrape reaches one of them, which must sum every worker's files.
    if os.environ.get(MULTIPROC_DIR):
        return await every_workers_stats(request)
    return await server_stats(request)


async def every_workers_stats(request: web.Request) -> web.Response:
    """/metrics summed over every worker process (Prometheus' multiprocess mode)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encode(registry))
    response.content_type = content_type  # set apart: aiohttp refuses a `;` in content_type
    return response
