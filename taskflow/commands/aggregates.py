"""The aggregate types TaskFlow runs commands against."""

from __future__ import annotations

from taskflow.commands import task, user
from taskflow.commands.runner import Aggregate
from taskflow.events.task_events import TaskEvent
from taskflow.events.user_events import UserEvent

# A task's personal data (title, description, tags) is its owner's; a user's is their own.
TASK: Aggregate[task.TaskState, task.TaskCommand, TaskEvent] = Aggregate(
    name="task",
    state_type=task.TaskState,
    decide=task.decide,
    evolve=task.evolve,
    subject=lambda state: state.owner_id,
)
USER: Aggregate[user.UserState, user.UserCommand, UserEvent] = Aggregate(
    name="user",
    state_type=user.UserState,
    decide=user.decide,
    evolve=user.evolve,
    subject=lambda state: state.user_id,
)
