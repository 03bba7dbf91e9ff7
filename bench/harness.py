"""Runs a benchmark group: one warm-up trial, then measured repetitions, with progress lines."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.servers import Servers
from bench.sizes import WARMUP, Sizes
from bench.stats import Comparison, Row, Trial, summarize


class Progress:
    """One line per step on stderr, stamped with the time since the start and the load average
    (other processes on the machine skew the figures)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed), 60)
        stamp = f"{minutes:02d}:{seconds:02d} load {os.getloadavg()[0]:.1f}"
        print(f"[bench {stamp}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Group:
    """A benchmark: a trial that measures every variant side by side, and the rows it yields."""

    name: str
    comparisons: Callable[[Sizes], Sequence[Comparison]]
    trial: Callable[[Servers, Sizes, int], Awaitable[Trial]]
    warm_up: bool = True  # False when every trial warms itself up (its own processes)


async def run_group(
    group: Group, servers: Servers, sizes: Sizes, progress: Progress
) -> tuple[list[Row], list[Trial]]:
    """The group's rows and the raw figures of each measured repetition."""
    if group.warm_up:
        progress.step(f"{group.name}: warm-up")
        await group.trial(servers, WARMUP, 0)
    trials: list[Trial] = []
    for repetition in range(sizes.repetitions):
        progress.step(f"{group.name}: repetition {repetition + 1}/{sizes.repetitions} ...")
        trials.append(await group.trial(servers, sizes, repetition))
        progress.step(f"{group.name}: repetition {repetition + 1} done: {_brief(trials[-1])}")
    return [summarize(group.name, c, trials) for c in group.comparisons(sizes)], trials


def _brief(trial: Trial) -> str:
    return ", ".join(f"{name} {value:,.1f}" for name, value in trial.items())
