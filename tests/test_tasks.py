"""Stopping a task whose first cancellation is swallowed (as asyncio.wait_for does on 3.11)."""

from __future__ import annotations

import asyncio

from taskflow.tasks import cancel_and_wait


async def _swallows_one_cancel(swallowed: asyncio.Event) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        swallowed.set()  # what wait_for does when the cancel races the operation's completion
    await asyncio.sleep(30)


async def test_a_task_that_swallowed_a_cancel_is_still_stopped() -> None:
    swallowed = asyncio.Event()
    task = asyncio.create_task(_swallows_one_cancel(swallowed))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_a_lone_cancel_does_not_stop_it() -> None:
    """Why `cancel_and_wait` exists: `cancel(); await task` would wait the full 30 s here."""
    swallowed = asyncio.Event()
    task = asyncio.create_task(_swallows_one_cancel(swallowed))
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    assert swallowed.is_set()
    assert not done
    await cancel_and_wait(task)
