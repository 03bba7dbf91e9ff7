"""Request and response shapes of the task endpoints: only client-settable fields go in."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from taskflow.commands.task import Priority, Status, TaskChanges, TaskFields, TaskState


class _Body(BaseModel):
    # Unknown fields (owner_id, version, "$where", dotted keys...) are refused, never ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateTaskBody(_Body, TaskFields):
    """A new task: only these fields; the server sets its id, owner and times."""


class PatchTaskBody(_Body, TaskChanges):
    """A JSON merge patch (RFC 7396): fields left out stay; `due_at: null` clears the due date."""


class TaskOut(BaseModel):
    """A task as the API shows it."""

    id: str
    title: str
    description: str
    status: Status
    priority: Priority
    due_at: datetime | None
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, state: TaskState) -> TaskOut:
        return cls(
            id=state.task_id,
            title=state.title,
            description=state.description,
            status=state.status,
            priority=state.priority,
            due_at=state.due_at,
            tags=state.tags,
            created_at=state.created_at,
            updated_at=state.updated_at,
            version=state.version,
        )
