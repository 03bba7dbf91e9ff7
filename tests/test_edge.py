"""The edge middleware: what every response carries, errors and rate limits off included."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web

from taskflow.api.observability import SECURITY_HEADERS
from taskflow.api.request_ids import new_request_id
from taskflow.logs import configure_logging
from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import Client, ClientFactory, wait_ready
from tests.conftest import closed_port

ORIGIN = "https://app.example.com"


@pytest.fixture
async def unlimited(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    """The app as the benchmark runs it: rate limits off (no rate-limit middleware at all)."""
    app = create_app(
        settings.model_copy(update={"rate_limit_enabled": False, "cors_origins": (ORIGIN,)})
    )
    app.router.add_get("/test/logs", _logs_a_line)
    client = await aiohttp_client(app)
    await wait_ready(client)
    return client


async def _logs_a_line(request: web.Request) -> web.Response:
    structlog.get_logger("tests.edge").warning("from_a_handler")
    return web.Response(text="ok")


def test_request_ids_are_32_hex_digits_and_never_repeat() -> None:
    """Ids cut from the random buffer look like uuid4().hex and are all different."""
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in ids)


async def test_errors_carry_ids_security_headers_and_vary(unlimited: Client) -> None:
    """A 401 problem and an unmatched 404 carry every edge header, each with a fresh id."""
    seen = set()
    for path in ("/api/tasks", "/api/nope"):
        response = await unlimited.get(path)
        assert response.status in {401, 404}
        assert response.content_type == "application/problem+json"
        request_id = response.headers["X-Request-ID"]
        assert response.headers["X-Correlation-ID"] == request_id
        seen.add(request_id)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        assert response.headers["Server"] == "TaskFlow"
        assert "Origin" in response.headers["Vary"]
        assert "Access-Control-Allow-Origin" not in response.headers
    assert len(seen) == 2


async def test_client_ids_are_echoed_and_cors_answers_the_configured_origin(
    unlimited: Client,
) -> None:
    """Given ids come back as sent; a configured Origin still gets its CORS headers."""
    response = await unlimited.get(
        "/api/health",
        headers={"X-Request-ID": "req-1", "X-Correlation-ID": "corr-1", "Origin": ORIGIN},
    )
    assert response.headers["X-Request-ID"] == "req-1"
    assert response.headers["X-Correlation-ID"] == "corr-1"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


async def test_metrics_label_route_template_method_and_status(unlimited: Client) -> None:
    """Each request is counted under its route template, method and final status."""
    name = "taskflow_http_request_duration_seconds_count"
    unauthorized = f'{name}{{method="GET",route="/api/tasks/{{task_id}}",status="401"}}'

    async def count(series: str) -> float:
        # The registry is the process's: earlier tests in this pytest process count too.
        metrics = await (await unlimited.get("/metrics")).text()
        found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = await count(unauthorized)
    for _ in range(2):
        await unlimited.get("/api/tasks/abc")  # 401: no token
    await unlimited.get("/api/health")
    assert await count(unauthorized) == before + 2
    assert await count(f'{name}{{method="GET",route="/api/health",status="200"}}') >= 1


async def test_log_lines_carry_the_request_ids(unlimited: Client) -> None:
    """A line logged while serving a request names its request and correlation ids."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO")  # the processors `taskflow serve` runs with
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    try:
        response = await unlimited.get("/test/logs", headers={"X-Correlation-ID": "corr-9"})
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    line = next(line for line in lines if line["event"] == "from_a_handler")
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["correlation_id"] == "corr-9"


async def test_a_client_that_hangs_up_mid_body_is_logged_as_such_not_as_a_server_error(
    settings: Settings,
) -> None:
    """A body cut short by the client's own close (a load tool stopping, a closed tab) is no
    server failure: an INFO line, counted as status 499, and no ERROR traceback. Served as
    `taskflow serve` serves it: handlers are not cancelled when their client leaves."""
    app = create_app(settings.model_copy(update={"rate_limit_enabled": False}))
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    port = closed_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    try:
        # The client must leave while the handler waits for the rest of the body. How long
        # the server takes to get there depends on the machine's load, so the client waits a
        # little longer each time until the server has logged the hang-up (or gives up).
        for pause in (0.2, 0.5, 1.0, 2.0, 4.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /api/auth/register HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"email": '
            )
            await writer.drain()
            await asyncio.sleep(pause)  # an injected wait: the client's own slowness
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if "client_disconnected" in stream.getvalue():
                    break
                await asyncio.sleep(0.05)
            if "client_disconnected" in stream.getvalue():
                break
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            metrics = await response.text()
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
        await runner.cleanup()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    events = {line["event"]: line for line in lines}
    assert "unhandled_error" not in events
    assert events["client_disconnected"]["level"] == "info"
    assert 'route="/api/auth/register",status="499"' in metrics
    assert 'route="/api/auth/register",status="500"' not in metrics
