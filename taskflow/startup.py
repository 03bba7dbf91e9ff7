"""What every `taskflow` process does first: read its settings (logging and Sentry set up from
them), and make its event loop. Shared by the CLI and the API workers' entry point."""

from __future__ import annotations

import asyncio
import os
import sys

from taskflow import __version__
from taskflow.logs import configure_logging, configure_sentry
from taskflow.settings import Settings, SettingsError, load_settings


def configured_settings() -> Settings | None:
    """The settings, with logging and Sentry set up from them; None, said why, if invalid."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"taskflow: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.log_level, json=settings.log_json)
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None
    configure_sentry(dsn, release=f"taskflow@{__version__}")
    return settings


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it exists (a loop factory: the global loop policy is deprecated
    from Python 3.14), else asyncio's."""
    if os.name == "nt":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()
