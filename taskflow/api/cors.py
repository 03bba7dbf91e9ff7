"""CORS with aiohttp-cors: only the configured origins, credentials only for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import hdrs, web
from multidict import CIMultiDict

from taskflow.settings import Settings

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[object]]

EXPOSED = (
    "ETag",
    "Location",
    "X-TaskFlow-Position",
    "X-TaskFlow-Stale",
    "X-Request-ID",
    "X-Correlation-ID",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "Idempotent-Replayed",
)
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
    "X-Correlation-ID",
    "X-Causation-ID",
    "X-TaskFlow-Position",
    "Last-Event-ID",  # a change feed's resume position (fetch-based clients send it themselves)
)


def setup_cors(app: web.Application, settings: Settings) -> None:
    """Allow exactly `CORS_ORIGINS`; any other origin gets no CORS headers at all (never echoed)."""
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=True,
        expose_headers=EXPOSED,
        allow_headers=ALLOWED_HEADERS,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        max_age=600,
    )
    hooks = len(app.on_response_prepare)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in settings.cors_origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD":
            cors.add(route)
    # aiohttp-cors answers every response in its response hook, and for a request without an
    # Origin header it looks the route's configuration up only to stop at CORS 6.1.1 ("no
    # Origin: not a CORS request") without touching the response. Such requests skip the hook.
    for at in range(hooks, len(app.on_response_prepare)):
        app.on_response_prepare[at] = _only_with_origin(app.on_response_prepare[at])


def _only_with_origin(hook: ResponseHook) -> ResponseHook:
    async def hook_if_origin(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ORIGIN in request.headers:
            await hook(request, response)

    return hook_if_origin


def add_vary_origin(headers: CIMultiDict[str]) -> None:
    """Responses differ by Origin once CORS is on, so shared caches must key on it."""
    if "origin" not in headers.get("Vary", "").lower():
        headers.add("Vary", "Origin")
