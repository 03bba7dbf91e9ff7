"""Liveness and readiness endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

from aiohttp import web
from pydantic import Field

from taskflow.api.contracts import PUBLIC, Operation, Reply, Routes, Shape
from taskflow.api.json_io import json_response
from taskflow.api.keys import INDEXES_READY, SERVICES
from taskflow.api.problems import Problem

ROUTES = Routes("operations")


class Health(Shape):
    """Liveness."""

    status: Literal["ok"]


class Readiness(Shape):
    """Readiness: every dependency answered."""

    status: Literal["ready"]
    checks: dict[str, str] = Field(description='each dependency ("mongodb", "redis") and "ok"')


def setup_health_routes(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        "/api/health",
        "health",
        "Liveness (no I/O)",
        (Reply(200, "The process answers", Health),),
        security=PUBLIC,
        rate_limited=False,
    )
)
async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers; no I/O."""
    return json_response({"status": "ok"})


@ROUTES.route(
    Operation(
        "get",
        "/api/ready",
        "ready",
        "Readiness: MongoDB primary and Redis pinged, indexes created",
        (Reply(200, "Ready", Readiness),),
        {503: "a dependency did not answer; `checks` names it"},
        security=PUBLIC,
        rate_limited=False,
    )
)
async def ready(request: web.Request) -> web.Response:
    """Readiness: the MongoDB primary and Redis each answer a ping within a short timeout."""
    services = request.app[SERVICES]
    timeout = services.settings.ready_timeout_seconds
    checks = {
        "mongodb": _probe(services.db.command("ping"), timeout),
        "redis": _probe(services.redis.ping(), timeout),
    }
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    if results["mongodb"] == "ok" and not request.app[INDEXES_READY].is_set():
        results["mongodb"] = "indexes pending"
    failing = [name for name, status in results.items() if status != "ok"]
    if failing:
        raise Problem(
            503,
            "not-ready",
            "Not ready",
            f"Unavailable: {', '.join(failing)}",
            headers={"Retry-After": "1"},
            checks=results,
        )
    return json_response({"status": "ready", "checks": results})


async def _probe(check: Awaitable[object], seconds: float) -> str:
    try:
        async with asyncio.timeout(seconds):
            await check
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
