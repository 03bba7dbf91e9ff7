"""The task response form: TaskOut is TaskState shown (its id as `id`, no owner, no deleted
flag), and built from a stored view's JSON it is what `TaskOut` gives."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from taskflow.api.task_schemas import TaskOut, task_out_json
from taskflow.commands.task import TaskState
from tests.strategies import strategy_for

task_states = st.fixed_dictionaries(
    {
        **{name: strategy_for(field.annotation) for name, field in TaskState.model_fields.items()},
        "version": st.integers(0, 2**53),  # counts events; orjson refuses ints past 64 bits
    }
).map(lambda fields: TaskState(**fields))


@given(task_states)
def test_the_response_from_stored_json_is_the_taskout_of_the_state(state: TaskState) -> None:
    """Redis stores `model_dump_json()`, MongoDB reads give `model_dump(mode="json")`: both
    render to exactly `TaskOut.of(state)`'s JSON, key order included."""
    expected = TaskOut.of(state).model_dump(mode="json")
    for view in (orjson.loads(state.model_dump_json()), state.model_dump(mode="json")):
        rendered = task_out_json(view)
        assert rendered == expected
        assert orjson.dumps(rendered) == orjson.dumps(expected)


@given(task_states)
def test_the_response_is_the_state_with_its_id_as_id_and_neither_owner_nor_deleted(
    state: TaskState,
) -> None:
    """TaskOut, derived from TaskState, answers exactly these keys in this order: the id as
    `id`, every other field as TaskState holds it, and no `owner_id` nor `deleted`."""
    shown = TaskOut.of(state).model_dump(mode="json")
    stored = state.model_dump(mode="json")
    assert list(shown) == [
        "id",
        "title",
        "description",
        "status",
        "priority",
        "due_at",
        "tags",
        "created_at",
        "updated_at",
        "version",
    ]
    assert shown == {"id": state.task_id} | {
        name: value
        for name, value in stored.items()
        if name not in {"task_id", "owner_id", "deleted"}
    }
