"""The read side: filters, sorts, search, pagination, stats and caches, on both read models."""

from __future__ import annotations

import asyncio
import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from taskflow.api.keys import SERVICES
from taskflow.api.task_reads import LIST_PAGE
from taskflow.bootstrap import redis_client
from taskflow.commands.task import TaskState
from taskflow.projections import list_index
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.task_queries import TaskQuery, TaskReads, matches, sort_value
from taskflow.projections.views import found_by_prefixes
from taskflow.settings import Settings
from tests.api_support import (
    Client,
    bearer,
    create_task,
    live_projector,
    project,
)
from tests.conftest import closed_port

NOW = datetime.now(UTC)


async def seed(client: Client, auth: dict[str, str]) -> None:
    """Twelve tasks with varied fields, some changed, one deleted."""
    specs: list[dict[str, Any]] = [
        {"title": "Quarterly budget review", "tags": ["finance"], "priority": "high"},
        {"title": "Fix login bug", "description": "Users cannot log in", "tags": ["bug", "auth"]},
        {"title": "Write launch blog post", "tags": ["marketing"], "priority": "low"},
        {"title": "Budget for launch party", "tags": ["finance", "marketing"]},
        {"title": "Renew certificates", "due_at": (NOW - timedelta(days=1)).isoformat()},
        {"title": "Plan offsite", "due_at": (NOW + timedelta(days=10)).isoformat()},
        {"title": "Review pull requests", "priority": "urgent", "status": "in_progress"},
        {"title": "Update résumé", "description": "Add the TaskFlow project"},
        {
            "title": "Old overdue but done",
            "due_at": (NOW - timedelta(days=3)).isoformat(),
            "status": "done",
        },
        {"title": "Call the bank", "due_at": (NOW + timedelta(hours=2)).isoformat()},
        {"title": "Deleted budget task", "tags": ["finance"]},
        {"title": "Inbox zero", "priority": "low"},
    ]
    created = [await create_task(client, auth, **spec) for spec in specs]
    await client.patch(
        f"/api/tasks/{created[1]['id']}",
        json={"status": "done"},
        headers={**auth, "If-Match": '"1"'},
    )
    await client.delete(f"/api/tasks/{created[10]['id']}", headers={**auth, "If-Match": '"1"'})
    await asyncio.sleep(0.002)  # distinct updated_at for the changed task
    await project(client)


def expected(views: list[TaskState], query: TaskQuery) -> list[str]:
    """A plain model of the list semantics: filter, then order by (value, id), nulls first."""
    hits = [v for v in views if matches(v, query, NOW)]
    words = query.terms()
    if words:  # each word begins one of the view's terms (search as you type)
        hits = [v for v in hits if found_by_prefixes(_words(v), words)]

    def key(v: TaskState) -> tuple[int, int, str]:
        value = sort_value(v, query.sort)
        return (0, 0, v.task_id) if value is None else (1, value, v.task_id)

    return [v.task_id for v in sorted(hits, key=key, reverse=query.order == "desc")]


def _words(view: TaskState) -> set[str]:
    from taskflow.projections.views import search_terms

    return set(search_terms(view))


QUERIES: list[dict[str, Any]] = [
    {},
    {"status": ["todo"]},
    {"status": ["todo", "in_progress"], "sort": "priority"},
    {"priority": "low", "order": "asc"},
    {"tags": ["finance"]},
    {"tags": ["finance", "marketing"]},
    {"q": "budget"},
    {"q": "BUDGET launch"},
    {"q": "résumé"},
    {"q": "log"},
    {"q": "la bu"},
    {"overdue": True},
    {"overdue": False, "sort": "due", "order": "asc"},
    {"due_before": (NOW + timedelta(days=1)).isoformat(), "sort": "due"},
    {"due_after": NOW.isoformat(), "sort": "due", "order": "asc"},
    {"sort": "updated"},
    {"sort": "created", "order": "asc"},
    {"sort": "due", "order": "desc"},
]


async def walk(reads: TaskReads, owner: str, raw: dict[str, Any], limit: int) -> list[str]:
    """Every page of a query, following `next` cursors."""
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        query = TaskQuery.model_validate({**raw, "limit": limit, "cursor": cursor})
        page = await reads.list_tasks(owner, query, NOW)
        ids += [v.task_id for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


async def test_every_query_gives_the_same_pages_from_redis_and_from_mongodb(
    client: Client, settings: Settings
) -> None:
    """Both read models (Redis first, MongoDB as fallback) answer every query as the model does."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    await seed(client, auth)
    services = client.app[SERVICES]
    live = TaskReads(services.redis, services.read_db)
    dead_redis = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    fallback = TaskReads(dead_redis, services.read_db)
    views = [v async for v in _all_views(live, owner)]
    assert len(views) == 11  # the deleted task is not listed
    try:
        for raw in QUERIES:
            want = expected(views, TaskQuery.model_validate(raw))
            for limit in (3, 100):
                assert await walk(live, owner, raw, limit) == want, (raw, limit)
                assert await walk(fallback, owner, raw, limit) == want, (raw, limit)
        assert (await live.stats(owner, NOW)).value == (await fallback.stats(owner, NOW)).value
        stats = (await live.stats(owner, NOW)).value
        assert stats.by_status == {"todo": 8, "in_progress": 1, "done": 2}
        assert stats.overdue == 1
        one = views[0]
        assert await fallback.get(owner, one.task_id) == one
        assert await fallback.get(uuid.uuid4().hex, one.task_id) is None
    finally:
        await dead_redis.aclose()


@dataclass(frozen=True)
class OpenGuard:
    """A ReadGuard whose keys are never set: the read always goes on (with or without Redis)."""

    keys: tuple[str, str] = ("test:guard:never-set", "test:guard:never-set-either")
    complete_key: str = "test:guard:complete"  # set by the test: the guard's list is complete
    timeout: float = 2.0

    async def check_durably(self) -> None:
        return None

    def redis_answering(self) -> bool:
        return True

    def check_without_redis(self, *, redis_failed: bool) -> None:
        return None

    def refused(self) -> Exception:
        return AssertionError("an open guard never refuses")


async def test_a_rendered_page_is_the_same_cached_uncached_and_from_mongodb(
    client: Client,
) -> None:
    """The page cache keeps the API's rendered page: a hit gives the miss's bytes, which are
    MongoDB's; list_tasks' own cache (TaskState pages) and the rendered pages never mix."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    await seed(client, auth)
    services = client.app[SERVICES]
    live = TaskReads(services.redis, services.read_db)
    dead_redis = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    fallback = TaskReads(dead_redis, services.read_db)
    await services.redis.set(OpenGuard.complete_key, 1)
    try:
        for raw in QUERIES:
            query = TaskQuery.model_validate({**raw, "limit": 3})
            listed = await live.list_tasks(owner, query, NOW)  # cached first, in its own form
            miss = await live.list_rendered(owner, query, NOW, OpenGuard(), LIST_PAGE)
            hit = await live.list_rendered(owner, query, NOW, OpenGuard(), LIST_PAGE)
            from_mongo = await fallback.list_rendered(owner, query, NOW, OpenGuard(), LIST_PAGE)
            assert miss.value == hit.value == from_mongo.value, raw
            assert (miss.stale, hit.stale, from_mongo.stale) == (False, False, True)
            page = orjson.loads(hit.value)
            assert [item["id"] for item in page["items"]] == [v.task_id for v in listed.items]
            assert page["next"] == listed.next_cursor
            assert await live.list_tasks(owner, query, NOW) == listed
    finally:
        await dead_redis.aclose()
    first = await client.get("/api/tasks?limit=3", headers=auth)
    again = await client.get("/api/tasks?limit=3", headers=auth)
    assert (first.status, again.status) == (200, 200)
    assert await first.read() == await again.read()


async def test_an_index_larger_than_the_copies_may_be_is_walked_and_not_kept(
    client: Client,
) -> None:
    """A list index larger than all the copies a process may keep is still built and walked
    (as Redis holds it), giving MongoDB's pages; the process keeps no copy of it."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    await seed(client, auth)
    services = client.app[SERVICES]
    small = TaskReads(services.redis, services.read_db, index_copies_bytes=100)
    dead_redis = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    fallback = TaskReads(dead_redis, services.read_db)
    await services.redis.set(OpenGuard.complete_key, 1)
    try:
        # The first miss marks the index, the second builds it, the others walk it.
        for raw in ({"order": "asc"}, {"order": "desc"}, {"sort": "updated"}, {"priority": "low"}):
            query = TaskQuery.model_validate({**raw, "limit": 3})
            mine = await small.list_rendered(owner, query, NOW, OpenGuard(), LIST_PAGE)
            from_mongo = await fallback.list_rendered(owner, query, NOW, OpenGuard(), LIST_PAGE)
            assert mine.value == from_mongo.value, raw
    finally:
        await dead_redis.aclose()
    keys = RedisViewKeys(1)
    generation = int(await services.redis.get(keys.generation(owner)) or 0)
    index = keys.list_page(owner, generation, f"{LIST_PAGE.name}-{list_index.FORMAT}")
    assert await services.redis.strlen(index) > 100  # built, and larger than the bound
    assert len(small._indexes) == 0


async def _all_views(reads: TaskReads, owner: str) -> Any:
    page = await reads.list_tasks(owner, TaskQuery(limit=100), NOW)
    for view in page.items:
        yield view


async def test_pages_are_stable_while_tasks_are_inserted(client: Client) -> None:
    """Walking pages while new tasks arrive shows every earlier task exactly once."""
    auth = await bearer(client)
    before = {(await create_task(client, auth, title=f"t{i}"))["id"] for i in range(15)}
    await project(client)
    seen: list[str] = []
    url: str | None = "/api/tasks?limit=4&sort=created&order=desc"
    async with live_projector(client):
        while url is not None:
            page = await (await client.get(url, headers=auth)).json()
            seen += [t["id"] for t in page["items"]]
            await create_task(client, auth, title="newcomer")
            await create_task(client, auth, title="newcomer")
            url = (
                f"/api/tasks?limit=4&sort=created&order=desc&next={page['next']}"
                if page["next"]
                else None
            )
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


async def test_list_pages_are_never_stale_once_projected(client: Client) -> None:
    """A cached list page is retired by the owner's generation as soon as a change is projected."""
    auth = await bearer(client)
    task = await create_task(client, auth, title="first title")
    await project(client)
    first = await (await client.get("/api/tasks", headers=auth)).json()
    assert [t["title"] for t in first["items"]] == ["first title"]
    await client.patch(
        f"/api/tasks/{task['id']}",
        json={"title": "second title"},
        headers={**auth, "If-Match": '"1"'},
    )
    await project(client)
    second = await (await client.get("/api/tasks", headers=auth)).json()
    assert [t["title"] for t in second["items"]] == ["second title"]
    found = await (await client.get("/api/tasks?q=second", headers=auth)).json()
    assert [t["id"] for t in found["items"]] == [task["id"]]
    gone = await (await client.get("/api/tasks?q=first", headers=auth)).json()
    assert gone["items"] == []


async def listed_titles(client: Client, auth: dict[str, str], **params: str) -> list[str]:
    """The titles of one page of `GET /api/tasks` with these query parameters."""
    response = await client.get("/api/tasks", params=params, headers=auth)
    assert response.status == 200
    return [task["title"] for task in (await response.json())["items"]]


def _day(days: int) -> str:
    return (NOW + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_uncached_pages_come_from_the_list_index_until_a_change_moves_the_generation(
    client: Client,
) -> None:
    """The first miss of a generation marks the owner's list index, the second builds it under
    their generation, and other queries of that generation are served from it (an index whose
    items say otherwise is what they show); a projected change moves the generation, and the
    next pages, the cached query's and new ones, follow the change, from an index rebuilt from
    the changed views."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    early = await create_task(client, auth, title="early", due_at=_day(1))
    await create_task(client, auth, title="late", due_at=_day(7))
    await project(client)
    redis, keys = client.app[SERVICES].redis, RedisViewKeys(1)

    titles = functools.partial(listed_titles, client, auth)

    async def index_key() -> str:
        generation = int(await redis.get(keys.generation(owner)) or 0)
        return keys.list_page(owner, generation, f"{LIST_PAGE.name}-{list_index.FORMAT}")

    assert await titles(sort="due", order="asc", due_after=_day(5)) == ["late"]
    index = await index_key()
    assert await redis.get(index) == b""  # marked: the first miss read the views
    assert await titles(sort="due", order="desc", due_after=_day(5)) == ["late"]
    assert await redis.strlen(index) > 0  # built by the second
    views = [orjson.loads(raw) for raw in (await redis.hgetall(keys.tasks(owner))).values()]
    marked = [{**view, "title": f"indexed {view['title']}"} for view in views]
    await redis.set(index, list_index.build(marked, LIST_PAGE.item))
    assert await titles(sort="due", order="asc") == ["indexed early", "indexed late"]

    await client.patch(
        f"/api/tasks/{early['id']}",
        json={"title": "moved", "due_at": _day(10)},
        headers={**auth, "If-Match": '"1"'},
    )
    await project(client)
    assert await titles(sort="due", order="asc", due_after=_day(5)) == ["late", "moved"]
    assert await index_key() != index
    assert await redis.get(await index_key()) == b""
    assert await titles(sort="due", order="asc") == ["late", "moved"]
    assert await redis.strlen(await index_key()) > 0
    assert await titles(sort="due", order="desc", due_before=_day(8)) == ["late"]
    first = await (await client.get("/api/tasks?limit=1&sort=due", headers=auth)).json()
    second = await client.get(f"/api/tasks?limit=1&sort=due&next={first['next']}", headers=auth)
    assert [t["title"] for t in first["items"] + (await second.json())["items"]] == [
        "moved",
        "late",
    ]


async def test_a_process_walks_its_copy_of_the_list_index_only_while_redis_holds_that_index(
    client: Client,
) -> None:
    """Once a process has built (or read) an owner's list index, a miss asks Redis only whether
    it still holds that very index (its build id) and walks the process's copy; an index Redis
    holds under another build id is read, and one it no longer holds (purged) is not walked."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    for i in range(3):
        await create_task(client, auth, title=f"task {i}", due_at=_day(i + 1))
    await project(client)
    redis, keys = client.app[SERVICES].redis, RedisViewKeys(1)

    titles = functools.partial(listed_titles, client, auth)

    assert await titles(order="asc") == ["task 0", "task 1", "task 2"]  # marks the index
    assert await titles(order="desc") == ["task 2", "task 1", "task 0"]  # builds it
    generation = int(await redis.get(keys.generation(owner)) or 0)
    index = keys.list_page(owner, generation, f"{LIST_PAGE.name}-{list_index.FORMAT}")
    stored = await redis.get(index)
    assert isinstance(stored, bytes)
    views = [orjson.loads(raw) for raw in (await redis.hgetall(keys.tasks(owner))).values()]
    other = list_index.build(
        [{**view, "title": f"other {view['title']}"} for view in views], LIST_PAGE.item
    )
    same_id = stored[: list_index.BUILD_ID_BYTES] + other[list_index.BUILD_ID_BYTES :]
    await redis.set(index, same_id)
    assert await titles(sort="due") == ["task 2", "task 1", "task 0"]  # the copy, not Redis's
    await redis.set(index, other)  # another build of the generation's index: read and walked
    assert await titles(sort="due", order="asc") == ["other task 0", "other task 1", "other task 2"]
    await redis.delete(index)  # purged (an erasure): the views are read, and the mark left
    assert await titles(sort="updated", order="asc") == ["task 0", "task 1", "task 2"]
    assert await redis.get(index) == b""


async def test_pages_walked_from_the_index_are_cached_and_a_repeat_is_a_hit(
    client: Client,
) -> None:
    """The first miss of a generation caches the page with the index; a page walked from the
    index is cached too, so asking for it again reads the page, not the index."""
    redis, keys = client.app[SERVICES].redis, RedisViewKeys(1)
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    for i in range(3):
        await create_task(client, auth, title=f"task {i}")
    await project(client)
    bodies = []
    for query in ("limit=2", "limit=2&order=asc", "limit=2&order=asc"):
        response = await client.get(f"/api/tasks?{query}", headers=auth)
        assert response.status == 200
        bodies.append(await response.read())
    generation = int(await redis.get(keys.generation(owner)) or 0)
    index = keys.list_page(owner, generation, f"{LIST_PAGE.name}-{list_index.FORMAT}")
    cached = set(await redis.keys(keys.list_page(owner, generation, "*")))
    assert index.encode() in cached
    assert len(cached - {index.encode()}) == 2
    assert bodies[1] == bodies[2]
    await redis.set(index, b"not an index: a hit never reads it")
    again = await client.get("/api/tasks?limit=2&order=asc", headers=auth)
    assert await again.read() == bodies[1]


async def test_stats_endpoint_counts_by_status_and_overdue(client: Client) -> None:
    """GET /api/tasks/stats reflects the projected counts of the caller's tasks only."""
    auth, other = await bearer(client), await bearer(client)
    await create_task(client, auth, due_at=(NOW - timedelta(hours=1)).isoformat())
    await create_task(client, auth, status="done")
    await create_task(client, other)
    await project(client)
    stats = await (await client.get("/api/tasks/stats", headers=auth)).json()
    assert stats == {"by_status": {"todo": 1, "in_progress": 0, "done": 1}, "overdue": 1}


@pytest.mark.parametrize(
    "params",
    [
        "status[$ne]=done",
        "status=archived",
        "sort=$where",
        "order=sideways",
        "limit=1000",
        "limit=0",
        "tags=" + ",".join(f"t{i}" for i in range(21)),
        "q=" + "x" * 201,
        "due_before=tomorrow",
        "due_before=2030-01-01T00:00:00",
        "owner_id=someone",
        "priority=high&priority=low",
    ],
)
async def test_hostile_or_malformed_query_parameters_are_422(client: Client, params: str) -> None:
    """Operators, unknown fields, bad values and over-long lists never reach a query."""
    response = await client.get(f"/api/tasks?{params}", headers=await bearer(client))
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"


async def test_a_forged_cursor_is_400(client: Client) -> None:
    """A cursor that this API did not issue, or issued for another order, is refused."""
    auth = await bearer(client)
    for cursor in ("not-base64!", "WyJ4Il0", "WyJkdWUiLCJhc2MiLG51bGwsIngiXQ"):
        response = await client.get(f"/api/tasks?next={cursor}", headers=auth)
        assert response.status == 400, cursor
