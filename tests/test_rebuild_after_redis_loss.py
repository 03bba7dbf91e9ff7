"""A rebuild after Redis lost the log's settled head and hints still rebuilds the whole log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow import names
from taskflow.bootstrap import ensure_indexes, open_services, projections, rebuild_read_models
from taskflow.commands.runner import Context
from taskflow.commands.task import CreateTask
from taskflow.commands.task_handlers import handle_create_task
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.runtime import catch_up
from taskflow.settings import Settings

TASKS = 12


@pytest.mark.timeout(120)
async def test_rebuild_without_a_settled_head_in_redis_rebuilds_every_task(
    settings: Settings, db: AsyncDatabase[dict[str, object]], redis: Redis
) -> None:
    """With the settled head and hints gone, the rebuilt version still holds every task."""
    async with open_services(settings) as services:
        await ensure_indexes(services)
        owner = uuid.uuid4().hex
        context = Context(actor=owner, request_id=uuid.uuid4().hex, correlation_id="test")
        for i in range(TASKS):
            command = CreateTask(task_id=uuid.uuid4().hex, owner_id=owner, title=f"task {i}")
            await handle_create_task(services.store, command, context, datetime.now(UTC))
        await catch_up(services.store, projections(services))
        hints = [key async for key in redis.scan_iter(match=names.PREFIX + "log:at:*")]
        await redis.delete(names.SETTLED_HEAD, *hints)  # what a Redis restart loses

        result = await rebuild_read_models(services)

        assert result.position == TASKS
        assert await redis.hlen(RedisViewKeys(2).tasks(owner)) == TASKS
        assert await redis.get(names.READ_MODEL_ACTIVE) == b"2"
