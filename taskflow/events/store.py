"""The event-store port: what the command side, projectors and auditors need from the log."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Protocol

from taskflow.events.base import DomainEvent
from taskflow.events.records import AppendResult, BrokenLink, Commit, Metadata, StreamHead


class ConcurrencyError(Exception):
    """The stream moved on: another writer appended at the expected version first."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id} is at version {actual}, not {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReusedError(Exception):
    """An Idempotency-Key was sent again with a different command."""


class EventStore(Protocol):
    """The append-only log. Implementations: `MongoEventStore`."""

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        events: Sequence[DomainEvent],
        metadata: Metadata,
        idempotency_key: str | None = None,
        snapshot: bytes | None = None,
        prev_hash: str | None = None,
        subject: str | None = None,
    ) -> AppendResult:
        """Store `events` atomically as versions expected+1..; ConcurrencyError if moved on.

        `prev_hash`: the chain hash at `expected_version`, when the caller has just read the
        head it builds on (saves reading it again; a stale head loses at the unique version).
        `subject`: the user the events' personal fields (and the snapshot) are about; they are
        stored encrypted under that user's data key (docs/privacy.md).
        """
        ...

    async def read_stream(
        self, stream_id: str, to_version: int | None = None, as_of: datetime | None = None
    ) -> list[Commit]:
        """The stream's commits in version order, optionally up to a version or a moment."""
        ...

    async def read_stored(
        self, stream_id: str, to_version: int | None = None, as_of: datetime | None = None
    ) -> list[Commit]:
        """`read_stream` exactly as stored: personal fields sealed, old schemas not upcast."""
        ...

    async def stream_head(self, stream_id: str) -> StreamHead | None:
        """The cached head of a stream (fast; may lag the log, never leads it)."""
        ...

    async def load_head(self, stream_id: str) -> tuple[StreamHead, list[Commit]]:
        """The head read from the log itself, with the commits it was built from."""
        ...

    async def cache_snapshot(
        self, stream_id: str, head: StreamHead, snapshot: bytes, subject: str | None = None
    ) -> None:
        """Remember the state at `head` (folded from the log) beside the cached head."""
        ...

    async def replayed(
        self, actor: str, key: str, fingerprint: str, *, thorough: bool = False
    ) -> AppendResult | None:
        """The original outcome of a command already sent with this Idempotency-Key, if any."""
        ...

    def read_all(
        self, after_position: int, limit: int | None = None
    ) -> AsyncGenerator[Commit, None]:
        """Every settled commit after `after_position` in global order, gaps included.

        A generator, so that a caller who stops early closes it (and its cursor) at once.
        """
        ...

    def read_all_stored(self, after_position: int) -> AsyncGenerator[Commit, None]:
        """`read_all` exactly as stored: personal fields sealed, old schemas not upcast."""
        ...

    def scan(self, after_position: int = 0) -> AsyncGenerator[Commit, None]:
        """Every stored document after a position, read straight from the database."""
        ...

    async def head_position(self) -> int:
        """The highest position up to which every position is settled (commit or gap)."""
        ...

    async def highest_stored_position(self) -> int:
        """The highest position the log holds (0 when empty), read from the log itself: for
        maintenance when Redis lost what tells it cheaply (on FerretDB a sort of the log)."""
        ...

    async def allocated_position(self) -> int | None:
        """The highest position handed out to an appender so far; None when not known (Redis
        lost the counter; the next append or read re-seeds it)."""
        ...

    async def verify(self, stream_id: str) -> BrokenLink | None:
        """The first broken link of one stream's hash chain, or None."""
        ...
