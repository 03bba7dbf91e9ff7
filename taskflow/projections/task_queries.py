"""Read-side query functions over the task read models: Redis first, MongoDB when Redis fails."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

import orjson
import pymongo
import structlog
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.client_session import AsyncClientSession as Session
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from taskflow import names
from taskflow.commands.task import Priority, Status, Tag, TaskState
from taskflow.events.task_values import UtcDatetime
from taskflow.hot_redis import HotRedis, HotScript
from taskflow.metrics import CACHE
from taskflow.projections import list_index
from taskflow.projections.list_index import ID, ListIndex, exact_us, sort_us
from taskflow.projections.list_index import order_key as _order_key
from taskflow.projections.mongo_view_writes import read_checkpoint
from taskflow.projections.mongo_views import PRIORITY_RANK, MongoTaskViews
from taskflow.projections.read_model_versions import active_version
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.views import (
    found_by_prefixes,
    tokenize,
    view_from_document,
)
from taskflow.text import as_text

log = structlog.get_logger(__name__)
T = TypeVar("T")

SortField = Literal["created", "updated", "due", "priority"]
MAX_PAGE = 100
PAGE_CACHE_TTL = 300
TOP_CODE_POINT = "\U0010ffff"
ACTIVE_VERSION_TTL = 1.0  # how long a process trusts its copy of the active read-model version
# How much of the owners' list indexes (stored bytes) an API process keeps, least recently used
# first out: about 160 owners of 100 tasks.
INDEX_COPIES_BYTES = 8 * 1024 * 1024


# The page cache's counters, looked up once (a `labels()` call per request costs about 2 us).
# "index": a page-cache miss served from the owner's list index of that generation.
_HITS, _MISSES, _FROM_INDEX = CACHE.labels("hit"), CACHE.labels("miss"), CACHE.labels("index")

ViewJson = dict[str, Any]
"""A task view in its stored JSON form (`TaskState.model_dump(mode="json")`), parsed only."""

# The guarded reads: the guard's keys are checked in the same script as the read, so both take
# one round trip (on this API each Redis command costs about 150 us of CPU in redis-py, a pipeline
# of two about 210 us, a script about the same as one command; docs/benchmarks.md). The script
# answers REFUSED when the guard refuses (KEYS[1], KEYS[2]: the token's deny entry, its refresh
# family's revocation), UNCHECKED when Redis's copy of the guard's list is not known complete
# (Redis lost its data and it is being reloaded), NOT_LIVE when the Redis views have not caught
# up with the log since Redis started, and nil (None) when nothing is stored.
_GUARD = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -3 end
if redis.call('EXISTS', KEYS[4]) == 0 then return -2 end
"""
_GUARDED_HGET = _GUARD + "return redis.call('HGET', KEYS[5], ARGV[1])\n"
# The cached page's key holds the owner's generation, so the script reads the generation and
# then the page it names: ARGV[1] and ARGV[2] are the key's parts before and after the
# generation. On a miss, the owner's list index of that generation (ARGV[3], the index key's
# part after it; list_index.py); without one, when ARGV[4] is '1' (no search words), the
# owner's views (KEYS[6]) as they are at that generation (the projector writes views and
# generation in one transaction, so an index built from them is exactly that generation's),
# and the index key's empty mark when a miss of this generation came before. ARGV[5], when not
# empty, is the build id of the owner's index the caller holds: when the generation's index
# begins with it, the caller's copy is that index and only 1 stands for it. The reply:
# {generation, page}, {generation, nil, 1}, {generation, nil, index},
# {generation, nil, mark or nil, views} or {generation}. (A key built inside a script is not
# declared in KEYS; fine on one Redis, not on a Redis Cluster, where none of a user's read-model
# keys share a hash slot anyway.)
_GUARDED_PAGE = (
    _GUARD
    + """
local generation = redis.call('GET', KEYS[5]) or '0'
local page = redis.call('GET', ARGV[1] .. generation .. ARGV[2])
if page then return {generation, page} end
local index_key = ARGV[1] .. generation .. ARGV[3]
if ARGV[5] ~= '' and redis.call('GETRANGE', index_key, 0, #ARGV[5] - 1) == ARGV[5] then
  return {generation, false, 1}
end
local index = redis.call('GET', index_key)
if index and index ~= '' then return {generation, false, index} end
if ARGV[4] == '1' then return {generation, false, index, redis.call('HVALS', KEYS[6])} end
return {generation}
"""
)
# A miss that read the views caches the page with the index it built, or with the mark that
# the next miss of the generation is to build it (never over an index: NX), in one round trip.
_CACHE_TWO = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
if ARGV[2] == '' then redis.call('SET', KEYS[2], '', 'EX', ARGV[3], 'NX')
else redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
return 1
"""
_REFUSED, _NOT_LIVE, _UNCHECKED = -1, -2, -3
# How often a read-your-writes wait looks at the checkpoint again.
WAIT_STEP_SECONDS = 0.005
# The least time a secondary gets to catch up with a checkpoint read on another member before
# the views are read without that guarantee (and marked stale), whatever the configured wait.
MIN_MEMBER_WAIT_SECONDS = 0.5


class ReadGuard(Protocol):
    """A condition a read must pass, checked in the read's own Redis round trip.

    The API's guard is the caller's deny-list entry (taskflow.auth.denylist.DenyGuard): the
    read is refused when either of `keys` exists in Redis (the token's deny entry, its refresh
    family's revocation). Redis's copy of the list is complete only while `complete_key`
    exists; otherwise `check_durably` decides from the list's durable record. When Redis cannot
    answer, `check_without_redis` decides (it raises to refuse). Then the read goes to MongoDB.
    """

    @property
    def keys(self) -> tuple[str, str]: ...

    @property
    def complete_key(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    def redis_answering(self) -> bool: ...

    def check_without_redis(self, *, redis_failed: bool) -> None: ...

    async def check_durably(self) -> None: ...

    def refused(self) -> Exception: ...


@dataclass(frozen=True)
class PageRenderer:
    """How the caller shows a page's views: `item` turns a view (stored JSON) into the JSON value
    the page lists, and a page is `{"items": [item...], "next": cursor}` as compact JSON. The
    page cache keeps rendered pages and the list index rendered items, so a hit is served as it
    is stored and a page from the index is its items joined."""

    name: str  # in the cache keys: pages rendered differently never share one
    item: Callable[[ViewJson], Any]

    def render(self, page: ViewJson) -> bytes:
        return orjson.dumps({"items": [self.item(v) for v in page["items"]], "next": page["next"]})


class CursorError(ValueError):
    """A `next` cursor that this query did not produce."""


class TaskQuery(BaseModel):
    """What a list request asks for; every field typed, so no operator can reach a filter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: tuple[Status, ...] = ()
    priority: Priority | None = None
    tags: tuple[Tag, ...] = Field(default=(), max_length=20)
    due_before: UtcDatetime | None = None  # tz-aware only: naive times are refused (422)
    due_after: UtcDatetime | None = None
    overdue: bool | None = None
    q: str | None = Field(default=None, max_length=200)
    sort: SortField = "created"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]

    def terms(self) -> list[str]:
        return list(dict.fromkeys(tokenize(self.q or "")))


@dataclass(frozen=True)
class TaskPage:
    items: list[TaskState]
    next_cursor: str | None


@dataclass(frozen=True)
class TaskStats:
    by_status: dict[str, int]
    overdue: int


Source = Literal["redis", "mongodb"]


@dataclass(frozen=True)
class Served(Generic[T]):
    """A read's answer, and whether it may be behind what the caller asked to see.

    `stale`: the read carried a position and no read model had reached it in time, or the
    answer came from the MongoDB views (Redis cannot answer, or its views are being rebuilt
    after Redis lost its data) and their checkpoint does not show they reached the position,
    or no position was given to compare with (docs/operations.md, "When Redis loses its data").
    """

    value: T
    stale: bool


class _NotLiveError(Exception):
    """The Redis views have not caught up with the log since Redis started: not to be served."""


class TaskReads:
    """The read side of tasks, for one owner at a time (ownership is part of every key/filter).

    Reads are served from the Redis views while they are live (redis_keys.RedisViewKeys.live),
    else from the MongoDB views. A read given a position (read-your-writes) first waits, up to
    `wait_seconds`, until the model that serves it has applied that position; `head` is the
    log's settled head, and a position beyond it is not waited for at all.
    """

    def __init__(
        self,
        redis: Redis,
        read_db: AsyncDatabase[dict[str, Any]],
        *,
        wait_seconds: float = 2.0,
        allocated: Callable[[], Awaitable[int | None]] | None = None,
        hot: HotRedis | None = None,
        index_copies_bytes: int = INDEX_COPIES_BYTES,
    ) -> None:
        """`hot`: the guarded reads' connection, which bounds each of its calls (hot_redis.py);
        without it they go through `redis`'s client like every other read, each read bounded
        as a whole. `index_copies_bytes`: how much of the owners' list indexes to keep."""
        self._redis = redis
        self._hot = hot
        self._db = read_db
        self._wait_seconds = wait_seconds
        self._allocated = allocated
        self._active: tuple[float, int] = (0.0, 1)
        self._guarded_hget: AsyncScript = redis.register_script(_GUARDED_HGET)
        self._guarded_page: AsyncScript = redis.register_script(_GUARDED_PAGE)
        self._cache_two: AsyncScript = redis.register_script(_CACHE_TWO)
        self._hot_hget, self._hot_page = HotScript(_GUARDED_HGET), HotScript(_GUARDED_PAGE)
        self._hot_cache_two = HotScript(_CACHE_TWO)
        # The list indexes this process read or built, by owner (and renderer): used while Redis
        # holds the same index (its build id), so a miss reads a small answer, not the index.
        # Kept no longer than Redis keeps an index, and dropped when Redis no longer holds it.
        self._indexes: TTLCache[str, ListIndex] = TTLCache(
            index_copies_bytes, PAGE_CACHE_TTL, getsizeof=lambda index: index.size
        )

    async def get(self, owner: str, task_id: str) -> TaskState | None:
        async def from_redis() -> TaskState | None:
            keys = await self._keys()
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(keys.live)
                pipe.hget(keys.tasks(owner), task_id)
                live, raw = await pipe.execute()
            _require_live(live)
            return TaskState.model_validate_json(raw) if raw else None

        async def from_mongo() -> TaskState | None:
            doc = await self._views().find_one({"_id": task_id, "owner_id": owner})
            return view_from_document(doc) if doc else None

        view, _ = await self._either(from_redis, from_mongo)
        return None if view is None or view.deleted else view

    async def get_json(
        self, owner: str, task_id: str, guard: ReadGuard, position: int | None = None
    ) -> Served[ViewJson | None]:
        """One live view in its stored JSON form, `guard` checked in the same round trip.

        The stored JSON is parsed, not validated: the projector wrote it from a `TaskState`.
        """

        async def from_redis() -> Served[ViewJson | None]:
            keys = await self._keys()
            script_keys = [*_guard_keys(guard, keys), keys.tasks(owner)]
            answer = await self._run_guarded(
                self._guarded_hget, self._hot_hget, script_keys, [task_id]
            )
            raw = self._allowed(guard, answer)
            return Served(orjson.loads(raw) if raw else None, not reached)

        async def find(session: Session | None) -> ViewJson | None:
            flt = {"_id": task_id, "owner_id": owner}
            doc = await self._views().find_one(flt, session=session)
            return view_from_document(doc).model_dump(mode="json") if doc else None

        reached = await self.wait_for(position)
        served, _ = await self._guarded_either(
            guard, from_redis, lambda: self._from_mongo(find, position, reached)
        )
        view = served.value
        return Served(None if view is None or view["deleted"] else view, served.stale)

    async def list_rendered(
        self,
        owner: str,
        query: TaskQuery,
        now: datetime,
        guard: ReadGuard,
        renderer: PageRenderer,
        position: int | None = None,
    ) -> Served[bytes]:
        """One page as `renderer` renders it, `guard` checked in the round trip that reads the
        page cache; a cache hit is returned as it is stored, without parsing it."""

        async def from_redis() -> Served[bytes]:
            body = await self._list_redis_rendered(owner, query, now, guard, renderer)
            return Served(body, not reached)

        async def find(session: Session | None) -> bytes:
            page = await _list_mongo(self._views(), owner, query, now, session)
            return renderer.render(_page_json(page))

        reached = await self.wait_for(position)
        served, _ = await self._guarded_either(
            guard, from_redis, lambda: self._from_mongo(find, position, reached)
        )
        return served

    async def trash(self, owner: str, query: TaskQuery, now: datetime) -> Served[TaskPage]:
        """The owner's deleted tasks, a page at a time, in `query`'s order (its filters apply
        too): what can be restored. Not cached: the trash is read seldom."""

        async def from_redis() -> TaskPage:
            keys = await self._keys()
            live, raws = await self._live_and(lambda pipe: pipe.hgetall(keys.tasks(owner)))
            _require_live(live)
            views = [TaskState.model_validate_json(raw) for raw in raws.values()]
            return paginate(views, query, now, deleted=True)

        page, source = await self._either(
            from_redis, lambda: _list_mongo(self._views(), owner, query, now, deleted=True)
        )
        return Served(page, source == "mongodb")

    async def tags(self, owner: str) -> Served[dict[str, int]]:
        """How many of the owner's live tasks carry each tag (tags of none are left out)."""

        async def from_redis() -> dict[str, int]:
            keys = await self._keys()
            live, counts = await self._live_and(lambda pipe: pipe.hgetall(keys.tags(owner)))
            _require_live(live)
            return {as_text(tag): int(n) for tag, n in counts.items() if int(n) > 0}

        async def from_mongo() -> dict[str, int]:
            counted: Counter[str] = Counter()
            flt = {"owner_id": owner, "deleted": False}
            async for doc in self._views().find(flt, {"tags": 1}):
                counted.update(doc.get("tags") or ())
            return dict(counted)

        counts, source = await self._either(from_redis, from_mongo)
        return Served(counts, source == "mongodb")

    async def _live_and(self, read: Callable[[Any], Any]) -> list[Any]:
        """The `live` flag and one more read, in one round trip."""
        keys = await self._keys()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.live)
            read(pipe)
            answer: list[Any] = await pipe.execute()
        return answer

    async def list_tasks(self, owner: str, query: TaskQuery, now: datetime) -> TaskPage:
        page, _ = await self._either(
            lambda: self._list_redis(owner, query, now),
            lambda: _list_mongo(self._views(), owner, query, now),
        )
        return page

    async def stats(
        self, owner: str, now: datetime, position: int | None = None
    ) -> Served[TaskStats]:
        async def from_redis() -> Served[TaskStats]:
            keys = await self._keys()
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(keys.live)
                pipe.hgetall(keys.counts(owner))
                pipe.zcount(keys.due(owner), "-inf", f"({now.timestamp()}")
                live, counts, overdue = await pipe.execute()
            _require_live(live)
            by_status = {s.value: int(counts.get(s.value.encode(), 0)) for s in Status}
            return Served(TaskStats(by_status=by_status, overdue=int(overdue)), not reached)

        async def count(session: Session | None) -> TaskStats:
            views = self._views()
            live = {"owner_id": owner, "deleted": False}
            by_status = {
                s.value: await views.count_documents({**live, "status": s.value}, session=session)
                for s in Status
            }
            overdue = await views.count_documents(
                {**live, "status": {"$ne": Status.DONE.value}, "due_at": {"$lt": now}},
                session=session,
            )
            return TaskStats(by_status=by_status, overdue=overdue)

        reached = await self.wait_for(position)
        served, _ = await self._either(
            from_redis, lambda: self._from_mongo(count, position, reached)
        )
        return served

    async def projected_position(self) -> int:
        """How far the read model that serves reads has applied the log."""

        async def from_redis() -> int:
            keys = await self._keys()
            live, raw = await self._redis.mget([keys.live, keys.checkpoint])
            _require_live(live)
            return int(raw) if raw else 0

        position, _ = await self._either(from_redis, self._mongo_position)
        return position

    async def wait_for(self, position: int | None) -> bool:
        """Wait (bounded) until reads reflect `position`; False if the bound passed first, or at
        once when `position` is beyond every one the log has handed out (nothing will ever reach
        it; when Redis lost the counter that cannot be told, and the wait is bounded as always)."""
        if position is None:
            return True
        deadline = time.monotonic() + self._wait_seconds
        checked_head = False
        while await self.projected_position() < position:
            if not checked_head and self._allocated is not None:
                checked_head = True
                allocated = await self._allocated()
                if allocated is not None and position > allocated:
                    return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(WAIT_STEP_SECONDS)
        return True

    async def _from_mongo(
        self, read: Callable[[Session | None], Awaitable[T]], position: int | None, reached: bool
    ) -> Served[T]:
        """`read` from the MongoDB views: stale unless a checkpoint read before it shows
        `position` (or when no position was given to compare with).

        Each read picks a member by the read preference, so two reads in a row may be served by
        different secondaries. The checkpoint that vouches for the answer is therefore read
        first, and the views after it, in one causally consistent session: whichever member
        serves the views has applied at least what the checkpoint read saw (afterClusterTime).
        A member that cannot catch up within the read-your-writes wait (its replication paused)
        is given up on: the views are read again without the session and marked stale. Where
        reads are not causal (FerretDB, a standalone server) there is one member, which serves
        both reads in order (docs/operations.md, "Reads from secondaries").
        """
        if position is None:
            return Served(await read(None), True)
        deadline = time.monotonic() + (self._wait_seconds if reached else 0.0)
        try:
            async with self._db.client.start_session(causal_consistency=True) as session:
                at = await self._mongo_position(session)
                while at < position and time.monotonic() < deadline:
                    await asyncio.sleep(WAIT_STEP_SECONDS)
                    at = await self._mongo_position(session)
                if at >= position and session.operation_time is None:
                    return Served(await read(session), False)  # no causal reads: one member
                if at >= position:
                    with pymongo.timeout(max(self._wait_seconds, MIN_MEMBER_WAIT_SECONDS)):
                        return Served(await read(session), False)
        except PyMongoError as exc:
            if not exc.timeout:
                raise
            log.warning("mongodb_views_member_behind", position=position, error=repr(exc))
        return Served(await read(None), True)

    async def _mongo_position(self, session: Session | None = None) -> int:
        views = MongoTaskViews(self._db, self._active[1])
        at = await read_checkpoint(views.views, session)
        return at if at is not None else await views.position()  # position(): legacy checkpoints

    async def _list_redis(self, owner: str, query: TaskQuery, now: datetime) -> TaskPage:
        keys = await self._keys()
        live, raw_generation = await self._redis.mget([keys.live, keys.generation(owner)])
        _require_live(live)
        generation = int(raw_generation or 0)
        cache_key = keys.list_page(owner, generation, query.fingerprint())
        cached = await self._redis.get(cache_key)
        CACHE.labels("hit" if cached is not None else "miss").inc()
        if cached is not None:
            return _page_from_json(cached)
        page = paginate(await self._candidates(keys, owner, query), query, now)
        await self._redis.set(cache_key, _page_to_json(page), ex=PAGE_CACHE_TTL)
        return page

    async def _list_redis_rendered(
        self, owner: str, query: TaskQuery, now: datetime, guard: ReadGuard, renderer: PageRenderer
    ) -> bytes:
        keys = await self._keys()
        # The renderer's name is part of the keys: list_tasks caches TaskState pages, and another
        # rendering (or an older process's) never reads this one's pages or index. The index's
        # key is a page key whose query part is not a fingerprint (hex): it is purged with the
        # pages (erasure_purge.py).
        head, tail = _around_generation(keys, owner, f"{renderer.name}-{query.fingerprint()}")
        index_tail = f":{renderer.name}-{list_index.FORMAT}"
        words = query.terms()
        script_keys = [*_guard_keys(guard, keys), keys.generation(owner), keys.tasks(owner)]
        held_key = head + index_tail
        held = self._indexes.get(held_key)
        args = [head, tail, index_tail, "0" if words else "1", held.build_id if held else b""]
        answer = self._allowed(
            guard, await self._run_guarded(self._guarded_page, self._hot_page, script_keys, args)
        )
        generation, cached, stored_index, views = (*answer, None, None, None)[:4]
        # Lua's false is nil in a reply, or a RESP3 boolean for a script that asks for RESP3.
        marked = stored_index == b""
        cached, stored_index = cached or None, stored_index or None
        if cached is not None:
            _HITS.inc()
            body: bytes = cached
            return body
        (_MISSES if stored_index is None else _FROM_INDEX).inc()
        at = head + as_text(generation)
        index: ListIndex | None = None
        if stored_index == 1 and held is not None:  # the copy held is the generation's index
            index = held
        elif stored_index is not None:
            index = self._keep(held_key, ListIndex(stored_index))
        elif held is not None:  # a new generation with no index yet, or the index purged
            self._indexes.pop(held_key, None)
        built = None
        if stored_index is None and views is not None:
            # The views as stored, parsed but not validated (the projector wrote them from
            # `TaskState`s), in one parse of them all as a JSON array.
            parsed = orjson.loads(b"[" + b",".join(views) + b"]")
            if not marked:
                # The generation's first miss: its page from the views, and the mark. Building
                # the index costs about twice this; an owner who lists once between two changes
                # never pays it, and the next miss of the generation builds it.
                page_items, next_cursor = paginate_json(parsed, query, now)
                body = renderer.render({"items": page_items, "next": next_cursor})
                await self._cache([(at + tail, body), (at + index_tail, b"")])
                return body
            built = list_index.build(parsed, renderer.item)
            index = self._keep(held_key, ListIndex(built))
        if index is not None:
            # The search sets are read after the script: a change projected in between gives ids
            # newer than the index. That page shows the index's generation, filtered by a newer
            # search, and is cached under a generation already retired (never read again).
            found = await self._found_by_prefixes(keys, owner, words) if words else None
            only = None if found is None else {as_text(task_id) for task_id in found}
            items, next_cursor = index_page(index, query, now, only)
            body = _joined_page(items, next_cursor)
        else:
            # Search words and no index of this generation: the views the words find.
            found_views = orjson.loads(
                b"[" + b",".join(await self._found_json(keys, owner, words)) + b"]"
            )
            page_items, next_cursor = paginate_json(found_views, query, now)
            body = renderer.render({"items": page_items, "next": next_cursor})
        # A page walked from the index is cached too: a repeat of the query (the same list shown
        # again) is then one small read, where walking the index again costs more than this write
        # (a page cache left out for small indexes halved Q cached: docs/benchmarks.md).
        await self._cache(
            [(at + tail, body), *([(at + index_tail, built)] if built is not None else [])]
        )
        return body

    def _keep(self, key: str, index: ListIndex) -> ListIndex:
        """Keep a copy of `index`, unless it alone is larger than all the copies may be."""
        if index.size <= self._indexes.maxsize:
            self._indexes[key] = index
        else:
            self._indexes.pop(key, None)
        return index

    async def _cache(self, pairs: list[tuple[str, bytes]]) -> None:
        """Cache a page, or a page and the index (or its mark: empty) in one round trip; on the
        hot connections when there are."""
        if len(pairs) == 1:
            ((key, value),) = pairs
            if self._hot is not None:
                await self._hot.execute("SET", key, value, "EX", PAGE_CACHE_TTL)
            else:
                await self._redis.set(key, value, ex=PAGE_CACHE_TTL)
            return
        (page_key, page), (index_key, index) = pairs
        keys, args = [page_key, index_key], [page, index, str(PAGE_CACHE_TTL).encode()]
        if self._hot is not None:
            await self._hot.evalsha(self._hot_cache_two, keys, args)
        else:
            await self._cache_two(keys=keys, args=args)

    async def _run_guarded(
        self, script: AsyncScript, hot: HotScript, keys: list[str], args: list[str | bytes]
    ) -> Any:
        """A guarded script, on the hot connections when there are (its caller bounds it)."""
        if self._hot is not None:
            return await self._hot.evalsha(hot, keys, args)
        return await script(keys=keys, args=args)

    @staticmethod
    def _allowed(guard: ReadGuard, answer: Any) -> Any:
        """A guarded script's answer, unless the guard refused or the views cannot serve."""
        if answer == _REFUSED:
            raise guard.refused()
        if answer == _UNCHECKED:
            raise _UncheckedError
        if answer == _NOT_LIVE:
            raise _NotLiveError
        return answer

    async def _guarded_either(
        self,
        guard: ReadGuard,
        primary: Callable[[], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]],
    ) -> tuple[T, Source]:
        """`primary` (which checks `guard` in Redis) when Redis answers in time and its views
        are live; otherwise the guard decides without them, then `fallback` reads MongoDB."""
        if guard.redis_answering():
            try:
                if self._hot is not None:
                    # Each call on the hot connection is bounded by itself, and every other
                    # call `primary` makes by its client's own timeouts: no timer more.
                    return await primary(), "redis"
                async with asyncio.timeout(guard.timeout):
                    return await primary(), "redis"
            except _NotLiveError:
                pass  # the guard passed in Redis: only the views cannot serve
            except _UncheckedError:
                await guard.check_durably()
            except (RedisError, OSError) as exc:  # OSError: TimeoutError, refused connections
                guard.check_without_redis(redis_failed=True)
                log.warning("redis_read_failed_using_mongodb", error=repr(exc))
        else:
            guard.check_without_redis(redis_failed=False)
        return await fallback(), "mongodb"

    async def _candidates(
        self, keys: RedisViewKeys, owner: str, query: TaskQuery
    ) -> list[TaskState]:
        """The owner's views, narrowed by the search index when there is a `q`."""
        words = query.terms()
        if words:
            ids = await self._found_by_prefixes(keys, owner, words)
            raws = await self._redis.hmget(keys.tasks(owner), list(ids)) if ids else []
        else:
            raws = list((await self._redis.hgetall(keys.tasks(owner))).values())
        return [TaskState.model_validate_json(raw) for raw in raws if raw]

    async def _found_json(self, keys: RedisViewKeys, owner: str, words: list[str]) -> list[Any]:
        """The owner's views the search words find, as stored (JSON); on the hot connections
        when there are (the caller bounds the read). Without words the guarded script reads
        the views itself."""
        ids = list(await self._found_by_prefixes(keys, owner, words))
        if not ids:
            return []
        tasks = keys.tasks(owner)
        raws: list[Any]
        if self._hot is not None:
            raws = await self._hot.execute("HMGET", tasks, *ids)
        else:
            raws = await self._redis.hmget(tasks, ids)
        return [raw for raw in raws if raw]  # bytes: the clients do not decode responses

    async def _found_by_prefixes(
        self, keys: RedisViewKeys, owner: str, words: list[str]
    ) -> set[bytes]:
        """Ids of the owner's live tasks that have, for every word, a term it begins.

        The owner's terms are one sorted set (all scores 0, so in byte order): ZRANGEBYLEX
        lists the terms from the word up to the word followed by 0xFF, a byte UTF-8 never
        uses, which are exactly the terms the word begins. Their sets' union is what the word
        finds; the words' results are intersected. Two round trips, each a pipeline.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for word in words:
                pipe.zrangebylex(
                    keys.terms(owner), b"[" + word.encode(), b"(" + word.encode() + b"\xff"
                )
            expansions: list[list[bytes]] = await pipe.execute()
        if not all(expansions):
            return set()  # a word that begins no term finds nothing
        async with self._redis.pipeline(transaction=False) as pipe:
            for terms in expansions:
                pipe.sunion([keys.term(owner, as_text(term)) for term in terms])
            found: list[set[bytes]] = await pipe.execute()
        return set.intersection(*found)

    async def _keys(self) -> RedisViewKeys:
        checked, version = self._active
        if time.monotonic() - checked > ACTIVE_VERSION_TTL:
            try:
                version = await active_version(self._redis, self._db)
            except PyMongoError as exc:
                # Redis lost the version and MongoDB cannot say: keep the one last known.
                log.warning("active_version_unknown", kept=version, error=repr(exc))
            self._active = (time.monotonic(), version)
        return RedisViewKeys(version)

    def _views(self) -> Any:
        return self._db[names.task_views_collection(self._active[1])]

    async def _either(
        self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> tuple[T, Source]:
        """Redis when it answers and its views are live; MongoDB (the read preference's
        members) when not."""
        try:
            return await primary(), "redis"
        except _NotLiveError:
            return await fallback(), "mongodb"
        except RedisError as exc:
            log.warning("redis_read_failed_using_mongodb", error=repr(exc))
            return await fallback(), "mongodb"


class _UncheckedError(Exception):
    """Redis's copy of the guard's list is not known to be complete: ask its durable record."""


def _guard_keys(guard: ReadGuard, keys: RedisViewKeys) -> list[str]:
    return [*guard.keys, guard.complete_key, keys.live]


def _require_live(flag: Any) -> None:
    if not flag:
        raise _NotLiveError


# -- filtering, ordering and cursors (pure) ------------------------------------------------------


def matches(view: TaskState, query: TaskQuery, now: datetime, *, deleted: bool = False) -> bool:
    """Whether a live view (a deleted one, with `deleted`) passes every filter of `query`.

    The search words (`query.terms()`) are not checked here: the index found the candidates.
    """
    if view.deleted is not deleted:
        return False
    if query.status and view.status not in query.status:
        return False
    if query.priority is not None and view.priority is not query.priority:
        return False
    if any(tag not in view.tags for tag in query.tags):
        return False
    if query.due_before is not None and not (view.due_at and view.due_at < query.due_before):
        return False
    if query.due_after is not None and not (view.due_at and view.due_at > query.due_after):
        return False
    if query.overdue is not None:
        overdue = view.due_at is not None and view.due_at < now and view.status is not Status.DONE
        if overdue is not query.overdue:
            return False
    return True


def sort_value(view: TaskState, field: SortField) -> int | None:
    """The value a view sorts by: microseconds since the epoch, or the priority's rank."""
    if field == "priority":
        return PRIORITY_RANK[view.priority.value]
    moment = {"created": view.created_at, "updated": view.updated_at, "due": view.due_at}[field]
    return None if moment is None else int(moment.timestamp() * 1_000_000)


def paginate(
    views: list[TaskState], query: TaskQuery, now: datetime, *, deleted: bool = False
) -> TaskPage:
    """One page of the matching views in the query's order, after the query's cursor (of the
    live views, or of the deleted ones with `deleted`)."""
    keyed = [
        (_order_key(sort_value(v, query.sort), v.task_id), v)
        for v in views
        if matches(v, query, now, deleted=deleted)
    ]
    page, more = _page(keyed, query)
    next_cursor = encode_cursor(query, page[-1][1]) if more and page else None
    return TaskPage(items=[v for _, v in page], next_cursor=next_cursor)


def _page(
    keyed: list[tuple[tuple[int, int, str], T]], query: TaskQuery
) -> tuple[list[tuple[tuple[int, int, str], T]], bool]:
    """The query's page of views keyed by their order, and whether more follow it: sorted in
    the query's order, after its cursor. (`paginate` and `paginate_json` share it.)"""
    descending = query.order == "desc"
    keyed.sort(key=lambda pair: pair[0], reverse=descending)
    if query.cursor is not None:
        after = _order_key(*decode_cursor(query))
        keyed = [(k, v) for k, v in keyed if (k < after if descending else k > after)]
    return keyed[: query.limit], len(keyed) > query.limit


def encode_cursor(query: TaskQuery, last: TaskState) -> str:
    return _cursor(query, sort_value(last, query.sort), last.task_id)


def _cursor(query: TaskQuery, value: int | None, task_id: str) -> str:
    body = orjson.dumps([query.sort, query.order, value, task_id])
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


# -- the same on views in their stored JSON form (the Redis views, parsed, not validated) ----
# `paginate_json` gives the page `paginate` gives for the same views as `TaskState`s
# (tests/test_paginate_json.py checks it for any views and query): an uncached list parses
# every view of the owner but validates none, and renders only the page's.


def _moment(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


def matches_json(view: ViewJson, query: TaskQuery, now: datetime, *, deleted: bool = False) -> bool:
    """`matches` on a view's stored JSON."""
    if view["deleted"] is not deleted:
        return False
    if query.status and view["status"] not in {s.value for s in query.status}:
        return False
    if query.priority is not None and view["priority"] != query.priority.value:
        return False
    if any(tag not in view["tags"] for tag in query.tags):
        return False
    if query.due_before is None and query.due_after is None and query.overdue is None:
        return True
    due = _moment(view["due_at"])
    if query.due_before is not None and not (due and due < query.due_before):
        return False
    if query.due_after is not None and not (due and due > query.due_after):
        return False
    if query.overdue is not None:
        overdue = due is not None and due < now and view["status"] != Status.DONE.value
        if overdue is not query.overdue:
            return False
    return True


_JSON_MOMENT = {"created": "created_at", "updated": "updated_at", "due": "due_at"}


def sort_value_json(view: ViewJson, field: SortField) -> int | None:
    """`sort_value` on a view's stored JSON."""
    if field == "priority":
        return PRIORITY_RANK[view["priority"]]
    raw = view[_JSON_MOMENT[field]]
    return None if raw is None else sort_us(raw)


def paginate_json(
    views: list[ViewJson], query: TaskQuery, now: datetime, *, deleted: bool = False
) -> tuple[list[ViewJson], str | None]:
    """`paginate` on views' stored JSON: the page's views and the next cursor."""
    keyed = [
        (_order_key(sort_value_json(v, query.sort), v["task_id"]), v)
        for v in views
        if matches_json(v, query, now, deleted=deleted)
    ]
    page, more = _page(keyed, query)
    next_cursor = None
    if more and page:
        known, value, task_id = page[-1][0]
        next_cursor = _cursor(query, value if known else None, task_id)
    return [v for _, v in page], next_cursor


def index_page(
    index: ListIndex, query: TaskQuery, now: datetime, only: set[str] | None = None
) -> tuple[list[memoryview], str | None]:
    """`paginate_json` on a list index (live views only; of them, only the ids in `only` when
    given): the page's rendered items and the next cursor. The query's order is walked until
    the page is full; the filters test the index's fields (tests/test_paginate_json.py)."""
    keep = _index_filter(query, now)
    after = _order_key(*decode_cursor(query)) if query.cursor is not None else None
    page: list[tuple[int, list[Any]]] = []
    for i, entry in index.walk(query.sort, query.order == "desc", after):
        if (only is not None and entry[ID] not in only) or not keep(entry):
            continue
        if len(page) == query.limit:  # one more matches: there is a next page
            _, last = page[-1]
            cursor = _cursor(query, list_index.sort_value(last, query.sort), last[ID])
            return [index.item(i) for i, _ in page], cursor
        page.append((i, entry))
    return [index.item(i) for i, _ in page], None


def _index_filter(query: TaskQuery, now: datetime) -> Callable[[list[Any]], bool]:
    """`matches_json` on a list index's entry (a live view), the query's values made once."""
    statuses = {s.value for s in query.status}
    priority = None if query.priority is None else query.priority.value
    tags = query.tags
    before = None if query.due_before is None else exact_us(query.due_before)
    after = None if query.due_after is None else exact_us(query.due_after)
    overdue, now_us, done = query.overdue, exact_us(now), Status.DONE.value
    status_at, priority_at, tags_at, due_at = (
        list_index.STATUS,
        list_index.PRIORITY,
        list_index.TAGS,
        list_index.DUE_US,
    )

    def keep(entry: list[Any]) -> bool:
        if statuses and entry[status_at] not in statuses:
            return False
        if priority is not None and entry[priority_at] != priority:
            return False
        if tags and any(tag not in entry[tags_at] for tag in tags):
            return False
        due = entry[due_at]
        if before is not None and not (due is not None and due < before):
            return False
        if after is not None and not (due is not None and due > after):
            return False
        if overdue is not None:
            late = due is not None and due < now_us and entry[status_at] != done
            if late is not overdue:
                return False
        return True

    return keep


def _joined_page(items: list[memoryview], next_cursor: str | None) -> bytes:
    """A page from its rendered items: what `PageRenderer.render` gives for the same page."""
    return b'{"items":[' + b",".join(items) + b'],"next":' + orjson.dumps(next_cursor) + b"}"


def decode_cursor(query: TaskQuery) -> tuple[int | None, str]:
    """The position a cursor stands for; CursorError unless this sort and order made it."""
    assert query.cursor is not None
    try:
        raw = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4))
        sort, order, value, task_id = orjson.loads(raw)
    except (ValueError, TypeError):
        raise CursorError("the cursor is not one this API issued") from None
    if (sort, order) != (query.sort, query.order):
        raise CursorError("the cursor belongs to another sort order")
    if not (value is None or isinstance(value, int)) or not isinstance(task_id, str):
        raise CursorError("the cursor is not one this API issued")
    return value, task_id


def _page_to_json(page: TaskPage) -> bytes:
    return orjson.dumps(_page_json(page))


def _page_json(page: TaskPage) -> ViewJson:
    return {"items": [v.model_dump(mode="json") for v in page.items], "next": page.next_cursor}


def _around_generation(keys: RedisViewKeys, owner: str, query: str) -> tuple[str, str]:
    """A cached page's key split where its generation goes (for _GUARDED_PAGE to join)."""
    tail = f":{query}"
    at_zero = keys.list_page(owner, 0, query)
    assert at_zero.endswith(f"0{tail}"), "the generation must come just before the query"
    return at_zero[: -len(tail) - 1], tail


def _page_from_json(raw: bytes | str) -> TaskPage:
    data = orjson.loads(raw)
    return TaskPage([TaskState.model_validate(v) for v in data["items"]], data["next"])


# -- MongoDB (fallback, and the queryable model of a real deployment) -----------------------------

_MONGO_FIELD = {
    "created": "created_at",
    "updated": "updated_at",
    "due": "due_at",
    "priority": "priority_rank",
}


async def _list_mongo(
    views: Any,
    owner: str,
    query: TaskQuery,
    now: datetime,
    session: Session | None = None,
    *,
    deleted: bool = False,
) -> TaskPage:
    field = _MONGO_FIELD[query.sort]
    direction = -1 if query.order == "desc" else 1
    flt = mongo_filter(owner, query, now, deleted=deleted)
    if query.cursor is not None:
        flt = {"$and": [flt, _after_cursor(field, query)]}
    cursor = views.find(flt, session=session).sort([(field, direction), ("_id", direction)])
    words = query.terms()
    if not words:
        docs = await cursor.limit(query.limit + 1).to_list()
    else:
        # On MongoDB the prefix ranges ($elemMatch) find exactly the matching views; FerretDB
        # v1 evaluates a range inside $elemMatch against the array as a whole (a view with
        # "abc" and "zzz" passes "m"), so each view is checked here too, read until the page
        # is full (on MongoDB, no more than it would have been).
        docs = []
        async for doc in cursor.batch_size(query.limit + 1):
            if found_by_prefixes(doc.get("terms") or [], words):
                docs.append(doc)
                if len(docs) > query.limit:
                    break
        await cursor.close()
    items = [view_from_document(doc) for doc in docs[: query.limit]]
    more = len(docs) > query.limit
    return TaskPage(items, encode_cursor(query, items[-1]) if more and items else None)


def mongo_filter(
    owner: str, query: TaskQuery, now: datetime, *, deleted: bool = False
) -> dict[str, Any]:
    """The MongoDB filter for `query`: built from typed values only, scoped to `owner` (its
    live views, or its deleted ones with `deleted`)."""
    flt: dict[str, Any] = {"owner_id": owner, "deleted": deleted}
    if query.status:
        flt["status"] = {"$in": [s.value for s in query.status]}
    if query.priority is not None:
        flt["priority"] = query.priority.value
    if query.tags:
        flt["tags"] = {"$all": list(query.tags)}
    # Each word begins one of the view's terms: a range on the multikey `terms` index, whose
    # upper bound is the word followed by the highest code point (strings compare as UTF-8
    # bytes, and U+10FFFF encodes highest). A `q` without words narrows nothing, as in Redis.
    prefixes = [
        {"terms": {"$elemMatch": {"$gte": word, "$lt": word + TOP_CODE_POINT}}}
        for word in query.terms()
    ]
    due: dict[str, Any] = {}
    if query.due_before is not None:
        due["$lt"] = query.due_before
    if query.due_after is not None:
        due["$gt"] = query.due_after
    if due:
        flt["due_at"] = due
    if prefixes:
        flt["$and"] = prefixes
    if query.overdue is True:
        flt["$and"] = [*prefixes, {"due_at": {"$ne": None}}, {"due_at": {"$lt": now}}]
        flt["status"] = {
            "$in": [s.value for s in (query.status or tuple(Status)) if s is not Status.DONE]
        }
    elif query.overdue is False:
        flt["$or"] = [{"due_at": None}, {"due_at": {"$gte": now}}, {"status": Status.DONE.value}]
    return flt


def _after_cursor(field: str, query: TaskQuery) -> dict[str, Any]:
    value, task_id = decode_cursor(query)
    stored: Any = value
    if value is not None and field != "priority_rank":
        stored = datetime.fromtimestamp(value / 1_000_000, tz=UTC)
    desc = query.order == "desc"
    same = {field: stored, "_id": {"$lt" if desc else "$gt": task_id}}
    if stored is None:
        return same if desc else {"$or": [{field: {"$ne": None}}, same]}
    beyond = {field: {"$lt" if desc else "$gt": stored}}
    return {"$or": [beyond, same, {field: None}]} if desc else {"$or": [beyond, same]}
