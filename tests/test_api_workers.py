"""`taskflow serve` with API_WORKERS=2: two processes on one port, one set of metrics, and a
worker that dies is replaced without losing what it counted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from taskflow.auth.tokens import issue_access_token
from taskflow.settings import Settings
from tests.api_support import existing_user
from tests.conftest import closed_port

HEALTH_COUNT = 'taskflow_http_request_duration_seconds_count{method="GET",route="/api/health"'


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = closed_port()
    env = {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "EVENT_LOG_HMAC_KEY": settings.event_log_hmac_key.get_secret_value(),
        "HTTP_PORT": str(port),
        "API_WORKERS": "2",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with (tmp_path / "api.log").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "serve"], env=env, stdout=out, stderr=out
        )
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
    process.wait()


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def _metrics_dir(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next(item for item in environ if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(value.split(b"=", 1)[1].decode())


def _counted_by(metrics: Path) -> set[int]:
    """The workers with a histogram file: those that served a request."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in metrics.glob("histogram_*.db")}


def _exists(path: Path) -> bool:
    return path.exists()


async def _health_count(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith(HEALTH_COUNT)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def _until(condition: object, seconds: float = 30.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


async def test_two_workers_share_the_port_and_the_metrics_and_a_dead_one_is_replaced(
    settings: Settings, server: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, base = server
    # A new connection per request: the kernel spreads them over both workers' accept().
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/api/ready") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        for _ in range(600):
            if await ready():
                break
            await asyncio.sleep(0.05)
        await _until(lambda: len(_workers(process.pid)) == 2)
        first, second = _workers(process.pid)
        metrics = _metrics_dir(process.pid)

        # Commands work through whichever worker takes the connection.
        await existing_user(settings, "worker-user")
        token = issue_access_token(settings, "worker-user", [], datetime.now(UTC)).token
        auth = {"Authorization": f"Bearer {token}"}
        for n in range(6):
            async with http.post(
                f"{base}/api/tasks", json={"title": f"task {n}"}, headers=auth
            ) as response:
                assert response.status == 201, await response.text()

        for _ in range(40):
            async with http.get(f"{base}/api/health") as response:
                assert response.status == 200
        # Both workers served (each keeps its counts in a file named by its pid) ...
        assert _counted_by(metrics) >= {first, second}
        # ... and every scrape, whichever worker answers it, counts every request.
        for _ in range(6):
            assert await _health_count(http, base) == 40

        # A worker killed outright is replaced; what it counted is still counted.
        os.kill(first, signal.SIGKILL)
        await _until(lambda: len(_workers(process.pid)) == 2 and first not in _workers(process.pid))
        for _ in range(600):
            if await ready():
                break
            await asyncio.sleep(0.05)
        async with http.get(f"{base}/api/health") as response:
            assert response.status == 200
        for _ in range(4):
            assert await _health_count(http, base) == 41

    # SIGTERM stops every worker and the server exits 0, removing its metrics directory.
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert not _exists(metrics)
    assert not any(_exists(Path(f"/proc/{pid}")) for pid in (first, second))
