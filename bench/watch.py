"""Watches Redis views until they show a version: one pipelined poll a millisecond for all."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from types import TracebackType

import orjson
from redis.asyncio import Redis

POLL_SECONDS = 0.001
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, eq=False)  # told apart by identity
class _Waiter:
    key: str
    field: str
    version: int
    seen: asyncio.Future[float]


class ViewWatch:
    """Polls every awaited `HGET key field` in one pipeline about every millisecond, so the
    polling load stays the same however many commands are waiting (it shares the CPU)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiting: list[_Waiter] = []
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ViewWatch:
        self._poller = asyncio.create_task(self._poll())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._poller is not None
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller

    async def visible(self, key: str, field: str, version: int) -> float:
        """When (`perf_counter()`) the view was first seen at `version` or later."""
        seen: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiter(key, field, version, seen))
        async with asyncio.timeout(TIMEOUT_SECONDS):
            return await seen

    async def _poll(self) -> None:
        while True:
            if self._waiting:
                await self._check(list(self._waiting))
            await asyncio.sleep(POLL_SECONDS)

    async def _check(self, waiters: list[_Waiter]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for waiter in waiters:
                pipe.hget(waiter.key, waiter.field)
            views = await pipe.execute()
        now = time.perf_counter()
        for waiter, raw in zip(waiters, views, strict=True):
            if raw is not None and orjson.loads(raw)["version"] >= waiter.version:
                self._waiting.remove(waiter)
                if not waiter.seen.done():
                    waiter.seen.set_result(now)
