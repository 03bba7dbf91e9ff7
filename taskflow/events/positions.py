"""The global position counter: Redis INCR, with every block of positions reserved in MongoDB.

A MongoDB `$inc` is not atomic on the local server (docs/design.md); Redis INCR is. Redis can lose
the counter, though, and finding the log's highest position again is a sorted read of the whole
log (on FerretDB a scan and a sort in Go: 7.8 s at 10,000 commits, over 60 s at 100,000). So
positions are handed out in blocks of `BLOCK`: before a position of block `b` is used, a
document `{_id: b}` is inserted into `position_blocks` (by whoever gets there first; a
duplicate key means it is there). Every position in the log therefore lies in a reserved
block, and re-seeding reads only the small blocks collection: the counter goes to the end of
the highest reserved block, and that block's positions nobody used are sealed with gaps, so
readers never wait at positions that will never be written. The log's unique `position` index
stays the final judge of each position: a writer whose position turns out taken takes another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pymongo import WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names
from taskflow.events.codec import commit_to_document, commit_to_json
from taskflow.events.gaps import make_gap
from taskflow.hot_redis import HotRedis, HotScript

# Positions per reserved block: one extra insert per BLOCK appends, and at most BLOCK gaps
# sealed by a re-seed (an `insert_many`, well under a second on FerretDB).
BLOCK = 1000
# The next block is reserved once a position within this many of the reserved range's end is taken.
AHEAD = BLOCK // 2
_DUPLICATE_KEY = 11000

# The next position, and whether its block is reserved: 0 no, 1 yes, 2 yes but the reserved
# range ends within ARGV[1] positions (time to reserve the next block). -1 until the counter is
# seeded since Redis last started (the mark is written only by a seed or after a reservation).
_TAKE = """
local reserved = redis.call('GET', KEYS[2])
if not reserved then return {-1, 0} end
local position = redis.call('INCR', KEYS[1])
reserved = tonumber(reserved)
if position > reserved then return {position, 0} end
if reserved - position < tonumber(ARGV[1]) then return {position, 2} end
return {position, 1}
"""
_NOT_RESERVED, _RESERVED_NEAR_END = 0, 2
_TAKE_SCRIPT = HotScript(_TAKE)

# Seed: raise the counter to at least ARGV[1] and the reserved mark to at least ARGV[2]; with
# ARGV[3] = '1', only if nobody seeded the counter meanwhile (then it returns 0).
_SEED = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
local reserved = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[2]) > reserved then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# After a reservation: raise the reserved mark to at least ARGV[1], but only in a seeded
# counter. A taker from before a Redis restart must not mark an unseeded counter seeded.
_RESERVED = """
local reserved = redis.call('GET', KEYS[1])
if reserved and tonumber(ARGV[1]) > tonumber(reserved) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

_KEYS = [names.POSITION_COUNTER, names.POSITION_RESERVED]


def block_of(position: int) -> int:
    """The block holding `position` (block 0 holds positions 1..BLOCK)."""
    return (position - 1) // BLOCK


def block_end(block: int) -> int:
    return (block + 1) * BLOCK


class PositionCounter:
    """Hands out global positions; the log's unique index is the final judge of each."""

    def __init__(
        self,
        redis: Redis,
        commits: AsyncCollection[dict[str, Any]],
        blocks: AsyncCollection[dict[str, Any]],
        clock: Callable[[], datetime],
        hint_ttl: int,
        hot: HotRedis,
    ) -> None:
        self._redis = redis
        self._hot = hot  # `take`, on every append: pipelined with the process's quick calls
        self._commits = commits
        # As durable as the commits whose positions they cover.
        self._blocks = blocks.with_options(write_concern=WriteConcern("majority", j=True))
        self._clock = clock
        self._hint_ttl = hint_ttl
        self._ahead: int | None = None  # a block to reserve after the current append
        # This process's reservations: the one in flight per block, and the highest stored.
        self._reserving: dict[int, asyncio.Task[None]] = {}
        self._reserved_here = -1
        self._seed = redis.register_script(_SEED)
        self._reserved = redis.register_script(_RESERVED)

    async def take(self) -> int:
        """The next position, its block reserved.

        Reserving inside an append would hold every later commit back while this one waits
        for that insert (readers apply the log in order), so the next block is reserved ahead,
        by `reserve_ahead` after an append that took a position near the end of the range.
        """
        position, reserved = await self._hot.evalsha(_TAKE_SCRIPT, _KEYS, [AHEAD])
        if position < 0:
            await self.reseed(unless_seeded=True)
            position, reserved = await self._hot.evalsha(_TAKE_SCRIPT, _KEYS, [AHEAD])
            if position < 0:
                raise RuntimeError("the position counter vanished again while it was re-seeded")
        if reserved == _NOT_RESERVED:
            await self.reserve(block_of(position))
        elif reserved == _RESERVED_NEAR_END:
            self._ahead = block_of(position) + 1
        return int(position)

    async def reserve_ahead(self) -> None:
        """Reserve the block after the reserved range if a take found it close (after an append:
        nobody waits for it). Appenders in several processes may all do it; one insert wins."""
        block, self._ahead = self._ahead, None
        if block is not None:
            await self.reserve(block)

    async def reserve(self, block: int) -> None:
        """Record in MongoDB that positions of `block` may be used, then tell Redis.

        Once per block in this process: the appends that cross into a block together (or near
        the reserved range's end together) wait for the same insert. Each insert of its own was
        a write transaction too, duplicate or not, and on SQLite's single writer the commits'
        insert then waited out busy sleeps behind them (docs/benchmarks.md, "FerretDB's
        writers"). Other processes still race with theirs; the unique `_id` decides.
        """
        if block <= self._reserved_here:
            return
        reserving = self._reserving.get(block)
        if reserving is None:
            reserving = asyncio.create_task(self._reserve(block))
            self._reserving[block] = reserving
            reserving.add_done_callback(lambda _: self._reserving.pop(block, None))
        # Shielded: one waiter cancelled (its request gone) does not cancel the others' insert.
        await asyncio.shield(reserving)

    async def _reserve(self, block: int) -> None:
        await self._store_block(block)
        await self._reserved(keys=[names.POSITION_RESERVED], args=[block_end(block)])
        self._reserved_here = max(self._reserved_here, block)

    async def reseed(self, *, unless_seeded: bool = False) -> None:
        """Move the counter past every position that may have been used (recovery only).

        Reads the highest reserved block (a collection of one small document per `BLOCK`
        positions), seals that block's unused positions, and raises the counter to its end.
        The seal comes first: while the counter is unseeded nobody takes a position, and a
        crash between the two leaves no position that readers would wait for one by one.
        `unless_seeded`: a taker that found the counter unseeded does nothing if another
        process has seeded it meanwhile (its sealing would only make writers retry).
        """
        flag = "1" if unless_seeded else "0"
        self._reserved_here = -1  # recovery trusts only what MongoDB holds now
        if unless_seeded and await self._redis.exists(names.POSITION_RESERVED):
            return
        highest = await self._highest_block()
        if highest is None:
            await self._seed(keys=_KEYS, args=[0, 0, flag])
            return
        if unless_seeded and await self._redis.exists(names.POSITION_RESERVED):
            return
        await self._seal_unused(highest)
        end = block_end(highest)
        await self._seed(keys=_KEYS, args=[end, end, flag])

    async def seed_bulk_load(self, highest: int) -> None:
        """What appends of positions 1..`highest` leave: their blocks reserved, the counter at
        `highest` (for a bulk loader that wrote those positions itself; the log must hold them)."""
        last = block_of(highest)
        if block_end(last) - highest < AHEAD:
            last += 1  # the append that took `highest` would have reserved the next block ahead
        for block in range(last + 1):
            await self._store_block(block)
        await self._seed(keys=_KEYS, args=[highest, block_end(last), "0"])

    async def _store_block(self, block: int) -> None:
        # A duplicate: another taker reserved it already; what matters is that it is stored.
        with contextlib.suppress(DuplicateKeyError):
            await self._blocks.insert_one({"_id": block})

    async def allocated_or_zero(self) -> int:
        return await self.allocated() or 0

    async def allocated(self) -> int | None:
        """The highest position handed out, or None when Redis lost the counter."""
        raw = await self._redis.get(names.POSITION_COUNTER)
        return None if raw is None else int(raw)

    async def _highest_block(self) -> int | None:
        last = await self._blocks.find({}).sort("_id", -1).limit(1).to_list()
        if last:
            return int(last[0]["_id"])
        # A log written before blocks were reserved: find its highest position once (the
        # sorted read this scheme avoids from now on) and reserve its block.
        if await self._commits.find_one({}, {"_id": 1}) is None:
            return None
        top = await self._commits.find({}, {"position": 1}).sort("position", -1).limit(1).to_list()
        block = block_of(int(top[0]["position"]))
        await self.reserve(block)
        return block

    async def _seal_unused(self, block: int) -> None:
        """A gap at every position of `block` nobody holds; the unique index skips held ones."""
        first = block * BLOCK + 1
        now = self._clock()
        gaps = [make_gap(p, now) for p in range(first, block_end(block) + 1)]
        held: set[int] = set()
        try:
            await self._commits.insert_many([commit_to_document(g) for g in gaps], ordered=False)
        except BulkWriteError as exc:
            others = [e for e in exc.details["writeErrors"] if e["code"] != _DUPLICATE_KEY]
            if others:
                raise
            held = {int(e["index"]) for e in exc.details["writeErrors"]}
        # Hinted like any settled position, so readers go on from Redis instead of waiting
        # out the gap timeout at each and then reading the log from MongoDB.
        async with self._redis.pipeline(transaction=False) as pipe:
            for index, gap in enumerate(gaps):
                if index not in held:
                    key = names.commit_hint_key(gap.position)
                    pipe.set(key, commit_to_json(gap), ex=self._hint_ttl)
            await pipe.execute()
