"""Prometheus metrics, declared once; API and projector processes each export their own."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

HTTP_DURATION = Histogram(
    "taskflow_http_request_duration_seconds",
    "HTTP request duration by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMANDS = Counter(
    "taskflow_commands_total", "Commands handled, by type and outcome", ["command", "outcome"]
)
APPENDS = Counter("taskflow_appends_total", "Commits appended to the event log")
CONFLICTS = Counter("taskflow_append_conflicts_total", "Appends refused by a version conflict")
# How many commits each insert of the log carried (group commit): mostly 1 means the process's
# appends rarely overlap; batches near LOG_INSERT_BATCH mean the log's server is the limit.
LOG_INSERT_BATCH = Histogram(
    "taskflow_log_insert_batch_commits",
    "Commits per insert of the event log (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)
CACHE = Counter("taskflow_cache_requests_total", "List-page cache lookups", ["result"])
RATE_LIMITED = Counter("taskflow_rate_limited_total", "Requests refused by a rate limit", ["scope"])

PROJECTION_POSITION = Gauge(
    "taskflow_projection_position", "Last log position applied", ["projection"]
)
PROJECTION_HEAD = Gauge("taskflow_log_head_position", "Highest settled log position")
PROJECTION_LAG_EVENTS = Gauge(
    "taskflow_projection_lag_events", "Positions not yet applied", ["projection"]
)
PROJECTION_LAG_SECONDS = Gauge(
    "taskflow_projection_lag_seconds",
    "Age of the newest applied commit when it was applied",
    ["projection"],
)
PROJECTION_BATCH = Histogram(
    "taskflow_projection_batch_seconds", "Time to apply one batch", ["projection"]
)

# The change feeds (taskflow/api/change_feeds.py). The gauge is summed over API processes.
CHANGE_STREAMS = Gauge(
    "taskflow_change_streams_open", "Change-feed streams open", multiprocess_mode="livesum"
)
CHANGE_STREAMS_ENDED = Counter(
    "taskflow_change_streams_ended_total",
    "Change-feed streams the server ended, by reason (the client's own hang-ups are not counted)",
    ["reason"],
)
CHANGE_EVENTS = Counter(
    "taskflow_change_events_sent_total", "Change-feed events written to clients", ["feed"]
)


def forget_projection_metrics(names: list[str]) -> None:
    """Drop the series of projections no longer run here (a read-model version retired by a
    rebuild's switch): scraped on, they would report a frozen position and lag for good."""
    for name in names:
        for metric in (PROJECTION_POSITION, PROJECTION_LAG_EVENTS, PROJECTION_LAG_SECONDS):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        with contextlib.suppress(KeyError):
            PROJECTION_BATCH.remove(name)
