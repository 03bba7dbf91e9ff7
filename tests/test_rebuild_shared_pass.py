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
from taskflow.bootstrap import ensure_indexes, open_services, projections, rebuild_read_models
from taskflow.commands.runner import Context
from taskflow.commands.task import ChangeTask, CreateTask
from taskflow.commands.task_handlers import handle_change_task, handle_create_task
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.projections import shared_pass
from taskflow.projections.lease import Lease
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.runtime import LeaseLostError, catch_up
from taskflow.projections.verify import verify_read_models
from taskflow.services import Services
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
            db,
            services.redis,
            chain,
            hot=services.hot,
            gap_timeout=settings.gap_timeout_seconds,
            keys=services.keys,
        )
        watched = dataclasses.replace(services, mongo=counted, db=db, store=store)

        result = await rebuild_read_models(watched)

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

    result = await rebuild_read_models(services)

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
    result = await rebuild_read_models(services)

    assert result.new_version == 2
    assert await verify_read_models(services, 2) == []
    latest = await Lease(services.db[names.LEASES], mongo_v2.name, "x", ttl=1).latest()
    assert latest is not None
    assert latest["term"] == 3  # the pass's standby, after the newer term


async def test_a_superseded_holder_paused_before_its_write_is_refused_by_the_server(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Term 1 folds its batch (its lease check long passed), term 2 takes over and moves the
    view on; when term 1's write finally reaches the server, the server refuses it whole: no
    view moves back, the checkpoint stays where term 2 left it, nothing else is written."""
    commits = await _history(store)
    paused = MongoTaskViews(db)  # no `leases`: nothing but the server can stop it
    await paused.fence(1)
    await paused.stage(commits[:2])  # ... then the process is paused (SIGSTOP) before flushing

    successor = MongoTaskViews(db)
    await successor.fence(2)  # closes term 1's ledger
    await successor.apply(commits, term=2)
    before = await _the_view(successor)
    assert before["version"] == 3

    with pytest.raises(LeaseLostError):
        await paused.flush(term=1)

    after = await _the_view(successor)
    assert (after["version"], after["title"]) == (3, "three")
    assert await successor.position() == commits[-1].position
    assert await successor.views.count_documents({"owner_id": {"$exists": True}}) == 1
    # Term 2 still writes; a term 1 that never wrote before the takeover is refused as well.
    await successor.apply(commits, term=2)
    late = MongoTaskViews(db)
    await late.stage(commits[:1])
    with pytest.raises(LeaseLostError):
        await late.flush(term=1)


async def _the_view(views: MongoTaskViews) -> dict[str, Any]:
    """The one task view of the collection (not its term ledgers or its checkpoint)."""
    stored = await views.views.find_one({"owner_id": {"$exists": True}})
    assert stored is not None
    return stored


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
    stored = await _the_view(replaying)
    assert (stored["version"], stored["title"]) == (3, "three")

    await replaying.views.replace_one(
        {"_id": stored["_id"]}, {**stored, "version": 1, "title": "one"}
    )
    await MongoTaskViews(db).apply(commits[:2], term=0)
    stored = await _the_view(replaying)
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

    stored = await _the_view(views)
    assert stored["version"] == 3
    assert await views.position() == commits[-1].position
