"""Uncached lists filter and sort the views' stored JSON, or the list index built from it: the
same pages as on `TaskState`s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from taskflow.api.task_reads import LIST_PAGE
from taskflow.commands.task import Priority, Status, TaskState
from taskflow.projections import list_index
from taskflow.projections.list_index import ListIndex
from taskflow.projections.task_queries import (
    TaskQuery,
    _joined_page,
    index_page,
    paginate,
    paginate_json,
)

TAGS = ("a", "b", "c")
START = datetime(2030, 1, 1, tzinfo=UTC)
moments = st.integers(0, 3 * 24 * 3600 * 10**6).map(lambda us: START + timedelta(microseconds=us))
# Few distinct values, so that ties (broken by the task id) and every filter's edges occur.
coarse = st.integers(0, 6).map(lambda hours: START + timedelta(hours=hours))

states = st.builds(
    lambda n, status, priority, due, tags, created, updated, deleted: TaskState(
        task_id=f"t{n}",
        owner_id="owner",
        title="title",
        description="",
        status=status,
        priority=priority,
        due_at=due,
        tags=tags,
        created_at=created,
        updated_at=updated,
        deleted=deleted,
        version=1,
    ),
    st.integers(0, 10**6),
    st.sampled_from(Status),
    st.sampled_from(Priority),
    st.none() | coarse | moments,
    st.lists(st.sampled_from(TAGS), unique=True).map(tuple),
    coarse | moments,
    coarse | moments,
    st.booleans(),
)
queries = st.builds(
    TaskQuery,
    status=st.lists(st.sampled_from(Status), unique=True, max_size=2).map(tuple),
    priority=st.none() | st.sampled_from(Priority),
    tags=st.lists(st.sampled_from(TAGS), unique=True, max_size=2).map(tuple),
    due_before=st.none() | coarse,
    due_after=st.none() | coarse,
    overdue=st.none() | st.booleans(),
    sort=st.sampled_from(["created", "updated", "due", "priority"]),
    order=st.sampled_from(["asc", "desc"]),
    limit=st.integers(1, 5),
)


@settings(max_examples=300)
@given(
    st.lists(states, max_size=25, unique_by=lambda s: s.task_id),
    queries,
    coarse,
    st.booleans(),
)
def test_pages_from_stored_json_are_the_pages_of_the_states(
    views: list[TaskState], query: TaskQuery, now: datetime, deleted: bool
) -> None:
    """Page after page, following the cursors: the same views in the same order, and the same
    cursors, whether the views are `TaskState`s or their stored JSON (`model_dump_json`)."""
    stored = [orjson.loads(view.model_dump_json()) for view in views]
    while True:
        page = paginate(views, query, now, deleted=deleted)
        items, cursor = paginate_json(stored, query, now, deleted=deleted)
        assert items == [orjson.loads(view.model_dump_json()) for view in page.items]
        assert cursor == page.next_cursor
        if cursor is None:
            return
        query = query.model_copy(update={"cursor": cursor})


# Bounds as fine as the moments too: the index compares whole microseconds where the JSON path
# compares datetimes.
index_queries = queries.flatmap(
    lambda query: st.builds(
        lambda before, after: query.model_copy(update={"due_before": before, "due_after": after}),
        st.none() | coarse | moments,
        st.none() | coarse | moments,
    )
)


@settings(max_examples=500)
@given(
    st.lists(states, max_size=25, unique_by=lambda s: s.task_id),
    index_queries,
    coarse | moments,
    st.data(),
)
def test_pages_from_the_list_index_are_the_pages_of_the_stored_json(
    views: list[TaskState], query: TaskQuery, now: datetime, data: st.DataObject
) -> None:
    """Page after page, following the cursors: the index's page (its rendered items joined) is
    the page rendered from `paginate_json`'s views, byte for byte, with the same cursor; with
    search words, of the ids they found only."""
    stored = [orjson.loads(view.model_dump_json()) for view in views]
    index = ListIndex(list_index.build(stored, LIST_PAGE.item))
    ids = sorted(view.task_id for view in views)
    only = data.draw(st.none() | st.sets(st.sampled_from(ids)) if ids else st.none())
    found = stored if only is None else [v for v in stored if v["task_id"] in only]
    while True:
        items, cursor = paginate_json(found, query, now)
        rendered, index_cursor = index_page(index, query, now, only)
        assert index_cursor == cursor
        assert _joined_page(rendered, index_cursor) == LIST_PAGE.render(
            {"items": items, "next": cursor}
        )
        if cursor is None:
            return
        query = query.model_copy(update={"cursor": cursor})
