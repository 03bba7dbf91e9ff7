"""Reads the log in global order without ever skipping a position that is later written.

Scheme (docs/event-log.md): every position is settled by exactly one document under the unique
`position` index, either the commit that took it or a gap. After inserting, the appender hands
the document to Redis as a hint keyed by position, so the tail of the log is read from Redis (one
script a pass: `_READ_TAIL`) instead of by a range query (which scans the whole collection on the
local server). A position without a hint is waited for; once it has been missing for
`gap_timeout`, the reader seals it by inserting a gap under the unique index (a duplicate key
means its writer got there first), so a late writer loses and retries with a new position.
Either the late commit or the seal wins, never both, so nothing is skipped. MongoDB stays the
authority: without hints (they expire, Redis can lose them) the reader streams the log from
there in one pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import DuplicateKeyError

from taskflow import names
from taskflow.events.codec import (
    commit_from_document,
    commit_from_json,
    commit_to_document,
    commit_to_json,
)
from taskflow.events.gaps import make_gap
from taskflow.events.positions import PositionCounter
from taskflow.events.records import Commit
from taskflow.hot_redis import HotRedis, HotScript
from taskflow.tasks import batches, read_ahead

HINT_CHUNK = 256
# A pass starts by asking for this many hints and quadruples it while each answer is full: a
# projector woken for one or two new commits asks for a few keys, not 256 (256 mostly absent
# keys cost about 2 ms of client and server time, docs/benchmarks.md).
FIRST_HINT_CHUNK = 4
# Reading MongoDB: documents per batch, batches fetched ahead of the consumer, and how many
# out-of-order documents a pass keeps before it gives up at a hole.
READ_BATCH = 1000
READ_AHEAD_BATCHES = 2
REORDER_LIMIT = 10_000
# The auditor's scan passes over a hole once this many later documents wait (in_position_order).
SCAN_REORDER_LIMIT = 50_000

Document = dict[str, Any]
# A pass's read of the tail, in one round trip: the hints of the positions after ARGV[1]
# (KEYS[3] on, in order) up to the first one missing; the settled head (KEYS[1]) raised to the
# last position read, if higher; and the position counter (KEYS[2], nil when Redis lost it).
# Hints, head and counter are read in one atomic step, so a hint missing here is missing: with
# an MGET before a separate settle call, a commit announced between the two (and settled by
# another reader meanwhile) looked like one whose hint had expired, and the pass streamed the
# log from MongoDB for it (a whole-collection scan on FerretDB).
_READ_TAIL = """
local hints = {}
for i = 3, #KEYS do
  local hint = redis.call('GET', KEYS[i])
  if not hint then break end
  hints[#hints + 1] = hint
end
local settled = tonumber(redis.call('GET', KEYS[1]) or '0')
local read_to = tonumber(ARGV[1]) + #hints
if #hints > 0 and read_to > settled then
  settled = read_to
  redis.call('SET', KEYS[1], read_to)
end
return {settled, redis.call('GET', KEYS[2]), hints}
"""
# Raise the settled head to ARGV[1] (after positions read from MongoDB or sealed).
_SETTLE = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


class LogReader:
    """Gap-free ordered reads of the log; one instance remembers how long each hole has waited."""

    def __init__(
        self,
        commits: AsyncCollection[dict[str, Any]],
        hot: HotRedis,
        counter: PositionCounter,
        *,
        gap_timeout: float,
        hint_ttl: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._commits = commits
        # Every Redis call here is quick (the longest reads HINT_CHUNK hints): they go
        # pipelined on the process's own connection, packed by hiredis (hot_redis.py); with the
        # views' calls there too, the Redis views' projector took 30 % less CPU per command
        # than through redis-py's pool (docs/benchmarks.md, "Write-to-visible latency").
        self._hot = hot
        self._counter = counter
        self._gap_timeout = gap_timeout
        self._hint_ttl = hint_ttl
        self._monotonic = monotonic
        self._missing_since: dict[int, float] = {}
        self._read_tail = HotScript(_READ_TAIL)
        self._settle = HotScript(_SETTLE)

    async def read(self, after: int) -> AsyncGenerator[Commit, None]:
        """Every settled commit (gaps included) after `after`, in order, up to the first hole."""
        position, chunk = after, FIRST_HINT_CHUNK
        while True:
            # Only positions this pass reads are recorded settled (`after` is the caller's: it
            # need not have been read here).
            hinted, settled, allocated = await self._tail(position, chunk)
            for commit in hinted:
                yield commit
            if hinted:
                position = hinted[-1].position
            if len(hinted) == chunk:
                chunk = min(chunk * 4, HINT_CHUNK)
                continue
            found = 0
            # Closed at once when the caller stops early: a cursor left reading a collection
            # that is then dropped crashes FerretDB (SIGBUS in SQLite), besides holding it.
            async with contextlib.aclosing(
                self._missing(position + 1, settled, allocated)
            ) as missing:
                async for commit in missing:
                    found += 1
                    yield commit
                    position = commit.position
            if not found:
                return
            await self._settled(position)

    async def head(self) -> int:
        """The highest position up to which every position is known to be settled."""
        raw = await self._hot.execute("GET", names.SETTLED_HEAD)
        position, chunk = (int(raw) if raw else 0), FIRST_HINT_CHUNK
        while hinted := await self._hinted(position, chunk):
            position = hinted[-1].position
            if len(hinted) < chunk:
                break
            chunk = min(chunk * 4, HINT_CHUNK)
        return position

    async def hint(self, commit: Commit) -> None:
        key = names.commit_hint_key(commit.position)
        await self._hot.execute("SET", key, commit_to_json(commit), "EX", self._hint_ttl)

    async def _hinted(self, after: int, chunk: int) -> list[Commit]:
        """The hinted commits right after `after`, up to `chunk` of them and the first hole."""
        commits: list[Commit] = []
        for raw in await self._hot.execute("MGET", *_hint_keys(after, chunk)):
            if raw is None:
                break
            commits.append(commit_from_json(raw))
        return commits

    async def _tail(self, after: int, chunk: int) -> tuple[list[Commit], int, int | None]:
        """The hinted commits right after `after` (up to `chunk`, and the first hole), recorded
        settled; the settled head and the position counter (None: Redis lost it) as they stand
        then, all in one script."""
        keys = [names.SETTLED_HEAD, names.POSITION_COUNTER, *_hint_keys(after, chunk)]
        settled, allocated, hints = await self._hot.evalsha(self._read_tail, keys, [after])
        commits = [commit_from_json(raw) for raw in hints]
        if commits:
            self._forget_missing_to(commits[-1].position)
        return commits, int(settled), None if allocated is None else int(allocated)

    async def _settled(self, position: int) -> None:
        """Record that everything up to `position` is settled."""
        self._forget_missing_to(position)
        await self._hot.evalsha(self._settle, [names.SETTLED_HEAD], [position])

    def _forget_missing_to(self, position: int) -> None:
        for stale in [p for p in self._missing_since if p <= position]:
            del self._missing_since[stale]

    async def _missing(
        self, position: int, settled: int, allocated: int | None
    ) -> AsyncGenerator[Commit, None]:
        """What to do about a position with no hint, given the settled head and the position
        counter read just before; yields what the log settles there."""
        if settled < position:
            if allocated is None:
                # Redis lost the counter: re-seeding finds the positions that may be in use
                # (and seals its last block's unused ones) from MongoDB's small blocks list.
                await self._counter.reseed()
                allocated = await self._counter.allocated_or_zero()
            if allocated < position:
                return  # nobody has taken this position yet: we are at the end
            since = self._missing_since.setdefault(position, self._monotonic())
            if self._monotonic() - since < self._gap_timeout:
                return  # probably in flight: a writer between taking it and writing it
            gap = await self._seal(position)
            if gap is not None:
                # Nobody wrote it: what follows is still read from the hints. Streaming the log
                # here would cost a whole-collection scan per sealed hole on FerretDB.
                yield gap
                return
        # No hint, yet the position is held (hints expire, Redis can lose them): MongoDB.
        async with contextlib.aclosing(self._from_log(position)) as commits:
            async for commit in commits:
                yield commit

    async def _from_log(self, position: int) -> AsyncGenerator[Commit, None]:
        """The settled run of the log from `position`, from MongoDB in one streamed pass.

        No server-side sort: FerretDB sorts a whole collection in Go before sending the first
        document, so the documents come in storage order (insertion order there, index order on
        MongoDB) and a small buffer puts them back in position order. A later hole ends the run
        (it gets its own grace period). Storage order strays from position order only by what
        is written while a position waits for its writer or its seal, a few hundred documents;
        if the buffer still outgrows `REORDER_LIMIT`, the rest of the run is read sorted.
        """
        expected = position
        waiting: dict[int, dict[str, Any]] = {}
        cursor = self._commits.find({"position": {"$gte": position}}).batch_size(READ_BATCH)
        async with contextlib.aclosing(documents_ahead(cursor)) as docs:
            async for doc in docs:
                found = int(doc["position"])
                if found != expected:
                    waiting[found] = doc
                    if len(waiting) > REORDER_LIMIT:
                        break
                    continue
                yield commit_from_document(doc)
                expected += 1
                while expected in waiting:
                    yield commit_from_document(waiting.pop(expected))
                    expected += 1
        if len(waiting) > REORDER_LIMIT:
            waiting.clear()
            async with contextlib.aclosing(self._sorted_from(expected)) as commits:
                async for commit in commits:
                    yield commit

    async def _sorted_from(self, position: int) -> AsyncGenerator[Commit, None]:
        """The settled run from `position`, sorted by the server (a full sort on FerretDB)."""
        expected = position
        query = {"position": {"$gte": position}}
        cursor = self._commits.find(query).sort("position", 1).batch_size(READ_BATCH)
        async with contextlib.aclosing(documents_ahead(cursor)) as docs:
            async for doc in docs:
                if int(doc["position"]) != expected:
                    return
                yield commit_from_document(doc)
                expected += 1

    async def _seal(self, position: int) -> Commit | None:
        """Fill `position` with a gap, unless its writer got there first (the index decides).

        The gap, or None when the position is held (the stream from MongoDB brings its holder).
        """
        gap = make_gap(position, datetime.now(UTC))
        try:
            await self._commits.insert_one(commit_to_document(gap))
        except DuplicateKeyError:
            return None
        await self.hint(gap)
        return gap


def _hint_keys(after: int, chunk: int) -> list[str]:
    """The hint keys of the `chunk` positions right after `after`, in order."""
    return [names.commit_hint_key(after + i) for i in range(1, chunk + 1)]


async def in_position_order(
    docs: AsyncIterator[Document], after: int, *, limit: int = SCAN_REORDER_LIMIT
) -> AsyncGenerator[Document, None]:
    """`docs` (the log's documents after `after`, in storage order) in position order, holes
    passed over: the auditor's view of what is stored, without a server-side sort.

    FerretDB sorts a whole collection in Go before a sorted read's first batch (over a minute at
    100,000 commits: longer than a socket timeout), so the log is streamed unsorted and put in
    order here. Storage order strays from position order only by what is inserted while a
    position waits for its writer or its seal (a few seconds of appends); a position still
    missing once `limit` later ones are buffered is taken as absent and passed over. The buffer
    holds at most `limit` documents.
    """
    expected = after + 1
    waiting: dict[int, Document] = {}
    async for doc in docs:
        waiting[int(doc["position"])] = doc
        while expected in waiting or len(waiting) > limit:
            if expected not in waiting:
                expected = min(waiting)  # a hole: what is stored continues here
            yield waiting.pop(expected)
            expected += 1
    for position in sorted(waiting):
        yield waiting[position]


async def documents_ahead(cursor: AsyncCursor[Document]) -> AsyncGenerator[Document, None]:
    """The cursor's documents, fetched up to `READ_AHEAD_BATCHES` batches ahead of the caller."""
    async with contextlib.aclosing(read_ahead(_chunks(cursor), READ_AHEAD_BATCHES)) as chunks:
        async for chunk in chunks:
            for doc in chunk:
                yield doc


async def _chunks(cursor: AsyncCursor[Document]) -> AsyncGenerator[list[Document], None]:
    async with cursor as docs:
        async for chunk in batches(docs, READ_BATCH):
            yield chunk
