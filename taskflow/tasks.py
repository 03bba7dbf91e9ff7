"""Stopping background tasks reliably.

On Python 3.11 one `Task.cancel()` can be lost: `asyncio.wait_for`, which the MongoDB driver
uses around every socket read and write, swallows a cancellation that arrives just as the
awaited operation completes (CPython gh-86296, fixed in 3.12). The task then runs on, and
`task.cancel(); await task` waits for it forever: a rebuild hung that way in the scale
benchmark with its lease renewer asleep, and a projector told to stop did not.
"""

from __future__ import annotations

import asyncio
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it has finished; its own outcome (cancelled or not) is dropped."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: the task's failure was its own business, already logged
