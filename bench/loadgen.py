"""`python -m bench.loadgen`: a closed-loop HTTP load in its own process, its figures as JSON.

`--concurrency` workers share one keep-alive connection pool; each sends its next request as
soon as its last one is answered, for `--warmup` seconds (discarded) and then `--seconds`
(measured). A `{n}` in a path becomes the request's number, so every request can differ.
Prints one JSON object on stdout: requests, errors, statuses, seconds, rate (requests/s), p50 and
p99 (ms), and with `--server-pid` the CPU time that process used per request in the measured
window (µs, from /proc: user + system), a figure the machine's other load moves far less than
the rate. It runs on uvloop, in a process of its own, so it never shares the server's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
import uvloop

from bench.stats import percentile


@dataclass
class Tally:
    """What the measured window saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(orjson.dumps(uvloop.run(_load(args))).decode(), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("base", help="http://host:port")
    parser.add_argument("--path", action="append", required=True, help="repeat to rotate paths")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default=None, help="a JSON body sent with every request")
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--server-pid", type=int, default=None, help="report its CPU/request")
    return parser


async def _load(args: argparse.Namespace) -> dict[str, object]:
    headers = dict(_header(h) for h in args.header)
    body = args.body.encode() if args.body is not None else None
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    numbers, paths = itertools.count(), itertools.cycle(args.path)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    async with aiohttp.ClientSession(args.base, connector=connector, headers=headers) as session:

        async def one() -> tuple[int, float]:
            path = next(paths).replace("{n}", str(next(numbers)))
            start = time.perf_counter()
            async with session.request(args.method, path, data=body) as response:
                await response.read()
                return response.status, time.perf_counter() - start

        async def worker(until: float, tally: Tally | None) -> None:
            while time.perf_counter() < until:
                try:
                    status, seconds = await one()
                except aiohttp.ClientError:
                    if tally is not None:
                        tally.errors += 1
                    continue
                if tally is not None:
                    tally.statuses[status] += 1
                    tally.latencies.append(seconds)

        warm_until = time.perf_counter() + args.warmup
        await asyncio.gather(*(worker(warm_until, None) for _ in range(args.concurrency)))
        tally, start = Tally(), time.perf_counter()
        cpu_before = _cpu_seconds(args.server_pid)
        until = start + args.seconds
        await asyncio.gather(*(worker(until, tally) for _ in range(args.concurrency)))
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(args.server_pid) - cpu_before
    summary = _summary(tally, seconds)
    if args.server_pid is not None and tally.latencies:
        summary["server_cpu_us"] = cpu / len(tally.latencies) * 1e6
    return summary


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of `pid` so far (Linux /proc), 0 without a pid."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name (field 2) may hold spaces: count fields after its closing ')'.
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(tally: Tally, seconds: float) -> dict[str, object]:
    done = len(tally.latencies)
    ok = sum(n for status, n in tally.statuses.items() if status < 400)
    millis = [s * 1000 for s in tally.latencies] or [0.0]
    return {
        "requests": done,
        "ok": ok,
        "errors": tally.errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "seconds": seconds,
        "rate": ok / seconds,
        "p50": percentile(millis, 50),
        "p99": percentile(millis, 99),
    }


def _header(raw: str) -> tuple[str, str]:
    name, _, value = raw.partition(":")
    return name.strip(), value.strip()


if __name__ == "__main__":
    sys.exit(main())
