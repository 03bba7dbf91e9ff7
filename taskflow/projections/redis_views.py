"""The Redis task read model: per-owner task views, a search index (with the owner's terms in
byte order for prefix search), tag counts, status counts, overdue dates.

This is the model hot reads are served from: every read touches only the asking user's keys, so
its cost does not grow with the log. Writes of one batch go in one script that checks the fence
and the checkpoint first (guarded_writes.py), so a process whose lease was taken over cannot
write. The same script appends each change to the change feeds (feed_writes.py), so what the
feeds publish is exactly what was applied. Reads use the views only while the `live` key says
they caught up with the log (redis_keys.py), so a Redis that lost its data is rebuilt from the
log before it answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cachetools import LRUCache
from redis.asyncio import Redis
from redis.exceptions import WatchError

from taskflow.commands.aggregates import TASK
from taskflow.commands.task import Status, TaskState
from taskflow.events.records import Commit
from taskflow.hot_redis import HotRedis
from taskflow.projections.feed_writes import DEFAULT_HISTORY, FeedStep, FeedWriter
from taskflow.projections.guarded_writes import GuardedScript, GuardedWrites, Outcome
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.runtime import LeaseLostError
from taskflow.projections.views import (
    TaskHistory,
    apply_or_repair,
    erased_owner,
    search_terms,
    task_id_of,
    without_personal_data,
)
from taskflow.text import as_text

NAME = "task_views_redis"
# Views remembered between batches (about 2 kB each), so a busy task is not read back.
CACHE_SIZE = 20_000


@dataclass
class _Change:
    owner: str
    before: TaskState | None
    after: TaskState | None
    steps: list[FeedStep] = field(default_factory=list)  # the view after each of its commits


_RAISE_FENCE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


class CheckpointMovedError(Exception):
    """The checkpoint is not where this holder left it (Redis lost its data): start over."""


class RedisTaskViews:
    """`Projection` writing task views into Redis under read-model version `version`.

    While it holds the lease it is the only writer, so it remembers the views it wrote and
    folds the next batch onto them without reading them back (two round trips a pass). What
    it remembers is trusted only while the checkpoint is where it left it: a Redis that lost
    its data (the projection then rebuilds from zero) or any other writer empties the cache.
    """

    pace_seconds = 0.0
    reads_stored = False

    def __init__(
        self,
        redis: Redis,
        version: int = 1,
        *,
        hot: HotRedis,
        history: TaskHistory | None = None,
        allocated: Callable[[], Awaitable[int | None]] | None = None,
        feed_history: int = DEFAULT_HISTORY,
    ) -> None:
        """A pass's calls (the checkpoint, the views it reads, the guarded script) go on `hot`,
        the process's pipelined connection; the rare ones (fencing, marking the views live,
        an erasure's reads) on `redis`. `history` repairs a view found behind the log;
        `allocated` is the log's highest
        position handed out (`EventStore.allocated_position`): the views are marked live only
        once a pass has read that far (without it, at the end of any complete pass);
        `feed_history` is how many changes each owner's change feed keeps."""
        self.name = f"{NAME}_v{version}"
        self._redis = redis
        self._history = history
        self._allocated = allocated
        self._marked_live = False  # since this process last lost track of the checkpoint
        self.keys = RedisViewKeys(version)
        self.feed = FeedWriter(self.keys, feed_history)
        self._hot = hot
        self._guarded = GuardedScript(hot)
        self._cache: LRUCache[str, TaskState] = LRUCache(maxsize=CACHE_SIZE)
        self._written_to = -1  # the checkpoint this process last wrote; -1: none or unknown

    async def setup(self) -> None:
        return None

    async def position(self) -> int:
        raw = await self._hot.execute("GET", self.keys.checkpoint)
        at = int(raw) if raw else 0
        if at != self._written_to:
            self._forget()
        return at

    async def fence(self, term: int) -> None:
        self._forget()
        # Raised, never lowered: a holder paused between taking its term and fencing must not
        # lower the fence under a newer holder.
        await self._redis.eval(_RAISE_FENCE, 1, self.keys.fence, term)

    async def caught_up(self, position: int, term: int) -> None:
        """Mark the views live, unless Redis lost its data (or another holder wrote) since the
        pass that reached `position` (the checkpoint is watched: then nothing is marked).
        Once per stretch of this process's writes: a Redis that lost its data is noticed by the
        next pass (the checkpoint is not where this process left it), which marks it again."""
        if self._marked_live and position == self._written_to:
            return
        if self._allocated is not None:
            # A pass also ends at a hole it waits on, such as the first position after Redis
            # lost its hints (a grace period before the log is read from MongoDB): reaching the
            # highest position handed out is what says the views hold the whole log.
            allocated = await self._allocated()
            if allocated is None or position < allocated:
                return
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.keys.fence, self.keys.checkpoint)
                fence, at = await pipe.mget(self.keys.fence, self.keys.checkpoint)
                if int(at or 0) != position or (fence is not None and int(fence) > term):
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(self.keys.live, 1)
                await pipe.execute()
            except WatchError:
                return  # the next pass tries again
        self._marked_live = True
        self._written_to = position

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        try:
            changes = await self._fold(commits)
            await self._store(changes, commits, term)
        except BaseException:
            self._forget()  # the writes may or may not have happened
            raise
        self._written_to = commits[-1].position
        for task_id, change in changes.items():
            if change.after is not None:
                self._remember(task_id, change.after)

    async def _store(
        self, changes: dict[str, _Change], commits: Sequence[Commit], term: int
    ) -> None:
        """One guarded script: nothing written if the fence moved past `term` or the
        checkpoint is not where the batch begins (guarded_writes.py)."""
        writes = GuardedWrites()
        for task_id, change in changes.items():
            self._write(writes, task_id, change)
        for owner in {change.owner for change in changes.values()}:
            writes.command("INCR", [self.keys.generation(owner)])
        steps = [step for change in changes.values() for step in change.steps]
        begins = commits[0].position - 1
        self.feed.write(writes, steps, commits, begins)
        for erased in {user for c in commits if (user := erased_owner(c))}:
            # Their change feed held their tasks' texts: gone with the erasure, in log order,
            # so no entry written before it (by this batch included) is left.
            writes.command("DEL", [self.keys.feed(erased)])
        outcome, at = await self._guarded.run(
            writes,
            fence=self.keys.fence,
            checkpoint=self.keys.checkpoint,
            term=term,
            after=begins,
            to=commits[-1].position,
        )
        if outcome is Outcome.FENCED:
            raise LeaseLostError(self.name)
        if outcome is Outcome.MOVED:
            raise CheckpointMovedError(f"{self.name}: {at}, not {begins}")

    async def _fold(self, commits: Sequence[Commit]) -> dict[str, _Change]:
        """Each touched task's view before and after the batch.

        A user's erasure turns every view of theirs, stored or folded so far, into its erased
        form (`without_personal_data`): titles, descriptions, tags and search terms go.
        """
        task_commits = [c for c in commits if TASK.owns(c)]
        task_ids = list(dict.fromkeys(task_id_of(c) for c in task_commits))
        changes = {t: _Change(v.owner_id, v, v) for t in task_ids if (v := self._cache.get(t))}
        changes.update(await self._read([t for t in task_ids if t not in changes]))
        erasures = {c.position: owner for c in commits if (owner := erased_owner(c))}
        for owner in set(erasures.values()):
            await self._read_owned(owner, changes)
        for commit in commits:
            if commit.position in erasures:
                for owned in changes.values():
                    if owned.owner == erasures[commit.position] and owned.after is not None:
                        owned.after = without_personal_data(owned.after)
                continue
            if not TASK.owns(commit):
                continue
            task_id = task_id_of(commit)
            change = changes.get(task_id)
            after = await apply_or_repair(change.after if change else None, commit, self._history)
            if change is None:
                assert after is not None
                change = changes[task_id] = _Change(after.owner_id, None, None)
            if after is not None and after is not change.after:  # not a replayed commit
                change.steps.append(FeedStep(commit.position, after))
            change.after = after
        return {tid: c for tid, c in changes.items() if c.after != c.before}

    async def _read(self, task_ids: list[str]) -> dict[str, _Change]:
        """The stored views of tasks not remembered (two round trips: owners, then views)."""
        if not task_ids:
            return {}
        stored = await self._hot.execute("HMGET", self.keys.owners, *task_ids)
        known = [(t, as_text(o)) for t, o in zip(task_ids, stored, strict=True) if o is not None]
        changes: dict[str, _Change] = {}
        if not known:
            return changes  # new tasks only (creates): nothing more to read
        reads = [("HGET", self.keys.tasks(owner), task_id) for task_id, owner in known]
        for (task_id, owner), raw in zip(known, await self._hot.execute_all(reads), strict=True):
            if isinstance(raw, Exception):
                raise raw
            before = TaskState.model_validate_json(raw) if raw else None
            changes[task_id] = _Change(owner, before, before)
        return changes

    async def _read_owned(self, owner: str, changes: dict[str, _Change]) -> None:
        """Add every stored view of `owner` not in `changes` yet (an erasure touches them all)."""
        for task_id, raw in (await self._redis.hgetall(self.keys.tasks(owner))).items():
            known = as_text(task_id)
            if known not in changes:
                view = self._cache.get(known) or TaskState.model_validate_json(raw)
                changes[known] = _Change(owner, view, view)

    def _remember(self, task_id: str, view: TaskState) -> None:
        self._cache[task_id] = view  # the least recently used one goes past CACHE_SIZE

    def _forget(self) -> None:
        self._cache.clear()
        self._written_to = -1
        self._marked_live = False

    def _write(self, writes: GuardedWrites, task_id: str, change: _Change) -> None:
        """Record one task's view and index changes.

        A term leaves the owner's sorted set of terms once no live task has it (its set is
        empty: Redis deletes an empty set), and a tag's count leaves the hash at zero. Whatever
        the order of one task's drops against another's additions in the batch, the final state
        holds exactly the terms of non-empty sets and the live tasks' tag counts, so a replayed
        batch (which changes no view, so writes nothing here) leaves them right.
        """
        after, before, owner = change.after, change.before, change.owner
        assert after is not None
        writes.command("HSET", [self.keys.owners], task_id, owner)
        writes.command("HSET", [self.keys.tasks(owner)], task_id, after.model_dump_json())
        old_terms, new_terms = _live_terms(before), _live_terms(after)
        terms = self.keys.terms(owner)
        for term in old_terms - new_terms:
            writes.drop_term(self.keys.term(owner, term), terms, task_id, term)
        for term in new_terms - old_terms:
            writes.command("SADD", [self.keys.term(owner, term)], task_id)
            writes.command("ZADD", [terms], 0, term)
        old_tags, new_tags = _live_tags(before), _live_tags(after)
        for tag in old_tags - new_tags:
            writes.drop_tag(self.keys.tags(owner), tag)
        for tag in new_tags - old_tags:
            writes.command("HINCRBY", [self.keys.tags(owner)], tag, 1)
        if before is not None and not before.deleted:
            writes.command("HINCRBY", [self.keys.counts(owner)], before.status.value, -1)
        if not after.deleted:
            writes.command("HINCRBY", [self.keys.counts(owner)], after.status.value, 1)
        if _open_with_due(after):
            assert after.due_at is not None
            writes.command("ZADD", [self.keys.due(owner)], after.due_at.timestamp(), task_id)
        else:
            writes.command("ZREM", [self.keys.due(owner)], task_id)


def _live_terms(view: TaskState | None) -> set[str]:
    return set() if view is None or view.deleted else set(search_terms(view))


def _live_tags(view: TaskState | None) -> set[str]:
    return set() if view is None or view.deleted else set(view.tags)


def _open_with_due(view: TaskState) -> bool:
    return not view.deleted and view.status is not Status.DONE and view.due_at is not None
