"""Reads the log in global order without ever skipping a position that is later written.

Scheme (docs/event-log.md): every position is settled by exactly one document under the unique
`position` index, either the commit that took it or a gap. After inserting, the appender hands
the document to Redis as a hint keyed by position, so the tail of the log is read with one MGET
instead of a range query (a range query scans the whole collection on the local server). A
position without a hint is waited for; once it has been missing for `gap_timeout`, the reader
asks MongoDB, the authority: it streams the log from there in one pass, and seals a position
nobody wrote by inserting a gap under the unique index, so a late writer loses and retries with a
new position. Either the late commit or the seal wins, never both, so nothing is skipped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names
from taskflow.events.codec import (
    commit_from_document,
    commit_from_json,
    commit_to_document,
    commit_to_json,
    to_millis,
)
from taskflow.events.positions import PositionCounter
from taskflow.events.records import GAP_STREAM, Commit

HINT_CHUNK = 256
# A pass starts with an MGET this small and quadruples it while each comes back full: a
# projector woken for one or two new commits asks for a few keys, not 256 (an MGET of 256
# mostly absent keys costs about 2 ms of client and server time, docs/benchmarks.md).
FIRST_HINT_CHUNK = 4
_RAISE_SETTLED = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class LogReader:
    """Gap-free ordered reads of the log; one instance remembers how long each hole has waited."""

    def __init__(
        self,
        commits: AsyncCollection[dict[str, Any]],
        redis: Redis,
        counter: PositionCounter,
        *,
        gap_timeout: float,
        hint_ttl: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._commits = commits
        self._redis = redis
        self._counter = counter
        self._gap_timeout = gap_timeout
        self._hint_ttl = hint_ttl
        self._monotonic = monotonic
        self._missing_since: dict[int, float] = {}
        self._raise_settled = redis.register_script(_RAISE_SETTLED)

    async def read(self, after: int) -> AsyncIterator[Commit]:
        """Every settled commit (gaps included) after `after`, in order, up to the first hole."""
        position, chunk = after, FIRST_HINT_CHUNK
        while True:
            hinted = await self._hinted(position, chunk)
            for commit in hinted:
                yield commit
            if hinted:
                position = hinted[-1].position
                await self._settled(position)
                if len(hinted) == chunk:
                    chunk = min(chunk * 4, HINT_CHUNK)
                    continue
            found = 0
            async for commit in self._missing(position + 1):
                found += 1
                yield commit
                position = commit.position
            if not found:
                return
            await self._settled(position)

    async def head(self) -> int:
        """The highest position up to which every position is known to be settled."""
        raw = await self._redis.get(names.SETTLED_HEAD)
        position, chunk = (int(raw) if raw else 0), FIRST_HINT_CHUNK
        while hinted := await self._hinted(position, chunk):
            position = hinted[-1].position
            if len(hinted) < chunk:
                break
            chunk = min(chunk * 4, HINT_CHUNK)
        return position

    async def hint(self, commit: Commit) -> None:
        await self._redis.set(
            names.commit_hint_key(commit.position), commit_to_json(commit), ex=self._hint_ttl
        )

    async def _hinted(self, after: int, chunk: int) -> list[Commit]:
        """The hinted commits right after `after`, up to `chunk` of them and the first hole."""
        keys = [names.commit_hint_key(after + i) for i in range(1, chunk + 1)]
        commits: list[Commit] = []
        for raw in await self._redis.mget(keys):
            if raw is None:
                break
            commits.append(commit_from_json(raw))
        return commits

    async def _settled(self, position: int) -> None:
        for stale in [p for p in self._missing_since if p <= position]:
            del self._missing_since[stale]
        await self._raise_settled(keys=[names.SETTLED_HEAD], args=[position])

    async def _missing(self, position: int) -> AsyncIterator[Commit]:
        """What to do about a position with no hint; yields what the log settles there."""
        settled_raw, allocated = await self._redis.get(names.SETTLED_HEAD), None
        settled = int(settled_raw) if settled_raw else 0
        if settled < position:
            allocated = await self._counter.allocated()
            if allocated is not None and allocated < position:
                return  # nobody has taken this position yet: we are at the end
            since = self._missing_since.setdefault(position, self._monotonic())
            if self._monotonic() - since < self._gap_timeout:
                return  # probably in flight: a writer between taking it and writing it
        async for commit in self._from_log(position, allocated):
            yield commit

    async def _from_log(self, position: int, allocated: int | None) -> AsyncIterator[Commit]:
        """One streamed pass over the log from `position`, sealing `position` if nobody wrote it."""
        expected = position
        cursor = self._commits.find({"position": {"$gte": position}}).sort("position", 1)
        async with cursor.batch_size(1000) as docs:
            async for doc in docs:
                commit = commit_from_document(doc)
                if commit.position != expected:
                    if expected != position:
                        return  # a later hole: it gets its own grace period
                    yield await self._seal(position)
                    expected += 1
                    if commit.position != expected:
                        return
                yield commit
                expected += 1
        if expected == position and allocated is not None and position <= allocated:
            yield await self._seal(position)

    async def _seal(self, position: int) -> Commit:
        """Fill `position` with a gap, unless its writer got there first (the index decides)."""
        gap = make_gap(position, datetime.now(UTC))
        try:
            await self._commits.insert_one(commit_to_document(gap))
        except DuplicateKeyError:
            doc = await self._commits.find_one({"position": position})
            if doc is None:
                raise
            gap = commit_from_document(doc)
        await self.hint(gap)
        return gap


def make_gap(position: int, now: datetime) -> Commit:
    """The no-op document that settles a position no commit will ever use."""
    commit_id = f"~gap:{position}"
    return Commit(
        kind="gap",
        commit_id=commit_id,
        stream_id=GAP_STREAM,
        first_version=position,
        last_version=position,
        position=position,
        recorded_at=to_millis(now),
        idempotency=commit_id,
    )
