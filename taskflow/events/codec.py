"""The codec: the one place events and commits are converted to and from stored forms.

Stored forms are a BSON document (MongoDB), JSON bytes (Redis hints and caches), and the
canonical bytes the hash chain signs.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import orjson

from taskflow.events.base import DomainEvent, event_class, event_payload
from taskflow.events.records import Commit, StoredEvent
from taskflow.events.sealing import ERASED, SEALED
from taskflow.events.upcasters import upcast


def encode_event(event: DomainEvent, version: int) -> StoredEvent:
    """`event` as it is stored at stream `version`."""
    return StoredEvent(
        type=event.event_type,
        schema_version=event.schema_version,
        version=version,
        data=event_payload(event),
    )


def decode_event(stored: StoredEvent) -> DomainEvent:
    """The current-schema event for `stored`, upcasting old payloads on the way.

    `stored` must be open (sealing.open_event): personal fields of an erased subject, listed
    under `~erased`, decode to erased values, "" for text and () for tags.
    """
    cls = event_class(stored.type)
    if SEALED in stored.data:
        raise ValueError(f"a sealed {stored.type} event must be opened before it is decoded")
    data = upcast(stored.type, stored.schema_version, cls.schema_version, stored.data)
    erased = data.pop(ERASED, None)
    for name in erased or ():
        data[name] = _erased_value(cls.model_fields[name].annotation)
    return cls.model_validate(data)


def current_schema(stored: StoredEvent) -> StoredEvent:
    """`stored` as the current schema writes it: old payloads upcast (what every reader sees;
    a v1 user event's password hash, for one, is gone)."""
    try:
        target = event_class(stored.type).schema_version
    except KeyError:
        return stored
    if stored.schema_version == target:
        return stored
    data = upcast(stored.type, stored.schema_version, target, stored.data)
    return stored.model_copy(update={"schema_version": target, "data": data})


def _erased_value(annotation: Any) -> Any:
    return () if typing.get_origin(annotation) is tuple else ""


def decode_events(commit: Commit) -> list[DomainEvent]:
    return [decode_event(stored) for stored in commit.events]


def to_millis(moment: datetime) -> datetime:
    """`moment` in UTC truncated to milliseconds: the precision BSON dates keep."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def commit_to_document(commit: Commit) -> dict[str, Any]:
    """The BSON document stored for `commit` (`_id` is the commit id)."""
    doc = commit.model_dump(exclude={"commit_id"})
    doc["_id"] = commit.commit_id
    doc["events"] = [event.model_dump() for event in commit.events]
    return doc


def commit_from_document(doc: dict[str, Any]) -> Commit:
    fields = dict(doc)
    fields["commit_id"] = fields.pop("_id")
    fields["recorded_at"] = fields["recorded_at"].astimezone(UTC)
    return Commit.model_validate(fields)


def commit_to_json(commit: Commit) -> bytes:
    return orjson.dumps(commit.model_dump(mode="json"))


def commit_from_json(raw: bytes | str) -> Commit:
    return Commit.model_validate_json(raw)


def canonical_bytes(commit: Commit) -> bytes:
    """The bytes the hash chain signs: everything that describes the commit but its position.

    The position is left out on purpose: a writer whose position was sealed retries with a new
    one (docs/event-log.md), and the global order is guarded by the unique index, not the chain.
    """
    body = {
        "stream_id": commit.stream_id,
        "first_version": commit.first_version,
        "last_version": commit.last_version,
        "recorded_at": _iso_millis(commit.recorded_at),
        "events": [event.model_dump(mode="json") for event in commit.events],
        "metadata": commit.metadata.model_dump(mode="json") if commit.metadata else None,
        "idempotency": commit.idempotency,
        "prev_hash": commit.prev_hash,
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _iso_millis(moment: datetime) -> str:
    return to_millis(moment).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
