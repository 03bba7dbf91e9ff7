"""Group 8: the live change feed (server-sent events) next to a raw XREAD relay.

Push latency: writers send commands over HTTP to one API process (`python -m taskflow serve`)
while the real projector runs; `feed_owners` subscribers follow their feeds
(`GET /api/tasks/changes`) from this process. First the maximum write rate (closed loop), then
an open loop at `latency_load_share` of it: each change's latency is from the write's answer
(and, command included, from sending it) to its event reaching the subscriber. The raw side is
`python -m bench.raw_relay`: an `insert_one` and an `XADD` per write, one `XREAD` reader fanning
out to SSE responses, with the same writers and subscribers.

Idle subscribers: `feed_subscribers` streams of as many users held open on one API process:
the process's resident memory per subscriber, and W (`POST /api/tasks` under wrk, as group 5)
with and without them. The raw relay is measured the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness import Group
from bench.http_processes import (
    READY_SECONDS,
    LoadShape,
    Server,
    api_server,
    bearer,
    cpu_seconds,
    free_port,
    load,
    new_user,
)
from bench.latency import closed_loop, steady
from bench.processes import child, projectors
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate, percentile
from bench.watch import ViewWatch
from taskflow.projections.redis_keys import RedisViewKeys

TASK_BODY = {"title": "Review the quarterly budget", "tags": ["budget", "review"]}
CREATE_SHARE = 0.2  # of the measured writes; the rest change a task
RECEIVE_SECONDS = 30.0  # how long the last events may take once the load stopped
FLOOR_MS = 0.01  # latencies below are counted as this (an event may beat its write's answer)
RAW_LABEL = "raw relay: `insert_one` + `XADD`, one `XREAD` reader, SSE, same load"


def comparisons(sizes: Sizes) -> list[Comparison]:
    load = f"open loop at {sizes.latency_load_share:.0%} of the maximum write rate"
    subscribers = f"{sizes.feed_owners} subscribers"
    idle = f"{sizes.feed_subscribers} idle subscribers on one process"
    http = f"{sizes.http_concurrency} connections, closed loop"
    return [
        Comparison(
            f"maximum write rate over HTTP ({CREATE_SHARE:.0%} creates), {sizes.writers} "
            f"writers, closed loop, projector and {subscribers} running",
            "writes/s",
            "taskflow_max_rate",
            "raw_max_rate",
            f"raw relay `POST /write`, {sizes.writers} writers, closed loop",
        ),
        *(
            Comparison(
                f"p{p}, write answered → its event at the subscriber, {load}, {subscribers}",
                "ms",
                f"taskflow_push_p{p}",
                f"raw_push_p{p}",
                RAW_LABEL,
            )
            for p in (50, 99)
        ),
        Comparison(
            f"p99 of the feed's own part: the Redis view shows the change → its event at the "
            f"subscriber, {load}",
            "ms",
            "taskflow_feed_p99",
            "raw_push_p99",
            "raw relay: write answered → its event at the subscriber",
        ),
        Comparison(
            f"p99, write sent → its event at the subscriber (command included), {load}",
            "ms",
            "taskflow_total_p99",
            "raw_total_p99",
            RAW_LABEL,
        ),
        Comparison(
            f"resident memory per idle subscriber, {idle}",
            "kB",
            "taskflow_idle_kb",
            "raw_idle_kb",
            "raw relay, as many idle subscribers",
        ),
        Comparison(
            f"the server process's CPU while it holds {idle} and nothing else runs",
            "% of a core",
            "taskflow_idle_cpu_pct",
            "raw_idle_cpu_pct",
            "raw relay, as many idle subscribers",
        ),
        Comparison(
            f"W: `POST /api/tasks` with {idle}, {http}",
            "requests/s",
            "taskflow_w_idle",
            "taskflow_w",
            "W without subscribers (the same process: the mean of before and after)",
        ),
        Comparison(
            f"raw relay `POST /write` with {idle}, {http}",
            "requests/s",
            "raw_w_idle",
            "raw_w",
            "raw relay without subscribers (the mean of before and after)",
        ),
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    figures: Trial = {}
    for variant in alternate(["taskflow", "raw"], repetition):
        figures |= await (_taskflow_push if variant == "taskflow" else _raw_push)(servers, sizes)
    for variant in alternate(["taskflow", "raw"], repetition):
        figures |= await (_taskflow_idle if variant == "taskflow" else _raw_idle)(servers, sizes)
    return figures


# -- push latency ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    sent: float
    answered: float
    key: str  # what the subscriber sees as the event's id
    visible: float | None = None  # TaskFlow: when the Redis view showed the change


@dataclass
class Subscribers:
    """SSE streams read in the background; when each event id arrived (perf_counter)."""

    received: dict[str, float] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ready: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every event

    def follow(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        self.tasks.append(asyncio.create_task(self._read(http, url, headers)))

    async def _read(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with http.get(url, headers=headers, timeout=timeout) as response:
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status} {await response.text()}")
            event_id: str | None = None
            async for raw in response.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif line.startswith(b"event: ready"):
                    self.ready += 1
                    event_id = None
                elif not line and event_id is not None:
                    self.received.setdefault(event_id, time.perf_counter())
                    self.arrived.set()
                    event_id = None

    async def until_ready(self, count: int) -> None:
        async with asyncio.timeout(READY_SECONDS):
            while self.ready < count:
                for task in self.tasks:
                    if task.done():
                        task.result()  # raises what made a stream fail
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class HttpWrites:
    """Creates and changes tasks of `owners` over HTTP (TaskFlow's API or the raw relay)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, owners: Sequence[str]) -> None:
        self._http = http
        self._base = base
        self._owners = list(owners)
        self._rng = random.Random(7)  # noqa: S311 - a reproducible load, not a secret
        self._idle: list[tuple[str, str, int]] = []  # (owner, task id, version) not in flight
        self._titles = itertools.count()

    async def create(self) -> Sample:
        raise NotImplementedError

    async def mixed(self) -> Sample:
        raise NotImplementedError

    def _owner(self) -> str:
        return self._rng.choice(self._owners)


class TaskflowWrites(HttpWrites):
    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        owners: Sequence[str],
        auth: dict[str, str],
        watch: ViewWatch,
    ) -> None:
        super().__init__(http, base, owners)
        self._auth = auth  # owner -> Authorization header value
        self.watch = watch
        self.watching = False  # True: each write also waits until the Redis view shows it
        self._keys = RedisViewKeys(1)

    async def _sample(self, sent: float, answered: float, response: Any, owner: str) -> Sample:
        body = await response.json()
        position = response.headers["X-TaskFlow-Position"]
        visible = None
        if self.watching:
            key = self._keys.tasks(owner)
            visible = await self.watch.visible(key, body["id"], body["version"])
        return Sample(sent, answered, position, visible)

    async def create(self) -> Sample:
        owner = self._owner()
        sent = time.perf_counter()
        async with self._http.post(
            f"{self._base}/api/tasks", json=TASK_BODY, headers={"Authorization": self._auth[owner]}
        ) as response:
            body = await response.json()
            answered = time.perf_counter()
            if response.status != 201:
                raise RuntimeError(f"create: {response.status} {body}")
        self._idle.append((owner, body["id"], body["version"]))
        return await self._sample(sent, answered, response, owner)

    async def mixed(self) -> Sample:
        if not self._idle or self._rng.random() < CREATE_SHARE:
            return await self.create()
        owner, task_id, version = self._idle.pop(self._rng.randrange(len(self._idle)))
        headers = {"Authorization": self._auth[owner], "If-Match": f'"{version}"'}
        sent = time.perf_counter()
        async with self._http.patch(
            f"{self._base}/api/tasks/{task_id}",
            json={"title": f"renamed #{next(self._titles)}"},
            headers=headers,
        ) as response:
            body = await response.json()
            answered = time.perf_counter()
            if response.status != 200:
                raise RuntimeError(f"change: {response.status} {body}")
        self._idle.append((owner, task_id, body["version"]))
        return await self._sample(sent, answered, response, owner)


class RawWrites(HttpWrites):
    async def create(self) -> Sample:
        sent = time.perf_counter()
        async with self._http.post(f"{self._base}/write/{self._owner()}", json=TASK_BODY) as r:
            body = await r.json()
            answered = time.perf_counter()
        return Sample(sent, answered, body["id"])

    async def mixed(self) -> Sample:
        return await self.create()


async def _push(writes: HttpWrites, subscribers: Subscribers, sizes: Sizes, prefix: str) -> Trial:
    """The maximum write rate, then the latencies at a share of it."""
    await closed_loop(writes.create, sizes.writers, sizes.latency_warmup_seconds)
    max_rate = await closed_loop(writes.mixed, sizes.writers, sizes.latency_max_seconds)
    rate = max_rate * sizes.latency_load_share
    await steady(writes.mixed, rate, sizes.latency_warmup_seconds)
    if isinstance(writes, TaskflowWrites):
        writes.watching = True
    samples, achieved = await steady(writes.mixed, rate, sizes.feed_seconds)
    async with asyncio.timeout(RECEIVE_SECONDS):
        while any(sample.key not in subscribers.received for sample in samples):
            subscribers.arrived.clear()
            await subscribers.arrived.wait()
    # The raw relay's event often arrives before its write's answer: 0.01 ms is the floor.
    push = [max((subscribers.received[s.key] - s.answered) * 1000, FLOOR_MS) for s in samples]
    total = [(subscribers.received[s.key] - s.sent) * 1000 for s in samples]
    # TaskFlow: the feed's own part, from the Redis view showing a change to its event arriving
    # (the projector writes both in one transaction); the raw relay has no view: its push.
    own = [
        max(
            (subscribers.received[s.key] - (s.visible if s.visible is not None else s.answered))
            * 1000,
            FLOOR_MS,
        )
        for s in samples
    ]
    return {
        f"{prefix}_feed_p50": percentile(own, 50),
        f"{prefix}_feed_p99": percentile(own, 99),
        f"{prefix}_max_rate": max_rate,
        f"{prefix}_rate": achieved,
        f"{prefix}_push_p50": percentile(push, 50),
        f"{prefix}_push_p99": percentile(push, 99),
        f"{prefix}_push_max": max(push),
        f"{prefix}_total_p99": percentile(total, 99),
    }


async def _taskflow_push(servers: Servers, sizes: Sizes) -> Trial:
    async with (
        servers.fresh_db() as db,
        servers.flushed_redis(),
    ):
        await servers.store_on(db)
        owners = [await new_user(servers, db.name) for _ in range(sizes.feed_owners)]
        auth = {owner: bearer(servers, owner) for owner in owners}
        async with (
            api_server(servers, db.name) as api,
            projectors(servers, db.name),
            _session() as http,
        ):
            subscribers = Subscribers()
            for owner in owners:
                subscribers.follow(
                    http, f"{api.base}/api/tasks/changes", {"Authorization": auth[owner]}
                )
            try:
                await subscribers.until_ready(len(owners))
                async with ViewWatch(servers.redis) as watch:
                    writes = TaskflowWrites(http, api.base, owners, auth, watch)
                    return await _push(writes, subscribers, sizes, "taskflow")
            finally:
                await subscribers.close()


async def _raw_push(servers: Servers, sizes: Sizes) -> Trial:
    owners = [uuid.uuid4().hex for _ in range(sizes.feed_owners)]
    async with servers.fresh_db() as db, servers.flushed_redis():
        await servers.store_on(db)
        async with raw_relay(servers, db.name) as relay, _session() as http:
            subscribers = Subscribers()
            for owner in owners:
                subscribers.follow(http, f"{relay.base}/events/{owner}", {})
            try:
                await subscribers.until_ready(len(owners))
                return await _push(RawWrites(http, relay.base, owners), subscribers, sizes, "raw")
            finally:
                await subscribers.close()


# -- idle subscribers -----------------------------------------------------------------------------


async def _taskflow_idle(servers: Servers, sizes: Sizes) -> Trial:
    shape = LoadShape(sizes.http_concurrency, sizes.http_seconds, sizes.http_warmup_seconds)
    async with servers.fresh_db() as db, servers.flushed_redis():
        await servers.store_on(db)
        # Users the API knows (a token of an unknown user is refused): the writer, 10 warm-up
        # subscribers and the idle ones, each its own user.
        users = iter([await new_user(servers, db.name) for _ in range(sizes.feed_subscribers + 11)])
        async with api_server(servers, db.name) as api, _session() as http:
            pid = api.process.process.pid
            writer = [f"Authorization: {bearer(servers, next(users))}"]

            async def w() -> float:
                result = await load(
                    api.base, ["/api/tasks"], shape, method="POST", body=TASK_BODY, headers=writer
                )
                return float(result["rate"])

            def follow(subscribers: Subscribers, count: int) -> None:
                for _ in range(count):
                    header = {"Authorization": bearer(servers, next(users))}
                    subscribers.follow(http, f"{api.base}/api/tasks/changes", header)

            return await _idle(w, follow, pid, sizes, "taskflow")


async def _raw_idle(servers: Servers, sizes: Sizes) -> Trial:
    shape = LoadShape(sizes.http_concurrency, sizes.http_seconds, sizes.http_warmup_seconds)
    async with servers.fresh_db() as db, servers.flushed_redis():
        await servers.store_on(db)
        async with raw_relay(servers, db.name) as relay, _session() as http:
            pid = relay.process.process.pid

            async def w() -> float:
                result = await load(
                    relay.base, ["/write/writer"], shape, method="POST", body=TASK_BODY
                )
                return float(result["rate"])

            def follow(subscribers: Subscribers, count: int) -> None:
                for _ in range(count):
                    subscribers.follow(http, f"{relay.base}/events/{uuid.uuid4().hex}", {})

            return await _idle(w, follow, pid, sizes, "raw")


async def _idle(
    w: Callable[[], Coroutine[Any, Any, float]],
    follow: Callable[[Subscribers, int], None],
    pid: int,
    sizes: Sizes,
    prefix: str,
) -> Trial:
    """W without subscribers; then `feed_subscribers` idle ones opened, the process's memory
    before and after, its CPU while they are idle; W with them (writes of a user none of them
    follows); and W without them again: the row compares with the mean of both W without, so
    that a drift of the machine's load during the trial does not count as the subscribers'."""
    warm = Subscribers()  # the streams' code paths and buffers warmed up before measuring
    follow(warm, 10)
    await warm.until_ready(10)
    await warm.close()
    without = await w()
    before = _rss_kb(pid)
    subscribers = Subscribers()
    follow(subscribers, sizes.feed_subscribers)
    try:
        await subscribers.until_ready(sizes.feed_subscribers)
        after = _rss_kb(pid)
        cpu_before, started = cpu_seconds([pid]), time.monotonic()
        await asyncio.sleep(sizes.http_seconds)  # the subscribers' own cost, nothing else running
        seconds = time.monotonic() - started
        # /proc counts CPU in clock ticks: less than one in the window reads as one.
        tick = 1 / os.sysconf("SC_CLK_TCK")
        idle_cpu = max(cpu_seconds([pid]) - cpu_before, tick) / seconds
        with_them = await w()
    finally:
        await subscribers.close()
    without_again = await w()
    return {
        f"{prefix}_w": (without + without_again) / 2,
        f"{prefix}_w_idle": with_them,
        f"{prefix}_idle_kb": (after - before) / sizes.feed_subscribers,
        f"{prefix}_idle_cpu_pct": idle_cpu * 100,
    }


# -- helpers --------------------------------------------------------------------------------------


@asynccontextmanager
async def _session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client for many long-lived streams: no connection limit."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


@asynccontextmanager
async def raw_relay(servers: Servers, database: str) -> AsyncIterator[Server]:
    """`python -m bench.raw_relay` on a free port, once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "BENCH_DB": database,
        "REDIS_URL": servers.settings.redis_url,
    }
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "bench.raw_relay", str(port)]
    async with child("raw_relay", args, env) as proc, aiohttp.ClientSession() as session:

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/ready") as response:
                    return response.status == 200
            return False

        await proc.wait_until(ready, READY_SECONDS)
        yield Server(base, proc)


def _rss_kb(pid: int) -> int:
    """The process's resident set size (kB, /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


GROUP = Group("8. Change feed", comparisons, trial, warm_up=False)
