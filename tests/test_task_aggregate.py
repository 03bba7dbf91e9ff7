"""Property tests of the pure task aggregate and of every registered event's round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import taskflow.events.user_events  # noqa: F401  (registers the user events for the round trip)
from taskflow.commands.errors import (
    DomainError,
    TaskAlreadyExistsError,
    TaskDeletedError,
    TaskNotDeletedError,
    TaskNotFoundError,
)
from taskflow.commands.task import (
    ChangeTask,
    CreateTask,
    DeleteTask,
    Priority,
    RestoreTask,
    Status,
    Tags,
    TaskCommand,
    TaskState,
    decide,
    evolve,
    fold,
    normalize_tag,
)
from taskflow.events.base import registered_events
from taskflow.events.task_events import TaskEvent, TaskRenamed
from taskflow.events.task_values import DESCRIPTION_MAX, TAG_MAX, TAGS_MAX, TITLE_MAX
from tests.strategies import events_of

TASK_ID = "task-1"
START = datetime(2025, 1, 1, tzinfo=UTC)

zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
)
# Titles and tags hold no control characters; descriptions only tabs and line breaks; neither
# holds bidi controls (task_values.printable).
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
printable = st.characters(exclude_categories=["Cc", "Cs"], exclude_characters=BIDI)
titles = st.text(printable, min_size=1, max_size=TITLE_MAX).filter(str.strip)
descriptions = st.text(printable | st.sampled_from("\t\n\r"), max_size=300)
# A small pool makes changes overlap existing tags; "\uff26..." is full-width "FULL" (NFKC).
tag_pool = ["work", "Home", "  Deep   Work ", "b:c", "x.y", "q_1", "\uff26\uff35\uff2c\uff2c"]
raw_tags = st.sampled_from(tag_pool) | st.from_regex(r"[A-Za-z0-9_:.-]{1,32}", fullmatch=True)
tag_lists = st.lists(raw_tags, max_size=TAGS_MAX)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "title": titles,
    "description": descriptions,
    "status": st.sampled_from(Status),
    "priority": st.sampled_from(Priority),
    "due_at": st.none() | aware_datetimes,
    "tags": tag_lists,
}
creates = st.fixed_dictionaries(
    {"title": titles}, optional={k: v for k, v in field_values.items() if k != "title"}
).map(lambda fields: CreateTask(task_id=TASK_ID, owner_id="user-1", **fields))
# A change may also send null (RFC 7396) for the fields it clears.
change_values = {
    **field_values,
    "description": st.none() | descriptions,
    "tags": st.none() | tag_lists,
}
changes = st.fixed_dictionaries({}, optional=change_values).map(
    lambda fields: ChangeTask(task_id=TASK_ID, **fields)
)
commands: st.SearchStrategy[TaskCommand] = st.one_of(
    changes,
    st.just(DeleteTask(task_id=TASK_ID)),
    st.just(RestoreTask(task_id=TASK_ID)),
    creates,
)


def _created(command: CreateTask) -> TaskState:
    state = fold(decide(None, command, START))
    assert state is not None
    return state


def _expected_refusal(state: TaskState | None, command: TaskCommand) -> type[DomainError] | None:
    """The error the rules predict for `command` on `state`, or None when it must be accepted."""
    if isinstance(command, CreateTask):
        return None if state is None else TaskAlreadyExistsError
    if state is None:
        return TaskNotFoundError
    if isinstance(command, RestoreTask):
        return None if state.deleted else TaskNotDeletedError
    return TaskDeletedError if state.deleted else None


def _check_invariants(state: TaskState, events: list[TaskEvent]) -> None:
    assert fold(events) == state
    assert state.version == len(events)
    assert 1 <= len(state.title) <= TITLE_MAX
    assert state.title == state.title.strip()
    assert len(state.description) <= DESCRIPTION_MAX
    assert len(state.tags) <= TAGS_MAX
    assert len(set(state.tags)) == len(state.tags)
    assert all(normalize_tag(tag) == tag for tag in state.tags)
    assert state.due_at is None or state.due_at.utcoffset() == timedelta(0)
    assert state.created_at <= state.updated_at


@given(first=creates, rest=st.lists(commands, max_size=12))
def test_any_command_sequence_folds_and_keeps_invariants(
    first: CreateTask, rest: list[TaskCommand]
) -> None:
    """Any command sequence is accepted or refused as the rules say, and every state is valid."""
    state: TaskState | None = None
    events: list[TaskEvent] = []
    for step, command in enumerate([first, *rest]):
        now = START + timedelta(minutes=step)
        refusal = _expected_refusal(state, command)
        if refusal is not None:
            with pytest.raises(refusal):
                decide(state, command, now)
            continue
        new_events = decide(state, command, now)
        events += new_events
        state = fold(new_events, state)
        assert state is not None
        _check_invariants(state, events)


@given(command=creates)
def test_create_folds_to_the_commanded_values(command: CreateTask) -> None:
    """Folding a create's events gives a version-1 live task with exactly the command's values."""
    state = _created(command)
    assert state.model_dump(include=set(CreateTask.model_fields)) == command.model_dump()
    assert (state.version, state.deleted, state.created_at) == (1, False, START)


@given(create=creates, change=changes)
def test_change_folds_to_the_commanded_values(create: CreateTask, change: ChangeTask) -> None:
    """After a change, given fields hold the new values and the others keep theirs."""
    before = _created(create)
    events = decide(before, change, START + timedelta(hours=1))
    after = fold(events, before)
    assert after is not None
    given_fields = change.model_fields_set - {"task_id", "tags"}
    expected = before.model_copy(update=change.model_dump(include=given_fields))
    ignored = {"tags", "updated_at", "version"}
    assert after.model_dump(exclude=ignored) == expected.model_dump(exclude=ignored)
    expected_tags = set(before.tags) if change.tags is None else set(change.tags)
    assert set(after.tags) == expected_tags
    assert after.version == before.version + len(events)


@given(create=creates, change=changes)
def test_repeating_a_change_is_a_no_op(create: CreateTask, change: ChangeTask) -> None:
    """A change that is already in effect yields no events."""
    before = _created(create)
    after = fold(decide(before, change, START), before)
    assert decide(after, change, START) == []


@given(create=creates)
def test_commands_restating_the_current_state_yield_no_events(create: CreateTask) -> None:
    """Changing every field to its current value, or to nothing at all, yields no events."""
    state = _created(create)
    restated = ChangeTask(
        task_id=TASK_ID,
        **state.model_dump(include={"title", "description", "status", "priority", "due_at"}),
        tags=state.tags,
    )
    assert decide(state, restated, START) == []
    assert decide(state, ChangeTask(task_id=TASK_ID), START) == []


@given(create=creates, command=commands)
def test_a_deleted_task_accepts_only_restore(create: CreateTask, command: TaskCommand) -> None:
    """A deleted task refuses every command but restore, which brings it back unchanged."""
    live = _created(create)
    deleted = fold(decide(live, DeleteTask(task_id=TASK_ID), START), live)
    assert deleted is not None
    if isinstance(command, RestoreTask):
        restored = fold(decide(deleted, command, START), deleted)
        assert restored == live.model_copy(update={"version": 3})
        return
    expected = TaskAlreadyExistsError if isinstance(command, CreateTask) else TaskDeletedError
    with pytest.raises(expected):
        decide(deleted, command, START)


def test_commands_on_a_missing_task_are_refused() -> None:
    """Anything but a create on a task that does not exist raises TaskNotFoundError."""
    for command in (ChangeTask(task_id=TASK_ID), DeleteTask(task_id=TASK_ID)):
        with pytest.raises(TaskNotFoundError):
            decide(None, command, START)


def test_evolve_refuses_an_impossible_history() -> None:
    """An event before TaskCreated is a corrupt stream, not something to fold silently."""
    with pytest.raises(ValueError, match="before TaskCreated"):
        evolve(None, TaskRenamed(task_id=TASK_ID, occurred_at=START, title="x"))


def test_change_task_distinguishes_null_from_not_given() -> None:
    """null clears due_at, description and tags (a merge patch); null for a required field is
    refused naming it; a field not given stays."""
    created = CreateTask(
        task_id=TASK_ID, owner_id="u", title="t", description="d", due_at=START, tags=("a",)
    )
    state = _created(created)
    cleared = ChangeTask.model_validate(
        {"task_id": TASK_ID, "due_at": None, "description": None, "tags": None}
    )
    assert fold(decide(state, cleared, START), state) == state.model_copy(
        update={"due_at": None, "description": "", "tags": (), "version": 4}
    )
    assert decide(state, ChangeTask(task_id=TASK_ID), START) == []
    for field in ("title", "status", "priority"):
        with pytest.raises(ValidationError) as refused:
            ChangeTask.model_validate({"task_id": TASK_ID, field: None})
        assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_naive_datetimes_are_rejected() -> None:
    """A due date without a time zone is ambiguous, so the command refuses it."""
    with pytest.raises(ValidationError):
        ChangeTask(task_id=TASK_ID, due_at=datetime(2025, 1, 1))


tag_texts = st.text() | st.text(
    alphabet=st.characters(categories=["L", "N", "Zs", "Pd", "Pc"]) | st.sampled_from(" \t:."),
    max_size=40,
)


@given(raw=tag_texts)
def test_tag_normalisation_is_idempotent(raw: str) -> None:
    """Normalising a normalised tag changes nothing, and the result obeys the tag rules."""
    try:
        tag = normalize_tag(raw)
    except ValueError:
        return
    assert normalize_tag(tag) == tag
    assert 1 <= len(tag) <= TAG_MAX
    assert tag == tag.lower()
    assert not any(ch.isspace() for ch in tag)


@given(raw=st.lists(raw_tags, max_size=TAGS_MAX * 2))
def test_tags_are_normalised_deduplicated_and_capped(raw: list[str]) -> None:
    """Tags validate to unique normalised tags in first-seen order, or fail when more than 20."""
    adapter = TypeAdapter(Tags)
    unique = list(dict.fromkeys(normalize_tag(tag) for tag in raw))
    if len(unique) > TAGS_MAX:
        with pytest.raises(ValidationError):
            adapter.validate_python(raw)
        return
    tags = adapter.validate_python(raw)
    assert list(tags) == unique
    assert adapter.validate_python(tags) == tags


@pytest.mark.parametrize("event_type", sorted(registered_events()))
@given(data=st.data())
def test_every_event_round_trips_through_json(event_type: str, data: st.DataObject) -> None:
    """Every registered event validates back from its JSON dump to an equal event."""
    cls = registered_events()[event_type]
    event = data.draw(events_of(cls))
    assert cls.model_validate(event.model_dump(mode="json")) == event
