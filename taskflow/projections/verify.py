"""Checks a read model against the log: every task view must equal the fold of its stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from taskflow.commands.aggregates import TASK
from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.events.store import EventStore
from taskflow.projections.mongo_view_writes import is_view
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.views import apply_commit, task_id_of, view_from_document
from taskflow.services import Services
from taskflow.text import as_text


@dataclass(frozen=True)
class ViewMismatch:
    """One task whose read-model document differs from the fold of its events."""

    model: str
    task_id: str
    expected_version: int | None
    found_version: int | None


async def fold_all_tasks(
    store: EventStore, up_to: int | None = None, commits: AsyncIterator[Commit] | None = None
) -> dict[str, TaskState]:
    """Every task's state folded from the log in one streamed pass (up to a position)."""
    states: dict[str, TaskState] = {}
    async for commit in commits if commits is not None else store.read_all(0):
        if up_to is not None and commit.position > up_to:
            break
        fold_commit(states, commit)
    return states


def fold_commit(states: dict[str, TaskState], commit: Commit) -> None:
    """Fold one commit of the log into `states` (task id → state); other streams are skipped."""
    if not TASK.owns(commit):
        return
    task_id = TASK.entity_id(commit.stream_id)
    folded = apply_commit(states.get(task_id), commit)
    if folded is not None:
        states[task_id] = folded


async def redis_views(redis: Redis, keys: RedisViewKeys) -> AsyncIterator[TaskState]:
    """Every view the owners index names, read one owner's hash at a time (not one key each)."""
    by_owner: dict[str, set[str]] = {}
    for task_id, owner in (await redis.hgetall(keys.owners)).items():
        by_owner.setdefault(as_text(owner), set()).add(as_text(task_id))
    for owner, task_ids in by_owner.items():
        for task_id, raw in (await redis.hgetall(keys.tasks(owner))).items():
            if as_text(task_id) in task_ids:
                yield TaskState.model_validate_json(raw)


async def mongo_views(views: AsyncCollection[dict[str, Any]]) -> AsyncIterator[TaskState]:
    """Every task view of the collection (its term ledgers and checkpoint skipped)."""
    async for doc in views.find({}):
        if is_view(doc):
            yield view_from_document(doc)


async def compare(
    model: str,
    expected: dict[str, TaskState],
    found: AsyncIterator[TaskState],
    store: EventStore | None = None,
) -> list[ViewMismatch]:
    """Mismatches between folded states and a read model's views (missing and extra included).

    With `store`, a view that is newer than the fold (the log moved on while checking) is
    compared with its own stream folded up to the view's version instead.
    """
    mismatches: list[ViewMismatch] = []
    seen: set[str] = set()
    async for view in found:
        seen.add(view.task_id)
        want = expected.get(view.task_id)
        if store is not None and (want is None or view.version > want.version):
            commits = await store.read_stream(TASK.stream_id(view.task_id), to_version=view.version)
            want = TASK.fold(commits)
        if want != view:
            mismatches.append(
                ViewMismatch(model, view.task_id, want.version if want else None, view.version)
            )
    for task_id in expected.keys() - seen:
        mismatches.append(ViewMismatch(model, task_id, expected[task_id].version, None))
    return mismatches


async def verify_read_models(services: Services, version: int) -> list[ViewMismatch]:
    """Both task read models of `version` against the log, in one streamed pass over the log.

    The views may move on while they are checked (projectors keep running), so each view is
    compared with its task folded up to the view's own version, met on the way through the log
    (never a stream read per view: on FerretDB each would scan the whole log). Each model's
    checkpoint is read before its views: every task the log holds up to it must have a view at
    least that new.
    """
    redis_model = RedisTaskViews(services.redis, version, hot=services.hot)
    mongo_model = MongoTaskViews(services.views_db, version)
    checkpoints = {"redis": await redis_model.position(), "mongodb": await mongo_model.position()}
    found = {
        "redis": {v.task_id: v async for v in redis_views(services.redis, redis_model.keys)},
        "mongodb": {v.task_id: v async for v in mongo_views(mongo_model.views)},
    }
    return await compare_in_one_pass(services.store.scan(), found, checkpoints)


async def compare_in_one_pass(
    log: AsyncIterator[Commit],
    found: dict[str, dict[str, TaskState]],
    checkpoints: dict[str, int],
) -> list[ViewMismatch]:
    """Views (model → task id → view) against the log read in position order: each view equals
    its task folded up to the view's version, and no task the log holds up to a model's
    checkpoint lacks a view there or has one older than the log at the checkpoint."""
    states: dict[str, TaskState] = {}
    mismatches: list[ViewMismatch] = []
    matched: set[tuple[str, str]] = set()
    pending = dict(checkpoints)  # models whose checkpoint the pass has not yet passed

    def check_checkpoints(reached: int) -> None:
        for model, at in list(pending.items()):
            if reached < at:
                continue
            del pending[model]
            for task_id, state in states.items():  # the log's tasks as of the checkpoint
                view = found[model].get(task_id)
                if view is None or view.version < state.version:
                    found_version = view.version if view is not None else None
                    mismatches.append(ViewMismatch(model, task_id, state.version, found_version))

    async for commit in log:
        check_checkpoints(commit.position - 1)
        fold_commit(states, commit)
        if not TASK.owns(commit):
            continue
        task_id = task_id_of(commit)
        state = states[task_id]
        for model, views in found.items():
            view = views.get(task_id)
            if view is not None and view.version == state.version:
                matched.add((model, task_id))
                if view != state:
                    mismatches.append(ViewMismatch(model, task_id, state.version, view.version))
    check_checkpoints(max(checkpoints.values(), default=0))
    done = matched | {(m.model, m.task_id) for m in mismatches}
    for model, views in found.items():
        for task_id, view in views.items():  # a version the log never reached
            if (model, task_id) not in done:
                known = states.get(task_id)
                expected = known.version if known else None
                mismatches.append(ViewMismatch(model, task_id, expected, view.version))
    return mismatches


async def verify_against(
    services: Services, version: int, folded: dict[str, TaskState]
) -> list[ViewMismatch]:
    """Both task read models of `version` against states folded from the log.

    Every view must be at least as new as `folded` (each model's checkpoint at least as far
    as the fold); a newer one is checked against its own stream (`compare`).
    """
    redis_keys = RedisViewKeys(version)
    mongo_model = MongoTaskViews(services.views_db, version)
    return [
        *await compare("redis", folded, redis_views(services.redis, redis_keys), services.store),
        *await compare("mongodb", folded, mongo_views(mongo_model.views), services.store),
    ]
