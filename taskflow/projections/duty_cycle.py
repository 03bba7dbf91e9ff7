"""A series of server calls kept to a share of the wall time, by resting after each one.

The MongoDB views' writes cost FerretDB about a millisecond of CPU per replaced view. Written
back to back, a pass's hundreds of replaces kept one of FerretDB's cores busy for up to two
seconds, and every append meanwhile waited behind them: the Redis views' lag p99 rose during
those bursts and fell between them. Resting after each short command in proportion to how
long it took spreads the same work evenly: the server is never busy with them for more than
one command at a time (docs/benchmarks.md, "Write-to-visible latency").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# A call longer than this (a stalled server, a process paused mid-call: SIGSTOP, a stalled VM)
# earns no more rest than one this long: the rest after a pause would otherwise be a multiple
# of the pause.
LONGEST_COUNTED_SECONDS = 2.0


class DutyCycle:
    """After each call of t seconds, rest t * (1 - share) / share: calls take at most `share`."""

    def __init__(
        self,
        share: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("a share of the time is above 0 and at most 1")
        self.share = share
        self._clock = clock
        self._sleep = sleep

    async def run(self, call: Awaitable[T]) -> T:
        """`call`'s result, once it is done and the rest it earned is over (none if it failed:
        the caller's error handling, not a rest, comes next)."""
        started = self._clock()
        result = await call
        busy = min(self._clock() - started, LONGEST_COUNTED_SECONDS)
        rest = busy * (1 - self.share) / self.share
        if rest > 0:
            await self._sleep(rest)
        return result
