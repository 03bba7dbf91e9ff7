"""The base class of every domain event and the registry that names them."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict


class DomainEvent(BaseModel):
    """A fact that happened to one aggregate: immutable, with a stable type name and schema version.

    Subclasses set `event_type` (never renamed once stored) and `schema_version` (bumped when the
    payload's shape changes, with an upcaster registered for the old version, see `upcasters.py`).
    `personal_fields` name the fields that hold personal data: the store keeps them encrypted
    under the subject's data key (`sealing.py`, docs/privacy.md). `erases_subject` marks the
    event that records the erasure of the user named by its `user_id`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    personal_fields: ClassVar[tuple[str, ...]] = ()
    erases_subject: ClassVar[bool] = False


_REGISTRY: dict[str, type[DomainEvent]] = {}
_E = TypeVar("_E", bound=type[DomainEvent])


def register_event(cls: _E) -> _E:
    """Class decorator: make an event type known to the codec under its stable name."""
    name = cls.event_type
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"event type {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def event_class(event_type: str) -> type[DomainEvent]:
    """The class registered under `event_type`; KeyError for a name nobody registered."""
    return _REGISTRY[event_type]


def registered_events() -> dict[str, type[DomainEvent]]:
    """A copy of the registry, for property tests that cover every event type."""
    return dict(_REGISTRY)


def event_payload(event: DomainEvent) -> dict[str, Any]:
    """The event's fields as JSON-compatible data (datetimes as RFC 3339 strings)."""
    return event.model_dump(mode="json")
