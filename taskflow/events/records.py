"""What the event log stores: commits of one or more events, gaps, and their metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GAP_STREAM = "~gap"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Metadata(Frozen):
    """Who asked for a commit and in what context; supplied by the command side."""

    actor: str
    request_id: str
    correlation_id: str
    causation_id: str | None = None
    # Identifies the command behind an Idempotency-Key, so a reused key with another command fails.
    fingerprint: str = ""


class StoredEvent(Frozen):
    """One event as stored: stable type name, schema version, stream version, JSON payload."""

    type: str
    schema_version: int
    version: int
    data: dict[str, Any]


class Commit(Frozen):
    """One document of the log: the events of one append, stored all-or-nothing.

    A `gap` is the no-op document that fills a position nobody committed (docs/event-log.md).
    """

    kind: Literal["commit", "gap"] = "commit"
    commit_id: str
    stream_id: str
    first_version: int
    last_version: int
    position: int
    recorded_at: datetime
    events: tuple[StoredEvent, ...] = ()
    metadata: Metadata | None = None
    idempotency: str
    prev_hash: str = ""
    hash: str = ""

    @property
    def is_gap(self) -> bool:
        return self.kind == "gap"


class AppendResult(Frozen):
    """The outcome of an append: the stream's new version and the commit's global position."""

    stream_id: str
    first_version: int
    version: int
    position: int
    replayed: bool = Field(default=False, description="an Idempotency-Key retry: nothing written")


class StreamHead(Frozen):
    """The last committed version of a stream and its chain hash, plus an optional snapshot."""

    version: int
    hash: str
    snapshot: bytes | None = None


class BrokenLink(Frozen):
    """The first place where a stream's hash chain or version sequence does not hold."""

    stream_id: str
    version: int
    position: int
    reason: str
