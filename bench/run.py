"""`python -m bench.run`: every benchmark group next to its raw baselines, into bench-results/."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from bench import (
    appends,
    change_feed,
    http_reads,
    http_writes,
    latency,
    peer,
    projections,
    reads,
    rebuilds,
)
from bench.harness import Group, Progress, run_group
from bench.report import Report, write_report
from bench.servers import describe_backend, open_servers
from bench.sizes import FULL, QUICK
from bench.stats import Row, Trial
from taskflow.logs import configure_logging

try:
    from taskflow.startup import tune_garbage_collector
except ImportError:  # an earlier commit's TaskFlow, measured beside this one (its defaults)

    def tune_garbage_collector() -> None:
        pass


GROUPS: dict[str, Group] = {
    "appends": appends.GROUP,
    "reads": reads.GROUP,
    "projections": projections.GROUP,
    "latency": latency.GROUP,
    "http_writes": http_writes.GROUP,
    "http_reads": http_reads.GROUP,
    "rebuild": rebuilds.GROUP,
    "change_feed": change_feed.GROUP,
    "peer": peer.GROUP,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    mongodb_uri, redis_url = os.environ.get("MONGODB_URI"), os.environ.get("REDIS_URL")
    if not mongodb_uri or not redis_url:
        print("bench: MONGODB_URI and REDIS_URL must be set (make bench does)", file=sys.stderr)
        return 2
    configure_logging("WARNING", json=False)
    # The bench process runs command handlers (groups 1, 4) as an API process does: with its
    # garbage collector tuned as `taskflow serve` tunes it (taskflow/startup.py).
    tune_garbage_collector()
    report = uvloop.run(_run(args, mongodb_uri, redis_url))
    for path in write_report(report, args.out):
        print(f"[bench] wrote {path}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    parser.add_argument(
        "--only", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="groups to run"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    return parser


async def _run(args: argparse.Namespace, mongodb_uri: str, redis_url: str) -> Report:
    progress, started_at, start = Progress(), datetime.now(UTC), time.monotonic()
    load_at_start = os.getloadavg()[0]
    sizes = QUICK if args.quick else FULL
    rows: list[Row] = []
    trials: dict[str, list[Trial]] = {}
    async with open_servers(mongodb_uri, redis_url) as servers:
        backend = await describe_backend(servers)
        progress.step(f"{'quick' if args.quick else 'full'} run on {backend}")
        for name in args.only:
            group_rows, trials[GROUPS[name].name] = await run_group(
                GROUPS[name], servers, sizes, progress
            )
            rows.extend(group_rows)
    progress.step("done")
    command = " ".join(["scripts/bench.sh", *sys.argv[1:]]) if sys.argv[1:] else "make bench"
    seconds, load = time.monotonic() - start, (load_at_start, os.getloadavg()[0])
    return Report(command, backend, started_at, seconds, sizes, rows, trials, load)


if __name__ == "__main__":
    sys.exit(main())
