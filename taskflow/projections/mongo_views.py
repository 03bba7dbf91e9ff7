"""The MongoDB task read model: one document per task, indexed for the API's queries.

It serves reads when Redis cannot, and is the queryable model on a real MongoDB deployment.
Only the lease holder writes it, and the server refuses a superseded holder's writes: every
write that could move a stored view or the checkpoint is fenced by the writer's term
(mongo_view_writes.py, docs/concurrency.md). The version check in `apply_commit`, and inserts
that never replace a newer view, make a replayed batch change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from taskflow import names
from taskflow.commands.aggregates import TASK
from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.mongo_indexes import serves_query_indexes
from taskflow.projections.duty_cycle import DutyCycle
from taskflow.projections.mongo_view_writes import (
    close_terms_before,
    insert_new,
    read_checkpoint,
    replace,
    write_fenced,
)
from taskflow.projections.runtime import LeaseLostError
from taskflow.projections.views import (
    TaskHistory,
    apply_or_repair,
    erased_owner,
    task_id_of,
    view_document,
    view_from_document,
    without_personal_data,
)

NAME = "task_views_mongo"
# The MongoDB views serve reads only while Redis cannot (task_queries.py), so they need not
# follow every append: at 50 commits/s a pass per commit cost the projector process about half
# its CPU (Redis round trips of the log reader, BSON, FerretDB writes) and slowed the Redis
# views beside them (docs/benchmarks.md, Write-to-visible latency). Paced, they lag by about
# this much more and write a busy task once per pass.
PACE_SECONDS = 0.5
# Their writes cost the server time that requests need: on FerretDB as published, every replace
# of a stored view scanned the view collection, and keeping 10,000 views current took FerretDB's
# whole core under load (docs/benchmarks.md, "Scale"; the FerretDB that scripts/services.sh
# builds looks `_id` up through its index: docs/design.md); it still costs about 1 ms of its CPU
# per view. The replace commands may take at most this share of the time, each followed by its
# rest (duty_cycle.py), so they never hold the server for long; when behind, the views lag more
# instead. On MongoDB a pass is an index lookup per view and far shorter than the pace.
BUSY_SHARE = 0.25
# Views remembered between batches, so a busy task is not re-read from MongoDB every batch.
CACHE_SIZE = 50_000

PRIORITY_RANK = {"low": 0, "medium": 1, "high": 2, "urgent": 3}


def task_view_indexes() -> list[list[tuple[str, int]]]:
    """The compound indexes behind every filter and sort the list endpoint offers."""
    owner = ("owner_id", ASCENDING)
    live = ("deleted", ASCENDING)
    return [
        [owner, live, ("status", ASCENDING), ("created_at", DESCENDING)],
        [owner, live, ("created_at", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("updated_at", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("due_at", ASCENDING), ("_id", ASCENDING)],
        [owner, live, ("priority_rank", DESCENDING), ("_id", DESCENDING)],
        [owner, live, ("tags", ASCENDING)],
        [owner, live, ("terms", ASCENDING)],
    ]


class MongoTaskViews:
    """`Projection` writing task view documents into `task_views_v<version>`.

    `apply` is `stage` then `flush`. A rebuild stages many batches before one flush
    (projections/shared_pass.py), so each task is written once however many batches touch it:
    on FerretDB every write of a known view scans the collection.
    """

    pace_seconds = PACE_SECONDS
    reads_stored = False

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        version: int = 1,
        *,
        leases: AsyncCollection[dict[str, Any]] | None = None,
        history: TaskHistory | None = None,
    ) -> None:
        """Views and checkpoint in `db`. `leases` is where the worker takes this projection's
        lease (the log's database, not `db`, in a deployment: `catalog.projections`): a flush
        looks there for a newer term first, to skip work it would be refused anyway (the fence
        itself is the server's, mongo_view_writes.py). `history` repairs a view found behind
        the log (views.apply_or_repair)."""
        self.name = f"{NAME}_v{version}"
        self.views: AsyncCollection[dict[str, Any]] = db[names.task_views_collection(version)]
        # Where checkpoints lived before they moved into the view collection (read once, as
        # the starting point of a deployment that ran the older code).
        self._legacy_checkpoints = db[names.CHECKPOINTS]
        self._leases = leases
        self._history = history
        self._cache: LRUCache[str, TaskState] = LRUCache(maxsize=CACHE_SIZE)
        # Paces a lease holder's replaces. Not inserts: a new view is one insert among up to
        # 500, and a rebuild writes little else. Not a writer without a lease (term 0: tests,
        # `runtime.catch_up`, the catch-up benchmark): its caller waits for it to finish.
        self.duty = DutyCycle(BUSY_SHARE)
        # The checkpoint this process last wrote (-1: none). The cache holds what this process
        # wrote; it is trusted only while the checkpoint is still there (no one else wrote).
        self._written_to = -1
        self._staged: dict[str, TaskState] = {}  # folded, not yet written
        self._new: set[str] = set()  # staged views never read from or written to the collection
        self._staged_to = 0  # the position the staged views reflect

    async def setup(self) -> None:
        # Query indexes only: on FerretDB with SQLite, which cannot use them, they nearly
        # tripled what each replace writes (mongo_indexes.py).
        if await serves_query_indexes(self.views):
            for keys in task_view_indexes():
                await self.views.create_index(keys)

    async def position(self) -> int:
        at = await read_checkpoint(self.views)
        if at is None:
            legacy = await self._legacy_checkpoints.find_one({"_id": self.name})
            at = int(legacy["position"]) if legacy else 0
        if at != self._written_to:
            # Another holder moved the views on (or this is the first look): what this process
            # remembers may be older than what is stored, and folding the next commits onto it
            # would find gaps everywhere. (Staged views are kept: a rebuild stages batch after
            # batch between two looks at the checkpoint; a new term drops them in `fence`.)
            self._cache.clear()
            self._written_to = -1
        return at

    async def fence(self, term: int) -> None:
        """Close every older term's ledger: from now on the server refuses their writes."""
        # Another holder may have moved the views on since we last held it.
        self._cache.clear()
        self.drop_staged()
        await close_terms_before(self.views, term)

    async def caught_up(self, position: int, term: int) -> None:
        return None  # the checkpoint says how far the views are; reads compare it themselves

    def drop_staged(self) -> None:
        """Forget the views folded but not written (the next batch starts at the checkpoint)."""
        for task_id in self._staged:
            self._cache.pop(task_id, None)  # newer than what the collection holds
        self._staged.clear()
        self._new.clear()
        self._staged_to = 0

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        await self.stage(commits)
        await self.flush(term)

    @property
    def staged(self) -> int:
        """How many views are folded but not written yet."""
        return len(self._staged)

    async def stage(self, commits: Sequence[Commit]) -> None:
        """Fold `commits` into the views to write (reads only views neither known nor new)."""
        if not commits:
            return
        task_commits = [c for c in commits if TASK.owns(c)]
        await self._load(_to_look_up(task_commits, self._known))
        for commit in commits:
            if owner := erased_owner(commit):
                await self._erase_owned(owner)  # every view of theirs loses its personal data
                continue
            if not TASK.owns(commit):
                continue
            task_id = task_id_of(commit)
            before = self._known(task_id)
            if before is None and commit.first_version == 1:
                self._new.add(task_id)
            after = await apply_or_repair(before, commit, self._history)
            if after is not None and after is not before:
                self._remember(after)
                self._staged[task_id] = after
        self._staged_to = commits[-1].position

    async def flush(self, term: int) -> None:
        """Write the staged views, then the checkpoint, fenced by `term`; nothing if nothing
        was staged. LeaseLostError when a newer holder has closed `term` (nothing was written
        but inserts of views that did not exist, which cannot move a stored view back)."""
        if not self._staged_to:
            return
        # Not the fence (a pause can come between this check and the write): a holder that
        # already knows it was superseded just does not send writes the server would refuse.
        next_term = {"_id": f"{self.name}:{term + 1}"}
        if term and self._leases is not None and await self._leases.find_one(next_term):
            raise LeaseLostError(self.name)
        new = [_document(v) for t, v in self._staged.items() if t in self._new]
        known = [replace(_document(v)) for t, v in self._staged.items() if t not in self._new]
        refused = await insert_new(self.views, new)
        duty = self.duty if term else None
        await write_fenced(
            self.views, known + refused, term=term, checkpoint=self._staged_to, duty=duty
        )
        self._written_to = self._staged_to
        self._staged.clear()  # written: they stay in the cache
        self._new.clear()
        self._staged_to = 0

    async def _erase_owned(self, owner: str) -> None:
        """Stage the erased form of every view of `owner`: stored, remembered or staged.

        A read by owner (a scan on FerretDB; erasures are rare, and this is the projector's
        own pass, not a request).
        """
        owned = {doc["_id"]: doc async for doc in self.views.find({"owner_id": owner})}
        owned_ids = set(owned) | {t for t, v in self._staged.items() if v.owner_id == owner}
        for task_id in owned_ids:
            view = self._known(task_id) or view_from_document(owned[task_id])
            erased = without_personal_data(view)
            if erased != view:
                self._remember(erased)
                self._staged[task_id] = erased

    def _known(self, task_id: str) -> TaskState | None:
        # Staged views are looked up first: the cache may have evicted one of them, and the
        # collection holds an older version of it than the batch continues from.
        staged = self._staged.get(task_id)
        return staged if staged is not None else self._cache.get(task_id)

    async def _load(self, task_ids: list[str]) -> None:
        if task_ids:
            async for doc in self.views.find({"_id": {"$in": task_ids}}):
                self._remember(view_from_document(doc))

    def _remember(self, view: TaskState) -> None:
        self._cache[view.task_id] = view  # the least recently used one goes past CACHE_SIZE


def _to_look_up(
    task_commits: Sequence[Commit], known: Callable[[str], TaskState | None]
) -> list[str]:
    """Tasks whose stored view the batch needs: not known, and not created in this batch.

    A stream whose first commit here starts at version 1 is a creation; there is nothing to
    read yet, and on FerretDB the `$in` lookup scans the whole collection (docs/design.md).
    """
    first: dict[str, int] = {}
    for commit in task_commits:
        first.setdefault(task_id_of(commit), commit.first_version)
    return [task_id for task_id, version in first.items() if version > 1 and known(task_id) is None]


def _document(view: TaskState) -> dict[str, Any]:
    doc = view_document(view)
    doc["priority_rank"] = PRIORITY_RANK[view.priority.value]
    return doc
