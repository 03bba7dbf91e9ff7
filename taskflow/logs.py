"""Structured logs: JSON lines carrying the request and correlation ids of whatever is running."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from typing import Any

import structlog

# The request and correlation ids of the request being served, in one context variable: the API
# sets it once per request, cheaper than structlog's bind/unbind of two (docs/benchmarks.md), and
# every log line gets both through `add_request_ids`. aiohttp serves each request in a task of
# its own, so the value never leaks into another request; the middleware resets it all the same.
_REQUEST_IDS: ContextVar[tuple[str, str] | None] = ContextVar("taskflow_request_ids", default=None)


def bind_request_ids(request_id: str, correlation_id: str) -> Token[tuple[str, str] | None]:
    """Put the ids on every log line of this context until `unbind_request_ids`."""
    return _REQUEST_IDS.set((request_id, correlation_id))


def unbind_request_ids(token: Token[tuple[str, str] | None]) -> None:
    _REQUEST_IDS.reset(token)


def add_request_ids(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A processor: the current request's ids, unless the line names its own."""
    ids = _REQUEST_IDS.get()
    if ids is not None:
        event_dict.setdefault("request_id", ids[0])
        event_dict.setdefault("correlation_id", ids[1])
    return event_dict


def configure_logging(level: str, *, json: bool = True) -> None:
    """Route stdlib and structlog output through one JSON (or console) renderer on stderr."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_ids,
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
        structlog.stdlib.ProcessorFormatter(
            # Lines from stdlib loggers (aiohttp, gunicorn, pymongo) name their logger, and
            # leave out the formatter's own bookkeeping (`_record`, `_from_structlog`).
            # A stdlib record's traceback rendered as text (not the repr of a traceback object).
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in SERVER_LOGGERS:
        server = logging.getLogger(name)
        if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
            server.addFilter(MalformedRequestFilter())


# The loggers aiohttp's HTTP parser reports through: its own, or gunicorn's in API_WORKERS mode.
SERVER_LOGGERS = ("aiohttp.server", "gunicorn.error")


class MalformedRequestFilter(logging.Filter):
    """A request the HTTP parser refused (a bad request line, an over-long header) is the
    client's fault: logged at INFO with its reason, never at ERROR with a traceback. Such
    requests need no login and have no rate limit, so they must not fill the logs or Sentry.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed_request from %s: %s (%s)"
            record.args = (remote, type(exc).__name__, str(exc.message)[:200])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


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
