"""`taskflow serve` with API_WORKERS > 1: several API processes sharing one port.

One Python process serves requests on one core; a machine with more cores runs several. The
processes are gunicorn's workers running aiohttp's own worker class: gunicorn is the process
manager aiohttp documents for this, and it does what a hand-written pre-fork loop would get
wrong (a worker that dies is replaced, SIGTERM stops every worker gracefully, a worker that
fails to boot stops the whole server instead of respawning forever). Each worker builds its
own app, with its own MongoDB and Redis clients, after the fork; nothing else is shared
between them but the servers, as between API instances on different hosts.

Metrics: every worker counts its own requests, so Prometheus' multiprocess mode keeps each
worker's values in a file of PROMETHEUS_MULTIPROC_DIR, and /metrics, on whichever worker
answers the scrape, sums them all (taskflow.api.observability). prometheus_client picks that
mode when it is imported, and `taskflow serve` has imported it already: it sets the directory
and replaces itself (exec, same pid) with `python -m taskflow.server_workers`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from gunicorn import glogging  # type: ignore[import-untyped]
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from prometheus_client import multiprocess

from taskflow.api.observability import MULTIPROC_DIR
from taskflow.server import create_app
from taskflow.settings import Settings
from taskflow.startup import configured_settings

# Set when `taskflow serve` made the metrics directory itself: it is removed on exit.
_OWNED_DIR = "TASKFLOW_OWNS_METRICS_DIR"
# As `taskflow serve` with one process: in-flight requests get this long to finish on SIGTERM.
GRACEFUL_SECONDS = 10
# aiohttp's own keep-alive default, which a single-process `taskflow serve` uses too.
KEEPALIVE_SECONDS = 75


def exec_workers() -> NoReturn:
    """Become the multi-process server: prepare the metrics directory, then exec this module."""
    env = dict(os.environ)
    if env.get(MULTIPROC_DIR):
        directory = Path(env[MULTIPROC_DIR])
        directory.mkdir(parents=True, exist_ok=True)
        # Prometheus' rule: files of an earlier run would be summed with this run's counts.
        for stale in directory.glob("*.db"):
            stale.unlink()
    else:
        env[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="taskflow-metrics-")
        env[_OWNED_DIR] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # Same pid, so a supervisor's SIGTERM reaches gunicorn's arbiter directly.
    os.execve(sys.executable, [sys.executable, "-m", "taskflow.server_workers"], env)  # noqa: S606


class _Log(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (workers booting, exiting) through TaskFlow's JSON logging."""

    def setup(self, cfg: Any) -> None:
        self.error_log.setLevel(self.LOG_LEVELS.get(cfg.loglevel.lower(), 20))
        self.error_log.handlers.clear()
        self.error_log.propagate = True  # to the root handler configure_logging installed
        self.access_log.disabled = True  # as `taskflow serve`: no access log


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self._settings
        self.cfg.set("bind", [f"{settings.http_host}:{settings.http_port}"])
        self.cfg.set("workers", settings.api_workers)
        self.cfg.set("worker_class", "aiohttp.GunicornUVLoopWebWorker")
        self.cfg.set("graceful_timeout", GRACEFUL_SECONDS)
        self.cfg.set("keepalive", KEEPALIVE_SECONDS)
        self.cfg.set("loglevel", settings.log_level.lower())
        self.cfg.set("logger_class", _Log)
        self.cfg.set("child_exit", _child_exit)
        self.cfg.set("on_exit", _on_exit)
        self.cfg.set("control_socket_disable", True)  # no `gunicornc` socket in $HOME

    def load(self) -> Any:
        # Called in each worker after the fork: every worker has clients of its own. The modules
        # are imported once, in the arbiter, so a worker (or its replacement) starts serving
        # at once instead of importing the whole app on a core the other workers need.
        return create_app(self._settings)


def _child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _on_exit(server: Any) -> None:
    if os.environ.get(_OWNED_DIR) == "1":
        shutil.rmtree(os.environ[MULTIPROC_DIR], ignore_errors=True)


def main() -> int:
    settings = configured_settings()
    if settings is None:
        return 2
    print(
        f"TaskFlow API on http://{settings.http_host}:{settings.http_port}"
        f" ({settings.api_workers} worker processes)",
        file=sys.stderr,
    )
    _Server(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
