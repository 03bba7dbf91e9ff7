"""The projection driver: keeps one projection up to date under its lease, or stands by."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from taskflow.events.store import EventStore
from taskflow.metrics import PROJECTION_HEAD, PROJECTION_LAG_EVENTS
from taskflow.projections.lease import Lease
from taskflow.projections.runtime import LeaseLostError, Projection, one_pass
from taskflow.tasks import cancel_and_wait

log = structlog.get_logger(__name__)
# After a failed pass the driver waits this long, doubling with each failure in a row up to
# BACKOFF_MAX, so a projection whose batches fail at once (a server down, a refused write) does
# not spin; the lease keeps being renewed meanwhile by its own task.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
# A standby re-reads the lease at least this often, and sleeps at least this long.
STANDBY_MIN_SECONDS = 0.05


class ProjectionDriver:
    """Keeps one projection up to date while this process holds its lease; stands by otherwise.

    While it holds the lease, a renewal task runs beside the passes for the whole time it is
    held, so failing passes never starve the renewal. A pass refused by the projection's fence
    makes it ask the lease at once: superseded, it stops holding and stands by. A standby sleeps
    until the holder's lease would lapse and then tries to take it, so a paused or crashed
    holder is replaced within the lease's TTL.
    """

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
        self._lost = asyncio.Event()  # set when a renewal or a refused write found a newer term
        self._failures = 0
        self._lag_reported = 0.0

    async def run(self) -> None:
        await self._retrying(self.projection.setup)
        try:
            while not self.stopping.is_set():
                if not await self._acquire():
                    await self._stand_by()
                    continue
                await self._hold()
        finally:
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def _acquire(self) -> bool:
        try:
            if not await self.lease.acquire():
                return False
        except Exception as exc:  # a blip: the next attempt, a third of the TTL on, decides
            log.warning("lease_acquire_failed", projection=self.projection.name, error=repr(exc))
            self.lease.held_until = None
            return False
        self._lost.clear()
        log.info("lease_acquired", projection=self.projection.name, term=self.lease.term)
        return True

    async def _stand_by(self) -> None:
        """Sleep until the holder's lease would lapse (re-reading it every third of the TTL)."""
        lapse = self.lease.seconds_until_lapse()
        seconds = self._ttl / 3 if lapse is None else min(lapse, self._ttl / 3)
        await self._sleep(max(seconds, STANDBY_MIN_SECONDS), self.stopping)

    async def _hold(self) -> None:
        """Fence, then apply pass after pass until the lease is lost or the process stops."""
        renewer = asyncio.create_task(self._renew_while_held())
        fenced = False
        try:
            while self._holding() and (term := self.lease.term) is not None:
                self.wake.clear()
                try:
                    if not fenced:
                        await self.projection.fence(term)
                        fenced = True
                    result = await one_pass(
                        self.store, self.projection, term=term, keep_going=self._holding
                    )
                    if result.exhausted:
                        await self.projection.caught_up(result.position, term)
                    await self._report_lag()
                except LeaseLostError as exc:
                    # Refused by the fence: ask the lease now rather than at the next renewal.
                    log.warning("write_refused", projection=self.projection.name, error=str(exc))
                    if not await self._still_held():
                        break
                    fenced = False  # still ours (a fence lost with Redis's data): raise it again
                    await self._back_off("projection_refused")
                    continue
                except Exception as exc:  # a server blip, a stale cache: back off, retry
                    await self._back_off("projection_failed", error=repr(exc))
                    continue
                self._failures = 0
                await self._pace()
                await self._pause(self._poll)
        finally:
            await cancel_and_wait(renewer)  # not a lone cancel(): see taskflow/tasks.py
        if self._lost.is_set():
            self.lease.term = None

    async def _still_held(self) -> bool:
        """Whether no newer term exists (renewing the lease if so); False marks it lost."""
        try:
            if await self.lease.renew():
                return True
        except Exception as exc:  # cannot tell: keep holding, the next renewal decides
            log.warning("lease_renewal_failed", error=repr(exc))
            return True
        if not self._lost.is_set():
            # From here on no pass goes on to a next batch and every rest ends: a standby.
            log.warning("lease_lost", projection=self.projection.name)
            self._lost.set()
        return False

    async def _back_off(self, event: str, **details: str) -> None:
        self._failures += 1
        seconds = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        seconds *= random.uniform(0.5, 1.0)  # noqa: S311 - spreading retries, not security
        log.warning(event, projection=self.projection.name, failures=self._failures, **details)
        await self._sleep(seconds, self._lost)

    async def _report_lag(self) -> None:
        """Refresh the lag gauges, at most once a second (it costs an MGET of hints)."""
        if time.monotonic() - self._lag_reported < 1.0:
            return
        self._lag_reported = time.monotonic()
        head, position = await self.store.head_position(), await self.projection.position()
        PROJECTION_HEAD.set(head)
        PROJECTION_LAG_EVENTS.labels(self.projection.name).set(max(head - position, 0))

    def _holding(self) -> bool:
        return not (self.stopping.is_set() or self._lost.is_set())

    async def _renew_while_held(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            if not await self._still_held():
                self.wake.set()
                return

    async def _pace(self) -> None:
        """Let a paced projection's wake-ups gather (they stay set) for `pace_seconds` before
        its next pass; the rest ends at once if the lease is lost meanwhile. (A projection
        whose writes cost the server time that requests need paces those writes itself:
        mongo_views.py, duty_cycle.py.)"""
        if self.projection.pace_seconds > 0:
            await self._sleep(self.projection.pace_seconds, self._lost)

    async def _pause(self, seconds: float) -> None:
        await self._sleep(seconds, self.wake)

    async def _sleep(self, seconds: float, until: asyncio.Event) -> None:
        """Up to `seconds`, less if `until` or `stopping` is set meanwhile."""
        waiters = {asyncio.create_task(event.wait()) for event in (until, self.stopping)}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` until it succeeds (a server down at start-up), backing off meanwhile."""
        while not self.stopping.is_set():
            try:
                await step()
                self._failures = 0
                return
            except Exception as exc:
                await self._back_off("projection_setup_failed", error=repr(exc))
