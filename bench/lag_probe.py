"""`python -m bench.lag_probe RATE [SECONDS]`: group 4's TaskFlow side at a fixed rate, and the
slowest samples, to see what holds the lag back.

Starts the real projector on a fresh database (MONGODB_URI, REDIS_URL; the Redis database is
flushed), sends RATE commands/s open-loop for SECONDS (20 by default) after 2 s of creates, then
prints the lag and command percentiles, the projector's own part, the slowest commands (and
when they started) and the slowest samples to become visible (and how long their own command
took). A slow command followed by a run of slow-to-show fast ones is head-of-line blocking.
Each read model has a projector process of its own (PROJECTOR_READ_MODELS), as in group 4;
BENCH_SPLIT_PROJECTORS=0 runs both in one process, as group 4 does with the same variable.
"""

from __future__ import annotations

import os
import sys

import uvloop

from bench.latency import summary, taskflow_lag
from bench.servers import open_servers
from bench.sizes import Sizes
from taskflow.startup import tune_garbage_collector


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


def main() -> int:
    tune_garbage_collector()  # as bench.run does: the handlers run here, as in an API process
    rate = float(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    uvloop.run(_probe(rate, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
