"""One process's commit inserts, one at a time and lowest position first.

FerretDB on SQLite has a single writer and retries a blocked one with sleeps of up to 100 ms, so
concurrent inserts add no throughput there and stretch the tail (docs/benchmarks.md, "FerretDB's
writers"); `Settings.serial_log_inserts` queues them in the process instead. Readers apply
the log in position order, so a commit can show only once every lower position is stored: the
queue is therefore ordered by position, not by arrival, and an insert never waits behind one
that readers would wait for after it. Positions are still taken before queueing, so the Redis
round trip of the next append overlaps the insert in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator


class OrderedSlot:
    """A lock handed to the waiter with the lowest position."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    @contextlib.asynccontextmanager
    async def held(self, position: int) -> AsyncIterator[None]:
        await self._acquire(position)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, position: int) -> None:
        if not self._held and not self._waiting:
            self._held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (position, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed over just as it was cancelled: pass it on
            else:
                self._waiting.remove((position, turn))
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        """Hand the slot to the lowest waiting position, or free it."""
        while self._waiting:
            _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)  # still held: now by that waiter
                return
        self._held = False
