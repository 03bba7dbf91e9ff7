"""The change feeds' fan-out in one API process: one Redis reader for every feed its
subscribers follow, and a bounded buffer per subscriber.

One task per process reads, with `XREAD BLOCK` on one connection of its own, every stream a
subscriber of this process follows, each from the last position it handed on, and offers each
entry to that feed's subscribers. Offering never waits: a subscriber whose buffer is full is
marked overflowed (its connection is then closed with a hint to resume), so a slow client
costs neither the other subscribers nor the projector anything, and a process's memory is
bounded by its subscribers times their buffers. A feed a new subscriber starts interrupts the
blocked read (`CLIENT UNBLOCK`), so that its changes are not held up by the block's timeout.

Any process can serve any subscriber: the streams are the projector's (feed_writes.py), and
nothing here is shared between processes. docs/change-feed.md has the whole picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from taskflow import names
from taskflow.projections.feed_reads import FeedEntry, FeedRef, entries_of, read_snapshot
from taskflow.projections.feed_writes import entry_id
from taskflow.projections.redis_keys import RedisViewKeys

log = structlog.get_logger(__name__)

BLOCK_SECONDS = 1.0  # one XREAD's wait; a read-model version switch is noticed after one
READ_COUNT = 500  # entries per stream and XREAD
VERSION_TTL = 1.0  # how long the active read-model version is trusted (as task_queries does)
RETRY_SECONDS = 1.0  # after the reader failed
UNBLOCK_ATTEMPTS = 50  # CLIENT UNBLOCK tries, 2 ms apart, until the reader takes a new feed


class StreamsFullError(Exception):
    """This process serves as many streams as CHANGE_FEED_MAX_STREAMS allows."""


class Subscriber:
    """One open stream's end of the hub: a bounded buffer of entries and why it must end."""

    __slots__ = (
        "_items",
        "_wake",
        "capacity",
        "ended",
        "feed",
        "jti",
        "on_overflow",
        "overflowed",
    )

    def __init__(self, feed: FeedRef, jti: str, capacity: int) -> None:
        self.feed = feed
        self.jti = jti  # the token the stream was opened with, for the deny-list watch
        self.capacity = capacity
        self.overflowed = False
        self.ended: str | None = None  # a reason, once the stream must end
        # Called once, when the buffer overflows: the stream may be stuck writing to its client.
        self.on_overflow: Callable[[], None] | None = None
        self._items: deque[FeedEntry] = deque()
        self._wake = asyncio.Event()

    def offer(self, entry: FeedEntry) -> None:
        """Buffer `entry`, never waiting; past the capacity the subscriber has overflowed.

        The auditors' feed's entries only say how far the log was applied: the last one says
        all, so it replaces the others (an auditor reading a long stretch of the log is not cut
        off for the batches applied meanwhile)."""
        if self.overflowed or self.ended:
            return
        if self.feed.owner is None:
            self._items.clear()
        if len(self._items) >= self.capacity:
            self.overflowed = True
            self._items.clear()  # it will be closed: what it holds is freed now
            if self.on_overflow is not None:
                self.on_overflow()
        else:
            self._items.append(entry)
        self._wake.set()

    def end(self, reason: str) -> None:
        """Ask the stream to end (its handler says `reason` to the client and closes)."""
        if self.ended is None:
            self.ended = reason
        self._wake.set()

    def take(self) -> list[FeedEntry]:
        entries = list(self._items)
        self._items.clear()
        self._wake.clear()
        return entries

    async def wait(self, seconds: float) -> None:
        """Until an entry or an end arrives, or `seconds` pass."""
        if seconds > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()


@dataclass(eq=False)
class _Feed:
    ref: FeedRef
    key: str
    last: int | None = None  # the last position offered; None: not read until started
    subscribers: set[Subscriber] = field(default_factory=set)


class ChangeHub:
    """Every feed this process's subscribers follow, read by one task (`run`)."""

    def __init__(
        self, redis: Redis, reader: Redis, *, buffer: int, max_streams: int, block: float = 1.0
    ) -> None:
        self._redis = redis  # the process's pool: snapshots, version checks, CLIENT UNBLOCK
        self._reader = reader  # one connection of its own, blocked in XREAD most of the time
        self._buffer = buffer
        self._max_streams = max_streams
        self._block = block
        self._feeds: dict[FeedRef, _Feed] = {}
        self._count = 0
        self._version = 1
        self._version_checked = float("-inf")
        self._started = asyncio.Event()  # a feed became readable since the last XREAD began
        self._generation = 0  # bumped whenever a feed becomes readable
        self._reading = 0  # the generation the XREAD in flight (or the next) was built from
        self._reader_id: int | None = None
        self._unblocking: asyncio.Task[None] | None = None
        self._failures = 0  # the reader's failures in a row

    # -- subscribers (synchronous: nothing can be dispatched between these steps) -------------

    @property
    def version(self) -> int:
        """The read-model version whose streams are read."""
        return self._version

    @property
    def keys(self) -> RedisViewKeys:
        return RedisViewKeys(self._version)

    @property
    def redis(self) -> Redis:
        """The process's Redis pool, for the subscribers' snapshots."""
        return self._redis

    @property
    def open_streams(self) -> int:
        return self._count

    def join(self, ref: FeedRef, jti: str) -> Subscriber:
        """A new subscriber of `ref`: from now on it is offered every entry read for the feed.

        The feed is read only once `start` says from where: the subscriber first reads what
        it missed from a snapshot, then starts the feed after the snapshot's last entry.
        """
        if self._count >= self._max_streams:
            raise StreamsFullError(f"{self._count} streams are open")
        feed = self._feeds.get(ref)
        if feed is None:
            feed = self._feeds[ref] = _Feed(ref, ref.key(self.keys))
        subscriber = Subscriber(ref, jti, self._buffer)
        feed.subscribers.add(subscriber)
        self._count += 1
        return subscriber

    def start(self, subscriber: Subscriber, after: int) -> None:
        """Read the subscriber's feed after `after`, unless it is read already.

        A feed already read may be ahead of `after` or behind it: behind, the subscriber
        skips what it has; ahead, the entries in between were offered to it since it joined.
        """
        feed = self._feeds.get(subscriber.feed)
        if feed is None or feed.last is not None:
            return
        feed.last = after
        self._generation += 1
        self._started.set()
        if self._unblocking is None or self._unblocking.done():
            self._unblocking = asyncio.create_task(self._unblock())

    def leave(self, subscriber: Subscriber) -> None:
        feed = self._feeds.get(subscriber.feed)
        if feed is None or subscriber not in feed.subscribers:
            return
        feed.subscribers.discard(subscriber)
        self._count -= 1
        if not feed.subscribers:
            del self._feeds[subscriber.feed]  # the next XREAD leaves its stream out

    def subscribers(self) -> Iterator[Subscriber]:
        for feed in list(self._feeds.values()):
            yield from list(feed.subscribers)

    def end_all(self, reason: str) -> None:
        for subscriber in self.subscribers():
            subscriber.end(reason)

    # -- the reader ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and hand on forever (a background task of the API process)."""
        while True:
            try:
                await self._read_forever()
            except (RedisError, OSError) as exc:
                # At WARNING once per outage: it is tried again every second meanwhile.
                report = log.debug if self._failures else log.warning
                report("change_feed_reader_failed", error=repr(exc), failures=self._failures + 1)
                self._failures += 1
                self._reader_id = None  # a new connection has a new id
                await asyncio.sleep(RETRY_SECONDS)

    async def _read_forever(self) -> None:
        while True:
            await self._follow_version()
            self._failures = 0
            self._reading = self._generation
            self._started.clear()
            streams = {f.key: entry_id(f.last) for f in self._feeds.values() if f.last is not None}
            if not streams:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._block):
                        await self._started.wait()
                continue
            if self._reader_id is None:
                self._reader_id = int(await self._reader.client_id())
            reply = await self._reader.xread(
                streams,  # type: ignore[arg-type]  # str ids are what redis-py sends
                count=READ_COUNT,
                block=int(self._block * 1000),
            )
            self._dispatch(reply or [])

    def _dispatch(self, reply: Any) -> None:
        """Offer what one XREAD answered (`[[key, [(id, fields), ...]], ...]`)."""
        by_key = {feed.key: feed for feed in self._feeds.values()}
        for raw_key, rows in reply:
            feed = by_key.get(raw_key.decode())
            if feed is None or feed.last is None:
                continue  # its last subscriber left meanwhile
            for entry in entries_of(feed.ref, rows):
                if entry.position <= feed.last:
                    continue
                feed.last = entry.position
                for subscriber in feed.subscribers:
                    subscriber.offer(entry)

    async def _unblock(self) -> None:
        """Interrupt the XREAD in flight, built before a feed started, so the next includes it.

        CLIENT UNBLOCK answers 0 when the reader is not blocked: its XREAD has not reached
        Redis yet, or has returned; it is tried again until the reader reads with the new feed.
        """
        for _ in range(UNBLOCK_ATTEMPTS):
            if self._reading >= self._generation:
                return
            reader = self._reader_id
            if reader is not None:
                with contextlib.suppress(RedisError):
                    if await self._redis.client_unblock(reader):
                        return
            await asyncio.sleep(0.002)

    async def _follow_version(self) -> None:
        """After a rebuild switched reads to a new read-model version, read its streams.

        Positions are global, so each feed goes on from its last position in the new version's
        stream; a feed whose new stream does not hold everything after it (it was built with a
        shorter history) ends its streams with `resume`, and each client resumes (and gets a
        reset) as after any reconnection.
        """
        if time.monotonic() - self._version_checked < VERSION_TTL:
            return
        raw = await self._redis.get(names.READ_MODEL_ACTIVE)
        self._version_checked = time.monotonic()
        version = int(raw) if raw else 1
        if version == self._version:
            return
        log.info("change_feeds_follow_version", old=self._version, new=version)
        self._version = version
        keys = self.keys
        for feed in list(self._feeds.values()):
            feed.key = feed.ref.key(keys)
            if feed.last is None or feed.ref.owner is None:
                continue  # not read yet; or the auditors' feed, which reads the log itself
            snapshot = await read_snapshot(self._redis, keys, feed.ref, feed.last, limit=0)
            if not snapshot.covers(feed.last):
                for subscriber in list(feed.subscribers):
                    subscriber.end("resume")


@contextlib.asynccontextmanager
async def open_change_hub(
    redis: Redis, redis_url: str, *, buffer: int, max_streams: int, block: float = BLOCK_SECONDS
) -> AsyncIterator[ChangeHub]:
    """A hub with its reader's own connection (closed on exit)."""
    # Errors surface instead of being retried inside redis-py: a reconnection changes the
    # connection's client id, which the hub must then ask for again.
    reader = Redis.from_url(
        redis_url,
        single_connection_client=True,
        socket_timeout=block + 10.0,
        socket_connect_timeout=5.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield ChangeHub(redis, reader, buffer=buffer, max_streams=max_streams, block=block)
    finally:
        await reader.aclose()
