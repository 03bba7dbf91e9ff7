"""Structured logs: JSON lines carrying the request and correlation ids of whatever is running."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str, *, json: bool = True) -> None:
    """Route stdlib and structlog output through one JSON (or console) renderer on stderr."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def configure_sentry(dsn: str | None, *, release: str) -> bool:
    """Report errors to Sentry when SENTRY_DSN is set (needs the `sentry` extra installed)."""
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.aiohttp import AioHttpIntegration
    except ImportError as exc:
        raise RuntimeError(
            "SENTRY_DSN is set but sentry-sdk is not installed: pip install 'taskflow[sentry]'"
        ) from exc
    sentry_sdk.init(
        dsn=dsn,
        release=release,
        integrations=[AioHttpIntegration()],
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    return True
