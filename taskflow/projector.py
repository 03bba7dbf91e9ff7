"""The projector process (`taskflow project`): one driver per projection, for every read-model
version it should maintain and for the log's own projections; wake-ups, metrics, shutdown.

An entry point, like the CLI and the API's app factory: it builds its projections from the
composition root (bootstrap.py) and hands them to the drivers (projections/driver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable

import structlog
from prometheus_async.aio.web import start_http_server
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names
from taskflow.bootstrap import log_projections, open_services, projections
from taskflow.metrics import forget_projection_metrics
from taskflow.projections.driver import ProjectionDriver
from taskflow.projections.lease import Lease
from taskflow.projections.read_model_versions import active_version
from taskflow.services import Services
from taskflow.settings import Settings
from taskflow.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
# The group of the log's own projections (catalog.log_projections: the log seal), kept beside
# the read-model versions (which start at 1) for as long as the supervisor runs.
LOG_GROUP = 0


async def listen_for_appends(redis: Redis, drivers: list[ProjectionDriver]) -> None:
    """Wake every driver when an append is announced; polling covers lost messages."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(names.WAKE_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        for driver in drivers:
                            driver.wake.set()
        except RedisError as exc:
            log.warning("wake_channel_lost", error=repr(exc))
            await asyncio.sleep(1)


async def read_model_versions(services: Services) -> set[int]:
    """The read-model versions to maintain: the active one, and one being rebuilt, if any."""
    versions = {await active_version(services.redis, services.views_db)}
    building = await services.redis.get(names.READ_MODEL_NEXT)
    if building:
        versions.add(int(building))
    return versions


class Supervisor:
    """Runs one group of drivers per read-model version it should maintain; follows switches."""

    def __init__(
        self,
        services: Services,
        holder: str,
        stopping: asyncio.Event,
        versions: Callable[[], Awaitable[set[int]]] | None = None,
    ) -> None:
        self._services = services
        self._versions = versions or (lambda: read_model_versions(services))
        self._holder = holder
        self._stopping = stopping
        self.drivers: list[ProjectionDriver] = []
        self._groups: dict[int, tuple[asyncio.Event, list[asyncio.Task[None]]]] = {}

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(RedisError, PyMongoError):
                    self._follow(await self._versions() | {LOG_GROUP})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._stopping.wait()
        finally:
            for version in list(self._groups):
                await self._retire(version)

    def _follow(self, wanted: set[int]) -> None:
        for version in wanted - self._groups.keys():
            self._start(version)
        for version in self._groups.keys() - wanted:
            asyncio.create_task(self._retire(version))  # noqa: RUF006 - awaited via its drivers

    def _start(self, version: int) -> None:
        settings = self._services.settings
        retired = asyncio.Event()
        drivers = [
            ProjectionDriver(
                self._services.store,
                projection,
                Lease(
                    self._services.db[names.LEASES],
                    projection.name,
                    self._holder,
                    ttl=settings.lease_ttl_seconds,
                ),
                lease_ttl=settings.lease_ttl_seconds,
                poll_interval=settings.projector_poll_seconds,
                stopping=retired,
            )
            for projection in (
                log_projections(self._services)
                if version == LOG_GROUP
                else projections(self._services, version, settings.projector_read_models)
            )
        ]
        self.drivers.extend(drivers)
        self._groups[version] = (retired, [asyncio.create_task(d.run()) for d in drivers])
        log.info("read_model_version_started", version=version)

    async def _retire(self, version: int) -> None:
        """Stop a version's drivers after their current batch; they release their leases."""
        group = self._groups.pop(version, None)
        if group is None:
            return
        retired, tasks = group
        retired.set()
        names_ = []
        for driver in [d for d in self.drivers if d.stopping is retired]:
            driver.wake.set()
            self.drivers.remove(driver)
            names_.append(driver.projection.name)
        await asyncio.gather(*tasks, return_exceptions=True)
        forget_projection_metrics(names_)  # a retired version's series would stay at their last
        log.info("read_model_version_stopped", version=version)


async def serve_metrics(settings: Settings) -> int:
    """Serve /metrics on the first free port from METRICS_PORT on; the port taken.

    Two projectors on one host would otherwise collide on the default port, and the second
    would die at start. No free port in the range is an error naming the range.
    """
    first = settings.metrics_port
    last = min(first + settings.metrics_port_attempts - 1, 65535)
    for port in range(first, last + 1):
        try:
            await start_http_server(addr=settings.http_host, port=port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        log.info("metrics_listening", host=settings.http_host, port=port)
        return port
    raise RuntimeError(
        f"no free metrics port in {first}-{last} on {settings.http_host}: set METRICS_PORT "
        "(0 disables the metrics listener) or METRICS_PORT_ATTEMPTS"
    )


async def run_worker(settings: Settings) -> None:
    """Run the projections until SIGTERM/SIGINT, then finish the batch and release the leases."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if settings.metrics_port:
        await serve_metrics(settings)
    async with open_services(settings) as services:
        await services.keys.check_keks()  # a missing or wrong KEK stops the process here
        await services.store.ensure_indexes()
        supervisor = Supervisor(services, holder, stopping)
        listener = asyncio.create_task(listen_for_appends(services.redis, supervisor.drivers))
        # The projector decrypts what it projects: erased users' keys are dropped on the spot.
        erasures = asyncio.create_task(services.keys.listen())
        log.info("projector_started", holder=holder)
        try:
            await supervisor.run()
        finally:
            await cancel_and_wait(erasures)
            await cancel_and_wait(listener)
    log.info("projector_stopped", holder=holder)
