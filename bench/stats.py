"""Summaries of repeated trials: medians, min-max spreads and TaskFlow-to-raw ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# One repetition of a group: every variant's figure, measured side by side.
Trial = dict[str, float]


@dataclass(frozen=True)
class Spread:
    """The median of a figure over the repetitions, and its lowest and highest value."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class Comparison:
    """A table row to build: which trial figure is TaskFlow's and which is its raw baseline."""

    measure: str
    unit: str
    taskflow: str
    raw: str
    raw_label: str


@dataclass(frozen=True)
class Row:
    """A summarised comparison; `ratio` is TaskFlow ÷ raw, taken within each repetition."""

    group: str
    comparison: Comparison
    taskflow: Spread
    raw: Spread
    ratio: Spread


def summarize(group: str, comparison: Comparison, trials: Sequence[Trial]) -> Row:
    ours = [trial[comparison.taskflow] for trial in trials]
    raws = [trial[comparison.raw] for trial in trials]
    ratios = [a / b for a, b in zip(ours, raws, strict=True)]
    return Row(group, comparison, Spread.of(ours), Spread.of(raws), Spread.of(ratios))


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (no interpolation: always a value that was observed)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def alternate(variants: Sequence[str], repetition: int) -> list[str]:
    """Run order of a repetition: reversed every other time, so neither side always goes first."""
    return list(variants) if repetition % 2 == 0 else list(reversed(variants))
