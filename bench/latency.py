"""Group 4: write-to-visible latency under a steady load, real projector vs a raw echo process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.harness import Group
from bench.processes import ECHO_CHANNEL, echo, projectors
from bench.samples import commit_document
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate, percentile
from bench.watch import ViewWatch
from taskflow.commands.runner import Context, Outcome
from taskflow.commands.task import ChangeTask, CreateTask, Status, TaskState
from taskflow.commands.task_handlers import handle_change_task, handle_create_task
from taskflow.events.store import EventStore
from taskflow.projections.redis_keys import RedisViewKeys
from tests.workload import WORDS

S = TypeVar("S")  # what one command of a load yields (the change feed group has its own)
RAW_LABEL = "`insert_one` + `PUBLISH`, a subscriber process `HSET`s, same rate"
RAW_KEY = "bench:raw:tasks"
CREATE_SHARE = 0.2  # of the measured commands; the rest change a task


@dataclass(frozen=True)
class Sample:
    """One command: how long the handler (or raw write) took, then until it was visible.

    `position` (TaskFlow only) and the moments it returned and was seen (`perf_counter()`) let
    the run split the lag into the projector's own part and the wait for lower positions.
    """

    command: float
    visible: float
    position: int = 0
    returned_at: float = 0.0


def comparisons(sizes: Sizes) -> list[Comparison]:
    share = f"{CREATE_SHARE:.0%} creates"
    load = (
        f"open loop at {sizes.latency_load_share:.0%} of the maximum write rate ({share}) "
        f"for {sizes.latency_seconds:g} s"
    )
    # The maximum write rate swings with the machine (606-1,054 commands/s between two runs),
    # and the lag with the rate it is measured at: a fixed rate makes runs comparable.
    fixed = (
        f"open loop at a fixed {sizes.latency_fixed_rate:g} commands/s ({share}) "
        f"for {sizes.latency_seconds:g} s"
    )
    what = f"handler returned → Redis view shows the version, {load}"
    own = (
        "the projector's own part: from the moment every lower position had been committed "
        f"to the view showing the version, {load}"
    )
    return (
        [
            Comparison(
                f"maximum write rate: the same commands ({share}) from {sizes.writers} writers, "
                f"closed loop, projector running, {sizes.latency_max_seconds:g} s",
                "commands/s",
                "taskflow_max_rate",
                "raw_max_rate",
                f"`insert_one` + `PUBLISH`, {sizes.writers} writers, closed loop",
            ),
        ]
        + [
            Comparison(f"p{p}, {what}", "ms", f"taskflow_p{p}", f"raw_p{p}", RAW_LABEL)
            for p in (50, 99)
        ]
        + [
            Comparison(f"p99, {own}", "ms", "taskflow_own_p99", "raw_p99", RAW_LABEL),
            Comparison(
                f"p99, command sent → Redis view shows the version (its own time included), {load}",
                "ms",
                "taskflow_total_p99",
                "raw_total_p99",
                RAW_LABEL,
            ),
            Comparison(
                f"p99, handler returned → Redis view shows the version, {fixed}",
                "ms",
                "taskflow_fixed_p99",
                "raw_fixed_p99",
                RAW_LABEL,
            ),
            Comparison(
                f"p99, command sent → Redis view shows the version (command included), {fixed}",
                "ms",
                "taskflow_fixed_total_p99",
                "raw_fixed_total_p99",
                RAW_LABEL,
            ),
        ]
    )


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    """The maximum write rate first, then the lag of both sides at a share of TaskFlow's, then
    at a fixed rate."""
    figures: Trial = {}
    for variant in alternate(["taskflow", "raw"], repetition):
        maximum = _taskflow_max if variant == "taskflow" else _raw_max
        figures[f"{variant}_max_rate"] = await maximum(servers, sizes)
    rate = figures["taskflow_max_rate"] * sizes.latency_load_share
    figures.update(await _lags(servers, sizes, rate, repetition))
    fixed = await _lags(servers, sizes, sizes.latency_fixed_rate, repetition)
    for variant in ("taskflow", "raw"):
        for name in ("p99", "total_p99", "rate"):
            figures[f"{variant}_fixed_{name}"] = fixed[f"{variant}_{name}"]
    return figures


async def _lags(servers: Servers, sizes: Sizes, rate: float, repetition: int) -> Trial:
    """Both sides' lag at `rate`, one after the other."""
    figures: Trial = {}
    for variant in alternate(["taskflow", "raw"], repetition):
        run = taskflow_lag if variant == "taskflow" else _raw
        samples, achieved = await run(servers, sizes, rate)
        figures.update(summary(variant, samples, achieved))
    return figures


def summary(variant: str, samples: Sequence[Sample], rate: float) -> Trial:
    """The percentiles of one side's samples (ms), its own part too for TaskFlow's."""
    visible = [s.visible * 1000 for s in samples]
    commands = [s.command * 1000 for s in samples]
    figures = {
        f"{variant}_p50": percentile(visible, 50),
        f"{variant}_p99": percentile(visible, 99),
        f"{variant}_max": max(visible),
        f"{variant}_command_p50": percentile(commands, 50),
        f"{variant}_command_p99": percentile(commands, 99),
        # What the client lives through: from sending the command until the view shows it.
        f"{variant}_total_p99": percentile([(s.command + s.visible) * 1000 for s in samples], 99),
        f"{variant}_rate": rate,
    }
    if variant == "taskflow":
        own = [ms * 1000 for ms in own_part(samples)]
        figures |= {
            f"{variant}_own_p50": percentile(own, 50),
            f"{variant}_own_p99": percentile(own, 99),
        }
    return figures


def own_part(samples: Sequence[Sample]) -> list[float]:
    """Each sample's lag from the moment it, and every commit with a lower position, had been
    committed (the log is applied in global order, so a commit cannot show before that).

    What is left once the wait for earlier appends (head-of-line blocking) is taken out: the
    projector's wake-up, read and write. Warm-up commits all returned before the measured ones
    started, so the measured samples alone decide.
    """
    by_position = sorted(samples, key=lambda s: s.position)
    parts: list[float] = []
    ready = 0.0
    for sample in by_position:
        ready = max(ready, sample.returned_at)
        seen_at = sample.returned_at + sample.visible
        parts.append(max(0.0, seen_at - ready))
    return parts


async def taskflow_lag(servers: Servers, sizes: Sizes, rate: float) -> tuple[list[Sample], float]:
    """Warm-up creates tasks; the measured load creates and changes them (one command per task
    at a time)."""
    async with _taskflow_load(servers, watched=True) as load:
        await steady(load.create, rate, sizes.latency_warmup_seconds)
        return await steady(load.mixed, rate, sizes.latency_seconds)


async def _raw(servers: Servers, sizes: Sizes, rate: float) -> tuple[list[Sample], float]:
    async with _raw_load(servers, watched=True) as load:
        await steady(load.send, rate, sizes.latency_warmup_seconds)
        return await steady(load.send, rate, sizes.latency_seconds)


async def _taskflow_max(servers: Servers, sizes: Sizes) -> float:
    """Commands per second from `writers` closed-loop writers, the projector running (it
    shares the machine in production too); nobody waits for visibility here."""
    async with _taskflow_load(servers, watched=False) as load:
        await closed_loop(load.create, sizes.writers, sizes.latency_warmup_seconds)
        return await closed_loop(load.mixed, sizes.writers, sizes.latency_max_seconds)


async def _raw_max(servers: Servers, sizes: Sizes) -> float:
    async with _raw_load(servers, watched=False) as load:
        await closed_loop(load.send, sizes.writers, sizes.latency_warmup_seconds)
        return await closed_loop(load.send, sizes.writers, sizes.latency_max_seconds)


@asynccontextmanager
async def _taskflow_load(servers: Servers, *, watched: bool) -> AsyncIterator[TaskLoad]:
    """Command handlers on a fresh store, the real projector following it."""
    async with (
        servers.fresh_store() as store,
        projectors(servers, store.commits.database.name),
        ViewWatch(servers.redis) as watch,
    ):
        yield TaskLoad(store, watch, watched=watched)


@asynccontextmanager
async def _raw_load(servers: Servers, *, watched: bool) -> AsyncIterator[RawLoad]:
    """Raw inserts and publishes on a fresh database; the echo process only when watched."""
    async with servers.fresh_db() as db, servers.flushed_redis() as redis:
        commits = (await servers.store_on(db)).commits
        async with (
            echo(servers) if watched else contextlib.nullcontext(),
            ViewWatch(redis) as watch,
        ):
            yield RawLoad(commits, redis, watch, watched=watched)


async def closed_loop(
    send: Callable[[], Coroutine[Any, Any, object]], writers: int, seconds: float
) -> float:
    """`writers` coroutines each calling `send` again as soon as it returns, for `seconds`;
    the calls completed per second."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    until = start + seconds

    async def writer() -> int:
        done = 0
        while loop.time() < until:
            await send()
            done += 1
        return done

    done = sum(await asyncio.gather(*(writer() for _ in range(writers))))
    return done / (loop.time() - start)


async def steady(
    send: Callable[[], Coroutine[Any, Any, S]], rate: float, seconds: float
) -> tuple[list[S], float]:
    """Start `send` `rate` times a second, open-loop (a slow command delays no other); the
    samples and the rate achieved."""
    loop = asyncio.get_running_loop()
    count, start = max(1, round(rate * seconds)), loop.time()
    pending: list[asyncio.Task[S]] = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        pending.append(asyncio.create_task(send()))
    achieved = count / (loop.time() - start + 1 / rate)
    return list(await asyncio.gather(*pending)), achieved


class TaskLoad:
    """Creates tasks and changes them through the command handlers, timing each to visibility."""

    def __init__(
        self, store: EventStore, watch: ViewWatch, owners: int = 10, *, watched: bool = True
    ) -> None:
        self._store = store
        self._watch = watch
        self._watched = watched  # False: return once the handler returned (a rate, no lag)
        self._rng = random.Random(7)  # noqa: S311 - a reproducible load, not a secret
        self._owners = [uuid.uuid4().hex for _ in range(owners)]
        self._idle: deque[TaskState] = deque()  # tasks no command is changing right now
        self._titles = itertools.count()
        self._keys = RedisViewKeys(1)

    async def create(self) -> Sample:
        owner = self._rng.choice(self._owners)
        command = CreateTask(task_id=uuid.uuid4().hex, owner_id=owner, title=self._title())
        return await self._timed(handle_create_task(self._store, command, _as(owner), _now()))

    async def mixed(self) -> Sample:
        """A create `CREATE_SHARE` of the time, otherwise a change."""
        return await (self.create() if self._rng.random() < CREATE_SHARE else self.change())

    async def change(self) -> Sample:
        """Rename an idle task, half the time also moving it to another status."""
        if not self._idle:
            return await self.create()
        state = self._idle.popleft()
        fields: dict[str, Any] = {"title": self._title()}
        if self._rng.random() < 0.5:
            fields["status"] = self._rng.choice([s for s in Status if s is not state.status])
        command = ChangeTask(task_id=state.task_id, **fields)
        context = _as(state.owner_id)
        return await self._timed(
            handle_change_task(self._store, command, context, _now(), state.version)
        )

    async def _timed(self, command: Awaitable[Outcome[TaskState]]) -> Sample:
        start = time.perf_counter()
        outcome = await command
        returned = time.perf_counter()
        state = outcome.state
        assert state is not None
        assert outcome.position is not None  # every measured command makes a commit
        seen = returned
        if self._watched:
            key = self._keys.tasks(state.owner_id)
            seen = await self._watch.visible(key, state.task_id, state.version)
        self._idle.append(state)
        return Sample(returned - start, seen - returned, outcome.position, returned)

    def _title(self) -> str:
        return f"{' '.join(self._rng.sample(WORDS, 2))} #{next(self._titles)}"


class RawLoad:
    """Inserts a commit-sized document, publishes a view, and waits for the echo's `HSET`."""

    def __init__(
        self,
        commits: AsyncCollection[dict[str, Any]],
        redis: Redis,
        watch: ViewWatch,
        *,
        watched: bool = True,
    ) -> None:
        self._commits = commits
        self._redis = redis
        self._watch = watch
        self._watched = watched
        self._positions = itertools.count(1)

    async def send(self) -> Sample:
        position = next(self._positions)
        doc = commit_document("raw", position, position)
        field = f"task-{position % 100}"
        view = orjson.dumps({"version": position, "title": "Review the quarterly budget"})
        message = orjson.dumps({"key": RAW_KEY, "field": field, "value": view.decode()})
        start = time.perf_counter()
        await self._commits.insert_one(doc)
        await self._redis.publish(ECHO_CHANNEL, message)
        returned = time.perf_counter()
        seen = await self._watch.visible(RAW_KEY, field, position) if self._watched else returned
        return Sample(returned - start, seen - returned)


def _as(owner: str) -> Context:
    return Context(actor=owner, request_id=uuid.uuid4().hex, correlation_id="bench")


def _now() -> datetime:
    return datetime.now(UTC)


GROUP = Group("4. Write-to-visible latency", comparisons, trial, warm_up=False)
