"""The results: a Markdown table (`latest.md`) and every figure as JSON (`latest.json`)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import orjson

from bench.sizes import Sizes
from bench.stats import Row, Spread, Trial

HEADER = (
    "| group | measurement | unit | TaskFlow: median (min-max) | raw baseline "
    "| raw: median (min-max) | TaskFlow ÷ raw: median (min-max) |"
)


@dataclass(frozen=True)
class Report:
    """One run: where and how it ran, the summarised rows and each repetition's figures."""

    command: str
    backend: str
    started_at: datetime
    seconds: float
    sizes: Sizes
    rows: list[Row]
    trials: dict[str, list[Trial]]
    load: tuple[float, float]  # the machine's 1-minute load average at the start and the end
    machine: str = field(default_factory=lambda: describe_machine())


def describe_machine() -> str:
    return (
        f"{os.cpu_count()} CPUs {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()} on uvloop {version('uvloop')}"
    )


def write_report(report: Report, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown, json = directory / "latest.md", directory / "latest.json"
    markdown.write_text(to_markdown(report))
    json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return [markdown, json]


def to_markdown(report: Report) -> str:
    minutes, seconds = divmod(round(report.seconds), 60)
    lines = [
        f"# TaskFlow benchmark, {report.started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Backend: {report.backend}",
        f"- Machine: {report.machine}; 1-minute load average {report.load[0]:.1f} at the start, "
        f"{report.load[1]:.1f} at the end",
        f"- Command: `{report.command}`; {report.sizes.repetitions} repetitions after a warm-up, "
        f"a fresh database for each measurement; total {minutes} min {seconds:02d} s",
        "- TaskFlow ÷ raw is taken within each repetition (side by side), then summarised: "
        "for throughput higher is better (1.00 = as fast as raw), for latency lower is better.",
        "",
        HEADER,
        "| --- | --- | --- | ---: | --- | ---: | ---: |",
        *(_line(row) for row in report.rows),
        "",
    ]
    return "\n".join(lines)


def _line(row: Row) -> str:
    c = row.comparison
    cells = [row.group, c.measure, c.unit, _spread(row.taskflow, _number), c.raw_label]
    cells += [_spread(row.raw, _number), _spread(row.ratio, _ratio)]
    return "| " + " | ".join(cells) + " |"


def _spread(spread: Spread, show: Callable[[float], str]) -> str:
    return f"**{show(spread.median)}** ({show(spread.low)}-{show(spread.high)})"


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"
