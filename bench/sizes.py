"""How much work each benchmark does: the full run, the quick smoke run, and the warm-up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; every group runs `repetitions` measured trials after one warm-up trial."""

    repetitions: int = 3
    serial_appends: int = 400  # appends of the single writer
    writers: int = 16  # concurrent writers, each on its own stream
    appends_per_writer: int = 40
    read_commits: int = 3200  # written by `writers` streams at once
    projection_tasks: int = 100  # write_workload's creates read their stream (a log scan here)
    projection_changes: int = 1400
    latency_max_seconds: float = 5.0  # measuring the maximum write rate, closed loop
    latency_load_share: float = 0.5  # of that rate, sent open-loop while measuring the lag
    latency_seconds: float = 20.0
    latency_warmup_seconds: float = 2.0  # creates the tasks the measured load then changes
    # The lag once more at this fixed rate: comparable between runs, whatever the maximum was.
    latency_fixed_rate: float = 300.0
    http_concurrency: int = 16  # the load generator's connections, each closed-loop
    http_seconds: float = 5.0  # measured, per server and route
    http_warmup_seconds: float = 2.0  # of load before each measurement, discarded
    read_tasks: int = 100  # tasks of the one owner the read groups read
    feed_owners: int = 10  # change feed: owners writing, each followed by one subscriber
    feed_seconds: float = 20.0  # change feed: the measured open loop
    feed_subscribers: int = 1000  # change feed: idle subscribers held on one API process

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in vars(self).items()}


FULL = Sizes()
QUICK = Sizes(
    serial_appends=100,
    appends_per_writer=10,
    read_commits=640,
    projection_tasks=30,
    projection_changes=270,
    latency_max_seconds=1.0,
    latency_seconds=2.0,
    latency_warmup_seconds=1.0,
    latency_fixed_rate=100.0,
    http_seconds=2.0,
    http_warmup_seconds=1.0,
    read_tasks=30,
    feed_seconds=4.0,
)
WARMUP = Sizes(
    serial_appends=50,
    appends_per_writer=4,
    read_commits=160,
    projection_tasks=10,
    projection_changes=90,
    http_seconds=1.0,
    http_warmup_seconds=0.5,
    read_tasks=10,
)
