"""The Redis task read model: per-owner task views, a search index, counts, overdue dates.

This is the model hot reads are served from (DESIGN.md §6, §9): every read touches only the
asking user's keys, so its cost does not grow with the log. Writes of one batch go in one
MULTI/EXEC guarded by WATCH on the fence, so a process whose lease was taken over cannot write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from taskflow.commands.task import Status, TaskState
from taskflow.events.records import Commit
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.runtime import LeaseLostError
from taskflow.projections.views import apply_commit, search_terms
from taskflow.text import as_text

NAME = "task_views_redis"


@dataclass
class _Change:
    owner: str
    before: TaskState | None
    after: TaskState | None


class RedisTaskViews:
    """`Projection` writing task views into Redis under read-model version `version`."""

    def __init__(self, redis: Redis, version: int = 1) -> None:
        self.name = f"{NAME}_v{version}"
        self._redis = redis
        self.keys = RedisViewKeys(version)

    async def setup(self) -> None:
        return None

    async def position(self) -> int:
        raw = await self._redis.get(self.keys.checkpoint)
        return int(raw) if raw else 0

    async def fence(self, term: int) -> None:
        await self._redis.set(self.keys.fence, term)

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        changes = await self._fold(commits)
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.keys.fence)
                fence = await pipe.get(self.keys.fence)
                if fence is not None and int(fence) > term:
                    raise LeaseLostError(self.name)
                pipe.multi()  # type: ignore[no-untyped-call]
                for task_id, change in changes.items():
                    self._write(pipe, task_id, change)
                for owner in {change.owner for change in changes.values()}:
                    pipe.incr(self.keys.generation(owner))
                pipe.set(self.keys.checkpoint, commits[-1].position)
                await pipe.execute()
            except WatchError:
                raise LeaseLostError(self.name) from None

    async def _fold(self, commits: Sequence[Commit]) -> dict[str, _Change]:
        """Each touched task's view before and after the batch (reads: two round trips)."""
        task_commits = [c for c in commits if not c.is_gap and c.stream_id.startswith("task-")]
        task_ids = list(dict.fromkeys(c.stream_id.removeprefix("task-") for c in task_commits))
        if not task_ids:
            return {}
        owners = dict(
            zip(task_ids, await self._redis.hmget(self.keys.owners, task_ids), strict=True)
        )
        changes: dict[str, _Change] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            known = [(tid, as_text(o)) for tid, o in owners.items() if o is not None]
            for task_id, owner in known:
                pipe.hget(self.keys.tasks(owner), task_id)
            for (task_id, owner), raw in zip(known, await pipe.execute(), strict=True):
                before = TaskState.model_validate_json(raw) if raw else None
                changes[task_id] = _Change(owner, before, before)
        for commit in task_commits:
            task_id = commit.stream_id.removeprefix("task-")
            change = changes.get(task_id)
            after = apply_commit(change.after if change else None, commit)
            if change is None:
                assert after is not None
                change = changes[task_id] = _Change(after.owner_id, None, None)
            change.after = after
        return {tid: c for tid, c in changes.items() if c.after != c.before}

    def _write(self, pipe: Pipeline, task_id: str, change: _Change) -> None:
        after, before, owner = change.after, change.before, change.owner
        assert after is not None
        pipe.hset(self.keys.owners, task_id, owner)
        pipe.hset(self.keys.tasks(owner), task_id, after.model_dump_json())
        old_terms, new_terms = _live_terms(before), _live_terms(after)
        for term in old_terms - new_terms:
            pipe.srem(self.keys.term(owner, term), task_id)
        for term in new_terms - old_terms:
            pipe.sadd(self.keys.term(owner, term), task_id)
        if before is not None and not before.deleted:
            pipe.hincrby(self.keys.counts(owner), before.status.value, -1)
        if not after.deleted:
            pipe.hincrby(self.keys.counts(owner), after.status.value, 1)
        if _open_with_due(after):
            assert after.due_at is not None
            pipe.zadd(self.keys.due(owner), {task_id: after.due_at.timestamp()})
        else:
            pipe.zrem(self.keys.due(owner), task_id)


def _live_terms(view: TaskState | None) -> set[str]:
    return set() if view is None or view.deleted else set(search_terms(view))


def _open_with_due(view: TaskState) -> bool:
    return not view.deleted and view.status is not Status.DONE and view.due_at is not None
