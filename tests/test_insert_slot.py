"""The ordered insert slot: one holder at a time, handed to the lowest waiting position."""

from __future__ import annotations

import asyncio

import pytest

from taskflow.events.insert_slot import OrderedSlot


async def test_the_slot_goes_to_the_lowest_waiting_position_whatever_order_they_came_in() -> None:
    slot, order = OrderedSlot(), []
    first_in = asyncio.Event()

    async def insert(position: int) -> None:
        async with slot.held(position):
            order.append(position)
            first_in.set()
            await asyncio.sleep(0.01)

    holder = asyncio.create_task(insert(50))
    await first_in.wait()
    waiters = [asyncio.create_task(insert(p)) for p in (9, 7, 8, 3)]
    await asyncio.gather(holder, *waiters)

    assert order == [50, 3, 7, 8, 9]


async def test_a_cancelled_waiter_neither_holds_nor_blocks_the_slot() -> None:
    slot, order = OrderedSlot(), []
    release = asyncio.Event()

    async def insert(position: int, wait: asyncio.Event | None = None) -> None:
        async with slot.held(position):
            order.append(position)
            if wait is not None:
                await wait.wait()

    holder = asyncio.create_task(insert(1, release))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(insert(2))
    later = asyncio.create_task(insert(3))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.gather(holder, later)
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    assert order == [1, 3]
    async with asyncio.timeout(1):  # free again
        async with slot.held(4):
            pass
