"""`python -m bench.scale_load PLAN.json OUT.json`: HTTP clients against a running TaskFlow API.

Runs in a process of its own (not the server's event loop, not the bench's). Each client is
one owner with its own tasks and loops, closed-loop: change a task's status (`PATCH` with
`If-Match`), get that task, list a page of the owner's tasks, and every fourth round create a
task. Every request's latency is recorded by kind; the first `warmup` seconds are discarded.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

STATUSES = ["todo", "in_progress", "done"]
LIST_QUERIES = ["limit=20", "limit=20&status=todo", "limit=20&sort=updated", "limit=20&status=done"]


@dataclass
class Owned:
    """A task of the client's owner, as last seen: its version and status."""

    task_id: str
    version: int
    status: str


@dataclass
class Timings:
    """Latencies in milliseconds by request kind, and the requests that did not succeed."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


class Client:
    """One owner's closed loop of requests."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, token: str, tasks: list[Owned]
    ) -> None:
        self._session = session
        self._base = base
        self._headers = {"Authorization": f"Bearer {token}"}
        self._tasks = tasks
        self._rounds = itertools.count()

    async def run(self, until: float, record_from: float, timings: Timings) -> None:
        while time.monotonic() < until:
            n = next(self._rounds)
            record = time.monotonic() >= record_from
            task = self._tasks[n % len(self._tasks)]
            await self._timed("change", self._change(task), record, timings)
            await self._timed("get", self._get(task), record, timings)
            query = LIST_QUERIES[n % len(LIST_QUERIES)]
            await self._timed("list", self._list(query), record, timings)
            if n % 4 == 3:
                await self._timed("create", self._create(n), record, timings)

    async def _timed(self, kind: str, request: Any, record: bool, timings: Timings) -> None:
        start = time.perf_counter()
        ok = await request
        elapsed = (time.perf_counter() - start) * 1000
        if not record:
            return
        if ok:
            timings.ms.setdefault(kind, []).append(elapsed)
        else:
            timings.failures[kind] = timings.failures.get(kind, 0) + 1

    async def _change(self, task: Owned) -> bool:
        status = STATUSES[(STATUSES.index(task.status) + 1) % len(STATUSES)]
        headers = {**self._headers, "If-Match": f'"{task.version}"'}
        url = f"{self._base}/api/tasks/{task.task_id}"
        async with self._session.patch(url, json={"status": status}, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                await self._refresh(task)
                return False
        view = orjson.loads(body)
        task.version, task.status = int(view["version"]), view["status"]
        return True

    async def _refresh(self, task: Owned) -> None:
        """After a refused change (a stale version): learn the task's current version."""
        url = f"{self._base}/api/tasks/{task.task_id}"
        async with self._session.get(url, headers=self._headers) as resp:
            if resp.status == 200:
                view = orjson.loads(await resp.read())
                task.version, task.status = int(view["version"]), view["status"]

    async def _get(self, task: Owned) -> bool:
        url = f"{self._base}/api/tasks/{task.task_id}"
        async with self._session.get(url, headers=self._headers) as resp:
            await resp.read()
            return resp.status == 200

    async def _list(self, query: str) -> bool:
        async with self._session.get(f"{self._base}/api/tasks?{query}", headers=self._headers) as r:
            await r.read()
            return r.status == 200

    async def _create(self, n: int) -> bool:
        body = {"title": f"scale bench {n}", "tags": ["bench"]}
        async with self._session.post(
            f"{self._base}/api/tasks", json=body, headers=self._headers
        ) as resp:
            await resp.read()
            return resp.status == 201


async def run(plan: dict[str, Any]) -> Timings:
    timings = Timings()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [
            Client(
                session,
                plan["base_url"],
                spec["token"],
                [Owned(t["task_id"], t["version"], t["status"]) for t in spec["tasks"]],
            )
            for spec in plan["clients"]
        ]
        start = time.monotonic()
        record_from = start + float(plan["warmup_seconds"])
        until = record_from + float(plan["seconds"])
        await asyncio.gather(*(c.run(until, record_from, timings) for c in clients))
    return timings


def main() -> None:
    plan = orjson.loads(Path(sys.argv[1]).read_bytes())
    timings = uvloop.run(run(plan))
    out = {"ms": timings.ms, "failures": timings.failures}
    Path(sys.argv[2]).write_bytes(orjson.dumps(out))


if __name__ == "__main__":
    main()
