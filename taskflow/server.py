"""The API process's application factory: the aiohttp app with its routes (taskflow/api/) and
the services it opens (the composition root, bootstrap.py). An entry point, like the CLI and the
projector process: the API's own modules never import the composition root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any

import pymongo
import structlog
from aiohttp import web
from pymongo.errors import PyMongoError
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    wait_exponential,
)

from taskflow import names
from taskflow.api import command_problems  # noqa: F401 - registers the problem mappers
from taskflow.api.audit_job_routes import AUDITS, Audits, setup_audit_job_routes
from taskflow.api.audit_routes import setup_audit_routes
from taskflow.api.auth_routes import setup_auth_routes
from taskflow.api.change_feeds import end_streams, setup_change_feed_routes, watch_logouts
from taskflow.api.console import setup_console_routes
from taskflow.api.cors import setup_cors
from taskflow.api.health import setup_health_routes
from taskflow.api.keys import (
    CHANGE_HUB,
    DENY_LIST,
    INDEXES_READY,
    SERVICES,
    SETTINGS,
    STREAM_TICKETS,
    TASK_READS,
)
from taskflow.api.middlewares import edge
from taskflow.api.observability import setup_metrics_route
from taskflow.api.openapi import setup_openapi_routes
from taskflow.api.rate_limits import RATE_LIMITS, RateLimits, add_rate_limit_headers, rate_limit
from taskflow.api.task_reads import setup_task_read_routes
from taskflow.api.task_writes import setup_task_write_routes
from taskflow.auditing import projection_statuses, verify_log_and_views
from taskflow.auth.denylist import DenyList
from taskflow.auth.stream_tickets import StreamTickets
from taskflow.bootstrap import ensure_indexes, open_services
from taskflow.privacy.keks import KekError
from taskflow.projections.feed_hub import open_change_hub
from taskflow.projections.task_queries import TaskReads
from taskflow.services import Services
from taskflow.settings import Settings
from taskflow.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
# How long shutdown waits for a background task (the deny-list copy, the index task) to stop.
SHUTDOWN_TASK_SECONDS = 10.0
# How long start-up waits for MongoDB to test the KEKs before leaving it to the index task.
KEK_CHECK_AT_START_SECONDS = 1.0


def create_app(settings: Settings) -> web.Application:
    """The API with every client opened and closed in `cleanup_ctx`."""
    # One edge middleware, then the rate limit only when it is on: every middleware is a
    # coroutine more per request (docs/benchmarks.md, "The API's per-request cost").
    app = web.Application(
        middlewares=[edge, rate_limit] if settings.rate_limit_enabled else [edge],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[INDEXES_READY] = asyncio.Event()
    if settings.rate_limit_enabled:
        app.on_response_prepare.append(add_rate_limit_headers)
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(_indexes)
    app.cleanup_ctx.append(_deny_list_copy)
    app.cleanup_ctx.append(_change_feeds)
    app.on_shutdown.append(end_streams)
    app.cleanup_ctx.append(_key_erasures)
    setup_routes(app)
    setup_cors(app, settings)
    return app


def setup_routes(app: web.Application) -> None:
    setup_health_routes(app)
    setup_metrics_route(app)
    setup_auth_routes(app)
    setup_change_feed_routes(app)  # before GET /api/tasks/{task_id}, which would match it
    # Reads first: aiohttp tries the resources under /api/tasks in registration order, so the
    # hot GET /api/tasks/{task_id} no longer resolves the write routes' patterns before its own.
    setup_task_read_routes(app)
    setup_task_write_routes(app)
    setup_audit_routes(app)
    app[AUDITS] = Audits(
        verify=lambda services, progress: verify_log_and_views(services, None, progress),
        statuses=projection_statuses,
    )
    setup_audit_job_routes(app)
    setup_openapi_routes(app)
    setup_console_routes(app)


async def _services(app: web.Application) -> AsyncIterator[None]:
    async with open_services(app[SETTINGS], operation_deadline=True) as services:
        app[SERVICES] = services
        app[TASK_READS] = TaskReads(
            services.redis,
            services.read_db,
            wait_seconds=services.settings.read_your_writes_timeout_seconds,
            allocated=services.store.allocated_position,
            hot=services.hot,
        )
        app[DENY_LIST] = DenyList(
            services.redis,
            services.db[names.DENIED_TOKENS],
            stale_limit=services.settings.auth_deny_copy_max_age_seconds,
            families=services.db[names.REFRESH_FAMILIES_REVOKED],
            family_window=services.settings.access_token_ttl_seconds,
            hot=services.hot,
        )
        app[RATE_LIMITS] = (
            RateLimits.create(services.settings, services.redis)
            if services.settings.rate_limit_enabled
            else None
        )
        await _check_keks_at_start(services)
        yield


async def _check_keks_at_start(services: Services) -> None:
    """Stop at start (KekError) when a KEK is missing or wrong; if MongoDB does not answer in
    a second, the index task tests them once it does (`_create_indexes`)."""
    try:
        with pymongo.timeout(KEK_CHECK_AT_START_SECONDS):
            await services.keys.check_keks()
    except PyMongoError as exc:
        log.warning("kek_check_deferred", error=repr(exc))


async def _key_erasures(app: web.Application) -> AsyncIterator[None]:
    """Forget erased users' data keys as soon as any process announces an erasure."""
    async with _in_background(app[SERVICES].keys.listen()):
        yield


async def _deny_list_copy(app: web.Application) -> AsyncIterator[None]:
    """Keep this process's copy of the deny list, for checking tokens while Redis is down."""
    async with _in_background(app[DENY_LIST].keep_copy(lambda: datetime.now(UTC))):
        yield


async def _change_feeds(app: web.Application) -> AsyncIterator[None]:
    """The change feeds' reader and the watch that ends logged-out streams, one of each."""
    services = app[SERVICES]
    settings = services.settings
    app[STREAM_TICKETS] = StreamTickets(services.redis, settings.stream_ticket_ttl_seconds)
    async with open_change_hub(
        services.redis,
        settings.redis_url,
        buffer=settings.change_feed_buffer,
        max_streams=settings.change_feed_max_streams,
    ) as hub:
        app[CHANGE_HUB] = hub
        watch = watch_logouts(hub, app[DENY_LIST], settings.change_feed_auth_check_seconds)
        async with _in_background(hub.run()), _in_background(watch):
            yield


async def _indexes(app: web.Application) -> AsyncIterator[None]:
    """Create indexes in the background so the API starts (not ready) while MongoDB is down."""
    stopping = asyncio.Event()
    async with _in_background(_create_indexes(app[SERVICES], app[INDEXES_READY], stopping)):
        yield
        stopping.set()


@contextlib.asynccontextmanager
async def _in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` as a task for the app's lifetime; at shutdown stop it before the clients close.

    A driver call can swallow a lone cancel() (taskflow/tasks.py), and a task still running when
    the MongoDB client closes leaves its connection's socket open (a ResourceWarning in the
    suite), so the task is cancelled until it has finished; shutdown waits 10 s at most.
    """
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TASK_SECONDS):
                await cancel_and_wait(task)


async def _create_indexes(services: Services, done: asyncio.Event, stopping: asyncio.Event) -> None:
    """Create the indexes (and check the KEKs) once MongoDB answers, retrying meanwhile
    (0.5 s, doubling to 10 s) for as long as the app runs."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda exc: not isinstance(exc, KekError)),
        wait=wait_exponential(multiplier=0.5, max=10),
        stop=lambda state: stopping.is_set(),
        before_sleep=lambda state: log.warning(
            "indexes_not_created",
            error=repr(state.outcome.exception() if state.outcome else None),
            retry_in=state.upcoming_sleep,
        ),
    )
    try:
        async for attempt in retrying:
            with attempt:
                await ensure_indexes(services)
                await services.keys.check_keks()
    except KekError as exc:
        # Found only now that MongoDB answers: stop as a failed start would have.
        log.error("kek_refused", error=str(exc))
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except RetryError:
        return  # the app is stopping
    done.set()
