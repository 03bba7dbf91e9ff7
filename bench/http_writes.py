"""Group 5: `POST /api/tasks` through the whole stack (W) vs raw aiohttp and driver baselines.

L0 a constant JSON handler, L1 a raw handler doing one `insert_one`, both in
`python -m bench.rawserver`; L2 a driver-only `insert_one` loop in this process; W the real API
(`python -m taskflow serve`), with one API process and with two (API_WORKERS=2). HTTP load comes
from wrk, a process of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from bench.harness import Group
from bench.http_processes import (
    LoadShape,
    api_server,
    bearer,
    load,
    new_user,
    raw_server,
    trial_figures,
)
from bench.samples import commit_document
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate

VARIANTS = ["l0", "l1", "l2", "w", "w_2", "l1_2"]
L1_LABEL = "L1: raw aiohttp handler, one `insert_one` (log indexes, same write concern)"
TASK_BODY = {"title": "Review the quarterly budget", "tags": ["budget", "review"]}


def comparisons(sizes: Sizes) -> list[Comparison]:
    load = f"{sizes.http_concurrency} connections, closed loop"
    return [
        Comparison(f"W: `POST /api/tasks`, {load}", "requests/s", "w", "l1", L1_LABEL),
        Comparison(
            f"W with API_WORKERS=2 (two API processes on one port), {load}",
            "requests/s",
            "w_2",
            "l1",
            "L1, one process (as in the first row)",
        ),
        Comparison(
            f"W with API_WORKERS=2 (two API processes on one port), {load}",
            "requests/s",
            "w_2",
            "l1_2",
            "L1 in two processes on one port",
        ),
        Comparison(
            f"L1: raw handler, one `insert_one`, {load}",
            "requests/s",
            "l1",
            "l0_l2_min",
            "min(L0: constant JSON handler, L2: driver-only `insert_one` loop)",
        ),
        Comparison(
            f"L0: constant JSON handler, {load}",
            "requests/s",
            "l0",
            "l2",
            "L2: driver-only `insert_one` loop, same concurrency",
        ),
        Comparison(
            "W: the server process's CPU per request (user + system) under that load",
            "µs",
            "w_cpu_us",
            "l1_cpu_us",
            "L1's server process, same load",
        ),
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    figures: Trial = {}
    for variant in alternate(VARIANTS, repetition):
        figures.update(trial_figures(variant, await _run(variant, servers, sizes)))
    figures["l0_l2_min"] = min(figures["l0"], figures["l2"])
    return figures


async def _run(variant: str, servers: Servers, sizes: Sizes) -> dict[str, Any]:
    if variant == "l2":
        return await _driver_loop(servers, sizes)
    shape = LoadShape(sizes.http_concurrency, sizes.http_seconds, sizes.http_warmup_seconds)
    async with servers.fresh_db() as db, servers.flushed_redis():
        await servers.store_on(db)  # the log's indexes, for L1's inserts
        if variant in {"w", "w_2"}:
            auth = f"Authorization: {bearer(servers, await new_user(servers, db.name))}"
            async with api_server(servers, db.name, 2 if variant == "w_2" else 1) as api:
                return await load(
                    api.base,
                    ["/api/tasks"],
                    shape,
                    method="POST",
                    body=TASK_BODY,
                    headers=[auth],
                    server_pid=api.process.process.pid,
                )
        async with raw_server(servers, db.name, 2 if variant == "l1_2" else 1) as raw:
            pid = raw.process.process.pid
            if variant == "l0":
                return await load(raw.base, ["/l0"], shape, server_pid=pid)
            return await load(
                raw.base, ["/l1"], shape, method="POST", body=TASK_BODY, server_pid=pid
            )


async def _driver_loop(servers: Servers, sizes: Sizes) -> dict[str, Any]:
    """L2: `http_concurrency` coroutines each inserting commit-sized documents back to back."""
    async with servers.fresh_db() as db:
        commits = (await servers.store_on(db)).commits  # same indexes and write concern as L1
        positions = itertools.count(1)
        await _insert_for(commits, positions, sizes.http_concurrency, sizes.http_warmup_seconds)
        start = time.perf_counter()
        done = await _insert_for(commits, positions, sizes.http_concurrency, sizes.http_seconds)
        return {"rate": done / (time.perf_counter() - start)}


async def _insert_for(
    commits: AsyncCollection[dict[str, Any]],
    positions: itertools.count[int],
    concurrency: int,
    seconds: float,
) -> int:
    template = commit_document("raw", 1, 1)
    until = time.perf_counter() + seconds

    async def writer() -> int:
        count = 0
        while time.perf_counter() < until:
            position = next(positions)
            stream = f"raw-{position}"
            doc = {**template, "_id": f"{stream}:1", "stream_id": stream, "position": position}
            doc["idempotency"] = f"~{stream}:1"
            await commits.insert_one(doc)
            count += 1
        return count

    return sum(await asyncio.gather(*(writer() for _ in range(concurrency))))


GROUP = Group("5. HTTP writes", comparisons, trial, warm_up=False)
