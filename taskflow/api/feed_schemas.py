"""The change feeds' shapes, as the OpenAPI document describes them: each server-sent event, the
JSON of its `data`, and the ticket that opens a feed."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, JsonValue, StringConstraints
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from taskflow.api.contracts import JSON, SCHEMA_REF, Shape, absent
from taskflow.api.task_schemas import TaskOut
from taskflow.events.records import Commit


class TaskChange(Shape):
    """The `data` of a change on GET /api/tasks/changes: one commit's effect on a task."""

    id: str = Field(description="the task's id")
    etag: str = Field(pattern=r'^"[0-9]+"$', description="the task's ETag after the change")
    deleted: bool
    task: TaskOut | None = Field(
        description="as GET /api/tasks/{task_id} shows it; null if deleted"
    )


class StreamReady(Shape):
    """The `data` of `ready`, the first event of a stream."""

    after: int = Field(description="the stream sends what comes after this position")
    heartbeat_seconds: float = Field(description="a comment line comes at least this often")


class StreamReset(Shape):
    """The `data` of `reset`: the feed no longer holds everything after the position asked for."""

    after: int = Field(description="reload (lists, tasks): they hold everything up to here")
    reason: Literal["history-exceeded"]


class StreamEnd(Shape):
    """The `data` of `end`, the last event of a stream the server closes."""

    reason: Literal[
        "shutdown",
        "token-expired",
        "logged-out",
        "auth-unavailable",
        "too-slow",
        "lifetime",
        "resume",
        "unavailable",
    ]
    after: int | None = Field(description="resume after this position (Last-Event-ID)")


# What an event's `data` holds: a change (a TaskChange, a Commit) or a stream's own event.
TASK_CHANGE_DATA: tuple[type[BaseModel], ...] = (TaskChange, StreamReady, StreamReset, StreamEnd)
AUDIT_CHANGE_DATA: tuple[type[BaseModel], ...] = (Commit, StreamReady, StreamReset, StreamEnd)


def _json_data(description: str, payloads: tuple[type[BaseModel], ...]) -> Any:
    """An event's `data` field: JSON text, one of `payloads` (components), as `description`."""
    refs: list[JsonValue] = [
        {"$ref": SCHEMA_REF.format(model=model.__name__)} for model in payloads
    ]
    extra: JsonDict = {"contentMediaType": JSON, "contentSchema": {"anyOf": refs}}
    return Field(description=description, json_schema_extra=extra)


_EVENT_ID = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]


class TaskChangeEvent(Shape):
    """One server-sent event of GET /api/tasks/changes, as EventSource reads it."""

    event: Literal["message", "ready", "reset", "end"] = Field(
        description="`message` (unnamed) for a change"
    )
    id: _EVENT_ID | SkipJsonSchema[None] = absent("a global position")
    data: str = _json_data(
        "JSON: a TaskChange; `ready`: StreamReady; `reset`: StreamReset; `end`: StreamEnd",
        TASK_CHANGE_DATA,
    )
    retry: int | SkipJsonSchema[None] = absent("`ready`: milliseconds to wait before reconnecting")


class AuditChangeEvent(Shape):
    """One server-sent event of GET /api/audit/changes, as EventSource reads it."""

    event: Literal["message", "ready", "reset", "end"] = Field(
        description="`message` (unnamed) for a commit"
    )
    id: _EVENT_ID | SkipJsonSchema[None] = absent("a global position")
    data: str = _json_data(
        "JSON: a Commit; `ready`: StreamReady; `reset`: StreamReset; `end`: StreamEnd",
        AUDIT_CHANGE_DATA,
    )
    retry: int | SkipJsonSchema[None] = absent("`ready`: milliseconds to wait before reconnecting")


class StreamTicket(Shape):
    """A one-time ticket that opens a change feed (`?ticket=`), for EventSource."""

    ticket: str = Field(description="use once, within `expires_in` seconds")
    expires_in: int = Field(description="seconds the ticket waits for its use")
