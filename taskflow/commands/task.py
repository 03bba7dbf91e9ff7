"""The task aggregate: its state, its commands, and the pure `decide`/`evolve` functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from taskflow.commands.errors import (
    InvalidCommandError,
    TaskAlreadyExistsError,
    TaskDeletedError,
    TaskNotDeletedError,
    TaskNotFoundError,
)
from taskflow.events.task_events import (
    TaskCreated,
    TaskDeleted,
    TaskDescriptionChanged,
    TaskDueDateCleared,
    TaskDueDateSet,
    TaskEvent,
    TaskPriorityChanged,
    TaskRenamed,
    TaskRestored,
    TaskStatusChanged,
    TaskTagged,
    TaskUntagged,
)
from taskflow.events.task_values import (
    Description,
    DueAt,
    EntityId,
    Priority,
    Status,
    Tag,
    Tags,
    Title,
    normalize_tag,
)

__all__ = [
    "ChangeTask",
    "CreateTask",
    "DeleteTask",
    "Description",
    "DueAt",
    "Priority",
    "RestoreTask",
    "Status",
    "Tag",
    "Tags",
    "TaskChanges",
    "TaskCommand",
    "TaskFields",
    "TaskState",
    "Title",
    "decide",
    "evolve",
    "fold",
    "normalize_tag",
]


class TaskState(BaseModel):
    """A task as its events describe it; `version` counts the events folded into it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    owner_id: str
    title: str
    description: str
    status: Status
    priority: Priority
    due_at: datetime | None
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    deleted: bool
    version: int


class _TaskCommand(BaseModel):
    """An intention aimed at one task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: EntityId


class TaskFields(BaseModel):
    """What a client sets on a new task; the one list shared by the command and the API body."""

    title: Title
    description: Description = ""
    status: Status = Status.TODO
    priority: Priority = Priority.MEDIUM
    due_at: DueAt | None = None
    tags: Tags = ()


class TaskChanges(BaseModel):
    """The fields a change may give; a field not given stays as it is (RFC 7396 merge patch).

    "Given" means present in `model_fields_set`. `null` removes an optional field's value:
    `due_at=None` clears the due date, and `description` and `tags` given as None become their
    empty values ("" and ()), what a task created without them holds. `title`, `status` and
    `priority` always have a value, so a null for one of them is refused, naming it. `tags`,
    when given, is the complete new set of tags.
    """

    title: Title | None = None
    description: Description | None = None
    status: Status | None = None
    priority: Priority | None = None
    due_at: DueAt | None = None
    tags: Tags | None = None

    @field_validator("title", "status", "priority", mode="before")
    @classmethod
    def _required_is_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null: a task always has one (leave it out to keep it)")
        return value

    @field_validator("description", "tags", mode="before")
    @classmethod
    def _null_clears(cls, value: Any, info: ValidationInfo) -> Any:
        # The value a task created without the field holds: TaskFields' default.
        if value is None and info.field_name is not None:
            return TaskFields.model_fields[info.field_name].default
        return value


class CreateTask(_TaskCommand, TaskFields):
    """Create a task owned by `owner_id`."""

    owner_id: EntityId


class ChangeTask(_TaskCommand, TaskChanges):
    """Change the fields that are given (TaskChanges) of one task."""


class DeleteTask(_TaskCommand):
    """Delete a task; it can be restored later."""


class RestoreTask(_TaskCommand):
    """Bring a deleted task back."""


TaskCommand = CreateTask | ChangeTask | DeleteTask | RestoreTask


def decide(state: TaskState | None, command: TaskCommand, now: datetime) -> list[TaskEvent]:
    """The events that `command` causes on `state` at `now`; a DomainError if it is refused."""
    if isinstance(command, CreateTask):
        return _create(state, command, now)
    if state is None:
        raise TaskNotFoundError(command.task_id)
    if command.task_id != state.task_id:
        raise InvalidCommandError("task_id", "does not match the task the command was sent to")
    if isinstance(command, RestoreTask):
        return _restore(state, now)
    if state.deleted:
        raise TaskDeletedError(state.task_id)
    if isinstance(command, DeleteTask):
        return [TaskDeleted(task_id=state.task_id, occurred_at=now)]
    return [event for rule in _CHANGE_RULES for event in rule(state, command, now)]


def _create(state: TaskState | None, command: CreateTask, now: datetime) -> list[TaskEvent]:
    if state is not None:
        raise TaskAlreadyExistsError(command.task_id)
    return [TaskCreated(occurred_at=now, **command.model_dump())]


def _restore(state: TaskState, now: datetime) -> list[TaskEvent]:
    if not state.deleted:
        raise TaskNotDeletedError(state.task_id)
    return [TaskRestored(task_id=state.task_id, occurred_at=now)]


# One rule per field of ChangeTask; each returns the events for its field, [] when unchanged.
_ChangeRule = Callable[[TaskState, ChangeTask, datetime], list[TaskEvent]]


def _rename(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    if command.title is None or command.title == state.title:
        return []
    return [TaskRenamed(task_id=state.task_id, occurred_at=now, title=command.title)]


def _describe(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    new = command.description
    if new is None or new == state.description:
        return []
    return [TaskDescriptionChanged(task_id=state.task_id, occurred_at=now, description=new)]


def _move(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    if command.status is None or command.status == state.status:
        return []
    return [
        TaskStatusChanged(
            task_id=state.task_id,
            occurred_at=now,
            status=command.status,
            previous_status=state.status,
        )
    ]


def _prioritise(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    if command.priority is None or command.priority == state.priority:
        return []
    return [TaskPriorityChanged(task_id=state.task_id, occurred_at=now, priority=command.priority)]


def _schedule(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    due_at = command.due_at
    if "due_at" not in command.model_fields_set or due_at == state.due_at:
        return []
    if due_at is None:
        return [TaskDueDateCleared(task_id=state.task_id, occurred_at=now)]
    return [TaskDueDateSet(task_id=state.task_id, occurred_at=now, due_at=due_at)]


def _retag(state: TaskState, command: ChangeTask, now: datetime) -> list[TaskEvent]:
    if command.tags is None:
        return []
    added = tuple(tag for tag in command.tags if tag not in state.tags)
    removed = tuple(tag for tag in state.tags if tag not in command.tags)
    # Untag before tag, so that no intermediate state ever holds more than the tag limit.
    events: list[TaskEvent] = []
    if removed:
        events.append(TaskUntagged(task_id=state.task_id, occurred_at=now, tags=removed))
    if added:
        events.append(TaskTagged(task_id=state.task_id, occurred_at=now, tags=added))
    return events


_CHANGE_RULES: tuple[_ChangeRule, ...] = (_rename, _describe, _move, _prioritise, _schedule, _retag)


def evolve(state: TaskState | None, event: TaskEvent) -> TaskState:
    """The state after `event`; ValueError for an event that cannot follow `state`."""
    if isinstance(event, TaskCreated):
        return _created(state, event)
    if state is None:
        raise ValueError(f"{event.event_type} cannot come before TaskCreated")
    update = {**_changes(state, event), "updated_at": event.occurred_at}
    return state.model_copy(update={**update, "version": state.version + 1})


def _created(state: TaskState | None, event: TaskCreated) -> TaskState:
    if state is not None:
        raise ValueError(f"task {event.task_id!r} is created twice")
    return TaskState(
        **event.model_dump(exclude={"occurred_at"}),
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
        deleted=False,
        version=1,
    )


def _changes(state: TaskState, event: TaskEvent) -> dict[str, Any]:
    """The fields that `event` sets on `state`."""
    match event:
        case TaskRenamed(title=title):
            return {"title": title}
        case TaskDescriptionChanged(description=description):
            return {"description": description}
        case TaskStatusChanged(status=status):
            return {"status": status}
        case TaskPriorityChanged(priority=priority):
            return {"priority": priority}
        case TaskDueDateSet(due_at=due_at):
            return {"due_at": due_at}
        case TaskDueDateCleared():
            return {"due_at": None}
        case TaskTagged(tags=tags):
            return {"tags": tuple(dict.fromkeys(state.tags + tags))}
        case TaskUntagged(tags=tags):
            return {"tags": tuple(t for t in state.tags if t not in tags)}
        case TaskDeleted():
            return {"deleted": True}
        case TaskRestored():
            return {"deleted": False}
    raise TypeError(f"the task aggregate does not know {type(event).__name__}")


def fold(events: Iterable[TaskEvent], state: TaskState | None = None) -> TaskState | None:
    """The state after `events`, starting from `state` (None, or a snapshot)."""
    return functools.reduce(evolve, events, state)
