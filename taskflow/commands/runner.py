"""Runs one command against one aggregate: load (cached head first), decide, append.

The cached head in Redis (version, hash, state snapshot) saves re-reading the stream on every
command (docs/design.md, FerretDB). It can lag the log but never lead it, and the append is
guarded by the unique version key, so a stale snapshot only costs a conflict and one reload from
the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from taskflow.commands.errors import DomainError
from taskflow.events.base import DomainEvent
from taskflow.events.codec import decode_events, to_millis
from taskflow.events.records import AppendResult, Commit, Metadata, StreamHead
from taskflow.events.store import ConcurrencyError, EventStore
from taskflow.metrics import COMMANDS

S = TypeVar("S", bound=BaseModel)
C = TypeVar("C")
E = TypeVar("E", bound=DomainEvent)

# Appends retried after a conflict when the client did not pin a version (no If-Match).
CONFLICT_RETRIES = 3
NEW_STREAM = StreamHead(version=0, hash="")


class PreconditionFailedError(Exception):
    """The client's expected version (If-Match) is not the stream's current version."""

    def __init__(self, stream_id: str, expected: int, current: int) -> None:
        super().__init__(f"{stream_id} is at version {current}, not {expected}")
        self.expected = expected
        self.current = current


@dataclass(frozen=True)
class Aggregate(Generic[S, C, E]):
    """An aggregate type: its stream prefix, state model and pure functions.

    `subject` names the user a state's personal data is about: the store encrypts the stream's
    personal fields and snapshots under that user's data key (docs/privacy.md).
    """

    name: str
    state_type: type[S]
    decide: Callable[[S | None, C, datetime], Sequence[E]]
    evolve: Callable[[S | None, E], S]
    subject: Callable[[S], str]

    def stream_id(self, entity_id: str) -> str:
        return f"{self.name}-{entity_id}"

    def owns(self, commit: Commit) -> bool:
        """Whether `commit` is one of this aggregate's (not a gap, not another aggregate's)."""
        return not commit.is_gap and commit.stream_id.startswith(f"{self.name}-")

    def entity_id(self, stream_id: str) -> str:
        """The id of the entity a stream of this aggregate is about (`stream_id`'s inverse)."""
        return stream_id.removeprefix(f"{self.name}-")

    def fold(self, commits: Sequence[Commit]) -> S | None:
        state: S | None = None
        for commit in commits:
            for event in decode_events(commit):
                state = self.evolve(state, event)  # type: ignore[arg-type]
        return state


@dataclass(frozen=True)
class Context:
    """Who sends a command and why: becomes the commit's metadata."""

    actor: str
    request_id: str
    correlation_id: str
    causation_id: str | None = None
    idempotency_key: str | None = None
    fingerprint: str = ""

    def metadata(self) -> Metadata:
        return Metadata(
            actor=self.actor,
            request_id=self.request_id,
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            fingerprint=self.fingerprint,
        )


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """The aggregate after a command: state, version, and the commit's position if one was made."""

    state: S | None
    version: int
    position: int | None
    replayed: bool = False

    @property
    def changed(self) -> bool:
        return self.position is not None


async def load(
    store: EventStore, aggregate: Aggregate[S, C, E], stream_id: str, *, fresh: bool = False
) -> tuple[S | None, int]:
    """The current state and version: from the cached snapshot, or folded from the log."""
    state, head = await _load(store, aggregate, stream_id, fresh=fresh)
    return state, head.version


async def _load(
    store: EventStore, aggregate: Aggregate[S, C, E], stream_id: str, *, fresh: bool
) -> tuple[S | None, StreamHead]:
    """The current state and the head it is at (version and chain hash)."""
    if not fresh:
        head = await store.stream_head(stream_id)
        if head is not None and head.snapshot is not None:
            with contextlib.suppress(ValidationError):  # a snapshot of an older state shape
                return aggregate.state_type.model_validate_json(head.snapshot), head
    head, commits = await store.load_head(stream_id)
    state = aggregate.fold(commits)
    if state is not None:  # the next command (or read) then starts from the snapshot again
        await store.cache_snapshot(
            stream_id, head, state.model_dump_json().encode(), subject=aggregate.subject(state)
        )
    return state, head


async def execute(
    store: EventStore,
    aggregate: Aggregate[S, C, E],
    entity_id: str,
    command: C,
    context: Context,
    now: datetime,
    *,
    expected_version: int | None = None,
    authorize: Callable[[S | None], None] | None = None,
    new_stream: bool = False,
) -> Outcome[S]:
    """Decide `command` on the aggregate's current state and append what it causes.

    `new_stream` (a freshly generated id) skips loading: the stream is taken to be empty, and
    the unique version key refutes that at the append if it is not.
    `authorize` sees the loaded state first and raises to refuse (before any version check, so
    a refusal such as "not found" never leaks the version of someone else's aggregate).

    With an Idempotency-Key, a command seen before returns its first outcome. With
    `expected_version` (If-Match) a stale version is PreconditionFailedError, checked against the
    log itself before it is reported when the cached head is behind it (the cache may lag).
    """
    call = _Call(
        aggregate=aggregate,
        stream_id=aggregate.stream_id(entity_id),
        command=command,
        context=context,
        now=to_millis(now),  # what BSON dates keep: every read model then agrees to the instant
        expected_version=expected_version,
        authorize=authorize,
        new_stream=new_stream,
    )
    name = type(command).__name__
    try:
        outcome = await _execute(store, call)
    except Exception as exc:
        COMMANDS.labels(name, _failure(exc)).inc()
        raise
    COMMANDS.labels(name, _success(outcome)).inc()
    return outcome


@dataclass(frozen=True)
class _Call(Generic[S, C, E]):
    """One command on its way through the runner: what `execute` was asked to do."""

    aggregate: Aggregate[S, C, E]
    stream_id: str
    command: C
    context: Context
    now: datetime
    expected_version: int | None
    authorize: Callable[[S | None], None] | None
    new_stream: bool


def _success(outcome: Outcome[Any]) -> str:
    return "replayed" if outcome.replayed else "applied" if outcome.changed else "unchanged"


def _failure(exc: Exception) -> str:
    kinds: list[tuple[type[Exception], str]] = [
        (DomainError, "refused"),
        (PreconditionFailedError, "precondition_failed"),
        (ConcurrencyError, "conflict"),
    ]
    return next((label for kind, label in kinds if isinstance(exc, kind)), "error")


async def _execute(store: EventStore, call: _Call[S, C, E]) -> Outcome[S]:
    earlier = await _replayed(store, call.context, thorough=False)
    if earlier is not None:
        return await _replay(store, call.aggregate, earlier)
    try:
        return await _attempt(store, call)
    except (DomainError, PreconditionFailedError, ConcurrencyError):
        # A retry whose first outcome Redis forgot: the log's unique key index remembers it.
        earlier = await _replayed(store, call.context, thorough=True)
        if earlier is None:
            raise
        return await _replay(store, call.aggregate, earlier)


async def _attempt(store: EventStore, call: _Call[S, C, E]) -> Outcome[S]:
    fresh = False
    for _ in range(CONFLICT_RETRIES + 1):
        if call.new_stream and not fresh:
            state, head = None, NEW_STREAM
        else:
            state, head = await _load(store, call.aggregate, call.stream_id, fresh=fresh)
        version = head.version
        if call.authorize is not None:
            call.authorize(state)
        expected = call.expected_version
        if expected is not None and expected != version:
            # The cached head may lag the log but never leads it, and versions only grow: a
            # head already past the If-Match proves it stale without reading the log (D3).
            # Only a head behind it needs the log's word.
            if fresh or expected < version:
                raise PreconditionFailedError(call.stream_id, expected, version)
            fresh = True
            continue
        try:
            return await _decide_and_append(store, call, state, head)
        except ConcurrencyError:
            fresh = True
    raise ConcurrencyError(call.stream_id, version, version + 1)


async def _decide_and_append(
    store: EventStore, call: _Call[S, C, E], state: S | None, head: StreamHead
) -> Outcome[S]:
    aggregate = call.aggregate
    version = head.version
    events = list(aggregate.decide(state, call.command, call.now))
    if not events:
        return Outcome(state=state, version=version, position=None)
    new_state = state
    for event in events:
        new_state = aggregate.evolve(new_state, event)
    assert new_state is not None  # at least one event was folded
    result = await store.append(
        call.stream_id,
        version,
        events,
        call.context.metadata(),
        idempotency_key=call.context.idempotency_key,
        snapshot=new_state.model_dump_json().encode(),
        # The head just read: `append` need not read it again (one Redis round trip less).
        prev_hash=head.hash,
        subject=aggregate.subject(new_state),
    )
    if result.replayed:
        return await _replay(store, aggregate, result)
    return Outcome(state=new_state, version=result.version, position=result.position)


async def _replayed(store: EventStore, context: Context, *, thorough: bool) -> AppendResult | None:
    if context.idempotency_key is None:
        return None
    return await store.replayed(
        context.actor, context.idempotency_key, context.fingerprint, thorough=thorough
    )


async def _replay(
    store: EventStore, aggregate: Aggregate[S, C, E], earlier: AppendResult
) -> Outcome[S]:
    """The state as the original command left it, for answering a retried request."""
    commits = await store.read_stream(earlier.stream_id, to_version=earlier.version)
    return Outcome(
        state=aggregate.fold(commits),
        version=earlier.version,
        position=earlier.position,
        replayed=True,
    )
