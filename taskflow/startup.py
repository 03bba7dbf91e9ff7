"""What every `taskflow` process does first: read its settings (logging and Sentry set up from
them), and make its event loop. Shared by the CLI and the API workers' entry point."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path

from taskflow import __version__
from taskflow.logs import configure_logging, configure_sentry
from taskflow.settings import Settings, SettingsError, load_settings

# What `scripts/services.sh start dev` writes for the processes it serves.
DEVELOPMENT_SERVICES = ("MONGODB_URI", "REDIS_URL")


def configured_settings() -> Settings | None:
    """The settings, with logging and Sentry set up from them; None, said why, if invalid.

    Where neither MONGODB_URI nor REDIS_URL is set and `make dev`'s services are running (their
    addresses are in `.state/dev/services.env`; the ports change at every start), those are
    used, as development: the operator commands then work beside `make dev` as they are.
    """
    use_development_services()
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taskflow: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.log_level, json=settings.log_json)
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    configure_sentry(dsn, release=f"taskflow@{__version__}")
    return settings


def use_development_services(state: Path | None = None) -> Path | None:
    """Take MONGODB_URI and REDIS_URL from the running development services, when neither is
    set; the file used, if any. TASKFLOW_ENV becomes `development` unless it is set."""
    if "MONGODB_URI" in os.environ or "REDIS_URL" in os.environ:
        return None
    state = state or Path(os.environ.get("TASKFLOW_STATE_DIR", ".state"))
    found = state / "dev" / "services.env"
    if not found.is_file():
        return None
    for line in found.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and name in DEVELOPMENT_SERVICES:
            os.environ[name] = value
    os.environ.setdefault("TASKFLOW_ENV", "development")
    print(f"taskflow: using the development services of {found}", file=sys.stderr)
    return found


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it exists (a loop factory: the global loop policy is deprecated
    from Python 3.14), else asyncio's."""
    if os.name == "nt":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


# The garbage collector's thresholds for the long-running processes (the API and the projector):
# a young collection after 50,000 net allocations of container objects instead of 700, and a
# full one after 100 of the middle generation's instead of 10. Measured under group 4's load
# (250 commands/s on 2 cores), full collections paused the projector and the command handlers
# for 20-63 ms each, 8-9 times in a 14-s run, and every commit waiting meanwhile showed that
# late; with these, 3 full collections, and the lag's p99 fell from 57-77 ms to 24-38 ms
# (docs/benchmarks.md, "Write-to-visible latency"). Memory freed by reference counting (almost
# all of it) is unaffected; only objects in reference cycles live a little longer.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Fewer, and so fewer long, garbage collections in a long-running process (see above);
    gunicorn's workers inherit the arbiter's."""
    gc.set_threshold(*GC_THRESHOLDS)
