"""The command runner against the real store: cached state may lag, decisions may not."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from taskflow import names
from taskflow.commands.aggregates import TASK
from taskflow.commands.errors import TaskDeletedError
from taskflow.commands.runner import Context, PreconditionFailedError, execute, load
from taskflow.commands.task import ChangeTask, CreateTask, DeleteTask, Status
from taskflow.events.mongo_store import MongoEventStore


def ctx() -> Context:
    return Context(actor="owner", request_id=uuid.uuid4().hex, correlation_id="c")


async def test_a_rolled_back_snapshot_cannot_let_a_refused_command_through(
    store: MongoEventStore, redis: Redis
) -> None:
    """With the cached head rolled back to before a delete, a change is still refused."""
    task_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    await execute(
        store, TASK, task_id, CreateTask(task_id=task_id, owner_id="owner", title="t"), ctx(), now
    )
    key = names.stream_head_key(f"task-{task_id}")
    stale = await redis.hgetall(key)  # version 1, live task, with its snapshot
    await execute(store, TASK, task_id, DeleteTask(task_id=task_id), ctx(), now)
    await redis.delete(key)
    for field, value in stale.items():  # the cache now claims the task is live at version 1
        await redis.hset(key, field, value)
    with pytest.raises(TaskDeletedError):
        await execute(store, TASK, task_id, ChangeTask(task_id=task_id, title="x"), ctx(), now)
    with pytest.raises(PreconditionFailedError) as caught:
        await execute(
            store,
            TASK,
            task_id,
            ChangeTask(task_id=task_id, title="x"),
            ctx(),
            now,
            expected_version=1,
        )
    assert caught.value.current == 2
    state, version = await load(store, TASK, f"task-{task_id}", fresh=True)
    assert state is not None
    assert (state.deleted, version) == (True, 2)


async def test_commands_stay_correct_when_cache_writes_are_lost(
    store: MongoEventStore, redis: Redis
) -> None:
    """Dropping every cached head after each write only costs reloads, never wrong versions."""
    task_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    await execute(
        store, TASK, task_id, CreateTask(task_id=task_id, owner_id="owner", title="t"), ctx(), now
    )
    for status in (Status.IN_PROGRESS, Status.DONE, Status.TODO):
        await redis.delete(names.stream_head_key(f"task-{task_id}"))
        outcome = await execute(
            store, TASK, task_id, ChangeTask(task_id=task_id, status=status), ctx(), now
        )
        assert outcome.state is not None
        assert outcome.state.status is status
    commits = await store.read_stream(f"task-{task_id}")
    assert [c.first_version for c in commits] == [1, 2, 3, 4]
    assert await store.verify(f"task-{task_id}") is None


async def test_a_change_reads_the_cached_head_once(
    store: MongoEventStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner hands the head it loaded to `append`, which does not read it again."""
    task_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    await execute(
        store, TASK, task_id, CreateTask(task_id=task_id, owner_id="owner", title="t"), ctx(), now
    )
    # Counted on the store's connection: the server's command statistics also count the other
    # pytest processes' commands (one Redis server, a logical database each).
    head_reads: list[tuple[Any, ...]] = []
    execute_one = store.hot.execute

    def counted(*args: Any) -> Any:
        if args[0] == "HMGET":
            head_reads.append(args)
        return execute_one(*args)

    monkeypatch.setattr(store.hot, "execute", counted)
    await execute(store, TASK, task_id, ChangeTask(task_id=task_id, title="x"), ctx(), now)
    assert len(head_reads) == 1
    state, version = await load(store, TASK, f"task-{task_id}", fresh=True)
    assert state is not None
    assert (state.title, version) == ("x", 2)
