"""Command handlers of the task aggregate: plain async functions with explicit dependencies."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from taskflow.commands.aggregates import TASK
from taskflow.commands.errors import TaskNotFoundError
from taskflow.commands.runner import Context, Outcome, execute
from taskflow.commands.task import ChangeTask, CreateTask, DeleteTask, RestoreTask, TaskState
from taskflow.events.store import EventStore


def owned_by(
    owner_id: str, task_id: str, *, must_exist: bool
) -> Callable[[TaskState | None], None]:
    """Refuse another owner's task exactly as a missing one: ids leak nothing (docs/design.md)."""

    def check(state: TaskState | None) -> None:
        if (state is None and must_exist) or (state is not None and state.owner_id != owner_id):
            raise TaskNotFoundError(task_id)

    return check


async def handle_create_task(
    store: EventStore, command: CreateTask, context: Context, now: datetime
) -> Outcome[TaskState]:
    return await execute(
        store,
        TASK,
        command.task_id,
        command,
        context,
        now,
        authorize=owned_by(command.owner_id, command.task_id, must_exist=False),
        new_stream=True,  # the API generates task ids; a collision is caught at the append
    )


async def handle_change_task(
    store: EventStore,
    command: ChangeTask | DeleteTask | RestoreTask,
    context: Context,
    now: datetime,
    expected_version: int,
) -> Outcome[TaskState]:
    """Change, delete or restore the actor's task, if it is still at `expected_version`."""
    return await execute(
        store,
        TASK,
        command.task_id,
        command,
        context,
        now,
        expected_version=expected_version,
        authorize=owned_by(context.actor, command.task_id, must_exist=True),
    )
