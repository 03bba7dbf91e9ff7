"""Faults on real processes and servers: kill -9 of the API, Redis and MongoDB outages, a
misbehaving network. Each test states what must hold afterwards, checked against the log.

Private servers (tests/fault_tools.py) are used wherever a server is stopped, so the shared
test servers are never disturbed; those tests skip when the binaries are not installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from pymongo import DESCENDING
from pymongo.uri_parser import parse_uri

from taskflow.api.keys import SERVICES
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import open_services, projections
from taskflow.events.records import Commit
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import catch_up
from taskflow.projections.task_queries import TaskQuery, TaskReads
from taskflow.projections.verify import verify_read_models
from taskflow.server import create_app
from taskflow.services import Services
from taskflow.settings import Settings
from tests.api_support import (
    SAME_SITE,
    Client,
    ClientFactory,
    create_task,
    existing_user,
    project,
    wait_ready,
)
from tests.fault_tools import (  # noqa: F401 - the *_fixture imports register fixtures
    PrivateServer,
    TaskflowProcess,
    TcpProxy,
    free_port,
    private_ferretdb_fixture,
    private_redis_fixture,
    proxy_to,
    taskflow_env,
    taskflow_processes_fixture,
    until,
)

pytestmark = pytest.mark.usefixtures("mongo")  # drops each test's database afterwards
Statuses = collections.Counter[int]


_EXISTING: set[tuple[str, str]] = set()


async def token(settings: Settings, user_id: str) -> dict[str, str]:
    """A token of `user_id`, made a user the API knows first (tokens of unknown users are
    refused)."""
    if (settings.mongodb_db, user_id) not in _EXISTING:
        await existing_user(settings, user_id)
        _EXISTING.add((settings.mongodb_db, user_id))
    issued = issue_access_token(settings, user_id, [], datetime.now(UTC))
    return {"Authorization": f"Bearer {issued.token}"}


async def log_commits(services: Services) -> list[Commit]:
    """Every document of the log, straight from MongoDB, in position order."""
    return [commit async for commit in services.store.scan()]


def assert_streams_contiguous(commits: list[Commit]) -> None:
    """No partial or missing commit: each stream's versions run 1, 2, 3... without a hole."""
    last: dict[str, int] = {}
    for commit in sorted(commits, key=lambda c: (c.stream_id, c.first_version)):
        if commit.is_gap:
            continue
        assert commit.first_version == last.get(commit.stream_id, 0) + 1, commit.commit_id
        assert [e.version for e in commit.events] == list(
            range(commit.first_version, commit.last_version + 1)
        )
        last[commit.stream_id] = commit.last_version
    positions = [c.position for c in commits]
    assert len(positions) == len(set(positions))


async def highest_position(services: Services) -> int:
    last = await services.store.commits.find({}).sort("position", DESCENDING).limit(1).to_list()
    return int(last[0]["position"]) if last else 0


async def projected_to(services: Services, position: int) -> bool:
    """Both read models of version 1 have applied the log up to `position`."""
    redis_at = await RedisTaskViews(services.redis, hot=services.hot).position()
    mongo_at = await MongoTaskViews(services.views_db).position()
    return redis_at >= position and mongo_at >= position


# -- kill -9 of the API under idempotent retries ------------------------------------------------

KEYS_PER_USER = 40
CLIENTS = 16


@dataclass
class RetryingClients:
    """Clients that POST a task per Idempotency-Key and retry it until it is acknowledged."""

    base_url: str
    settings: Settings
    users: list[str]
    acked: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    retries: int = 0
    lost_in_flight: int = 0
    unexpected: list[tuple[int, str]] = field(default_factory=list)

    def acknowledged(self, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(self.acked) >= count

        return check

    def jobs(self) -> list[tuple[str, str]]:
        return [(user, f"key-{n}") for user in self.users for n in range(KEYS_PER_USER)]

    async def run(self, http: aiohttp.ClientSession) -> None:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for job in self.jobs():
            queue.put_nowait(job)

        async def worker() -> None:
            while not queue.empty():
                await self._until_acked(http, *queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))

    async def _until_acked(self, http: aiohttp.ClientSession, user: str, key: str) -> None:
        headers = {**await token(self.settings, user), "Idempotency-Key": key}
        body = {"title": f"task for {key}", "tags": ["fault"]}
        while True:
            try:
                async with http.post(
                    f"{self.base_url}/api/tasks", json=body, headers=headers
                ) as response:
                    if response.status == 201:
                        self.acked[(user, key)] = {
                            **await response.json(),
                            "position": int(response.headers["X-TaskFlow-Position"]),
                            "replayed": response.headers.get("Idempotent-Replayed") == "true",
                        }
                        return
                    if response.status < 500:
                        self.unexpected.append((response.status, await response.text()))
                        return
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
                self.lost_in_flight += 1  # the request reached the API, which then died
            except (aiohttp.ClientConnectionError, TimeoutError):
                pass  # refused or timed out: the API is down or restarting
            self.retries += 1
            await asyncio.sleep(0.05)  # a client's retry back-off


@pytest.mark.slow(20)
@pytest.mark.timeout(150)
async def test_kill_9_of_the_api_under_retries_commits_every_key_exactly_once(
    settings: Settings, tmp_path: Path, taskflow_processes: list[TaskflowProcess]
) -> None:
    """kill -9 of the API three times under load: every Idempotency-Key commits exactly once."""
    api = TaskflowProcess("serve", taskflow_env(settings), tmp_path, port=free_port())
    taskflow_processes.append(api)
    clients = RetryingClients(api.base_url, settings, [uuid.uuid4().hex for _ in range(2)])
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        api.start()
        await api.ready(http)
        load = asyncio.create_task(clients.run(http))
        for acked_before_kill in (12, 35, 58):
            await until(clients.acknowledged(acked_before_kill), 60, "acks", every=0.01)
            api.kill9()
            api.start()
        await asyncio.wait_for(load, 90)
        # Every client retries once more after its acknowledgement: the original comes back.
        for (user, key), first in list(clients.acked.items())[:20]:
            headers = {**await token(settings, user), "Idempotency-Key": key}
            body = {"title": f"task for {key}", "tags": ["fault"]}
            async with http.post(f"{api.base_url}/api/tasks", json=body, headers=headers) as again:
                assert again.status == 201
                assert again.headers["Idempotent-Replayed"] == "true"
                assert (await again.json())["id"] == first["id"]
    assert clients.unexpected == []
    assert len(clients.acked) == len(clients.jobs())
    assert clients.lost_in_flight > 0  # the kills did catch requests in flight
    async with open_services(settings) as services:
        commits = [c for c in await log_commits(services) if not c.is_gap]
        by_key = collections.Counter(c.idempotency for c in commits)
        assert {f"{user}:{key}": 1 for user, key in clients.jobs()} == dict(by_key)
        by_stream = collections.Counter(c.stream_id for c in commits)
        for (user, key), ack in clients.acked.items():
            assert by_stream[f"task-{ack['id']}"] == 1
            [commit] = [c for c in commits if c.idempotency == f"{user}:{key}"]
            assert (commit.stream_id, commit.position) == (f"task-{ack['id']}", ack["position"])
        assert len(commits) == len(clients.jobs())  # nothing else was written by the retries
        assert_streams_contiguous(commits)
        assert await services.store.verify_all() == []
        await catch_up(services.store, projections(services))
        assert await verify_read_models(services, 1) == []


# -- Redis stopped and restarted -----------------------------------------------------------------


@dataclass
class Load:
    """Background HTTP traffic that records every status and the slowest answer."""

    statuses: Statuses = field(default_factory=collections.Counter)
    slowest: float = 0.0
    missing_retry_after: int = 0
    errors: list[str] = field(default_factory=list)
    acked: list[tuple[str, int, str]] = field(default_factory=list)  # task, version, title

    async def send(
        self, request: Callable[[], Awaitable[aiohttp.ClientResponse]]
    ) -> tuple[int, Any]:
        """Send, time and record one request; its status and JSON body (None if not JSON)."""
        started = time.monotonic()
        response = await request()
        body = await response.read()
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.statuses[response.status] += 1
        if response.status == 503 and "Retry-After" not in response.headers:
            self.missing_retry_after += 1
        if response.status >= 500 and response.status != 503:
            self.errors.append(body.decode(errors="replace"))
        is_json = response.content_type.endswith("json") and body
        return response.status, orjson.loads(body) if is_json else None

    def answered(self) -> int:
        return sum(self.statuses.values())

    def since(self) -> Callable[[int], Callable[[], Awaitable[bool]]]:
        """A check factory: `n` further answers of any status have come since this call."""
        seen = self.answered()

        def factory(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return self.answered() >= seen + n

            return check

        return factory

    def count(self, status: int, more: int = 5) -> Callable[[], Awaitable[bool]]:
        """A check: `more` further answers with `status` have come since this call."""
        seen = self.statuses[status]

        async def check() -> bool:
            return self.statuses[status] >= seen + more

        return check


@contextlib.asynccontextmanager
async def running(work: Callable[[], Awaitable[None]], workers: int) -> AsyncIterator[None]:
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await work()

    tasks = [asyncio.create_task(loop()) for _ in range(workers)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@pytest.mark.slow(10)
@pytest.mark.timeout(120)
async def test_redis_outage_reads_fall_back_auth_fails_closed_and_everything_recovers(
    aiohttp_client: ClientFactory,
    settings: Settings,
    private_redis: PrivateServer,
    tmp_path: Path,
    taskflow_processes: list[TaskflowProcess],
) -> None:
    """Redis killed under load: reads served from MongoDB, writes 503, limits open; recovery.

    Tokens are checked against the API process's copy of the deny list while Redis is down: a
    token logged out before the outage stays refused, and a process whose copy is too old (or
    that never had one) fails closed.
    """
    on_private = settings.model_copy(
        update={"redis_url": private_redis.url, "redis_timeout_seconds": 0.5}
    )
    client = await aiohttp_client(create_app(on_private))
    no_copy = on_private.model_copy(update={"auth_deny_copy_max_age_seconds": 0})
    strict = await aiohttp_client(create_app(no_copy))
    limited = await aiohttp_client(
        create_app(on_private.model_copy(update={"rate_limit_api": "2/minute"}))
    )
    await wait_ready(client)
    projector = TaskflowProcess("project", taskflow_env(on_private), tmp_path)
    taskflow_processes.append(projector)
    projector.start()
    owner = uuid.uuid4().hex
    auth = await token(on_private, owner)
    before = [await create_task(client, auth, title=f"before {i}") for i in range(5)]
    logged_out = await token(on_private, owner)
    logout = await client.post("/api/auth/logout", json={}, headers={**SAME_SITE, **logged_out})
    assert logout.status == 204
    load = Load()
    created: list[str] = []

    async def traffic() -> None:
        status, body = await load.send(
            lambda: client.post("/api/tasks", json={"title": "during"}, headers=auth)
        )
        if status == 201:
            created.append(body["id"])
        await load.send(lambda: client.get("/api/tasks", headers=auth))

    async with open_services(on_private) as services:
        reads = TaskReads(services.redis, services.read_db)
        await until(lambda: projected_to(services, before[-1]["_position"]), 30, "the projector")
        cut_at = await highest_position(services)
        async with running(traffic, workers=4):
            await until(load.count(201), 30, "writes before the outage")
            await private_redis.kill()
            await until(load.count(503), 30, "503s during the outage")
            # The read side falls back to the MongoDB read model (docs/design.md, Reads)...
            now, started = datetime.now(UTC), time.monotonic()
            for task in before:
                view = await reads.get(owner, task["id"])
                assert view is not None
                assert view.title == task["title"]
            page = await reads.list_tasks(owner, TaskQuery(limit=100), now)
            assert {t["id"] for t in before} <= {view.task_id for view in page.items}
            assert (await reads.stats(owner, now)).value.by_status["todo"] >= len(before)
            # Seven reads, none hanging on Redis (each gives up on it within its timeout); the
            # bound is loose because MongoDB now serves every reader, the traffic's included.
            assert time.monotonic() - started < 20.0
            # ...and so does HTTP: tokens are checked against this process's copy of the deny
            # list (refreshed every second until the outage), which still holds the logout.
            url = f"/api/tasks/{before[0]['id']}"
            over_http = await client.get("/api/tasks?limit=100", headers=auth)
            assert over_http.status == 200
            items = (await over_http.json())["items"]
            assert {t["id"] for t in before} <= {t["id"] for t in items}
            one = await client.get(url, headers=auth)
            assert one.status == 200
            assert (await one.json())["title"] == before[0]["title"]
            assert (await client.get("/api/tasks", headers=logged_out)).status == 401
            assert (await client.get(url, headers=logged_out)).status == 401
            # Writes need Redis (positions, heads): 503, never a partial commit.
            for write in [
                await client.post("/api/tasks", json={"title": "x"}, headers=auth),
                await client.patch(url, json={"title": "y"}, headers={**auth, "If-Match": '"1"'}),
            ]:
                assert write.status == 503
                assert write.headers["Retry-After"]
            # A process without a recent enough copy fails closed.
            for path in ["/api/tasks", url]:
                refused = await strict.get(path, headers=auth)
                assert refused.status == 503
                assert (await refused.json())["type"].endswith(":auth-unavailable")
                assert refused.headers["Retry-After"] == "1"
            # Rate limiting fails open: far past the limit, and still served.
            assert [(await limited.get("/api/openapi.json")).status for _ in range(5)] == [200] * 5
            await private_redis.start()  # empty: no counter, hints, heads, read model or limits
            await until(load.count(201), 30, "writes to succeed again")
        assert load.errors == []
        assert set(load.statuses) <= {200, 201, 503}
        assert load.missing_retry_after == 0
        # Nothing hangs: the bound is loose since, with Redis gone, every read (the traffic's
        # and the checks above) queues on the one MongoDB-protocol server of a loaded machine.
        assert load.slowest < 15.0
        await wait_ready(client)
        after = await create_task(client, auth, title="after")
        assert after["_position"] > cut_at  # the counter re-seeded from the log
        # Limits are enforced again: counted answers (they carry RateLimit-Remaining) up to the
        # limit, then 429. Connections the pool kept across the restart fail once each first;
        # those requests fail open, uncounted (no RateLimit-* headers), as during the outage.
        counted: list[int] = []
        for _ in range(12):
            answer = await limited.get("/api/openapi.json")
            if answer.status == 429 or "RateLimit-Remaining" in answer.headers:
                counted.append(answer.status)
            if answer.status == 429:
                break
        assert counted == [200, 200, 429]
        head = await highest_position(services)
        await until(lambda: projected_to(services, head), 60, "the projector to catch up")
        assert await verify_read_models(services, 1) == []
        commits = await log_commits(services)
        assert_streams_contiguous(commits)
        in_log = {c.stream_id for c in commits if not c.is_gap}
        assert {f"task-{task_id}" for task_id in created} <= in_log
        listed = await reads.list_tasks(owner, TaskQuery(limit=100), datetime.now(UTC))
        assert len(listed.items) == len(before) + len(created) + 1


# -- the MongoDB-protocol server stopped and restarted -------------------------------------------


async def projected_after_catch_up(services: Services, position: int) -> bool:
    """Project in this process (sealing holes once they time out) until `position` is applied."""
    await catch_up(services.store, projections(services))
    return await projected_to(services, position)


@pytest.mark.slow(23)
@pytest.mark.timeout(120)
async def test_mongodb_outage_writes_get_503_no_partial_commit_and_it_recovers(
    aiohttp_client: ClientFactory, settings: Settings, private_ferretdb: PrivateServer
) -> None:
    """FerretDB killed under writes: 503 + Retry-After, no partial commit, recovery by itself."""
    on_private = settings.model_copy(
        update={"mongodb_uri": private_ferretdb.url, "mongodb_timeout_ms": 1000}
    )
    client = await aiohttp_client(create_app(on_private))
    await until(lambda: _ready(client), 30, "the app to be ready")
    auth = await token(on_private, uuid.uuid4().hex)
    tasks = [await create_task(client, auth, title=f"task {i}") for i in range(4)]
    await project(client)
    versions = {task["id"]: 1 for task in tasks}
    load = Load()
    sequence = iter(range(1_000_000))

    async def writer(task_id: str) -> None:
        title = f"title {next(sequence)}"
        status, body = await load.send(
            lambda: client.patch(
                f"/api/tasks/{task_id}",
                json={"title": title},
                headers={**auth, "If-Match": f'"{versions[task_id]}"'},
            )
        )
        if status == 200:
            versions[task_id] = body["version"]
            load.acked.append((task_id, body["version"], title))
        elif status == 412:
            versions[task_id] = body["current_version"]

    async def traffic() -> None:
        await asyncio.gather(*(writer(task["id"]) for task in tasks))
        status, body = await load.send(
            lambda: client.post("/api/tasks", json={"title": "created"}, headers=auth)
        )
        if status == 201:
            load.acked.append((body["id"], 1, "created"))

    async with running(traffic, workers=1):
        await until(load.count(200), 30, "writes before the outage")
        await private_ferretdb.kill()
        await until(load.count(503, more=15), 60, "503s during the outage")
        started = time.monotonic()
        refused = await client.post("/api/tasks", json={"title": "x"}, headers=auth)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert (await refused.json())["type"].endswith(":service-unavailable")
        assert time.monotonic() - started < 10
        # Reads are served from Redis, and auth does not need MongoDB: both keep working.
        assert (await client.get(f"/api/tasks/{tasks[0]['id']}", headers=auth)).status == 200
        await private_ferretdb.start()
        await until(load.count(200), 60, "writes to succeed again")
    assert load.errors == []
    assert set(load.statuses) <= {200, 201, 412, 503}
    assert load.missing_retry_after == 0
    assert load.slowest < 10
    await until(lambda: _ready(client), 30, "the app to be ready again")
    async with open_services(on_private) as services:
        await assert_acknowledged_writes_survived(services, load)


async def _ready(client: Client) -> bool:
    return (await client.get("/api/ready")).status == 200


async def assert_acknowledged_writes_survived(services: Services, load: Load) -> None:
    """After a fault: the log intact, every acknowledged write in it, projections equal to it.

    Then the bound on answer times, checked last so that a slow answer (TooSlowError) never
    hides a lost or corrupted write.
    """
    commits = await log_commits(services)
    assert_streams_contiguous(commits)
    assert await services.store.verify_all() == []
    for task_id, version, title in load.acked:  # every acknowledged write is in the log
        [commit] = [
            c for c in commits if c.stream_id == f"task-{task_id}" and c.last_version == version
        ]
        assert commit.events[-1].data["title"] == title
    head = await highest_position(services)
    await until(lambda: projected_after_catch_up(services, head), 30, "the projections")
    assert await verify_read_models(services, 1) == []
    if load.slowest >= REQUEST_BOUND:
        raise TooSlowError(f"a request took {load.slowest:.1f} s (bound {REQUEST_BOUND} s)")


# -- a network that delays, resets and stalls --------------------------------------------------

MONGODB_TIMEOUT_MS = 1000
REDIS_TIMEOUT = 0.5
# The most one request may take: a MongoDB operation and its one retry, each bounded by the
# socket timeout (bootstrap.py: 2 x MONGODB_TIMEOUT_MS), two Redis timeouts, and a second of margin.
REQUEST_BOUND = 2 * (2 * MONGODB_TIMEOUT_MS / 1000) + 2 * REDIS_TIMEOUT + 1.0


def _address(uri: str) -> tuple[str, int]:
    """The first host of a MongoDB URI (a proxy stands in for one member only)."""
    host, port = parse_uri(uri)["nodelist"][0]
    return host, int(port)


@contextlib.asynccontextmanager
async def behind_proxies(settings: Settings) -> AsyncIterator[tuple[Settings, TcpProxy, TcpProxy]]:
    """Settings whose MongoDB and Redis are reached through proxies this test controls."""
    redis_url = urlsplit(settings.redis_url)
    async with (
        proxy_to(*_address(settings.mongodb_uri), seed=3) as mongo_proxy,
        proxy_to(redis_url.hostname or "127.0.0.1", redis_url.port or 6379, seed=4) as redis_proxy,
    ):
        # A direct connection: through a replica-set URI PyMongo would follow the member's own
        # address from `hello` and go around the proxy.
        proxied = settings.model_copy(
            update={
                "mongodb_uri": f"mongodb://127.0.0.1:{mongo_proxy.port}/?directConnection=true",
                "redis_url": f"redis://127.0.0.1:{redis_proxy.port}{redis_url.path or '/0'}",
                "mongodb_timeout_ms": MONGODB_TIMEOUT_MS,
                "redis_timeout_seconds": REDIS_TIMEOUT,
                "ready_timeout_seconds": 0.5,
            }
        )
        yield proxied, mongo_proxy, redis_proxy


def _latency(mongo: TcpProxy, redis: TcpProxy) -> None:
    mongo.latency = redis.latency = 0.03


def _resets(mongo: TcpProxy, redis: TcpProxy) -> None:
    mongo.reset_chance = redis.reset_chance = 0.1


def _mongodb_stalls(mongo: TcpProxy, redis: TcpProxy) -> None:
    mongo.stalled = True


def _redis_stalls(mongo: TcpProxy, redis: TcpProxy) -> None:
    redis.stalled = True


FAULTS = {
    "latency": _latency,
    "resets": _resets,
    "mongodb-stalls": _mongodb_stalls,
    "redis-stalls": _redis_stalls,
}


class TooSlowError(AssertionError):
    """A request answered later than REQUEST_BOUND."""


@pytest.mark.slow(12)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_bad_network_never_hangs_a_request_past_its_timeouts_nor_gives_500(
    aiohttp_client: ClientFactory, settings: Settings, fault: str
) -> None:
    """Latency, resets or a stalled server: answers are 2xx/503 within bounded time, never 500."""
    async with behind_proxies(settings) as (proxied, mongo_proxy, redis_proxy):
        client = await aiohttp_client(create_app(proxied))
        await until(lambda: _ready(client), 30, "the app to be ready")
        auth = await token(proxied, uuid.uuid4().hex)
        tasks = [await create_task(client, auth, title=f"task {i}") for i in range(3)]
        await project(client)
        versions = {task["id"]: 1 for task in tasks}
        load = Load()
        keys = iter(range(1_000_000))

        async def traffic() -> None:
            n = next(keys)
            status, body = await load.send(
                lambda: client.post(
                    "/api/tasks",
                    json={"title": f"created {n}"},
                    headers={**auth, "Idempotency-Key": f"k{n}"},
                )
            )
            if status == 201:
                load.acked.append((body["id"], 1, f"created {n}"))
            task_id = tasks[n % len(tasks)]["id"]
            status, body = await load.send(
                lambda: client.patch(
                    f"/api/tasks/{task_id}",
                    json={"title": f"title {n}"},
                    headers={**auth, "If-Match": f'"{versions[task_id]}"'},
                )
            )
            if status == 200:
                versions[task_id] = body["version"]
                load.acked.append((task_id, body["version"], f"title {n}"))
            elif status == 412:
                versions[task_id] = body["current_version"]
            await load.send(lambda: client.get(f"/api/tasks/{task_id}", headers=auth))
            await load.send(lambda: client.get("/api/tasks?limit=5", headers=auth))

        async with running(traffic, workers=4):
            await until(load.count(200, more=20), 30, "traffic before the fault")
            if fault == "mongodb-stalls":
                # Right after a heartbeat of the driver's monitor, so that the next one (whose
                # failure clears the pool) is a full interval away: the worst case, every time.
                await until(mongo_proxy.activity_on_first_connection(), 15, "a heartbeat", 0.01)
            FAULTS[fault](mongo_proxy, redis_proxy)
            faulty = load.since()
            await until(faulty(40), 90, "40 requests under the fault")
            mongo_proxy.heal()
            redis_proxy.heal()
            await until(load.count(201, more=5), 60, "writes to succeed again")
        assert load.errors == []
        assert set(load.statuses) <= {200, 201, 412, 503}
        assert load.missing_retry_after == 0
        await until(lambda: _ready(client), 30, "the app to be ready again")
        # Checked through clients of its own, without the API's short per-operation deadline
        # (a scan of the log on a machine busy with other work may outlast it).
        checking = client.app[SERVICES].settings.model_copy(update={"mongodb_timeout_ms": 30_000})
        async with open_services(checking) as services:
            await assert_acknowledged_writes_survived(services, load)
