"""A realistic stream of task commands, sent through the real command handlers."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from taskflow.commands.aggregates import TASK
from taskflow.commands.runner import Context, execute
from taskflow.commands.task import (
    ChangeTask,
    CreateTask,
    DeleteTask,
    Priority,
    RestoreTask,
    Status,
    TaskCommand,
)
from taskflow.events.store import EventStore

WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "launch", "review", "bug"]


async def write_workload(
    store: EventStore,
    *,
    tasks: int,
    changes: int,
    owners: int = 5,
    seed: int = 7,
    concurrency: int = 8,
) -> list[str]:
    """Create `tasks` tasks across `owners` users, then apply `changes` random changes."""
    rng = random.Random(seed)
    users = [uuid.uuid4().hex for _ in range(owners)]
    ids = [uuid.uuid4().hex for _ in range(tasks)]
    gate = asyncio.Semaphore(concurrency)

    async def send(task_id: str, owner: str, command: TaskCommand) -> None:
        async with gate:
            context = Context(actor=owner, request_id=uuid.uuid4().hex, correlation_id="workload")
            await execute(store, TASK, task_id, command, context, datetime.now(UTC))

    owner_of = {task_id: rng.choice(users) for task_id in ids}
    await asyncio.gather(
        *(
            send(
                task_id,
                owner_of[task_id],
                CreateTask(
                    task_id=task_id,
                    owner_id=owner_of[task_id],
                    title=" ".join(rng.sample(WORDS, 2)),
                    tags=tuple(rng.sample(WORDS, 2)),
                ),
            )
            for task_id in ids
        )
    )
    deleted: set[str] = set()
    commands = []
    for _ in range(changes):
        task_id = rng.choice(ids)
        commands.append((task_id, _random_change(rng, task_id, deleted)))
    # Changes to one task are sent in order; different tasks interleave concurrently.
    by_task: dict[str, list[TaskCommand]] = {}
    for task_id, command in commands:
        by_task.setdefault(task_id, []).append(command)

    async def run_task(task_id: str) -> None:
        for command in by_task[task_id]:
            await send(task_id, owner_of[task_id], command)

    await asyncio.gather(*(run_task(task_id) for task_id in by_task))
    return ids


def _random_change(rng: random.Random, task_id: str, deleted: set[str]) -> TaskCommand:
    if task_id in deleted:
        deleted.discard(task_id)
        return RestoreTask(task_id=task_id)
    roll = rng.random()
    if roll < 0.05:
        deleted.add(task_id)
        return DeleteTask(task_id=task_id)
    if roll < 0.35:
        return ChangeTask(task_id=task_id, status=rng.choice(list(Status)))
    if roll < 0.55:
        return ChangeTask(task_id=task_id, priority=rng.choice(list(Priority)))
    if roll < 0.7:
        return ChangeTask(task_id=task_id, tags=tuple(rng.sample(WORDS, rng.randint(0, 3))))
    if roll < 0.85:
        due = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=rng.randint(-500, 5000))
        return ChangeTask(task_id=task_id, due_at=due)
    return ChangeTask(task_id=task_id, title=" ".join(rng.sample(WORDS, 3)))
