"""The events of the task aggregate, each under a stable type name."""

from __future__ import annotations

from taskflow.events.base import DomainEvent, register_event
from taskflow.events.task_values import DueAt, Priority, Status, UtcDatetime

# Payload text fields are plain `str`, not the command-side `Title`/`Tag` types: an event is a fact
# already accepted, and tightening an input rule later must not make stored history unreadable or
# silently re-normalise it. Shape changes go through schema versions and upcasters instead.


class TaskEvent(DomainEvent):
    """Something that happened to one task, at `occurred_at` (UTC)."""

    task_id: str
    occurred_at: UtcDatetime


@register_event
class TaskCreated(TaskEvent):
    """A task came into existence with these initial values."""

    event_type = "TaskCreated"
    personal_fields = ("title", "description", "tags")

    owner_id: str
    title: str
    description: str
    status: Status
    priority: Priority
    due_at: DueAt | None
    tags: tuple[str, ...]


@register_event
class TaskRenamed(TaskEvent):
    """The task's title changed."""

    event_type = "TaskRenamed"
    personal_fields = ("title",)

    title: str


@register_event
class TaskDescriptionChanged(TaskEvent):
    """The task's description changed."""

    event_type = "TaskDescriptionChanged"
    personal_fields = ("description",)

    description: str


@register_event
class TaskStatusChanged(TaskEvent):
    """The task moved from `previous_status` to `status`."""

    event_type = "TaskStatusChanged"

    status: Status
    previous_status: Status


@register_event
class TaskPriorityChanged(TaskEvent):
    """The task's priority changed."""

    event_type = "TaskPriorityChanged"

    priority: Priority


@register_event
class TaskDueDateSet(TaskEvent):
    """The task got a (new) due date."""

    event_type = "TaskDueDateSet"

    due_at: DueAt


@register_event
class TaskDueDateCleared(TaskEvent):
    """The task no longer has a due date."""

    event_type = "TaskDueDateCleared"


@register_event
class TaskTagged(TaskEvent):
    """These tags were added to the task, after the ones it already had."""

    event_type = "TaskTagged"
    personal_fields = ("tags",)

    tags: tuple[str, ...]


@register_event
class TaskUntagged(TaskEvent):
    """These tags were removed from the task."""

    event_type = "TaskUntagged"
    personal_fields = ("tags",)

    tags: tuple[str, ...]


@register_event
class TaskDeleted(TaskEvent):
    """The task was deleted; from now on it accepts only a restore."""

    event_type = "TaskDeleted"


@register_event
class TaskRestored(TaskEvent):
    """A deleted task was brought back as it was."""

    event_type = "TaskRestored"
