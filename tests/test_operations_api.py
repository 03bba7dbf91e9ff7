"""What operators and frontends expect: metrics, rate limits, CORS, security headers."""

from __future__ import annotations

import re

import pytest

from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import Client, ClientFactory, bearer, create_task, wait_ready
from tests.conftest import closed_port

ORIGIN = "https://app.example.com"


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    limited = settings.model_copy(
        update={
            "rate_limit_auth": "3/minute",
            "rate_limit_api": "5/minute",
            "cors_origins": (ORIGIN,),
        }
    )
    client = await aiohttp_client(create_app(limited))
    await wait_ready(client)
    return client


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in a text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in metrics.splitlines():
        match = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if match and all(part in match.group(1).split(",") for part in wanted.split(",")):
            return float(match.group(2))
    return 0.0


async def test_metrics_appear_and_move(client: Client) -> None:
    """/metrics exposes request durations, commands and appends, and they count real traffic."""
    before = await (await client.get("/metrics")).text()
    auth = await bearer(client)
    await create_task(client, auth)
    after = await (await client.get("/metrics")).text()
    route = {"route": "/api/tasks", "method": "POST", "status": "201"}
    count = "taskflow_http_request_duration_seconds_count"
    assert sample(after, count, **route) == sample(before, count, **route) + 1
    commands = "taskflow_commands_total"
    labels = {"command": "CreateTask", "outcome": "applied"}
    assert sample(after, commands, **labels) == sample(before, commands, **labels) + 1
    assert "taskflow_appends_total" in after


async def test_a_burst_past_the_limit_gets_429_with_headers(client: Client) -> None:
    """Per-IP limits on auth and per-user limits elsewhere answer 429 with Retry-After."""
    statuses = []
    for _ in range(4):
        response = await client.post(
            "/api/auth/login", json={"email": "a@b.co", "password": "x" * 8}
        )
        statuses.append(response.status)
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3] == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Limit"] == "3"
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.content_type == "application/problem+json"
    auth, other = await bearer(client), await bearer(client)
    answers = [(await client.get("/api/tasks", headers=auth)).status for _ in range(6)]
    assert answers == [200] * 5 + [429]
    assert (await client.get("/api/tasks", headers=other)).status == 200  # a budget per user


async def test_rate_limits_fail_open_when_redis_is_down(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """With Redis unreachable, limits let requests through (documented); auth still fails closed."""
    dead = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{closed_port()}/0",
            "redis_timeout_seconds": 0.2,
            "rate_limit_api": "1/minute",
        }
    )
    client = await aiohttp_client(create_app(dead))
    health = [(await client.get("/api/health")).status for _ in range(3)]
    assert health == [200, 200, 200]
    me = await client.get("/api/auth/me", headers=await bearer(client))
    assert me.status == 503


async def test_cors_allows_only_listed_origins(client: Client) -> None:
    """A listed origin gets CORS headers with credentials; any other origin gets none."""
    preflight = await client.options(
        "/api/tasks",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Idempotency-Key",
        },
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    evil = await client.options(
        "/api/tasks",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in evil.headers
    simple = await client.get("/api/health", headers={"Origin": ORIGIN})
    exposed = simple.headers["Access-Control-Expose-Headers"]
    for header in ("ETag", "Location", "X-TaskFlow-Position", "RateLimit-Remaining"):
        assert header in exposed
    assert "Origin" in simple.headers["Vary"]
    other = await client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_security_headers_on_every_response(client: Client) -> None:
    """Responses forbid sniffing and framing, and carry a restrictive CSP."""
    for path in ("/api/health", "/api/nope"):
        response = await client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
