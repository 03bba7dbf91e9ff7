"""Request and response shapes of the task endpoints: only client-settable fields go in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskflow.api.contracts import Shape
from taskflow.commands.task import Status, TaskChanges, TaskFields, TaskState


class _Body(BaseModel):
    # Unknown fields (owner_id, version, "$where", dotted keys...) are refused, never ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateTaskBody(_Body, TaskFields):
    """A new task: only these fields; the server sets its id, owner and times."""


# What a merge patch's null does to each field (TaskChanges), as the OpenAPI document says it.
_NULL_CLEARS = {
    "description": 'null clears the description (to "")',
    "due_at": "null clears the due date",
    "tags": "null removes every tag (as [] does)",
}
_NOT_NULL = "a task always has one: null is refused (422 naming the field)"


def _merge_patch_schema(schema: dict[str, Any]) -> None:
    """Null allowed only where it clears a field; no defaults (a field left out stays)."""
    for name, field in schema["properties"].items():
        field.pop("default", None)
        if name in _NULL_CLEARS:
            field["description"] = _NULL_CLEARS[name]
            continue
        [branch] = [b for b in field.pop("anyOf") if b != {"type": "null"}]
        field.update(branch)
        field["description"] = _NOT_NULL


class PatchTaskBody(_Body, TaskChanges):
    """A JSON merge patch (RFC 7396): a field left out stays; null clears an optional one."""

    model_config = ConfigDict(json_schema_extra=_merge_patch_schema)


class TaskOut(TaskState):
    """A task as the API shows it."""

    # TaskState's fields as they are, but for these three: the id is shown as `id`, and the
    # owner and the deleted flag not at all (a TaskSnapshot adds `deleted`; the trash holds
    # deleted tasks only). A response is never parsed from a client, and its schema stays open
    # to fields added later: extra fields are ignored, not forbidden as in TaskState.
    model_config = ConfigDict(extra="ignore", serialize_by_alias=True)

    task_id: str = Field(serialization_alias="id")
    owner_id: str = Field(exclude=True)
    deleted: bool = Field(exclude=True)

    @classmethod
    def of(cls, state: TaskState) -> TaskOut:
        return cls.model_validate(state.model_dump())


class TaskPage(Shape):
    """One page of the caller's tasks."""

    items: list[TaskOut]
    next: str | None = Field(description="pass as `next` for the following page; null at the end")


class TaskSnapshot(TaskOut):
    """A task as it was at `as_of` or at `version`, folded from the event log."""

    model_config = ConfigDict(extra="forbid")

    deleted: bool


class TaskStats(Shape):
    """The caller's live tasks counted by status, and how many are overdue."""

    by_status: dict[Status, int]
    overdue: int


class TagCount(Shape):
    """A tag and how many of the caller's live tasks carry it."""

    tag: str
    count: int = Field(ge=1)


class TagList(Shape):
    """The caller's tags, most used first (for autocomplete)."""

    items: list[TagCount]


# (the name TaskOut shows, TaskState's name) of each field TaskOut shows, in its order.
_OUT_FIELDS = tuple(
    (field.serialization_alias or name, name)
    for name, field in TaskOut.model_fields.items()
    if not field.exclude
)


def task_out_json(view: Mapping[str, Any]) -> dict[str, Any]:
    """`TaskOut.of(state).model_dump(mode="json")` from `state.model_dump(mode="json")`.

    The read model stores views in that JSON form, so a read renames one field and drops two
    instead of validating a `TaskState` and building a `TaskOut` (about a tenth of a cached
    read's CPU). tests/test_task_schemas.py checks the two agree for any task.
    """
    return {shown: view[name] for shown, name in _OUT_FIELDS}
