"""Gaps: the no-op documents that settle positions no commit will ever use (docs/event-log.md)."""

from __future__ import annotations

from datetime import datetime

from taskflow.events.codec import to_millis
from taskflow.events.records import GAP_STREAM, Commit


def make_gap(position: int, now: datetime) -> Commit:
    """The document that settles `position` when nobody committed there."""
    commit_id = f"~gap:{position}"
    return Commit(
        kind="gap",
        commit_id=commit_id,
        stream_id=GAP_STREAM,
        first_version=position,
        last_version=position,
        position=position,
        recorded_at=to_millis(now),
        idempotency=commit_id,
    )
