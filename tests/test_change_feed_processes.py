"""The change feed across real processes: `taskflow serve` and `taskflow project` children on the
real servers, killed with SIGKILL while a client follows its feed. The client reconnects (to
another API process) with Last-Event-ID and ends up with exactly the log's changes for it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskflow import names
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import open_services
from taskflow.projections.lease import Lease
from taskflow.projections.redis_views import NAME
from taskflow.settings import Settings
from tests.api_support import existing_user
from tests.change_feed_support import Change, changes_in_log
from tests.fault_tools import (  # noqa: F401 - the *_fixture import registers the fixture
    TaskflowProcess,
    free_port,
    taskflow_env,
    taskflow_processes_fixture,
    until,
)
from tests.sse_client import SseEvent, events

pytestmark = [pytest.mark.usefixtures("mongo"), pytest.mark.slow, pytest.mark.timeout(240)]
LEASE_TTL = "1.5"


async def _auth(settings: Settings, user: str) -> dict[str, str]:
    """A token of `user`, made a user the API processes know first (unknown users' tokens are
    refused)."""
    await existing_user(settings, user)
    token = issue_access_token(settings, user, [], datetime.now(UTC)).token
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Follower:
    """A client that follows one owner's feed through any of `bases`, reconnecting (to the
    next one) with Last-Event-ID whenever its stream breaks, as an EventSource would."""

    bases: list[str]
    auth: dict[str, str]
    changes: list[SseEvent] = field(default_factory=list)
    last: str | None = None
    connections: int = 0
    serving: str | None = None  # the base of the process serving the open stream
    _at: int = 0

    async def run(self, http: aiohttp.ClientSession) -> None:
        while True:
            headers = {**self.auth, **({"Last-Event-ID": self.last} if self.last else {})}
            url = f"{self.bases[self._at % len(self.bases)]}/api/tasks/changes?after=0"
            try:
                async with http.get(url, headers=headers) as response:
                    if response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
                    self.connections += 1
                    self.serving = self.bases[self._at % len(self.bases)]
                    async for event in events(response):
                        if event.id is not None:
                            self.last = event.id
                        if event.event == "message":
                            self.changes.append(event)
            except (aiohttp.ClientError, ConnectionError, TimeoutError):
                pass
            self.serving = None
            self._at += 1  # the next process, as a load balancer would pick another
            await asyncio.sleep(0.05)  # a client's reconnection back-off

    def reached(self, position: int) -> bool:
        return self.last is not None and int(self.last) >= position


def _received(follower: Follower) -> list[Change]:
    out = []
    for event in follower.changes:
        data = event.json()
        out.append((event.position, data["id"], int(data["etag"].strip('"'))))
    return out


class Writer:
    """Creates and changes tasks of two owners through the API processes at `bases`; a write
    whose process dies under it is sent again to the next one, with the same Idempotency-Key
    (so it commits once). The log says what happened."""

    def __init__(self, bases: list[str], owners: list[dict[str, str]], seed: int) -> None:
        self.bases = bases
        self.owners = owners
        self.rng = random.Random(seed)
        self.tasks: list[tuple[int, str, int]] = []  # (owner index, task id, version)
        self._at = 0

    async def run(
        self, http: aiohttp.ClientSession, count: int, stop: asyncio.Event | None = None
    ) -> None:
        for n in range(count):
            if stop is not None and stop.is_set():
                return
            who = self.rng.randrange(len(self.owners))
            mine = [i for i, (owner, _, _) in enumerate(self.tasks) if owner == who]
            key = {"Idempotency-Key": f"w{id(self)}-{n}"}
            if mine and self.rng.random() < 0.5:
                at = self.rng.choice(mine)
                _, task_id, version = self.tasks[at]
                headers = {**self.owners[who], **key, "If-Match": f'"{version}"'}
                body = await self._send(http, "PATCH", f"/api/tasks/{task_id}", headers, n)
                self.tasks[at] = (who, task_id, body["version"])
            else:
                headers = {**self.owners[who], **key}
                body = await self._send(http, "POST", "/api/tasks", headers, n)
                self.tasks.append((who, body["id"], body["version"]))

    async def _send(
        self, http: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str], n: int
    ) -> dict[str, Any]:
        while True:
            url = self.bases[self._at % len(self.bases)] + path
            try:
                async with http.request(
                    method, url, json={"title": f"w{n}"}, headers=headers
                ) as response:
                    assert response.status in {200, 201}, await response.text()
                    body: dict[str, Any] = await response.json()
                    return body
            except (aiohttp.ClientError, ConnectionError):
                self._at += 1
                await asyncio.sleep(0.05)  # a client's retry back-off


async def _log_of(settings: Settings, owner: str) -> list[Change]:
    async with open_services(settings) as services:
        return await changes_in_log(services.store, owner)


async def _follow_to_the_end(
    settings: Settings, follower: Follower, follow: asyncio.Task[None]
) -> list[Change]:
    """Once the writes are done: wait until the follower has the log's last change for it."""
    expected = await _log_of(settings, "ada")

    async def caught_up() -> bool:
        return follower.reached(expected[-1][0])

    try:
        await until(caught_up, 60, "the follower to reach the log's last change")
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
    return expected


async def test_kill_9_of_the_api_serving_a_stream_loses_nothing(
    settings: Settings, tmp_path: Path, taskflow_processes: list[TaskflowProcess]
) -> None:
    """Two API processes (any serves any subscriber: the feed's fan-out goes through Redis) and
    a projector; writes go through both. The process serving ada's stream is killed with
    SIGKILL, three times: ada's client reconnects to the other with Last-Event-ID and gets
    exactly the log's changes of her tasks, in order, none twice, none of bob's."""
    env = taskflow_env(settings, LEASE_TTL_SECONDS=LEASE_TTL, PROJECTOR_POLL_SECONDS="0.1")
    apis = [TaskflowProcess("serve", env, tmp_path, port=free_port()) for _ in range(2)]
    projector = TaskflowProcess("project", env, tmp_path)
    taskflow_processes.extend([*apis, projector])
    for child in (*apis, projector):
        child.start()
    ada, bob = await _auth(settings, "ada"), await _auth(settings, "bob")
    follower = Follower([api.base_url for api in apis], ada)
    bases = [api.base_url for api in apis]
    writers = [Writer(bases[n:] + bases[:n], [ada, bob], seed=n) for n in range(2)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for api in apis:
            await api.ready(http)
        follow = asyncio.create_task(follower.run(http))
        writes = [asyncio.create_task(writer.run(http, 45)) for writer in writers]
        for threshold in (10, 20, 30):

            async def streaming(count: int = threshold) -> bool:
                return len(follower.changes) >= count and follower.serving is not None

            await until(streaming, 60, f"{threshold} changes")
            [serving] = [api for api in apis if api.base_url == follower.serving]
            serving.kill9()  # the stream breaks: the client goes to the other process
            serving.start()
            await serving.ready(http)
        await asyncio.wait_for(asyncio.gather(*writes), 120)
        expected = await _follow_to_the_end(settings, follower, follow)
    assert _received(follower) == expected
    assert len(expected) > 30
    assert follower.connections >= 4


async def test_a_projector_killed_and_taken_over_loses_nothing(
    settings: Settings, tmp_path: Path, taskflow_processes: list[TaskflowProcess]
) -> None:
    """The projector applying the log is killed with SIGKILL while writes go on, twice; a
    standby takes its lease over each time. The feed goes on from where the killed one left it:
    the client gets exactly the log's changes for it, without reconnecting."""
    env = taskflow_env(settings, LEASE_TTL_SECONDS=LEASE_TTL, PROJECTOR_POLL_SECONDS="0.1")
    api = TaskflowProcess("serve", env, tmp_path, port=free_port())
    first = TaskflowProcess("project", env, tmp_path)
    second = TaskflowProcess("project", env, tmp_path)
    taskflow_processes.extend([api, first, second])
    api.start()
    first.start()
    ada, bob = await _auth(settings, "ada"), await _auth(settings, "bob")
    follower = Follower([api.base_url], ada)
    writer = Writer([api.base_url], [ada, bob], seed=11)
    stop = asyncio.Event()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        open_services(settings) as services,
    ):
        lease = Lease(services.db[names.LEASES], f"{NAME}_v1", "test", ttl=1)
        await api.ready(http)
        follow = asyncio.create_task(follower.run(http))
        writes = asyncio.create_task(writer.run(http, 100_000, stop))

        def progress_after(term: int) -> Callable[[], Awaitable[bool]]:
            """The Redis views' lease is in `term` and 5 more changes reached the client."""
            count = len(follower.changes) + 5

            async def check() -> bool:
                latest = await lease.latest()
                return bool(latest and latest["term"] >= term) and len(follower.changes) >= count

            return check

        await until(progress_after(1), 60, "the first changes")
        second.start()  # a standby: `first` holds the leases
        for term, holder in ((2, first), (3, second)):
            holder.kill9()
            await until(progress_after(term), 60, f"changes after the takeover by term {term}")
            holder.start()  # back as a standby for the next round
        stop.set()
        await asyncio.wait_for(writes, 60)
        expected = await _follow_to_the_end(settings, follower, follow)
    assert _received(follower) == expected
    assert follower.connections == 1
