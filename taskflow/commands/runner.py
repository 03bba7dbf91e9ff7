"""Runs one command against one aggregate: load (cached head first), decide, append.

The cached head in Redis (version, hash, state snapshot) saves re-reading the stream on every
command (DESIGN.md §9). It can lag the log but never lead it, and the append is guarded by the
unique version key, so a stale snapshot only costs a conflict and one reload from the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from taskflow.commands.errors import DomainError
from taskflow.events.base import DomainEvent
from taskflow.events.codec import decode_events, to_millis
from taskflow.events.records import AppendResult, Commit, Metadata
from taskflow.events.store import ConcurrencyError, EventStore
from taskflow.metrics import COMMANDS

S = TypeVar("S", bound=BaseModel)
C = TypeVar("C")
E = TypeVar("E", bound=DomainEvent)

# Appends retried after a conflict when the client did not pin a version (no If-Match).
CONFLICT_RETRIES = 3


class PreconditionFailedError(Exception):
    """The client's expected version (If-Match) is not the stream's current version."""

    def __init__(self, stream_id: str, expected: int, current: int) -> None:
        super().__init__(f"{stream_id} is at version {current}, not {expected}")
        self.expected = expected
        self.current = current


@dataclass(frozen=True)
class Aggregate(Generic[S, C, E]):
    """An aggregate type: its stream prefix, state model and pure functions."""

    name: str
    state_type: type[S]
    decide: Callable[[S | None, C, datetime], Sequence[E]]
    evolve: Callable[[S | None, E], S]

    def stream_id(self, entity_id: str) -> str:
        return f"{self.name}-{entity_id}"

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
    if not fresh:
        head = await store.stream_head(stream_id)
        if head is not None and head.snapshot is not None:
            return aggregate.state_type.model_validate_json(head.snapshot), head.version
    head, commits = await store.load_head(stream_id)
    state = aggregate.fold(commits)
    if state is not None:  # the next command (or read) then starts from the snapshot again
        await store.cache_snapshot(stream_id, head, state.model_dump_json().encode())
    return state, head.version


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
    log itself before it is reported, since the cache may lag.
    """
    name = type(command).__name__
    try:
        outcome = await _execute(
            store,
            aggregate,
            entity_id,
            command,
            context,
            now,
            expected_version,
            authorize,
            new_stream,
        )
    except Exception as exc:
        COMMANDS.labels(name, _failure(exc)).inc()
        raise
    COMMANDS.labels(name, _success(outcome)).inc()
    return outcome


def _success(outcome: Outcome[Any]) -> str:
    return "replayed" if outcome.replayed else "applied" if outcome.changed else "unchanged"


def _failure(exc: Exception) -> str:
    kinds: list[tuple[type[Exception], str]] = [
        (DomainError, "refused"),
        (PreconditionFailedError, "precondition_failed"),
        (ConcurrencyError, "conflict"),
    ]
    return next((label for kind, label in kinds if isinstance(exc, kind)), "error")


async def _execute(
    store: EventStore,
    aggregate: Aggregate[S, C, E],
    entity_id: str,
    command: C,
    context: Context,
    now: datetime,
    expected_version: int | None,
    authorize: Callable[[S | None], None] | None,
    new_stream: bool,
) -> Outcome[S]:
    earlier = await _replayed(store, context, thorough=False)
    if earlier is not None:
        return await _replay(store, aggregate, earlier)
    now = to_millis(now)  # what BSON dates keep: every read model then agrees to the instant
    try:
        return await _attempt(
            store,
            aggregate,
            aggregate.stream_id(entity_id),
            command,
            context,
            now,
            expected_version,
            authorize,
            new_stream,
        )
    except (DomainError, PreconditionFailedError, ConcurrencyError):
        # A retry whose first outcome Redis forgot: the log's unique key index remembers it.
        earlier = await _replayed(store, context, thorough=True)
        if earlier is None:
            raise
        return await _replay(store, aggregate, earlier)


async def _attempt(
    store: EventStore,
    aggregate: Aggregate[S, C, E],
    stream_id: str,
    command: C,
    context: Context,
    now: datetime,
    expected_version: int | None,
    authorize: Callable[[S | None], None] | None,
    new_stream: bool,
) -> Outcome[S]:
    fresh = False
    for _ in range(CONFLICT_RETRIES + 1):
        if new_stream and not fresh:
            state, version = None, 0
        else:
            state, version = await load(store, aggregate, stream_id, fresh=fresh)
        if authorize is not None:
            authorize(state)
        if expected_version is not None and expected_version != version:
            if fresh:
                raise PreconditionFailedError(stream_id, expected_version, version)
            fresh = True
            continue
        try:
            return await _decide_and_append(
                store, aggregate, stream_id, state, version, command, context, now
            )
        except ConcurrencyError:
            fresh = True
    raise ConcurrencyError(stream_id, version, version + 1)


async def _decide_and_append(
    store: EventStore,
    aggregate: Aggregate[S, C, E],
    stream_id: str,
    state: S | None,
    version: int,
    command: C,
    context: Context,
    now: datetime,
) -> Outcome[S]:
    events = list(aggregate.decide(state, command, now))
    if not events:
        return Outcome(state=state, version=version, position=None)
    new_state = state
    for event in events:
        new_state = aggregate.evolve(new_state, event)
    assert new_state is not None  # at least one event was folded
    result = await store.append(
        stream_id,
        version,
        events,
        context.metadata(),
        idempotency_key=context.idempotency_key,
        snapshot=new_state.model_dump_json().encode(),
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
