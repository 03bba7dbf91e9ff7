"""The scale benchmark's results: a Markdown table by log size (`scale.md`) and `scale.json`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Measured:
    """One run: where and how it ran, and every figure of every size."""

    command: str
    backend: str
    machine: str
    started_at: str
    seconds: float
    load: tuple[float, float]
    options: dict[str, Any]
    sizes: list[dict[str, Any]]


@dataclass(frozen=True)
class Line:
    label: str
    unit: str
    key: str
    growth: bool = True  # show largest ÷ smallest


LINES = [
    Line("bulk seeding, all of it (plan, sign, insert, Redis)", "commits/s", "seed_per_s"),
    Line("bulk seeding, `insert_many` of 1,000 alone", "commits/s", "seed_insert_many_per_s"),
    Line("`verify_all` of the seeded log", "s", "verify_seconds"),
    Line("`PositionCounter.reseed` (recovery: reads the reserved blocks)", "s", "reseed_seconds"),
    Line("HTTP create `POST /api/tasks`, p50", "ms", "create_p50"),
    Line("HTTP create, p99", "ms", "create_p99"),
    Line("HTTP change status `PATCH` + `If-Match`, p50", "ms", "change_p50"),
    Line("HTTP change status, p99", "ms", "change_p99"),
    Line("HTTP get task, p50", "ms", "get_p50"),
    Line("HTTP get task, p99", "ms", "get_p99"),
    Line("HTTP list page (20), p50", "ms", "list_p50"),
    Line("HTTP list page, p99", "ms", "list_p99"),
    Line("HTTP change of a task whose cached head is gone, median of 3", "ms", "cold_change_ms"),
    Line("write-to-visible lag, p50", "ms", "lag_p50"),
    Line("write-to-visible lag, p99", "ms", "lag_p99"),
    Line("raw streamed read of `event_commits`", "commits/s", "raw_read_per_s"),
    Line("projector catch-up from zero, Redis views", "commits/s", "catchup_per_s"),
    Line("catch-up ÷ raw read", "ratio", "catchup_ratio"),
    Line("projector catch-up, MongoDB views (capped wait)", "commits/s", "mongo_catchup_per_s"),
    Line(
        "MongoDB views from zero in one batch (then steady state for HTTP and lag)",
        "commits/s",
        "mongo_batch_per_s",
    ),
    Line("rebuild, Redis views of the next version", "commits/s", "rebuild_per_s"),
    Line("rebuild ÷ raw read", "ratio", "rebuild_ratio"),
    Line("rebuild, MongoDB views (capped wait)", "commits/s", "rebuild_mongo_per_s"),
    Line("Redis views alone from zero, hints present", "commits/s", "alone_hints_per_s"),
    Line("  ÷ raw read", "ratio", "alone_hints_ratio"),
    Line(
        "Redis views alone from zero, hints expired (reads MongoDB)",
        "commits/s",
        "alone_mongo_per_s",
    ),
    Line("  ÷ raw read", "ratio", "alone_mongo_ratio"),
    Line("MongoDB views behind the head after the load", "commits", "mongo_views_behind_at_end"),
    Line("`taskflow audit verify` beside a running projector", "s", "audit_verify_seconds"),
    Line("  its exit code (0: the log, seals and views verified)", "", "audit_verify_exit"),
    Line("1-minute load average at the start of the size", "", "load_start", growth=False),
]


def write_scale_report(measured: Measured, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown, json = directory / "scale.md", directory / "scale.json"
    markdown.write_text(to_markdown(measured))
    payload = {"targets": targets(measured), **measured.__dict__}
    json.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")
    return [markdown, json]


def to_markdown(m: Measured) -> str:
    minutes, seconds = divmod(round(m.seconds), 60)
    sizes = m.sizes
    first, last = sizes[0], sizes[-1]
    growth = f"{last['commits']:,} ÷ {first['commits']:,}"
    head = ["measurement", "unit", *(f"{s['commits']:,} commits" for s in sizes), growth]
    lines = [
        f"# TaskFlow scale benchmark, {m.started_at} UTC",
        "",
        f"- Backend: {m.backend}",
        f"- Machine: {m.machine}; 1-minute load average {m.load[0]:.1f} at the start, "
        f"{m.load[1]:.1f} at the end",
        f"- Command: `{m.command}`; total {minutes} min {seconds:02d} s",
        f"- Shape: about 10 commits per task, 10 tasks per user ({_shape(sizes)}); "
        f"HTTP: {m.options['http_seconds']:g} s of 8 closed-loop clients after "
        f"{m.options['http_warmup']:g} s warm-up; lag: {m.options['lag_rate']:g} commands/s "
        f"for {m.options['lag_seconds']:g} s",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | --- |" + " ---: |" * (len(sizes) + 1),
        *(_row(line, sizes) for line in LINES),
        "",
        "- HTTP answers to the changes with a lost head: "
        + "; ".join(f"{s['commits']:,}: {s.get('cold_change_statuses')}" for s in sizes),
        "- HTTP requests that failed under load, by kind: "
        + "; ".join(f"{s['commits']:,}: {s.get('http_failures') or 'none'}" for s in sizes),
        *(
            f"- At {s['commits']:,} commits, {key.removesuffix('_error')} failed: {value}"
            for s in sizes
            for key, value in s.items()
            if key.endswith("_error")
        ),
        "",
        "## Targets (issue #11)",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        *(f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in targets(m)),
        "",
    ]
    return "\n".join(lines)


def _shape(sizes: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['commits']:,}: {s['tasks']:,} tasks, {s['users']:,} users" for s in sizes)


def _row(line: Line, sizes: list[dict[str, Any]]) -> str:
    values = [s.get(line.key) for s in sizes]
    cells = [_number(v) for v in values]
    first, last = values[0], values[-1]
    ratio = (
        f"{last / first:.2f}x"
        if line.growth
        and isinstance(first, int | float)
        and isinstance(last, int | float)
        and first
        else ""
    )
    return "| " + " | ".join([line.label, line.unit, *cells, ratio]) + " |"


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def main() -> None:
    """`python -m bench.scale_report DIR`: rewrite DIR/scale.md from DIR/scale.json."""
    directory = Path(sys.argv[1])
    data = orjson.loads((directory / "scale.json").read_bytes())
    data.pop("targets", None)
    data["load"] = tuple(data["load"])
    write_scale_report(Measured(**data), directory)


def targets(m: Measured) -> list[dict[str, str]]:
    first, last = m.sizes[0], m.sizes[-1]
    pair = f"{last['commits']:,} vs {first['commits']:,}"

    def growth(key: str, label: str) -> dict[str, str]:
        if key not in first or key not in last:
            return _unmeasured(f"{label} p50 at {pair} ≤ 1.5x")
        ratio = last[key] / first[key]
        return _verdict(
            f"{label} p50 at {pair} ≤ 1.5x",
            f"{ratio:.2f}x ({_number(first[key])} → {_number(last[key])} ms)",
            ratio <= 1.5,
        )

    def ratio_at(key: str, label: str) -> dict[str, str]:
        target = f"{label} ≥ 0.5 of the raw streamed read"
        if key not in last:
            return _unmeasured(target)
        worst = min(s[key] for s in m.sizes if key in s)
        shown = ", ".join(f"{s[key]:.2f}" if key in s else "-" for s in m.sizes)
        return _verdict(target, shown, worst >= 0.5)

    check: Callable[[str, str], dict[str, str]] = growth
    return [
        check("create_p50", "command (create)"),
        check("change_p50", "command (change status)"),
        check("get_p50", "get-task"),
        check("list_p50", "list-page"),
        _verdict(
            f"write-to-visible lag p99 ≤ 100 ms at {last['commits']:,}",
            f"{last['lag_p99']:.0f} ms",
            last["lag_p99"] <= 100,
        )
        if "lag_p99" in last
        else _unmeasured(f"write-to-visible lag p99 ≤ 100 ms at {last['commits']:,}"),
        ratio_at("catchup_ratio", "catch-up (real projector, Redis views)"),
        ratio_at("alone_mongo_ratio", "catch-up from MongoDB (hints expired, Redis views alone)"),
        ratio_at("rebuild_ratio", "rebuild (Redis views)"),
    ]


def _unmeasured(target: str) -> dict[str, str]:
    return {"target": target, "measured": "not measured (see the failures above)", "verdict": "-"}


def _verdict(target: str, measured: str, met: bool) -> dict[str, str]:
    return {"target": target, "measured": measured, "verdict": "met" if met else "**unmet**"}


if __name__ == "__main__":
    main()
