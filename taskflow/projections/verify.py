"""Checks a read model against the log: every task view must equal the fold of its stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from taskflow.commands.task import TaskState
from taskflow.events.store import EventStore
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.views import apply_commit, view_from_document


@dataclass(frozen=True)
class ViewMismatch:
    """One task whose read-model document differs from the fold of its events."""

    model: str
    task_id: str
    expected_version: int | None
    found_version: int | None


async def fold_all_tasks(store: EventStore, up_to: int | None = None) -> dict[str, TaskState]:
    """Every task's state folded from the log in one streamed pass (up to a position)."""
    states: dict[str, TaskState] = {}
    async for commit in store.read_all(0):
        if up_to is not None and commit.position > up_to:
            break
        if commit.is_gap or not commit.stream_id.startswith("task-"):
            continue
        task_id = commit.stream_id.removeprefix("task-")
        folded = apply_commit(states.get(task_id), commit)
        if folded is not None:
            states[task_id] = folded
    return states


async def redis_views(redis: Redis, keys: RedisViewKeys) -> AsyncIterator[TaskState]:
    owners = await redis.hgetall(keys.owners)
    for task_id, owner in owners.items():
        raw = await redis.hget(keys.tasks(_text(owner)), _text(task_id))
        if raw:
            yield TaskState.model_validate_json(raw)


async def mongo_views(views: AsyncCollection[dict[str, Any]]) -> AsyncIterator[TaskState]:
    async for doc in views.find({}):
        yield view_from_document(doc)


async def compare(
    model: str, expected: dict[str, TaskState], found: AsyncIterator[TaskState]
) -> list[ViewMismatch]:
    """Mismatches between folded states and a read model's views (missing and extra included)."""
    mismatches: list[ViewMismatch] = []
    seen: set[str] = set()
    async for view in found:
        seen.add(view.task_id)
        want = expected.get(view.task_id)
        if want != view:
            mismatches.append(
                ViewMismatch(model, view.task_id, want.version if want else None, view.version)
            )
    for task_id in expected.keys() - seen:
        mismatches.append(ViewMismatch(model, task_id, expected[task_id].version, None))
    return mismatches


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
