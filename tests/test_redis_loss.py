"""Redis losing its data (FLUSHDB, or a restart without persistence) under load: detected, not
taken for an empty system. Real servers and a real projector process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow import names
from taskflow.api.keys import SERVICES
from taskflow.auth.denylist import DenyList
from taskflow.hot_redis import HotRedis
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.verify import verify_read_models
from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import SAME_SITE, Client, ClientFactory, create_task, wait_ready
from tests.fault_tools import (  # noqa: F401 - the fixture import registers it
    TaskflowProcess,
    taskflow_env,
    taskflow_processes_fixture,
    until,
)
from tests.test_faults import projected_to, token

pytestmark = pytest.mark.usefixtures("mongo")  # drops each test's database afterwards
STALE = "X-TaskFlow-Stale"


async def read_everything(
    client: Client, auth: dict[str, str], shown: list[dict[str, Any]], acked: list[dict[str, Any]]
) -> list[str]:
    """What answers a task as missing when it must not: a task every read showed before Redis
    lost its data (`shown`) missing from a read without `X-TaskFlow-Stale`, or any acknowledged
    task missing from a read that carries its write's position (read-your-writes). Reads
    without a position may miss a write the projector has not applied yet, as always."""
    wrong: list[str] = []
    for task in acked:
        url = f"/api/tasks/{task['id']}"
        plain = await client.get(url, headers=auth)
        if task in shown and plain.status != 200 and STALE not in plain.headers:
            wrong.append(f"GET {task['id']}: {plain.status} without {STALE}")
        position = {"X-TaskFlow-Position": str(task["_position"])}
        mine = await client.get(url, headers={**auth, **position})
        if mine.status != 200:
            wrong.append(f"GET {task['id']} after writing it: {mine.status}")
    listed = await client.get("/api/tasks?limit=100", headers=auth)
    ids = {item["id"] for item in (await listed.json())["items"]}
    missing = {task["id"] for task in shown} - ids
    if missing and STALE not in listed.headers:
        wrong.append(f"list misses {len(missing)} tasks without {STALE}")
    stats = await client.get("/api/tasks/stats", headers=auth)
    counted = sum((await stats.json())["by_status"].values())
    if counted < len(shown) and STALE not in stats.headers:
        wrong.append(f"stats count {counted} of {len(shown)} without {STALE}")
    return wrong


@pytest.mark.timeout(300)
async def test_a_flushed_redis_never_answers_a_task_as_missing_unmarked_and_logouts_stay(
    aiohttp_client: ClientFactory,
    settings: Settings,
    redis: Redis,
    taskflow_processes: list[TaskflowProcess],
    tmp_path: Path,
) -> None:
    """FLUSHDB while a projector runs and tasks are written and read.

    From the flush until the Redis views are rebuilt, every read either shows every acknowledged
    task or says `X-TaskFlow-Stale: true` (it is served from the MongoDB views), a read carrying
    a write's position always finds that write, and a logged-out token stays refused: in the
    process that logged it out, and in a second process that never saw the logout. Afterwards
    the Redis views are live again (no stale mark) and equal the log.
    """
    client = await aiohttp_client(create_app(settings))
    other = await aiohttp_client(create_app(settings))  # another API process
    await wait_ready(client)
    await wait_ready(other)
    projector = TaskflowProcess("project", taskflow_env(settings), tmp_path)
    taskflow_processes.append(projector)
    projector.start()
    services = client.app[SERVICES]
    owner = uuid.uuid4().hex
    auth = await token(settings, owner)
    acked = [await create_task(client, auth, title=f"before {i}") for i in range(12)]
    logged_out = await token(settings, owner)
    logout = await client.post("/api/auth/logout", json={}, headers={**SAME_SITE, **logged_out})
    assert logout.status == 204
    await until(lambda: projected_to(services, acked[-1]["_position"]), 60, "the projector")
    live = RedisViewKeys(1).live
    await until(lambda: redis.exists(live), 30, "the Redis views to be live")
    shown = list(acked)
    assert await read_everything(client, auth, shown, acked) == []

    await redis.flushdb()  # Redis lost everything: views, heads, counter, deny list, markers
    wrong: list[str] = []
    refused: list[int] = []
    rounds = 0
    while rounds < 3 or not await redis.exists(live):
        rounds += 1
        acked.append(await create_task(client, auth, title=f"after {rounds}"))
        wrong += await read_everything(client, auth, shown, acked)
        for app in (client, other):
            refused.append((await app.get("/api/tasks", headers=logged_out)).status)
            url = f"/api/tasks/{acked[0]['id']}"
            refused.append((await app.get(url, headers=logged_out)).status)
        assert rounds < 200, "the Redis views never came back"
    assert wrong == []
    assert set(refused) == {401}

    head = acked[-1]["_position"]
    await until(lambda: projected_to(services, head), 60, "the projector to catch up")
    settled = await client.get("/api/tasks?limit=100", headers=auth)
    assert STALE not in settled.headers
    assert {t["id"] for t in acked} <= {item["id"] for item in (await settled.json())["items"]}
    assert await verify_read_models(services, 1) == []
    assert (await other.get("/api/tasks", headers=logged_out)).status == 401


async def test_a_logout_outlives_redis_losing_its_data(
    redis: Redis, hot: HotRedis, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """A process that never saw the logout refuses the token after Redis lost its copy: from
    MongoDB's record until the copy is reloaded, then from Redis again."""
    now = datetime.now(UTC)
    recorded = DenyList(redis, db[names.DENIED_TOKENS], stale_limit=300, hot=hot)
    await recorded.refresh(now)
    await recorded.deny("jti-out", now + timedelta(minutes=5), now)
    await redis.flushdb()

    fresh = DenyList(redis, db[names.DENIED_TOKENS], stale_limit=300, hot=hot)
    assert await fresh.is_denied("jti-out")  # Redis's copy is incomplete: the record answers
    assert not await fresh.is_denied("jti-in")
    assert not await redis.exists(names.DENY_LIST_COMPLETE)
    await fresh.refresh(now)  # what every API process's loop does each second
    assert await redis.exists(names.DENY_LIST_COMPLETE)
    assert await redis.exists(names.denied_jti_key("jti-out"))
    assert fresh.denied_by_copy("jti-out")
    assert await fresh.is_denied("jti-out")
    assert not await fresh.is_denied("jti-in")
