"""SIGTERM: in-flight requests finish, the projector finishes its batch and hands its lease on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from taskflow import names
from taskflow.auth.tokens import issue_access_token
from taskflow.events.mongo_store import MongoEventStore
from taskflow.settings import Settings
from tests.api_support import existing_user
from tests.conftest import closed_port
from tests.workload import write_workload

# The leases one projector takes: the Redis and MongoDB views, and the log seal.
PROJECTIONS = 3


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "EVENT_LOG_HMAC_KEY": settings.event_log_hmac_key.get_secret_value(),
        **extra,
    }


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskflow", *args], env=env, stdout=out, stderr=out
        )


async def test_sigterm_lets_an_in_flight_request_finish(
    settings: Settings, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A request still waiting when SIGTERM arrives gets its full answer; then the API exits 0."""
    port = closed_port()
    env = _env(settings, HTTP_PORT=str(port), READ_YOUR_WRITES_TIMEOUT_SECONDS="2")
    api = _start(["serve"], env, tmp_path / "api.log")
    processes.append(api)
    base = f"http://127.0.0.1:{port}"
    await existing_user(settings, "someone")
    token = issue_access_token(settings, "someone", [], datetime.now(UTC)).token
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{base}/api/ready") as ready:
                    if ready.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        # A read waiting for a position nobody has written: it waits the full 2 s bound.
        slow = asyncio.create_task(
            http.get(
                f"{base}/api/tasks",
                headers={"Authorization": f"Bearer {token}", "X-TaskFlow-Position": "999999"},
            )
        )
        await asyncio.sleep(0.5)
        api.send_signal(signal.SIGTERM)
        response = await slow
        assert response.status == 200
        assert response.headers["X-TaskFlow-Stale"] == "true"
        assert (await response.json())["items"] == []
    assert await asyncio.to_thread(api.wait, 15) == 0


async def test_sigterm_finishes_the_batch_and_releases_the_lease(
    settings: Settings,
    store: MongoEventStore,
    db: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """A projector stopped mid-backlog exits 0 and lets a standby take over at once."""
    await write_workload(store, tasks=100, changes=900)
    projector = _start(["project"], _env(settings, LEASE_TTL_SECONDS="30"), tmp_path / "p.log")
    processes.append(projector)
    leases = db[names.LEASES]
    for _ in range(200):
        if await leases.count_documents({}) == PROJECTIONS:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    projector.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(projector.wait, 30) == 0
    now = datetime.now(UTC)
    for lease in await leases.find({}).to_list():
        assert lease["expires_at"] <= now  # released, not left to lapse for 30 s
    standby = _start(["project"], _env(settings), tmp_path / "standby.log")
    processes.append(standby)
    for _ in range(400):
        if await leases.count_documents({"term": 2}) == PROJECTIONS:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the standby did not take the released leases over")
