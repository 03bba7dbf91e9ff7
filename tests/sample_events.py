"""Event types that exist only for the event store's contract tests."""

from __future__ import annotations

from taskflow.events.base import DomainEvent, register_event
from taskflow.events.upcasters import Payload, upcaster


@register_event
class NoteWritten(DomainEvent):
    """A test event with one text field."""

    event_type = "test.NoteWritten"
    text: str


@register_event
class NoteTagged(DomainEvent):
    """A test event at schema version 2: v1 stored a single `tag`, v2 a list of `tags`."""

    event_type = "test.NoteTagged"
    schema_version = 2
    tags: list[str]


@upcaster("test.NoteTagged", from_version=1)
def _single_tag_to_list(data: Payload) -> Payload:
    return {"tags": [data.pop("tag")]}
