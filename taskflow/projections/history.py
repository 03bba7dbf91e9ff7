"""Audit queries answered from the log itself: a task's history, its state at a past point."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskflow.commands.aggregates import TASK
from taskflow.commands.task import TaskState
from taskflow.events.codec import decode_event
from taskflow.events.records import Commit
from taskflow.events.store import EventStore

_NOT_CHANGES = {"task_id", "occurred_at"}
# The most gaps one page of the feed passes over. A run of gaps is short (a writer's lost
# conflict, a sealed hole, at most one block of 1,000 unused positions after the counter was
# re-seeded: positions.py), so a page holds `limit` commits or reaches the head; this bounds
# what one request reads all the same.
FEED_GAPS_MAX = 10_000


class TaskHistoryEntry(BaseModel):
    """One event of a task: who caused it, when, and what it changed."""

    # Its JSON (model_dump(mode="json")) is what GET /api/tasks/{id}/history answers, and its
    # schema is that answer's contract in the OpenAPI document.
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    type: str = Field(description="the event's stable type name")
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    request_id: str
    correlation_id: str
    changes: dict[str, Any]


def history_of(commits: list[Commit]) -> list[TaskHistoryEntry]:
    """Every event of the commits, in version order, with who caused it and what it changed."""
    entries = []
    for commit in commits:
        meta = commit.metadata
        for stored in commit.events:
            event = decode_event(stored)
            payload = event.model_dump(mode="json")
            entries.append(
                TaskHistoryEntry(
                    version=stored.version,
                    type=stored.type,
                    occurred_at=getattr(event, "occurred_at", commit.recorded_at),
                    recorded_at=commit.recorded_at,
                    actor=meta.actor if meta else "",
                    request_id=meta.request_id if meta else "",
                    correlation_id=meta.correlation_id if meta else "",
                    changes={k: v for k, v in payload.items() if k not in _NOT_CHANGES},
                )
            )
    return entries


async def task_history(store: EventStore, task_id: str) -> list[TaskHistoryEntry]:
    return history_of(await store.read_stream(TASK.stream_id(task_id)))


async def task_as_of(
    store: EventStore, task_id: str, *, moment: datetime | None = None, version: int | None = None
) -> TaskState | None:
    """The task folded from the log up to a moment or a version (never from a read model)."""
    commits = await store.read_stream(TASK.stream_id(task_id), to_version=version, as_of=moment)
    return TASK.fold(commits)


@dataclass(frozen=True)
class FeedPage:
    """Commits of the global log after a position, and where the next page starts."""

    commits: list[Commit]
    next_after: int  # the last position this page accounts for, gaps included
    end: bool  # True: nothing after `next_after` is settled yet (the settled head)


async def feed_page(store: EventStore, after: int, limit: int) -> FeedPage:
    """Up to `limit` commits after `after`, passing over gaps, until the log's settled head.

    Gaps are never counted as items, so a page is empty only at the head. The first commit
    past a full page is read to know that the page is not the last (its gaps are passed over
    with it); a read that runs out is the settled head: `end`. One streamed read from `after`
    (hints from Redis, else one pass over MongoDB), closed as soon as the page is full.
    """
    commits: list[Commit] = []
    last, gaps = after, 0
    async with contextlib.aclosing(store.read_all(after)) as log:
        async for commit in log:
            if commit.is_gap:
                gaps += 1
                if gaps > FEED_GAPS_MAX:
                    return FeedPage(commits, last, end=False)
            elif len(commits) == limit:
                return FeedPage(commits, last, end=False)
            else:
                commits.append(commit)
            last = commit.position
    return FeedPage(commits, last, end=True)
