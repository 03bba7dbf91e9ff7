"""Liveness, readiness and the problem+json error shape, through the real app and servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from taskflow.server import create_app
from taskflow.settings import Settings
from tests.conftest import closed_port

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


async def _wait_ready(client: TestClient[web.Request, web.Application]) -> int:
    for _ in range(100):
        response = await client.get("/api/ready")
        if response.status == 200:
            return 200
        await asyncio.sleep(0.05)
    return response.status


async def test_health_and_ready_answer_200_on_live_servers(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """Liveness needs nothing; readiness pings MongoDB and Redis and reports each."""
    client = await aiohttp_client(create_app(settings))
    health = await client.get("/api/health")
    assert health.status == 200
    assert await health.json() == {"status": "ok"}
    assert await _wait_ready(client) == 200
    body = await (await client.get("/api/ready")).json()
    assert body["checks"] == {"mongodb": "ok", "redis": "ok"}
    assert health.headers["X-Request-ID"]


async def test_ready_is_503_naming_redis_when_redis_is_unreachable(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """A dead Redis makes readiness a 503 problem that names Redis and only Redis."""
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    client = await aiohttp_client(create_app(dead))
    for _ in range(100):  # until the index task is done, MongoDB reads "indexes pending"
        response = await client.get("/api/ready")
        if (await response.json())["checks"]["mongodb"] == "ok":
            break
        await asyncio.sleep(0.05)
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["type"].endswith(":not-ready")
    assert "redis" in problem["detail"]
    assert "mongodb" not in problem["detail"]
    assert problem["checks"]["redis"] != "ok"
    assert response.headers["Retry-After"]


async def test_ready_is_503_naming_mongodb_when_mongodb_is_unreachable(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """A dead MongoDB makes readiness a 503 problem that names MongoDB; liveness stays 200."""
    uri = f"mongodb://127.0.0.1:{closed_port()}/?serverSelectionTimeoutMS=300"
    # Every MongoDB wait bounded short too: with the suite's 30 s deadline one run took 31 s.
    bounds = {"ready_timeout_seconds": 0.5, "mongodb_timeout_ms": 2_000}
    dead = settings.model_copy(update={"mongodb_uri": uri, **bounds})
    client = await aiohttp_client(create_app(dead))
    assert (await client.get("/api/health")).status == 200
    response = await client.get("/api/ready")
    assert response.status == 503
    problem = await response.json()
    assert "mongodb" in problem["detail"]
    assert problem["checks"]["redis"] == "ok"


async def test_unknown_routes_and_methods_are_problem_json(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """Errors raised by aiohttp itself leave in the same problem+json shape."""
    client = await aiohttp_client(create_app(settings))
    missing = await client.get("/api/nope")
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    assert (await missing.json())["type"].endswith(":not-found")
    wrong = await client.post("/api/health")
    assert wrong.status == 405
    assert "GET" in wrong.headers["Allow"]
