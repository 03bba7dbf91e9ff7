"""The MongoDB task read model: one document per task, indexed for the API's queries.

It serves reads when Redis cannot, and is the queryable model on a real MongoDB deployment.
Only the lease holder writes it (DESIGN.md §5), so plain replaces by `_id` are safe here; the
version check in `apply_commit` makes a replayed batch change nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from taskflow import names
from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.projections.runtime import LeaseLostError
from taskflow.projections.views import apply_commit, view_document, view_from_document

NAME = "task_views_mongo"
# FerretDB v1.24 hangs (and stays stuck) on one bulk write replacing more than about 100
# existing documents (measured: 100 fine, 110 hangs), so bulk writes go in chunks of this size.
BULK_CHUNK = 50
# Views remembered between batches, so a busy task is not re-read from MongoDB every batch.
CACHE_SIZE = 50_000

PRIORITY_RANK = {"low": 0, "medium": 1, "high": 2, "urgent": 3}


def task_view_indexes() -> list[list[tuple[str, int]]]:
    """The compound indexes behind every filter and sort the list endpoint offers."""
    owner = ("owner_id", ASCENDING)
    live = ("deleted", ASCENDING)
    return [
        [owner, live, ("status", ASCENDING), ("created_at", DESCENDING)],
        [owner, live, ("created_at", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("updated_at", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("due_at", ASCENDING), ("_id", ASCENDING)],
        [owner, live, ("priority_rank", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("tags", ASCENDING)],
        [owner, live, ("terms", ASCENDING)],
    ]


class MongoTaskViews:
    """`Projection` writing task view documents into `task_views_v<version>`."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], version: int = 1) -> None:
        self.name = f"{NAME}_v{version}"
        self.views: AsyncCollection[dict[str, Any]] = db[names.task_views_collection(version)]
        self._checkpoints = db[names.CHECKPOINTS]
        self._leases = db[names.LEASES]
        self._cache: OrderedDict[str, TaskState] = OrderedDict()

    async def setup(self) -> None:
        for keys in task_view_indexes():
            await self.views.create_index(keys)

    async def position(self) -> int:
        doc = await self._checkpoints.find_one({"_id": self.name})
        return int(doc["position"]) if doc else 0

    async def fence(self, term: int) -> None:
        self._cache.clear()  # another holder may have moved the views on since we last held it

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        changed = await self._fold(commits)
        if term and await self._leases.find_one({"_id": f"{self.name}:{term + 1}"}):
            raise LeaseLostError(self.name)
        for start in range(0, len(changed), BULK_CHUNK):
            await self.views.bulk_write(
                [
                    ReplaceOne({"_id": v.task_id}, _document(v), upsert=True)
                    for v in changed[start : start + BULK_CHUNK]
                ],
                ordered=False,
            )
        await self._checkpoints.replace_one(
            {"_id": self.name},
            {"position": commits[-1].position, "term": term, "at": datetime.now(UTC)},
            upsert=True,
        )

    async def _fold(self, commits: Sequence[Commit]) -> list[TaskState]:
        task_commits = [c for c in commits if not c.is_gap and c.stream_id.startswith("task-")]
        await self._load(_to_look_up(task_commits, self._cache))
        changed: dict[str, TaskState] = {}
        for commit in task_commits:
            task_id = commit.stream_id.removeprefix("task-")
            before = self._cache.get(task_id)
            after = apply_commit(before, commit)
            if after is not None and after is not before:
                self._remember(after)
                changed[task_id] = after
        return list(changed.values())

    async def _load(self, task_ids: list[str]) -> None:
        if task_ids:
            async for doc in self.views.find({"_id": {"$in": task_ids}}):
                self._remember(view_from_document(doc))

    def _remember(self, view: TaskState) -> None:
        self._cache[view.task_id] = view
        self._cache.move_to_end(view.task_id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


def _to_look_up(task_commits: Sequence[Commit], cache: OrderedDict[str, TaskState]) -> list[str]:
    """Tasks whose stored view the batch needs: not cached, and not created in this batch.

    A stream whose first commit here starts at version 1 is a creation; there is nothing to
    read yet, and on FerretDB the `$in` lookup scans the whole collection (DESIGN.md §9).
    """
    first: dict[str, int] = {}
    for commit in task_commits:
        first.setdefault(commit.stream_id.removeprefix("task-"), commit.first_version)
    return [task_id for task_id, version in first.items() if version > 1 and task_id not in cache]


def _document(view: TaskState) -> dict[str, Any]:
    doc = view_document(view)
    doc["priority_rank"] = PRIORITY_RANK[view.priority.value]
    return doc
