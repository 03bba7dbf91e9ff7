"""`python -m bench.lag_probe RATE [SECONDS]`: group 4's TaskFlow side at a fixed rate, and the
slowest samples, to see what holds the lag back.

Starts the real projector on a fresh database (MONGODB_URI, REDIS_URL; the Redis database is
flushed), sends RATE commands/s open-loop for SECONDS (20 by default) after 2 s of creates, then
prints the lag and command percentiles, the projector's own part, the slowest commands (and
when they started), the slowest samples to become visible (and how long their own command
took), and the quarter-seconds with the most samples over 50 ms end to end. A slow command
followed by a run of slow-to-show fast ones is head-of-line blocking; windows at regular times
are a periodic stall (session 15 found the log seal's 5-s pass that way).
Each read model has a projector process of its own (PROJECTOR_READ_MODELS), as in group 4;
BENCH_SPLIT_PROJECTORS=0 runs both in one process, as group 4 does with the same variable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import uvloop

from bench.latency import Sample, summary, taskflow_lag
from bench.servers import open_servers
from bench.sizes import Sizes
from taskflow.startup import tune_garbage_collector

WINDOW_SECONDS = 0.25
OVER_MS = 50  # the target for the end-to-end p99


async def _probe(rate: float, seconds: float) -> None:
    sizes = Sizes(latency_seconds=seconds)
    async with open_servers(os.environ["MONGODB_URI"], os.environ["REDIS_URL"]) as servers:
        samples, achieved = await taskflow_lag(servers, sizes, rate)
    figures = summary("taskflow", samples, achieved)  # the latency group's figures, in ms
    named = (f"{name.removeprefix('taskflow_')} {value:.1f}" for name, value in figures.items())
    print(", ".join(named))
    start = min(s.returned_at - s.command for s in samples)
    for s in sorted(samples, key=lambda s: -s.command)[:8]:
        began = s.returned_at - s.command - start
        print(
            f"  slow command {s.command * 1000:.0f} ms, position {s.position}, started at "
            f"{began:.2f} s, then visible after {s.visible * 1000:.0f} ms"
        )
    for s in sorted(samples, key=lambda s: -s.visible)[:5]:
        print(
            f"  slow to show {s.visible * 1000:.0f} ms, position {s.position}, returned at "
            f"{s.returned_at - start:.2f} s, its command {s.command * 1000:.0f} ms"
        )
    for at, worst, over in worst_windows(samples, start):
        print(f"  window at {at:.2f} s: {over} over {OVER_MS} ms end to end, worst {worst:.0f} ms")


def worst_windows(
    samples: Sequence[Sample], start: float, shown: int = 8
) -> list[tuple[float, float, int]]:
    """The `WINDOW_SECONDS` windows (by when each command was sent) with the most samples over
    `OVER_MS` end to end, in time order: (start in seconds, worst ms, how many over). Stalls that
    recur at a period (a paced pass, a checkpoint) show as windows at regular times."""
    windows: dict[int, list[float]] = {}
    for s in samples:
        sent = s.returned_at - s.command - start
        windows.setdefault(int(sent / WINDOW_SECONDS), []).append((s.command + s.visible) * 1000)
    counted = [(sum(ms > OVER_MS for ms in lags), max(lags), n) for n, lags in windows.items()]
    worst = sorted((c for c in counted if c[0]), reverse=True)[:shown]
    return sorted((n * WINDOW_SECONDS, top, over) for over, top, n in worst)


def main() -> int:
    tune_garbage_collector()  # as bench.run does: the handlers run here, as in an API process
    rate = float(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    uvloop.run(_probe(rate, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
