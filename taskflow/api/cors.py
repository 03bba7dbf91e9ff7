"""CORS with aiohttp-cors: only the configured origins, credentials only for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import web

from taskflow.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in settings.cors_origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD":
            cors.add(route)


@web.middleware
async def vary_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Responses differ by Origin once CORS is on, so shared caches must key on it."""
    response = await handler(request)
    if "origin" not in response.headers.get("Vary", "").lower():
        response.headers.add("Vary", "Origin")
    return response
