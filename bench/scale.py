"""`python -m bench.scale`: does a request's cost grow with the log's size? (issue #11)

For each size: a fresh database is bulk-seeded (`bench/seeder.py`) and verified, then measured
side by side in the same run: a raw streamed read of `event_commits`; the real projector
catching up from zero; HTTP latency of 8 concurrent clients through the real API process
(`bench/scale_load.py`); write-to-visible lag at a steady rate; and a rebuild. Writes
bench-results/scale.md and scale.json (docs/benchmarks.md, "Scale").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from pymongo.asynchronous.database import AsyncDatabase
from tqdm import tqdm

from bench.harness import Progress
from bench.http_processes import api_server
from bench.latency import TaskLoad, steady
from bench.processes import Child, ChildFailedError, child, projector
from bench.report import describe_machine
from bench.scale_report import Measured, write_scale_report
from bench.seeder import BulkSeeder, PlannedCommit, Shape, plan, verify_seeded
from bench.servers import Servers, describe_backend
from bench.stats import percentile
from bench.watch import ViewWatch
from taskflow import names
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import open_services, rebuild_read_models
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.logs import configure_logging
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import run_until_caught_up
from taskflow.settings import Settings
from taskflow.tasks import cancel_and_wait

FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 2_000)  # at least 8 users at the smallest: one per client
CLIENTS = 8
ONE_BATCH = 10_000_000  # a batch size no seeded log reaches: the whole log in one batch
# The benchmark gives `audit verify` this long before it records a failure.
AUDIT_VERIFY_LIMIT_SECONDS = 1800


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...]
    http_seconds: float
    http_warmup: float
    lag_rate: float
    lag_seconds: float
    mongo_wait: float  # how long to wait for the MongoDB views to catch up before moving on
    hints: bool


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    mongodb_uri, redis_url = os.environ.get("MONGODB_URI"), os.environ.get("REDIS_URL")
    if not mongodb_uri or not redis_url:
        print(
            "bench: MONGODB_URI and REDIS_URL must be set (make bench-scale does)", file=sys.stderr
        )
        return 2
    configure_logging("WARNING", json=False)
    sizes: tuple[int, ...] = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    options = Options(
        sizes=sizes,
        http_seconds=5.0 if args.quick else args.http_seconds,
        http_warmup=1.0 if args.quick else 2.0,
        lag_rate=args.lag_rate,
        lag_seconds=5.0 if args.quick else args.lag_seconds,
        mongo_wait=5.0 if args.quick else args.mongo_wait,
        hints=not args.no_hints,
    )
    measured = uvloop.run(_run(options, mongodb_uri, redis_url, args.out))
    for path in write_scale_report(measured, args.out):
        print(f"[bench] wrote {path}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--sizes", help="commits to seed, comma-separated (1000,10000,100000)")
    parser.add_argument("--quick", action="store_true", help="small sizes and short phases")
    parser.add_argument("--http-seconds", type=float, default=20.0, help="measured HTTP load")
    parser.add_argument("--lag-rate", type=float, default=20.0, help="commands/s for the lag")
    parser.add_argument("--lag-seconds", type=float, default=15.0, help="measured lag load")
    parser.add_argument(
        "--mongo-wait", type=float, default=30.0, help="cap on waiting for the MongoDB views"
    )
    parser.add_argument(
        "--no-hints",
        action="store_true",
        help="seed without Redis hints (expired: catch-up reads MongoDB)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    return parser


async def _run(options: Options, mongodb_uri: str, redis_url: str, out: Path) -> Measured:
    """Every size in turn; the report is rewritten after each, so a failure keeps the rest."""
    progress, started_at, start = Progress(), datetime.now(UTC), time.monotonic()
    load_at_start = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    command = (
        " ".join(["scripts/bench-scale.sh", *sys.argv[1:]])
        if sys.argv[1:]
        else ("make bench-scale")
    )

    def measured() -> Measured:
        return Measured(
            command=command,
            backend=backend,
            machine=describe_machine(),
            started_at=f"{started_at:%Y-%m-%d %H:%M}",
            seconds=time.monotonic() - start,
            load=(load_at_start, os.getloadavg()[0]),
            options=asdict(options),
            sizes=results,
        )

    # The bench's own clients wait up to 2 min on a socket: FerretDB sorts a whole collection
    # before it returns a sorted read's first batch (docs/design.md, FerretDB), which at 100,000
    # commits on a loaded machine exceeds TaskFlow's default of 10 s. The API and projector keep
    # defaults.
    settings = Settings(
        mongodb_uri=mongodb_uri, redis_url=redis_url, log_json=False, mongodb_timeout_ms=60_000
    )
    async with open_services(settings) as services:
        servers = Servers(services)
        backend = await describe_backend(servers)
        progress.step(f"scale run on {backend}, sizes {', '.join(map(str, options.sizes))}")
        for size in options.sizes:
            results.append(await _measure_size(servers, size, options, progress))
            progress.step(f"{size:,} commits done: {_brief(results[-1])}")
            write_scale_report(measured(), out)
    return measured()


def _brief(result: dict[str, Any]) -> str:
    keys = ["change_p50", "get_p50", "list_p50", "lag_p99", "catchup_ratio", "rebuild_ratio"]
    return ", ".join(f"{k} {result[k]:.2f}" for k in keys if result.get(k) is not None)


async def _measure_size(
    servers: Servers, size: int, options: Options, progress: Progress
) -> dict[str, Any]:
    """Every figure at one size. A phase that fails is recorded (`<phase>_error`) and the
    others still run: at 100,000 commits on FerretDB some reads outlast any sensible timeout."""
    figures: dict[str, Any] = {"commits": size, "load_start": os.getloadavg()[0]}

    async def phase(name: str, work: Awaitable[dict[str, Any]]) -> None:
        try:
            figures.update(await work)
        except Exception as exc:  # recorded in the report; the run goes on
            figures[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
            progress.step(f"{size:,}: {name} failed: {figures[f'{name}_error']}")

    async with servers.fresh_store() as store:
        shape = Shape(size)
        figures.update(tasks=shape.tasks, users=shape.users)
        planned = await _seed(servers, store, shape, options, progress, figures)
        await phase("raw_read", _raw_read(store))
        progress.step(f"{size:,}: raw streamed read {figures.get('raw_read_per_s', 0):,.0f}/s")
        database = store.commits.database
        async with projector(servers, database.name) as worker:
            await phase("catchup", _catch_up(servers, database, size, options, worker))
            progress.step(f"{size:,}: catch-up {figures.get('catchup_per_s', 0):,.0f} commits/s")
        await phase("mongo_views", _mongo_views_in_one_batch(store, servers.views_db_of(database)))
        progress.step(f"{size:,}: MongoDB views {figures.get('mongo_batch_per_s', 0):,.0f}/s")
        async with projector(servers, database.name):
            await phase("http", _http(servers, database.name, planned, options))
            progress.step(f"{size:,}: HTTP {_brief(figures)}")
            await phase("lag", _lag(servers, store, options))
            progress.step(f"{size:,}: lag p99 {figures.get('lag_p99', 0):.1f} ms")
            await phase("mongo_behind", _mongo_views_behind(store, servers.views_db_of(database)))
            await phase("audit_verify", _audit_verify(servers, database.name, progress))
        await phase("rebuild", _rebuild(servers, database.name, options, progress))
        await phase("alone", _redis_views_alone(servers, store, progress))
    raw = figures.get("raw_read_per_s")
    for key in ("catchup", "rebuild", "alone_hints", "alone_mongo"):
        if raw and f"{key}_per_s" in figures:
            figures[f"{key}_ratio"] = figures[f"{key}_per_s"] / raw
    figures["load_end"] = os.getloadavg()[0]
    return figures


# -- seeding ------------------------------------------------------------------------------------


async def _seed(
    servers: Servers,
    store: MongoEventStore,
    shape: Shape,
    options: Options,
    progress: Progress,
    figures: dict[str, Any],
) -> list[PlannedCommit]:
    progress.step(f"{shape.commits:,}: seeding ({shape.tasks:,} tasks, {shape.users:,} users)")
    key = servers.settings.event_log_hmac_key.get_secret_value().encode()
    chain = HashChain(key)
    seeder = BulkSeeder(store, servers.redis, chain, hints=options.hints)
    planned: list[PlannedCommit] = []
    with tqdm(total=shape.commits, desc="seeding", unit="commit", file=sys.stderr) as bar:
        start = time.perf_counter()
        written = await seeder.seed(_kept(plan(shape), planned), lambda n: _advance(bar, n))
        seconds = time.perf_counter() - start
    figures["seed_per_s"] = written / seconds
    figures["seed_insert_many_per_s"] = written / seeder.seconds["insert_many"]
    figures["seed_redis_seconds"] = seeder.seconds["redis"]
    figures["events"] = sum(len(p.events) for p in planned)
    progress.step(f"{shape.commits:,}: seeded at {written / seconds:,.0f} commits/s; verifying")
    start = time.perf_counter()
    broken = await verify_seeded(store, written)
    figures["verify_seconds"] = time.perf_counter() - start
    if broken:
        raise AssertionError(f"verify_all found {len(broken)} broken streams: {broken[:3]}")
    figures["verified"] = True
    try:  # on FerretDB a full sort: it took over 120 s at 100,000 commits under load
        figures["reseed_seconds"] = await asyncio.wait_for(_timed(store.positions.reseed()), 60)
    except TimeoutError:
        figures["reseed_error"] = "over 60 s (given up)"
    progress.step(f"{shape.commits:,}: reseed {figures.get('reseed_seconds', 'timed out')} s")
    return planned


async def _timed(work: Awaitable[object]) -> float:
    start = time.perf_counter()
    await work
    return time.perf_counter() - start


def _advance(bar: tqdm[Any], n: int) -> None:
    bar.update(n)


def _kept(items: Any, into: list[PlannedCommit]) -> Any:
    for item in items:
        into.append(item)
        yield item


# -- reading ------------------------------------------------------------------------------------


async def _raw_read(store: MongoEventStore) -> dict[str, float]:
    """The baseline: one streamed pass over the log in position order, not decoded."""
    count, start = 0, time.perf_counter()
    cursor = store.commits.find({}).sort("position").batch_size(1000)
    async with cursor as docs:
        async for _ in docs:
            count += 1
    seconds = time.perf_counter() - start
    return {"raw_read_seconds": seconds, "raw_read_per_s": count / seconds}


async def _catch_up(
    servers: Servers, db: AsyncDatabase[dict[str, Any]], head: int, options: Options, worker: Child
) -> dict[str, float]:
    """From the moment the real projector holds its lease: until each view reaches `head`."""
    redis_views = RedisTaskViews(servers.redis, hot=servers.services.hot)
    mongo_views = MongoTaskViews(servers.views_db_of(db))
    start = time.perf_counter()
    await worker.wait_until(lambda: _reached(redis_views.position, head), seconds=3600)
    redis_seconds = time.perf_counter() - start
    try:
        await worker.wait_until(lambda: _reached(mongo_views.position, head), options.mongo_wait)
    except ChildFailedError:
        if worker.process.returncode is not None:
            raise  # capped on purpose otherwise: the rate below says how far it got
    mongo_seconds = time.perf_counter() - start
    mongo_position = await mongo_views.position()
    return {
        "catchup_seconds": redis_seconds,
        "catchup_per_s": head / redis_seconds,
        "mongo_catchup_per_s": mongo_position / mongo_seconds,
        "mongo_caught_up": float(mongo_position >= head),
    }


async def _mongo_views_in_one_batch(
    store: MongoEventStore, views_db: AsyncDatabase[dict[str, Any]]
) -> dict[str, float]:
    """The MongoDB views rebuilt from zero in one batch, projector stopped; steady state after.

    The projector's MongoDB views cannot catch up with 100,000 seeded commits in the benchmark's
    time on FerretDB (they replace views by `_id`, a scan each), and their backlog would then
    compete with the HTTP and lag phases for the one SQLite writer: those phases would measure
    the seeded backlog, not a request's cost. Applied as one batch, every view is new and
    written by insert (`mongo_view_writes.insert_new`), which costs the same at any size.
    """
    views = MongoTaskViews(views_db)
    # Emptied, not dropped: once at 100,000 commits, a drop while FerretDB v1 still ran the
    # stopped projector's last replace (a scan) left a SQLite index behind, and creating the
    # indexes again failed with "index ... already exists".
    await views.views.delete_many({})
    await views_db[names.CHECKPOINTS].delete_many({"_id": views.name})
    await views.setup()  # the projector created the indexes; this only makes sure
    start = time.perf_counter()
    applied = await run_until_caught_up(store, views, batch_size=ONE_BATCH)
    return {"mongo_batch_per_s": applied / (time.perf_counter() - start)}


async def _reached(position: Callable[[], Awaitable[int]], head: int) -> bool:
    return await position() >= head


# -- HTTP ---------------------------------------------------------------------------------------


async def _http(
    servers: Servers, database: str, planned: list[PlannedCommit], options: Options
) -> dict[str, Any]:
    """Latencies of 8 clients, each a seeded owner with its seeded tasks, via the real API."""
    async with api_server(servers, database) as server:
        load_plan = {
            "base_url": server.base,
            "clients": _clients(servers, planned),
            "seconds": options.http_seconds,
            "warmup_seconds": options.http_warmup,
        }
        with tempfile.TemporaryDirectory() as folder:
            plan_path, out_path = Path(folder, "plan.json"), Path(folder, "out.json")
            await asyncio.to_thread(plan_path.write_bytes, orjson.dumps(load_plan))
            args = [sys.executable, "-m", "bench.scale_load", str(plan_path), str(out_path)]
            process = await asyncio.create_subprocess_exec(*args)
            if await process.wait() != 0:
                raise RuntimeError("bench.scale_load failed")
            out = orjson.loads(await asyncio.to_thread(out_path.read_bytes))
        cold = await _cold_changes(servers, server.base, planned)
    figures: dict[str, Any] = {"http_failures": out["failures"], **cold}
    for kind, values in out["ms"].items():
        figures[f"{kind}_n"] = len(values)
        figures[f"{kind}_p50"] = percentile(values, 50)
        figures[f"{kind}_p99"] = percentile(values, 99)
    return figures


COLD_CHANGES = 3


async def _cold_changes(
    servers: Servers, base_url: str, planned: list[PlannedCommit]
) -> dict[str, Any]:
    """A change to a task whose cached head is gone (Redis lost it, or its 7-day TTL ran out):
    the command side then reads the stream from MongoDB (`load_head`). One at a time, on the
    tasks of an owner none of the load's clients is."""
    owner = _owners(planned)[CLIENTS]
    tasks = [s for s in _latest(planned).values() if s["owner_id"] == owner][:COLD_CHANGES]
    token = issue_access_token(servers.settings, owner, (), datetime.now(UTC)).token
    timings, statuses = [], []
    async with aiohttp.ClientSession() as session:
        for task in tasks:
            await servers.redis.delete(names.stream_head_key(f"task-{task['task_id']}"))
            headers = {"Authorization": f"Bearer {token}", "If-Match": f'"{task["version"]}"'}
            body = {"title": f"cold {task['task_id'][:8]}"}
            start = time.perf_counter()
            url = f"{base_url}/api/tasks/{task['task_id']}"
            async with session.patch(url, json=body, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)
            timings.append((time.perf_counter() - start) * 1000)
    return {"cold_change_ms": statistics.median(timings), "cold_change_statuses": statuses}


def _owners(planned: list[PlannedCommit]) -> list[str]:
    """Owners in the order of their first commit."""
    return list(dict.fromkeys(item.metadata.actor for item in planned))


def _latest(planned: list[PlannedCommit]) -> dict[str, dict[str, Any]]:
    """Each seeded task's last state (the snapshot of its last commit), by task id."""
    latest: dict[str, dict[str, Any]] = {}
    for item in planned:
        state = orjson.loads(item.snapshot)
        latest[state["task_id"]] = state
    return latest


def _clients(servers: Servers, planned: list[PlannedCommit]) -> list[dict[str, Any]]:
    """The owners of the first seeded commits, each with a token and its tasks' last state."""
    latest = _latest(planned)
    owners = _owners(planned)[:CLIENTS]
    now = datetime.now(UTC)
    return [
        {
            "token": issue_access_token(servers.settings, owner, (), now).token,
            "tasks": [
                {"task_id": s["task_id"], "version": s["version"], "status": s["status"]}
                for s in latest.values()
                if s["owner_id"] == owner
            ],
        }
        for owner in owners
    ]


# -- lag and rebuild ----------------------------------------------------------------------------


async def _lag(servers: Servers, store: MongoEventStore, options: Options) -> dict[str, float]:
    """bench/latency.py's open-loop load (20 % creates) on the seeded log, projector running."""
    async with ViewWatch(servers.redis) as watch:
        load = TaskLoad(store, watch)
        await steady(load.create, options.lag_rate, 2.0)
        samples, rate = await steady(load.mixed, options.lag_rate, options.lag_seconds)
    visible = [s.visible * 1000 for s in samples]
    return {
        "lag_p50": percentile(visible, 50),
        "lag_p99": percentile(visible, 99),
        "lag_rate": rate,
        "lag_command_p50": percentile([s.command * 1000 for s in samples], 50),
    }


async def _mongo_views_behind(
    store: MongoEventStore, views_db: AsyncDatabase[dict[str, Any]]
) -> dict[str, Any]:
    """How far the MongoDB views are behind the log's head, and how long reading that took."""
    start = time.perf_counter()
    behind = await store.head_position() - await MongoTaskViews(views_db).position()
    return {
        "mongo_views_behind_at_end": behind,
        "mongo_checkpoint_read_s": time.perf_counter() - start,
    }


async def _audit_verify(servers: Servers, database: str, progress: Progress) -> dict[str, Any]:
    """`taskflow audit verify` as an operator runs it (its own default timeouts), while the
    projector keeps running: the seconds it takes and its exit code."""
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "MONGODB_DB": database,
        "REDIS_URL": servers.settings.redis_url,
        "LOG_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "taskflow", "audit", "verify"]
    start = time.perf_counter()
    async with child("audit verify", args, env) as verify:
        code = await asyncio.wait_for(verify.process.wait(), AUDIT_VERIFY_LIMIT_SECONDS)
        seconds = time.perf_counter() - start
        if code != 0:
            raise verify.failure(f"exited with {code} after {seconds:.0f} s")
    progress.step(f"audit verify: OK in {seconds:.1f} s")
    return {"audit_verify_seconds": seconds, "audit_verify_exit": code}


async def _rebuild(
    servers: Servers, database: str, options: Options, progress: Progress
) -> dict[str, Any]:
    """`rebuild` in this process, no projector running: until the Redis views of the next
    version reach the head (the read path), then capped for the MongoDB views."""
    settings = servers.settings.model_copy(update={"mongodb_db": database})
    async with open_services(settings) as services:
        head = await services.store.head_position()
        active = int(await services.redis.get(names.READ_MODEL_ACTIVE) or 1)
        redis_views, mongo_views = (
            RedisTaskViews(services.redis, active + 1, hot=services.hot),
            MongoTaskViews(services.views_db, active + 1),
        )
        start = time.perf_counter()
        task = asyncio.create_task(rebuild_read_models(services))
        while await redis_views.position() < head:
            if task.done():
                task.result()  # raises what failed
            await asyncio.sleep(0.05)
        redis_seconds = time.perf_counter() - start
        progress.step(f"rebuild: Redis views at the head after {redis_seconds:.1f} s")
        done, _ = await asyncio.wait({task}, timeout=options.mongo_wait)
        mongo_position = await mongo_views.position()
        mongo_seconds = time.perf_counter() - start
        if not done:
            await cancel_and_wait(task)
        else:
            task.result()
    return {
        "rebuild_head": head,
        "rebuild_seconds": redis_seconds,
        "rebuild_per_s": head / redis_seconds,
        "rebuild_mongo_per_s": mongo_position / mongo_seconds,
        "rebuild_completed": bool(done),
    }


async def _redis_views_alone(
    servers: Servers, store: MongoEventStore, progress: Progress
) -> dict[str, float]:
    """The Redis views caught up from zero in this process by `run_until_caught_up`, nothing
    else running: first with the log's Redis hints, then with them deleted (as after their
    24 h TTL), when the log reader streams `event_commits` from MongoDB in one pass."""
    figures: dict[str, float] = {}
    head = await store.head_position()
    for key, version in (("alone_hints", 7), ("alone_mongo", 8)):
        if key == "alone_mongo":
            async for batch in _hint_batches(servers):
                await servers.redis.unlink(*batch)
        start = time.perf_counter()
        applied = await run_until_caught_up(
            store, RedisTaskViews(servers.redis, version, hot=servers.services.hot)
        )
        seconds = time.perf_counter() - start
        figures[f"{key}_per_s"] = applied / seconds
        progress.step(f"Redis views alone ({key}): {applied:,} positions in {seconds:.1f} s")
    figures["alone_head"] = head
    return figures


async def _hint_batches(servers: Servers) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in servers.redis.scan_iter(match=names.commit_hint_key(0)[:-1] + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch


if __name__ == "__main__":
    sys.exit(main())
