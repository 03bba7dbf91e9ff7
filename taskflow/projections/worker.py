"""The projector worker process (`taskflow project`): leases, wake-ups, polling, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from prometheus_async.aio.web import start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names
from taskflow.bootstrap import Services, open_services
from taskflow.events.store import EventStore
from taskflow.metrics import PROJECTION_HEAD, PROJECTION_LAG_EVENTS
from taskflow.projections.catalog import projections
from taskflow.projections.lease import Lease
from taskflow.projections.runtime import LeaseLostError, Projection, run_until_caught_up
from taskflow.settings import Settings
from taskflow.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
# The longest a pass of a projection with a busy share below 1 goes on before it rests.
MAX_PASS_SECONDS = 2.0


class ProjectionDriver:
    """Keeps one projection up to date while this process holds its lease."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        lease: Lease,
        *,
        lease_ttl: float,
        poll_interval: float,
        stopping: asyncio.Event,
    ) -> None:
        self.store = store
        self.projection = projection
        self.lease = lease
        self.wake = asyncio.Event()
        self._ttl = lease_ttl
        self._poll = poll_interval
        self.stopping = stopping
        self._lost = False
        self._lag_reported = 0.0

    async def run(self) -> None:
        await self.projection.setup()
        try:
            while not self.stopping.is_set():
                if self.lease.term is None and not await self._acquire():
                    await self._pause(self._ttl / 3)
                    continue
                await self._hold()
        finally:
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def _acquire(self) -> bool:
        if not await self.lease.acquire():
            return False
        assert self.lease.term is not None
        await self.projection.fence(self.lease.term)
        self._lost = False
        log.info("lease_acquired", projection=self.projection.name, term=self.lease.term)
        return True

    async def _hold(self) -> None:
        """Apply while the lease lasts; a renewal task runs beside the batches."""
        renewer = asyncio.create_task(self._renew_forever())
        try:
            while not (self.stopping.is_set() or self._lost):
                self.wake.clear()
                started = time.monotonic()
                await run_until_caught_up(
                    self.store,
                    self.projection,
                    term=self.lease.term or 0,
                    keep_going=self._keep_going_since(started),
                )
                await self._report_lag()
                await self._pace(time.monotonic() - started)
                await self._pause(self._poll)
        except LeaseLostError:
            log.warning("lease_lost", projection=self.projection.name)
        except Exception as exc:  # a server blip: back off, keep the lease, retry from checkpoint
            log.exception("projection_failed", projection=self.projection.name, error=repr(exc))
            await self._pause(min(self._ttl / 3, 1.0))
        finally:
            await cancel_and_wait(renewer)  # not a lone cancel(): see taskflow/tasks.py
        if self._lost or self.lease.term is None:
            self.lease.term = None

    async def _report_lag(self) -> None:
        """Refresh the lag gauges, at most once a second (it costs an MGET of hints)."""
        if time.monotonic() - self._lag_reported < 1.0:
            return
        self._lag_reported = time.monotonic()
        head, position = await self.store.head_position(), await self.projection.position()
        PROJECTION_HEAD.set(head)
        PROJECTION_LAG_EVENTS.labels(self.projection.name).set(max(head - position, 0))

    def _holding(self) -> bool:
        return not (self.stopping.is_set() or self._lost)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                if not await self.lease.renew():
                    self._lost = True
                    self.wake.set()
                    return
            except Exception as exc:  # a blip: the next renewal, or the lease's expiry, decides
                log.warning("lease_renewal_failed", error=repr(exc))

    def _keep_going_since(self, started: float) -> Callable[[], bool]:
        """Whether a pass begun at `started` may go on to its next batch: while the lease is
        held, and for a projection with a busy share below 1 for `MAX_PASS_SECONDS` at most, so
        it rests between turns even while working off a backlog."""

        def keep_going() -> bool:
            if not self._holding():
                return False
            limited = self.projection.busy_share < 1
            return not limited or time.monotonic() - started < MAX_PASS_SECONDS

        return keep_going

    async def _pace(self, busy: float) -> None:
        """Let a paced projection's wake-ups gather (they stay set) until its next pass: at
        least `pace_seconds`, and long enough after a pass of `busy` seconds that its passes
        take no more than `busy_share` of the time."""
        share = self.projection.busy_share
        rest = max(self.projection.pace_seconds, busy * (1 - share) / share)
        if rest > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rest):
                    await self.stopping.wait()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()


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


async def read_model_versions(redis: Redis) -> set[int]:
    """The read-model versions to maintain: the active one, and one being rebuilt, if any."""
    active, building = await redis.mget([names.READ_MODEL_ACTIVE, names.READ_MODEL_NEXT])
    versions = {int(active) if active else 1}
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
        self._versions = versions or (lambda: read_model_versions(services.redis))
        self._holder = holder
        self._stopping = stopping
        self.drivers: list[ProjectionDriver] = []
        self._groups: dict[int, tuple[asyncio.Event, list[asyncio.Task[None]]]] = {}

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(RedisError):
                    self._follow(await self._versions())
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
            for projection in projections(self._services, version, settings.projector_read_models)
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
        for driver in [d for d in self.drivers if d.stopping is retired]:
            driver.wake.set()
            self.drivers.remove(driver)
        await asyncio.gather(*tasks, return_exceptions=True)
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
