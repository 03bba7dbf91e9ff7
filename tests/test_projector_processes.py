"""Projector worker processes under kill -9 and takeover, on the real servers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow import names
from taskflow.commands.aggregates import TASK
from taskflow.commands.runner import Context, execute
from taskflow.commands.task import ChangeTask, CreateTask, Priority, Status
from taskflow.events.mongo_store import MongoEventStore
from taskflow.projections.log_seal import NAME as LOG_SEAL
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.verify import compare, fold_all_tasks, mongo_views, redis_views
from taskflow.settings import Settings
from tests.conftest import TEST_HMAC_KEY
from tests.fault_tools import free_port, taskflow_env
from tests.workload import write_workload

LEASE_TTL = 1.5


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `taskflow project` processes on the test's database; all are killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "LEASE_TTL_SECONDS": str(LEASE_TTL),
        "PROJECTOR_POLL_SECONDS": "0.1",
        "GAP_TIMEOUT_SECONDS": "0.3",
        # The key the `store` fixture signs the log with: the processes seal it with the same.
        "EVENT_LOG_HMAC_KEY": TEST_HMAC_KEY.decode(),
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",
    }

    def start(lease_ttl: float = LEASE_TTL, **more_env: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"projector-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "taskflow", "project"],
                env={**env, "LEASE_TTL_SECONDS": str(lease_ttl), **more_env},
                stdout=log,
                stderr=log,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def log_lines(logs: Path, event: str) -> list[dict[str, Any]]:
    """Every JSON line named `event` that the projector processes logged."""
    return [line for path in sorted(logs.glob("projector-*.log")) for line in lines_of(path, event)]


def lines_of(path: Path, event: str) -> list[dict[str, Any]]:
    """Every JSON line named `event` in one process's log."""
    lines = [json.loads(t) for t in path.read_text().splitlines() if t.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def logged_at(line: dict[str, Any]) -> datetime:
    """When a JSON log line was written (its ISO 8601 UTC timestamp)."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))


def lease_acquisitions(logs: Path) -> list[tuple[str, int]]:
    """(projection, term) of every `lease_acquired` line the projector processes logged."""
    return [(line["projection"], line["term"]) for line in log_lines(logs, "lease_acquired")]


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def both_leases_taken(
    db: AsyncDatabase[dict[str, Any]],
) -> AsyncCollection[dict[str, Any]]:
    """Until both read models' leases are held; the leases collection."""
    leases = db[names.LEASES]

    async def both_held() -> bool:
        return set(await leases.distinct("name")) >= {"task_views_redis_v1", "task_views_mongo_v1"}

    await until(both_held, 60, "both leases to be taken")
    return leases


async def caught_up(
    store: MongoEventStore, redis: Redis, views_db: AsyncDatabase[dict[str, Any]]
) -> bool:
    head = await store.head_position()
    return head > 0 and await caught_up_to(store, redis, views_db, head)


async def assert_models_equal_the_log(
    store: MongoEventStore, redis: Redis, views_db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Both read models equal a fold of the log, and the counters count each task once."""
    folded = await fold_all_tasks(store)
    keys = RedisViewKeys(1)
    assert await compare("redis", folded, redis_views(redis, keys)) == []
    assert await compare("mongo", folded, mongo_views(MongoTaskViews(views_db).views)) == []
    for owner in {state.owner_id for state in folded.values()}:
        live = [s for s in folded.values() if s.owner_id == owner and not s.deleted]
        expected = {st.value: sum(s.status is st for s in live) for st in Status}
        counts = await redis.hgetall(keys.counts(owner))
        assert {st.value: int(counts.get(st.value.encode(), 0)) for st in Status} == expected


@pytest.mark.slow(55)
@pytest.mark.timeout(600)
async def test_kill_9_during_a_backlog_loses_nothing_and_applies_nothing_twice(
    store: MongoEventStore,
    redis: Redis,
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """Projectors killed -9 mid-backlog, repeatedly, leave read models equal to the log.

    Each is killed once it has applied more than the last one left (whatever the machine's
    speed: a fixed delay found a loaded machine's projector still importing), a random moment
    after that; up to four kills, each in the middle of the backlog.
    """
    await write_workload(store, tasks=300, changes=2700)
    head = await store.head_position()
    rng = random.Random(9)
    checkpoint = RedisViewKeys(1).checkpoint
    killed_mid_backlog = 0
    while killed_mid_backlog < 4:
        before = int(await redis.get(checkpoint) or 0)
        projector = spawn()

        async def applying(before: int = before) -> bool:
            return int(await redis.get(checkpoint) or 0) > before

        await until(applying, 120, "the projector to apply a batch")
        await asyncio.sleep(rng.uniform(0.0, 0.1))  # the random moment, not a wait for one
        projector.send_signal(signal.SIGKILL)
        projector.wait()
        at = int(await redis.get(checkpoint) or 0)
        if at >= head:
            break  # it finished first: nothing left to kill it in the middle of
        killed_mid_backlog += 1
        await asyncio.sleep(LEASE_TTL)  # the dead holder's lease must lapse
    assert killed_mid_backlog >= 1
    spawn()
    await until(lambda: caught_up(store, redis, views_db), 400, "the projector to catch up")
    await assert_models_equal_the_log(store, redis, views_db)


@pytest.mark.slow(16)
@pytest.mark.timeout(600)
async def test_eight_projectors_one_holder_per_term_and_takeover_on_kill(
    store: MongoEventStore,
    redis: Redis,
    db: AsyncDatabase[dict[str, Any]],
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Of 8 processes exactly one holds each lease term; killing it hands over and catches up."""
    # A longer lease than elsewhere: 8 interpreters starting on 2 cores delay renewals.
    processes = {p.pid: p for p in (spawn(lease_ttl=6.0) for _ in range(8))}
    leases = await both_leases_taken(db)
    await write_workload(store, tasks=50, changes=200)
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up")
    # On a loaded machine a renewal can come late and a standby take a term over; what must
    # hold is one holder per term (checked from the processes' own logs at the end).
    name = "task_views_redis_v1"
    pid, term = await holder_of(leases, name)
    processes[pid].send_signal(signal.SIGKILL)

    async def taken_over() -> bool:
        return await leases.count_documents({"name": name, "term": term + 1}) == 1

    await until(taken_over, 30, "a standby to take the lease over")
    successor = await leases.find_one({"_id": f"{name}:{term + 1}"})
    assert successor is not None
    assert int(successor["holder"].split(":")[1]) != pid
    await write_workload(store, tasks=20, changes=80, seed=11)
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up after takeover")
    await assert_models_equal_the_log(store, redis, views_db)
    acquired = lease_acquisitions(tmp_path)
    held = sorted((t["name"], t["term"]) for t in await leases.find({}).to_list())
    assert sorted(acquired) == held  # every term was acquired by exactly one process


@pytest.mark.timeout(300)
async def test_two_projectors_on_one_host_share_the_metrics_port_setting_and_log_correlation_ids(
    store: MongoEventStore,
    redis: Redis,
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """One METRICS_PORT for both: each serves /metrics on its own port; batches name requests."""
    base = free_port()
    for _ in range(2):
        spawn(METRICS_PORT=str(base))

    async def both_listening() -> bool:
        return len(log_lines(tmp_path, "metrics_listening")) == 2

    await until(both_listening, 60, "both projectors to serve metrics")
    ports = sorted(line["port"] for line in log_lines(tmp_path, "metrics_listening"))
    assert len(set(ports)) == 2
    assert ports[0] == base
    correlation = f"corr-{uuid.uuid4().hex}"
    context = Context(actor="owner", request_id="req", correlation_id=correlation)
    create = CreateTask(task_id=uuid.uuid4().hex, owner_id="owner", title="followed")
    await execute(store, TASK, create.task_id, create, context, datetime.now(UTC), new_stream=True)
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up")

    async def logged_for_both_projections() -> bool:
        # Applied, or failed: on a loaded machine a write can land while its answer times out;
        # the batch is then logged as failed and not applied again, and that line names it.
        # The log seal's batch names it too, once its paced pass comes: a superset is fine
        # (the check was an equality, which failed whenever that pass came first).
        lines = log_lines(tmp_path, "batch_applied") + log_lines(tmp_path, "batch_failed")
        named = {line["projection"] for line in lines if correlation in line["correlation_ids"]}
        return {"task_views_redis_v1", "task_views_mongo_v1"} <= named

    try:
        await until(logged_for_both_projections, 30, "batch lines naming the correlation id")
    except AssertionError:
        # What the processes did log, for the report: every batch line and lease event.
        events = ("batch_applied", "batch_failed", "lease_acquired", "lease_lost", "write_refused")
        seen = [
            {k: line.get(k) for k in ("event", "projection", "positions", "correlation_ids")}
            for event in events
            for line in log_lines(tmp_path, event)
        ]
        raise AssertionError(f"no batch line names {correlation}; logged: {seen}") from None
    async with aiohttp.ClientSession() as session:
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert "taskflow_projection_batch_seconds" in await response.text()


@pytest.mark.timeout(300)
async def test_a_projector_per_read_model_applies_only_its_own(
    store: MongoEventStore,
    redis: Redis,
    db: AsyncDatabase[dict[str, Any]],
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """PROJECTOR_READ_MODELS splits the read models over processes: each process takes only
    its own model's lease, and both models follow the log."""
    redis_only = spawn(PROJECTOR_READ_MODELS="redis")
    mongo_only = spawn(PROJECTOR_READ_MODELS=" mongodb ")
    leases = await both_leases_taken(db)
    await write_workload(store, tasks=30, changes=120)
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up")
    await assert_models_equal_the_log(store, redis, views_db)
    holders = {t["name"]: int(t["holder"].split(":")[1]) for t in await leases.find({}).to_list()}
    assert holders.pop(LOG_SEAL) in {redis_only.pid, mongo_only.pid}  # every process may seal
    assert holders == {"task_views_redis_v1": redis_only.pid, "task_views_mongo_v1": mongo_only.pid}


def test_projector_read_models_name_known_models_only() -> None:
    """As the environment gives it: comma-separated; an unknown or empty list is refused."""
    both = Settings(projector_read_models="redis,mongodb")
    assert both.projector_read_models == ("redis", "mongodb")
    with pytest.raises(ValidationError):
        Settings(projector_read_models="redis,postgres")
    with pytest.raises(ValidationError):
        Settings(projector_read_models="")


EVENTS_UNDER_FIRE = 20_000


@pytest.mark.slow(115)
@pytest.mark.timeout(900)
async def test_kill_9_at_random_moments_while_20000_events_are_written(
    store: MongoEventStore,
    redis: Redis,
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """Projectors killed -9 at random moments while ≥ 20,000 events are being written.

    Afterwards both read models equal a fold of the log and every owner's counters are exact:
    nothing lost, nothing applied twice. Commits change several fields at once (≈ 6 events
    each), so 20,000 events take a few thousand appends rather than 20,000.
    """
    rng = random.Random(20_000)
    started = time.monotonic()
    writing = asyncio.create_task(write_many_events(store, EVENTS_UNDER_FIRE, rng))
    kills = killed_working = checkpoint = 0
    while not writing.done():
        projector = spawn()
        # Kill it at a random moment once it is working: after it has applied something.
        deadline = time.monotonic() + 60
        while not writing.done() and time.monotonic() < deadline:
            if int(await redis.get(RedisViewKeys(1).checkpoint) or 0) > checkpoint:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait({writing}, timeout=rng.uniform(0.0, 1.0))
        projector.send_signal(signal.SIGKILL)
        projector.wait()
        kills += 1
        now_at = int(await redis.get(RedisViewKeys(1).checkpoint) or 0)
        killed_working += now_at > checkpoint
        checkpoint = now_at
    events = await writing
    head = await store.head_position()
    assert events >= EVENTS_UNDER_FIRE
    assert killed_working >= 3  # killed after applying something, wherever it then was
    spawn()
    await until(lambda: caught_up(store, redis, views_db), 600, "the projector to catch up")
    await assert_models_equal_the_log(store, redis, views_db)
    print(
        f"{events} events in {head} commits, {kills} kills ({killed_working} working), "
        f"{time.monotonic() - started:.0f} s"
    )


async def write_many_events(store: MongoEventStore, events: int, rng: random.Random) -> int:
    """Create tasks, then change five fields of one at a time, 16 writers, until `events` exist.

    Each writer owns its own tasks, so appends do not conflict; the count comes from the
    versions the appends reached, so it is what the log holds.
    """
    owners = [uuid.uuid4().hex for _ in range(8)]
    written = 0

    async def writer(n: int) -> None:
        nonlocal written
        owner = owners[n % len(owners)]
        context = Context(actor=owner, request_id=f"w{n}", correlation_id=f"writer-{n}")
        task_ids = [uuid.uuid4().hex for _ in range(25)]
        versions = dict.fromkeys(task_ids, 0)
        for task_id in task_ids:
            create = CreateTask(task_id=task_id, owner_id=owner, title=f"task {n}")
            outcome = await execute(
                store, TASK, task_id, create, context, datetime.now(UTC), new_stream=True
            )
            written += outcome.version
            versions[task_id] = outcome.version
        while written < events:
            task_id = rng.choice(task_ids)
            change = ChangeTask(
                task_id=task_id,
                title=f"title {rng.random():.6f}",
                description=f"about {rng.random():.6f}",
                status=rng.choice(list(Status)),
                priority=rng.choice(list(Priority)),
                tags=tuple(rng.sample(["a", "b", "c", "d", "e", "f"], 3)),
            )
            outcome = await execute(store, TASK, task_id, change, context, datetime.now(UTC))
            written += outcome.version - versions[task_id]
            versions[task_id] = outcome.version

    await asyncio.gather(*(writer(n) for n in range(16)))
    return written


# -- a paused holder (SIGSTOP past its TTL) and standbys that take over -------------------------

PAUSE_TTL = 3.0  # long enough for a loaded machine's renewals; each pause outlasts it


async def keep_writing(store: MongoEventStore, stop: asyncio.Event, seed: int = 5) -> int:
    """Create 240 tasks, then change them in turn (4 writers) until `stop`; commits written.

    In turn rather than at random: each pass of the MongoDB views then writes hundreds of
    views in several commands, so a pause often lands in the middle of a flush.
    """
    rng = random.Random(seed)
    owners = [uuid.uuid4().hex for _ in range(3)]
    written = 0

    async def writer(n: int) -> None:
        nonlocal written
        owner = owners[n % len(owners)]
        context = Context(actor=owner, request_id=f"w{n}", correlation_id=f"pause-{n}")
        task_ids = [uuid.uuid4().hex for _ in range(60)]
        for task_id in task_ids:
            create = CreateTask(task_id=task_id, owner_id=owner, title=f"task {n}")
            await execute(store, TASK, task_id, create, context, datetime.now(UTC), new_stream=True)
            written += 1
        while not stop.is_set():
            for task_id in task_ids:
                if stop.is_set():
                    break
                change = ChangeTask(
                    task_id=task_id,
                    title=f"title {rng.random():.6f}",
                    status=rng.choice(list(Status)),
                )
                await execute(store, TASK, task_id, change, context, datetime.now(UTC))
                written += 1
                await asyncio.sleep(0.02)  # a steady load, not all the machine can take

    await asyncio.gather(*(writer(n) for n in range(4)))
    return written


class NeverBackwards:
    """Samples the MongoDB views, both checkpoints and each view's version while it runs; any
    value seen lower than before is recorded."""

    def __init__(self, views_db: AsyncDatabase[dict[str, Any]], redis: Redis) -> None:
        self._mongo = MongoTaskViews(views_db)
        self._redis = redis
        self.seen: dict[str, int] = {}
        self.backwards: list[str] = []
        self.samples = 0

    def _see(self, what: str, value: int) -> None:
        if value < self.seen.get(what, 0):
            self.backwards.append(f"{what}: {self.seen[what]} -> {value}")
        self.seen[what] = max(value, self.seen.get(what, 0))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._see("mongo checkpoint", await self._mongo.position())
            self._see(
                "redis checkpoint", int(await self._redis.get(RedisViewKeys(1).checkpoint) or 0)
            )
            async for view in mongo_views(self._mongo.views):
                self._see(f"view {view.task_id}", view.version)
            self.samples += 1
            await asyncio.sleep(0.1)


async def holder_of(leases: AsyncCollection[dict[str, Any]], name: str) -> tuple[int, int]:
    """(pid, term) of the newest term of lease `name`."""
    latest = (await leases.find({"name": name}).sort("term", -1).limit(1).to_list())[0]
    return int(latest["holder"].split(":")[1]), int(latest["term"])


@pytest.mark.slow(70)
@pytest.mark.timeout(600)
async def test_a_paused_holder_never_moves_a_view_or_checkpoint_back(
    store: MongoEventStore,
    redis: Redis,
    db: AsyncDatabase[dict[str, Any]],
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """The holder of both leases is paused (SIGSTOP) past its TTL while writes go on; the
    standby takes over; the paused one is resumed (SIGCONT). Three times, back and forth.

    Sampled throughout, no view's version and neither checkpoint ever goes down; the resumed
    process is back as a standby within one TTL (it logs the lost lease) and does not spin on
    refused batches; both read models reach the log's head and equal it; the hash chains hold.
    """
    processes = [spawn(lease_ttl=PAUSE_TTL) for _ in range(2)]
    logs = {p.pid: tmp_path / f"projector-{n}.log" for n, p in enumerate(processes)}
    by_pid = {p.pid: p for p in processes}
    leases = await both_leases_taken(db)
    stop = asyncio.Event()
    writing = asyncio.create_task(keep_writing(store, stop))
    monitor = NeverBackwards(views_db, redis)
    sampling = asyncio.create_task(monitor.run(stop))
    mongo_name, redis_name = "task_views_mongo_v1", "task_views_redis_v1"
    try:
        for cycle in range(3):
            started = await store.head_position()

            async def more_written(since: int = started) -> bool:
                return await store.head_position() > since + 20

            await until(more_written, 60, f"cycle {cycle}: writes")
            started = await store.head_position()

            async def working(head: int = started) -> bool:
                return await caught_up_to(store, redis, views_db, head)

            await until(working, 60, f"cycle {cycle}: the holder to apply the writes so far")
            pid, term = await holder_of(leases, mongo_name)
            # Both leases, or only the MongoDB views' (two processes can split them): each one
            # it holds, it must find lost once resumed.
            held = 1 + ((await holder_of(leases, redis_name))[0] == pid)
            paused = by_pid[pid]
            paused.send_signal(signal.SIGSTOP)

            async def taken_over(pid: int = pid, term: int = term) -> bool:
                mongo = await holder_of(leases, mongo_name)
                redis_holder = await holder_of(leases, redis_name)
                return mongo[1] > term and pid not in (mongo[0], redis_holder[0])

            await until(taken_over, 60, f"cycle {cycle}: a standby to take both leases over")
            head = await store.head_position()

            async def applied_meanwhile(head: int = head) -> bool:
                return await caught_up_to(store, redis, views_db, head)

            await until(applied_meanwhile, 60, f"cycle {cycle}: the new holder to apply")
            lost_before = len(lines_of(logs[pid], "lease_lost"))
            paused.send_signal(signal.SIGCONT)
            resumed = datetime.now(UTC)

            async def standing_by(
                pid: int = pid, lost_before: int = lost_before, held: int = held
            ) -> bool:
                return len(lines_of(logs[pid], "lease_lost")) >= lost_before + held

            await until(standing_by, 30, f"cycle {cycle}: the resumed process to stand by")
            # By the process's own clock: the moment it knew (test-side polling adds nothing).
            lost_at = logged_at(lines_of(logs[pid], "lease_lost")[-1])
            assert (lost_at - resumed).total_seconds() <= PAUSE_TTL, "back in rotation in a TTL"
        stop.set()
        await writing
        final = await store.head_position()

        async def all_applied() -> bool:
            return await caught_up_to(store, redis, views_db, final)

        await until(all_applied, 120, "the final catch-up")
    finally:
        stop.set()
        await asyncio.gather(writing, sampling, return_exceptions=True)
    assert monitor.samples > 10
    assert monitor.backwards == []
    await assert_models_equal_the_log(store, redis, views_db)
    audit = await store.audit()  # what `taskflow audit verify` checks of the log
    assert audit.ok, audit
    assert audit.seals > 0  # the processes sealed the log as they went
    for pid, path in logs.items():
        retried = lines_of(path, "projection_refused") + lines_of(path, "projection_failed")
        assert len(retried) <= 10, f"process {pid} kept retrying: {len(retried)} failed passes"
    refused = sum(len(lines_of(path, "write_refused")) for path in logs.values())
    print(f"{monitor.samples} samples; writes refused by the fences: {refused}")


async def caught_up_to(
    store: MongoEventStore, redis: Redis, views_db: AsyncDatabase[dict[str, Any]], head: int
) -> bool:
    redis_at = int(await redis.get(RedisViewKeys(1).checkpoint) or 0)
    return redis_at >= head and await MongoTaskViews(views_db).position() >= head


@pytest.mark.timeout(300)
async def test_a_holder_refused_by_a_newer_term_stands_by_and_a_standby_takes_over_in_a_ttl(
    store: MongoEventStore,
    redis: Redis,
    db: AsyncDatabase[dict[str, Any]],
    views_db: AsyncDatabase[dict[str, Any]],
    spawn: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """A newer term raises the Redis fence, and its lease (a holder that then dies at once)
    appears: the old holder's batches are refused; at the first refusal after the newer lease
    exists it asks the lease and stands by instead of retrying batch after batch; when the
    newer term lapses, a process takes the lease within one TTL of its expiry.

    The fence goes up first and the lease only once a refusal is logged: the other order races
    the holder's renewal (every TTL / 3), which may find the newer lease before any batch is
    refused (seen on a loaded fresh clone), and then nothing is refused."""
    holder = spawn(lease_ttl=PAUSE_TTL)
    leases = await both_leases_taken(db)
    spawn(lease_ttl=PAUSE_TTL)
    await write_workload(store, tasks=10, changes=20)
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up")
    name = "task_views_redis_v1"
    pid, term = await holder_of(leases, name)
    assert pid == holder.pid
    log = tmp_path / "projector-0.log"
    await redis.set(RedisViewKeys(1).fence, term + 1)
    await write_workload(store, tasks=2, changes=2, seed=3)

    async def refused() -> bool:
        return bool(lines_of(log, "write_refused"))

    # Refused while no newer lease exists: the holder still holds its own, so it backs off and
    # tries again (a fence can also be lost with Redis's data), without standing by.
    await until(refused, 30, "the holder's batch to be refused")
    assert not lines_of(log, "lease_lost")
    newer_at = datetime.now(UTC)
    lapses = newer_at + timedelta(seconds=PAUSE_TTL)
    await leases.insert_one(
        {
            "_id": f"{name}:{term + 1}",
            "name": name,
            "term": term + 1,
            "holder": "elsewhere:0:dead",
            "acquired_at": newer_at,
            "expires_at": lapses,
        }
    )

    async def stood_by() -> bool:
        return bool(lines_of(log, "lease_lost"))

    await until(stood_by, 30, "the refused holder to stand by")
    lost_at = logged_at(lines_of(log, "lease_lost")[0])
    assert (lost_at - newer_at).total_seconds() <= PAUSE_TTL
    # It asked the lease at its refusal and stood by: at most the refusal in flight when the
    # newer lease appeared and the one that found it, not batch after batch.
    later = [line for line in lines_of(log, "write_refused") if logged_at(line) > newer_at]
    assert len(later) <= 2

    async def taken_over() -> bool:
        return (await holder_of(leases, name))[1] == term + 2

    await until(taken_over, 30, "a process to take the lapsed term over")
    # Standbys sleep until the holder's lease lapses: the takeover comes within a TTL of it.
    taken = await leases.find_one({"_id": f"{name}:{term + 2}"})
    assert taken is not None
    assert (taken["acquired_at"] - lapses).total_seconds() <= PAUSE_TTL
    await until(lambda: caught_up(store, redis, views_db), 60, "catch-up after the takeover")
    await assert_models_equal_the_log(store, redis, views_db)


@pytest.mark.slow(15)
async def test_taskflow_dev_runs_a_projector_process_per_read_model(
    settings: Settings, db: AsyncDatabase[dict[str, Any]], tmp_path: Path
) -> None:
    """`taskflow dev` (what `make dev` runs) starts the API and one projector process per read
    model, each holding its own model's lease, and SIGTERM stops every one of them."""
    port = free_port()
    env = taskflow_env(settings, HTTP_PORT=str(port), TASKFLOW_ENV="development")

    async def api_ready() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/api/health") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    with (tmp_path / "dev.log").open("wb") as out:
        dev = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskflow", "dev", env=env, stdout=out, stderr=out
        )
        try:
            leases = await both_leases_taken(db)
            await until(api_ready, 30, "the API to answer")
            redis_holder, _ = await holder_of(leases, "task_views_redis_v1")
            mongo_holder, _ = await holder_of(leases, "task_views_mongo_v1")
            assert redis_holder != mongo_holder
            assert dev.pid not in (redis_holder, mongo_holder)
            for pid in (redis_holder, mongo_holder):
                os.kill(pid, 0)  # alive: raises if not
        finally:
            dev.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(dev.wait(), 30)
            assert code == 0, (tmp_path / "dev.log").read_text()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    async def all_stopped() -> bool:
        return gone(redis_holder) and gone(mongo_holder)

    await until(all_stopped, 10, "the projector processes to stop")
