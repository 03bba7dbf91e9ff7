"""What a projector's pass reads and when it runs: remembered Redis views, paced MongoDB views."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow import names
from taskflow.commands.runner import Context
from taskflow.commands.task import ChangeTask, CreateTask
from taskflow.commands.task_handlers import handle_change_task, handle_create_task
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.hot_redis import HotRedis
from taskflow.projections.driver import ProjectionDriver
from taskflow.projections.duty_cycle import DutyCycle
from taskflow.projections.lease import Lease
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.redis_views import CheckpointMovedError, RedisTaskViews
from taskflow.projections.runtime import LeaseLostError, run_until_caught_up
from taskflow.projections.verify import compare, fold_all_tasks, redis_views
from tests.conftest import commands_sent
from tests.test_projector_processes import until
from tests.workload import write_workload

T = TypeVar("T")


async def _create(store: MongoEventStore, title: str = "a task") -> tuple[str, str]:
    """A new task of a new owner: (owner, task id)."""
    owner, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    context = Context(actor=owner, request_id="r", correlation_id="c")
    command = CreateTask(task_id=task_id, owner_id=owner, title=title)
    await handle_create_task(store, command, context, datetime.now(UTC))
    return owner, task_id


async def test_redis_views_rebuild_from_zero_when_redis_lost_them_under_a_live_holder(
    store: MongoEventStore, redis: Redis, hot: HotRedis
) -> None:
    """Views the holder remembers are not trusted once the checkpoint is not where it left it."""
    await write_workload(store, tasks=10, changes=40)
    views = RedisTaskViews(redis, hot=hot)
    await run_until_caught_up(store, views)
    lost = [key async for key in redis.scan_iter(match=RedisViewKeys(1).prefix + "*")]
    await redis.delete(*lost)  # what a Redis restart without persistence does to the model
    await _create(store)

    await run_until_caught_up(store, views)

    assert await compare("redis", await fold_all_tasks(store), redis_views(redis, views.keys)) == []


async def test_a_batch_that_does_not_follow_the_checkpoint_is_refused(
    store: MongoEventStore, redis: Redis, hot: HotRedis
) -> None:
    """Another writer moved the checkpoint between the read and the write: nothing is written."""
    await _create(store, "one")
    await _create(store, "two")
    commits = [commit async for commit in store.read_all(0)]
    views = RedisTaskViews(redis, hot=hot)
    await views.apply(commits[:1], term=0)
    await redis.set(views.keys.checkpoint, 0)

    with pytest.raises(CheckpointMovedError):
        await views.apply(commits[1:], term=0)
    assert await redis.get(views.keys.checkpoint) == b"0"


async def test_a_batch_is_one_guarded_round_trip_and_a_fenced_one_writes_nothing(
    store: MongoEventStore, redis: Redis, hot: HotRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered task's change: its view, indexes, feed entries and checkpoint in one
    script (it was a WATCH, an MGET and a MULTI/EXEC). Behind a newer term's fence the same
    script writes nothing at all."""
    owner, task_id = await _create(store)
    views = RedisTaskViews(redis, hot=hot)
    await run_until_caught_up(store, views)
    context = Context(actor=owner, request_id="r", correlation_id="c")
    for version, title in ((1, "renamed"), (2, "fenced")):
        change = ChangeTask(task_id=task_id, title=title)
        await handle_change_task(store, change, context, datetime.now(UTC), version)
    first, second = [commit async for commit in store.read_all(1)]
    sent = commands_sent(hot, monkeypatch)
    await views.apply([first], term=3)
    assert sent == ["EVALSHA"]
    monkeypatch.undo()
    stored = await redis.hget(views.keys.tasks(owner), task_id)
    assert stored is not None
    assert b'"renamed"' in stored
    assert await redis.get(views.keys.fence) == b"3"  # raised with the batch

    await redis.set(views.keys.fence, 4)  # a newer holder
    feed = await redis.xlen(views.keys.feed(owner))
    with pytest.raises(LeaseLostError):
        await views.apply([second], term=3)
    assert await redis.hget(views.keys.tasks(owner), task_id) == stored
    assert await redis.xlen(views.keys.feed(owner)) == feed
    assert int(await redis.get(views.keys.checkpoint) or 0) == first.position


async def _reached(views: MongoTaskViews, position: int) -> bool:
    return await views.position() >= position


def _drive(
    store: MongoEventStore, views: MongoTaskViews, db: AsyncDatabase[dict[str, Any]]
) -> tuple[ProjectionDriver, asyncio.Event, asyncio.Task[None]]:
    """The workers' driver running `views` under a lease of its own; set the event to stop it."""
    stopping = asyncio.Event()
    lease = Lease(db[names.LEASES], views.name, "test", ttl=5)
    driver = ProjectionDriver(
        store, views, lease, lease_ttl=5, poll_interval=0.05, stopping=stopping
    )
    return driver, stopping, asyncio.create_task(driver.run())


class _CountedMongoViews(MongoTaskViews):
    """The MongoDB views, counting the passes that applied something."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db, leases=db[names.LEASES])  # where `_drive` takes the lease
        self.batches = 0

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        self.batches += 1
        await super().apply(commits, term)


@pytest.mark.timeout(120)
async def test_paced_mongodb_views_gather_many_wake_ups_into_one_pass(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Forty commits, each with its wake-up, in about a second: a few passes, not forty."""
    views = _CountedMongoViews(db)
    driver, stopping, running = _drive(store, views, db)
    owner, task_id = await _create(store)
    context = Context(actor=owner, request_id="r", correlation_id="c")
    started = time.monotonic()
    for version in range(1, 41):
        change = ChangeTask(task_id=task_id, title=f"title {version}")
        await handle_change_task(store, change, context, datetime.now(UTC), version)
        driver.wake.set()
        await asyncio.sleep(0.025)
    head = await store.head_position()
    await until(lambda: _reached(views, head), 60, "the MongoDB views to catch up")
    elapsed = time.monotonic() - started
    stopping.set()
    await running

    assert views.batches <= elapsed / views.pace_seconds + 3
    stored = await views.views.find_one({"owner_id": {"$exists": True}})
    assert stored is not None
    assert stored["title"] == "title 40"


class _SlowCommands(DutyCycle):
    """The views' pacing, with every replace command made `COMMAND_SECONDS` longer (as a
    command of many replaces is on FerretDB), summing the time spent in the commands."""

    COMMAND_SECONDS = 0.2

    def __init__(self, share: float) -> None:
        super().__init__(share)
        self.busy = 0.0

    async def run(self, call: Awaitable[T]) -> T:
        async def slow() -> T:
            started = time.monotonic()
            try:
                await asyncio.sleep(self.COMMAND_SECONDS)
                return await call
            finally:
                self.busy += time.monotonic() - started

        return await super().run(slow())


@pytest.mark.timeout(120)
async def test_costly_mongodb_view_writes_take_at_most_their_share_and_still_catch_up(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Commits keep coming while every replace command takes 0.2 s: back to back (a pass each
    0.05 s), the commands would take 80 % of the time; each followed by its rest, they take
    about a quarter, and once the commits stop the views still reach the head."""
    views = _CountedMongoViews(db)
    views.pace_seconds = 0.05
    slow = views.duty = _SlowCommands(views.duty.share)
    assert slow.share == 0.25
    driver, stopping, running = _drive(store, views, db)
    owner, task_id = await _create(store)
    context = Context(actor=owner, request_id="r", correlation_id="c")
    started = time.monotonic()
    version = 1
    while time.monotonic() - started < 6:
        change = ChangeTask(task_id=task_id, title=f"title {version}")
        await handle_change_task(store, change, context, datetime.now(UTC), version)
        version += 1
        driver.wake.set()
        await asyncio.sleep(0.05)
    share = slow.busy / (time.monotonic() - started)
    head = await store.head_position()
    await until(lambda: _reached(views, head), 60, "the MongoDB views to catch up")
    stopping.set()
    await running

    assert slow.busy > 1, "the views wrote while the commits came"
    assert share < 0.4, f"replace commands took {share:.0%} of the time"
    stored = await views.views.find_one({"owner_id": {"$exists": True}})
    assert stored is not None
    assert stored["title"] == f"title {version - 1}"


@pytest.mark.parametrize(
    ("share", "calls", "rests"),
    [
        (0.25, [0.01, 0.2], [0.03, 0.6]),
        (0.5, [1.0], [1.0]),
        (1.0, [0.3], []),
        (0.25, [60.0], [6.0]),  # a paused process: its pause is not work that earns a rest
    ],
)
async def test_a_duty_cycle_rests_after_each_call_in_proportion(
    share: float, calls: list[float], rests: list[float]
) -> None:
    """After a call of t seconds, t * (1 - share) / share of rest, t counted up to 2 s; no
    rest after a failed call; a share outside (0, 1] is refused."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def call(seconds: float) -> float:
        now[0] += seconds
        return seconds

    duty = DutyCycle(share, clock=lambda: now[0], sleep=sleep)
    assert [await duty.run(call(seconds)) for seconds in calls] == calls
    assert slept == pytest.approx(rests)

    async def failing() -> None:
        now[0] += 1.0
        raise OSError("the server went away")

    with pytest.raises(OSError, match="went away"):
        await duty.run(failing())
    assert slept == pytest.approx(rests)
    for wrong in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            DutyCycle(wrong)
