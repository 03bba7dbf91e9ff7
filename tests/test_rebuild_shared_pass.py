"""The rebuild's single pass over the log; MongoDB task views written by insert (real servers)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import CommandListener, CommandStartedEvent
from redis.asyncio import Redis

from taskflow import names
from taskflow.bootstrap import Services, ensure_indexes, open_services
from taskflow.commands.runner import Context
from taskflow.commands.task import ChangeTask, CreateTask
from taskflow.commands.task_handlers import handle_change_task, handle_create_task
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.projections import shared_pass
from taskflow.projections.catalog import catch_up, projections
from taskflow.projections.lease import Lease
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.rebuild import rebuild
from taskflow.projections.verify import verify_read_models
from taskflow.settings import Settings
from tests.workload import write_workload


class _LogFinds(CommandListener):
    """Counts `find` commands sent to the log's collection (each a full sort on FerretDB)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == names.COMMITS:
            self.count += 1

    def succeeded(self, event: Any) -> None:
        return None

    def failed(self, event: Any) -> None:
        return None


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    fast = settings.model_copy(update={"lease_ttl_seconds": 1.0, "projector_poll_seconds": 0.1})
    async with open_services(fast) as opened:
        await ensure_indexes(opened)
        yield opened


async def _delete_hints(redis: Redis) -> None:
    """Forget the hints, as for a log older than their TTL: the log is read from MongoDB."""
    hints = [key async for key in redis.scan_iter(match=names.PREFIX + "log:at:*")]
    if hints:
        await redis.delete(*hints)


@pytest.mark.timeout(300)
async def test_rebuild_reads_the_log_once_for_both_read_models_and_the_verification(
    settings: Settings, services: Services
) -> None:
    """Both models of the next version and the check against the log come from one `find`."""
    await write_workload(services.store, tasks=20, changes=120)
    await catch_up(services.store, projections(services))
    await _delete_hints(services.redis)
    finds = _LogFinds()
    counted: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, event_listeners=[finds]
    )
    try:
        db = counted[settings.mongodb_db]
        chain = HashChain(settings.event_log_hmac_key.get_secret_value().encode())
        store = MongoEventStore(
            db, services.redis, chain, gap_timeout=settings.gap_timeout_seconds, keys=services.keys
        )
        watched = dataclasses.replace(services, mongo=counted, db=db, store=store)

        result = await rebuild(watched)

        assert finds.count == 1
        assert result.new_version == 2
        assert await verify_read_models(services, 2) == []
    finally:
        await counted.close()


@pytest.mark.timeout(300)
async def test_rebuild_leaves_a_held_lease_to_its_holder_and_takes_over_when_it_lapses(
    services: Services,
) -> None:
    """Another holder's projection is not fed by the pass; a standby builds it once it lapses."""
    await write_workload(services.store, tasks=10, changes=60)
    mongo_v2 = MongoTaskViews(services.views_db, 2)
    other = Lease(services.db[names.LEASES], mongo_v2.name, "another-process", ttl=2.0)
    assert await other.acquire()  # it never renews: a holder that died

    result = await rebuild(services)

    assert result.new_version == 2
    assert await verify_read_models(services, 2) == []
    latest = await Lease(services.db[names.LEASES], mongo_v2.name, "x", ttl=1).latest()
    assert latest is not None
    assert (latest["term"], ":rebuild:" in latest["holder"]) == (2, True)


@pytest.mark.timeout(300)
async def test_a_lease_lost_in_the_middle_of_the_pass_is_handed_to_a_standby(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer term taken mid-rebuild fences the pass out; the rebuild still equals the log."""
    monkeypatch.setattr(shared_pass, "REBUILD_BATCH", 10)
    await write_workload(services.store, tasks=10, changes=60)
    mongo_v2 = MongoTaskViews(services.views_db, 2)
    stage = MongoTaskViews.stage
    taken: list[int] = []

    async def stage_then_lose_the_lease(views: MongoTaskViews, commits: Sequence[Commit]) -> None:
        if views.name == mongo_v2.name and not taken:  # the pass's first batch: a newer term
            taken.append(2)
            now = datetime.now(UTC)
            await services.db[names.LEASES].insert_one(
                {
                    "_id": f"{mongo_v2.name}:2",
                    "name": mongo_v2.name,
                    "term": 2,
                    "holder": "a-newer-process",
                    "acquired_at": now,
                    "expires_at": now + timedelta(seconds=1),
                }
            )
        await stage(views, commits)

    monkeypatch.setattr(MongoTaskViews, "stage", stage_then_lose_the_lease)
    result = await rebuild(services)

    assert result.new_version == 2
    assert await verify_read_models(services, 2) == []
    latest = await Lease(services.db[names.LEASES], mongo_v2.name, "x", ttl=1).latest()
    assert latest is not None
    assert latest["term"] == 3  # the pass's standby, after the newer term


async def test_views_without_the_lease_collection_refuse_to_write_under_a_term(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Views made for reading or verifying (no `leases`) cannot see a newer holder's term, so
    they refuse a flush under one rather than guess where the leases are."""
    commits = await _history(store)
    views = MongoTaskViews(db)
    with pytest.raises(RuntimeError, match="needs `leases`"):
        await views.apply(commits, term=1)
    assert await views.views.count_documents({}) == 0
    assert await views.position() == 0


async def _history(store: MongoEventStore) -> list[Commit]:
    """One task created and changed twice; its three commits."""
    owner, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    context = Context(actor=owner, request_id="r", correlation_id="c")
    create = CreateTask(task_id=task_id, owner_id=owner, title="one")
    await handle_create_task(store, create, context, datetime.now(UTC))
    for version, title in ((1, "two"), (2, "three")):
        change = ChangeTask(task_id=task_id, title=title)
        await handle_change_task(store, change, context, datetime.now(UTC), version)
    return [commit async for commit in store.read_all(0)]


async def test_a_replayed_creation_never_moves_a_newer_mongodb_view_back(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """A view inserted as new that is already stored, newer, stays as it is; an older one is
    replaced."""
    commits = await _history(store)
    await MongoTaskViews(db).apply(commits, term=0)

    replaying = MongoTaskViews(db)  # a new holder, resuming from an older checkpoint
    await replaying.apply(commits[:1], term=0)
    stored = await replaying.views.find_one({})
    assert stored is not None
    assert (stored["version"], stored["title"]) == (3, "three")

    await replaying.views.replace_one({}, {**stored, "version": 1, "title": "one"})
    await MongoTaskViews(db).apply(commits[:2], term=0)
    stored = await replaying.views.find_one({})
    assert stored is not None
    assert (stored["version"], stored["title"]) == (2, "two")


async def test_staged_batches_write_each_view_once_with_the_checkpoint_of_the_last(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Views staged over several batches are written only by `flush`, at the last position."""
    commits = await _history(store)
    views = MongoTaskViews(db)
    for commit in commits:
        await views.stage([commit])
    assert views.staged == 1
    assert await views.views.count_documents({}) == 0
    assert await views.position() == 0

    await views.flush(term=0)

    stored = await views.views.find_one({})
    assert stored is not None
    assert stored["version"] == 3
    assert await views.position() == commits[-1].position
