"""The global position counter: Redis INCR, re-seeded from the log when Redis lost it.

A MongoDB `$inc` is not atomic on the local server (DESIGN.md §3); Redis INCR is. A duplicate
position (a counter that fell behind) is still caught by the log's unique index on `position`.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from taskflow import names

# Refuses to hand out a position until the counter has been seeded since Redis last started.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
return redis.call('INCR', KEYS[1])
"""

# Raise the counter to at least ARGV[1] (never lower it) and mark it seeded.
_SEED = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], '1')
return 1
"""


class PositionCounter:
    """Hands out global positions; the log's unique index is the final judge of each."""

    def __init__(self, redis: Redis, commits: AsyncCollection[dict[str, Any]]) -> None:
        self._redis = redis
        self._commits = commits
        self._take = redis.register_script(_TAKE)
        self._seed = redis.register_script(_SEED)

    async def take(self) -> int:
        keys = [names.POSITION_COUNTER, names.POSITION_SEEDED]
        position = int(await self._take(keys=keys))
        if position < 0:
            await self.reseed()
            position = int(await self._take(keys=keys))
        return position

    async def reseed(self) -> None:
        """Raise the counter to the log's highest position (one sorted read; recovery only)."""
        last = await self._commits.find({}, {"position": 1}).sort("position", -1).limit(1).to_list()
        highest = int(last[0]["position"]) if last else 0
        await self._seed(keys=[names.POSITION_COUNTER, names.POSITION_SEEDED], args=[highest])

    async def allocated_or_zero(self) -> int:
        return await self.allocated() or 0

    async def allocated(self) -> int | None:
        """The highest position handed out, or None when Redis lost the counter."""
        raw = await self._redis.get(names.POSITION_COUNTER)
        return None if raw is None else int(raw)
