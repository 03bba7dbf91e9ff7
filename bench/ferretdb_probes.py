"""`python -m bench.ferretdb_probes`: properties of the MongoDB-protocol server that shape
TaskFlow's design (docs/benchmarks.md, "FerretDB's writers" and "Group commit").

- lookups: how `find_one({_id})` (found early, missing), other filters and `insert_one` cost as
  one collection grows to 1,000, 10,000 and 100,000 documents;
- writers: inserts per second and latency percentiles with 1, 4 and 16 concurrent writers, and
  with 16 writers queued in the client (a pool of one connection);
- batches: what a commit costs inserted alone and in `insert_many` batches of 2 to 16 (the
  group commit, taskflow/events/group_insert.py): commits per second, wall time and this
  client's CPU per commit, one writer, the log's four indexes and write concern.

Needs MONGODB_URI; uses a database of its own (`probe_<random>`) and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection

from bench.stats import percentile

PAD = "x" * 600  # about the size of a commit document
Collection = AsyncCollection[dict[str, Any]]


async def lookups(uri: str, sizes: list[int]) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    name = f"probe_{uuid.uuid4().hex[:8]}"
    col = client[name]["docs"]
    await col.create_index([("stream_id", 1), ("first_version", 1)], unique=True)
    stored = 0
    probes: dict[str, Callable[[], Awaitable[object]]] = {
        "find_one _id, found early": lambda: col.find_one({"_id": "t-500:1"}),
        "find_one _id, missing": lambda: col.find_one({"_id": "t-500:2"}),
        "find_one _id + another field": lambda: col.find_one(
            {"_id": "t-500:1", "first_version": 1}
        ),
        "find stream_id": lambda: col.find({"stream_id": "t-500"}).to_list(),
        "find _id $in 2 ids": lambda: col.find({"_id": {"$in": ["t-1:1", "t-2:1"]}}).to_list(),
    }
    try:
        for size in sizes:
            while stored < size:
                await col.insert_many([_doc(f"t-{i}", 1) for i in range(stored, stored + 1000)])
                stored += 1000
            for label, probe in probes.items():
                print(f"{size:>7,} {label:<30} {await _mean_ms(probe):9.2f} ms")
            print(f"{size:>7,} {'insert_one':<30} {await _mean_ms(_inserter(col, size)):9.2f} ms")
    finally:
        await client.drop_database(name)
        await client.close()


async def writers(uri: str, seconds: float) -> None:
    for count, pool in [(1, 100), (4, 100), (16, 100), (16, 1)]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, maxPoolSize=pool)
        name = f"probe_{uuid.uuid4().hex[:8]}"
        col = client[name]["docs"]
        await col.create_index("first_version", unique=True)
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_write(col, w, until, latencies) for w in range(count)))
        print(
            f"writers {count:>2}, pool {pool:>3}: {len(latencies) / seconds:6.0f} inserts/s, "
            f"p50 {percentile(latencies, 50):6.1f} ms, p99 {percentile(latencies, 99):7.1f} ms, "
            f"max {max(latencies):7.1f} ms"
        )
        await client.drop_database(name)
        await client.close()


async def _write(col: Collection, writer: int, until: float, latencies: list[float]) -> None:
    n = 0
    while time.perf_counter() < until:
        start = time.perf_counter()
        await col.insert_one(_doc(f"w{writer}", writer * 10**7 + n))
        latencies.append((time.perf_counter() - start) * 1000)
        n += 1


async def batches(uri: str, count: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    name = f"probe_{uuid.uuid4().hex[:8]}"
    col = client[name].get_collection("commits", write_concern=WriteConcern("majority", j=True))
    await col.create_index("position", unique=True)
    await col.create_index([("stream_id", 1), ("first_version", 1)], unique=True)
    await col.create_index("idempotency", unique=True)
    await col.create_index("recorded_at")
    positions = itertools.count(1)
    try:
        for size in (1, 2, 4, 8, 16, 1):  # alone again at the end: the drift of the run
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(count // size):
                await col.insert_many([_commit(next(positions)) for _ in range(size)])
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            done = count // size * size
            print(
                f"batch {size:>2}: {done / wall:6.0f} commits/s, {wall / done * 1e6:6.0f} µs "
                f"wall and {cpu / done * 1e6:5.0f} µs client CPU per commit"
            )
    finally:
        await client.drop_database(name)
        await client.close()


def _commit(position: int) -> dict[str, Any]:
    """A document shaped like a commit, of a stream of its own."""
    stream = f"t-{position}"
    return {
        **_doc(stream, 1),
        "position": position,
        "idempotency": f"~{stream}:1",
        "recorded_at": position,
    }


def _inserter(col: Collection, size: int) -> Callable[[], Awaitable[object]]:
    """New documents of a stream of their own, one per call."""
    versions = iter(range(1, 10**9))
    return lambda: col.insert_one(_doc(f"extra-{size}", next(versions)))


async def _mean_ms(probe: Callable[[], Awaitable[object]], budget: float = 1.0) -> float:
    """Mean milliseconds of `probe`, repeated for about `budget` seconds (at most 50 times)."""
    start, count = time.perf_counter(), 0
    while count < 50 and (count == 0 or time.perf_counter() - start < budget):
        await probe()
        count += 1
    return (time.perf_counter() - start) / count * 1000


def _doc(stream: str, version: int) -> dict[str, Any]:
    return {"_id": f"{stream}:{version}", "stream_id": stream, "first_version": version, "pad": PAD}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ferretdb_probes", description=__doc__)
    parser.add_argument("probe", choices=["lookups", "writers", "batches"])
    parser.add_argument("--sizes", default="1000,10000,100000", help="lookups: collection sizes")
    parser.add_argument("--seconds", type=float, default=5.0, help="writers: seconds per setting")
    parser.add_argument("--commits", type=int, default=1600, help="batches: commits per size")
    args = parser.parse_args()
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print("MONGODB_URI must be set", file=sys.stderr)
        return 2
    if args.probe == "lookups":
        uvloop.run(lookups(uri, [int(s) for s in args.sizes.split(",")]))
    elif args.probe == "writers":
        uvloop.run(writers(uri, args.seconds))
    else:
        uvloop.run(batches(uri, args.commits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
