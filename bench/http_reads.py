"""Group 6: cached task reads over HTTP (R, Q) vs raw aiohttp handlers doing one Redis call.

One owner's tasks are created through `handle_create_task` and projected into the Redis read
model; then the real API (`python -m taskflow serve`) and `python -m bench.rawserver` serve them
to wrk, a process of its own, at fixed concurrency. R is measured with one API process and with
two (API_WORKERS=2), against Rraw in one process and in two on one port.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import aiohttp

from bench.harness import Group
from bench.http_processes import (
    LoadShape,
    Server,
    api_server,
    bearer,
    load,
    raw_server,
    trial_figures,
)
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate
from taskflow.commands.runner import Context
from taskflow.commands.task import CreateTask
from taskflow.commands.task_handlers import handle_create_task
from taskflow.events.mongo_store import MongoEventStore
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import catch_up
from taskflow.text import as_text

RAW_TASK = "bench:raw:task:"
RAW_PAGE = "bench:raw:page"
PAGE = "/api/tasks?limit=20"
# A different `due_after` each request (every task is due later): a new query, never cached.
UNCACHED_PAGE = PAGE + "&due_after=2001-01-01T00:00:00.{n}Z"
VARIANTS = ["r", "rraw", "q_cached", "q_cached_raw", "q_uncached", "q_uncached_raw"]
# Two processes a side: the API with API_WORKERS=2, two raw servers on one port.
TWO_PROCESS_VARIANTS = ["r_2", "rraw_2"]


def comparisons(sizes: Sizes) -> list[Comparison]:
    load = f"{sizes.http_concurrency} connections, {sizes.read_tasks} tasks of one owner"
    return [
        Comparison(
            f"R: `GET /api/tasks/{{id}}` from the Redis view, {load}",
            "requests/s",
            "r",
            "rraw",
            "Rraw: raw aiohttp handler, one Redis `GET` of the view JSON",
        ),
        Comparison(
            f"Q cached: `GET /api/tasks?limit=20`, the page cache hit, {load}",
            "requests/s",
            "q_cached",
            "q_cached_raw",
            "raw aiohttp handler, one Redis `GET` of the page JSON",
        ),
        Comparison(
            f"Q uncached: `GET /api/tasks?limit=20&due_after=…`, a new query each time, {load}",
            "requests/s",
            "q_uncached",
            "q_uncached_raw",
            "raw aiohttp handler, one `HVALS` of the owner's views, returned as they are",
        ),
        Comparison(
            f"R with API_WORKERS=2 (two API processes on one port), {load}",
            "requests/s",
            "r_2",
            "rraw",
            "Rraw, one process (as in the first row)",
        ),
        Comparison(
            f"R with API_WORKERS=2 (two API processes on one port), {load}",
            "requests/s",
            "r_2",
            "rraw_2",
            "Rraw in two processes on one port",
        ),
        Comparison(
            "R: the server process's CPU per request (user + system) under that load",
            "µs",
            "r_cpu_us",
            "rraw_cpu_us",
            "Rraw's server process, same load",
        ),
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    """Every read of one freshly projected read model, each server a process of its own."""
    owner = uuid.uuid4().hex
    async with servers.fresh_store() as store:
        ids = await _seed(servers, store, owner, sizes.read_tasks)
        auth = f"Authorization: {bearer(servers, owner)}"
        paths = {
            "r": [f"/api/tasks/{task_id}" for task_id in ids],
            "rraw": [f"/get/{RAW_TASK}{task_id}" for task_id in ids],
            "q_cached": [PAGE],
            "q_cached_raw": [f"/get/{RAW_PAGE}"],
            "q_uncached": [UNCACHED_PAGE],
            "q_uncached_raw": [f"/hvals/{RedisViewKeys(1).tasks(owner)}"],
        }
        figures: Trial = {}
        shape = LoadShape(sizes.http_concurrency, sizes.http_seconds, sizes.http_warmup_seconds)
        db = store.commits.database.name
        async with api_server(servers, db) as api, raw_server(servers, db) as raw:
            await _copy_page(servers, api, auth)
            for variant in alternate(VARIANTS, repetition):
                target = raw if "raw" in variant else api
                figures.update(await _measure(variant, target, paths[variant], shape, auth))
        for variant in alternate(TWO_PROCESS_VARIANTS, repetition):
            raw_side = "raw" in variant
            async with (
                raw_server(servers, db, processes=2) if raw_side else api_server(servers, db, 2)
            ) as target:
                path = paths[variant.removesuffix("_2")]
                figures.update(await _measure(variant, target, path, shape, auth))
    return figures


async def _measure(
    variant: str, target: Server, paths: list[str], shape: LoadShape, auth: str
) -> Trial:
    headers = [] if "raw" in variant else [auth]
    pid = target.process.process.pid
    return trial_figures(
        variant, await load(target.base, paths, shape, headers=headers, server_pid=pid)
    )


async def _seed(servers: Servers, store: MongoEventStore, owner: str, count: int) -> list[str]:
    """`count` tasks of `owner`, due in the future, projected into the Redis views; each view's
    JSON is also copied under a raw key for Rraw."""
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(count)]
    context = Context(actor=owner, request_id=uuid.uuid4().hex, correlation_id="bench")
    for i, task_id in enumerate(ids):
        command = CreateTask(
            task_id=task_id,
            owner_id=owner,
            title=f"Review the quarterly budget #{i}",
            description="Numbers from finance, then the board pack.",
            due_at=now + timedelta(days=30 + i),
            tags=("budget", "review"),
        )
        await handle_create_task(store, command, context, now)
    # Marked live as the projector marks them (`catch_up`): reads refuse views not known to
    # hold the whole log, and would go to the (empty) MongoDB views instead.
    views = RedisTaskViews(
        servers.redis, hot=servers.services.hot, allocated=store.allocated_position
    )
    await views.setup()
    await catch_up(store, [views])
    stored = await servers.redis.hgetall(RedisViewKeys(1).tasks(owner))
    await servers.redis.mset({f"{RAW_TASK}{as_text(k)}": v for k, v in stored.items()})
    return ids


async def _copy_page(servers: Servers, api: Server, auth: str) -> None:
    """The API's own first page, stored under a raw key: what the raw page handler returns."""
    name, _, value = auth.partition(": ")
    async with (
        aiohttp.ClientSession(api.base) as session,
        session.get(PAGE, headers={name: value}) as response,
    ):
        response.raise_for_status()
        await servers.redis.set(RAW_PAGE, await response.read())


GROUP = Group("6. HTTP reads", comparisons, trial, warm_up=False)
