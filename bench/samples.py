"""Small realistic payloads: one task event, its metadata, and a commit-sized document."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from taskflow.events.codec import commit_to_document, encode_event, to_millis
from taskflow.events.records import Commit, Metadata
from taskflow.events.task_events import TaskRenamed

# A hex HMAC-SHA256, the size of every real commit's `hash` and `prev_hash`.
SAMPLE_HASH = "5f" * 32


def metadata() -> Metadata:
    """What a request adds to each commit: actor, request and correlation ids."""
    return Metadata(actor=uuid.uuid4().hex, request_id=uuid.uuid4().hex, correlation_id="bench")


def small_event(stream_id: str) -> TaskRenamed:
    """One small event: a task renamed."""
    return TaskRenamed(
        task_id=stream_id, occurred_at=datetime.now(UTC), title="Review the quarterly budget"
    )


def commit_document(stream_id: str, version: int, position: int) -> dict[str, Any]:
    """A document of the size and shape `append` stores for `small_event` (for raw inserts)."""
    commit = Commit(
        commit_id=f"{stream_id}:{version}",
        stream_id=stream_id,
        first_version=version,
        last_version=version,
        position=position,
        recorded_at=to_millis(datetime.now(UTC)),
        events=(encode_event(small_event(stream_id), version),),
        metadata=metadata(),
        idempotency=f"~{stream_id}:{version}",
        prev_hash=SAMPLE_HASH if version > 1 else "",
        hash=SAMPLE_HASH,
    )
    return commit_to_document(commit)
