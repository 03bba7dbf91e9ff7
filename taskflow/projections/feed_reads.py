"""Reading the change feeds: which stream a subscriber follows, and the consistent snapshot it
starts from (how far the read model is, whether the stream still holds everything after the
subscriber's position, and the entries after it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from taskflow.projections.feed_writes import FIRST_FIELD, VIEW_FIELD, entry_id
from taskflow.projections.redis_keys import RedisViewKeys


@dataclass(frozen=True)
class FeedRef:
    """A feed: one owner's task changes, or (owner None) the applied batches, which tell the
    auditors' feed how far to read the log."""

    owner: str | None = None

    def key(self, keys: RedisViewKeys) -> str:
        return keys.applied if self.owner is None else keys.feed(self.owner)

    @property
    def field(self) -> bytes:
        return (FIRST_FIELD if self.owner is None else VIEW_FIELD).encode()


AUDIT_FEED = FeedRef()


@dataclass(eq=False)
class FeedEntry:
    """One entry: its global position and its payload (a view's JSON; a batch's first position).

    One object is shared by every subscriber it goes to; `rendered` keeps what the API made of
    it, so each entry is rendered once however many subscribers follow the feed.
    """

    position: int
    payload: bytes
    rendered: str | None = field(default=None, repr=False)


def entry_position(raw_id: bytes | str) -> int:
    text = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    return int(text.partition("-")[0])


def entries_of(feed: FeedRef, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> list[FeedEntry]:
    return [FeedEntry(entry_position(raw_id), fields[feed.field]) for raw_id, fields in rows]


@dataclass(frozen=True)
class FeedSnapshot:
    """A feed as one Redis transaction saw it."""

    checkpoint: int  # the read model has applied the log up to here
    floor: int  # the stream holds every change of the feed after this position
    entries: list[FeedEntry]  # after the position asked for, in order, at most the limit
    more: bool  # more entries follow the last one

    def covers(self, after: int) -> bool:
        """Whether every change after `after` is still in the stream (else: a reset)."""
        return after >= self.floor


async def read_snapshot(
    redis: Redis, keys: RedisViewKeys, feed: FeedRef, after: int, limit: int
) -> FeedSnapshot:
    """The read model's checkpoint, the stream's floor and up to `limit` entries after `after`,
    read in one MULTI/EXEC so that they agree (the projector writes them in one too)."""
    key = feed.key(keys)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(keys.checkpoint)
        pipe.get(keys.feed_origin)
        pipe.xinfo_stream(key)
        if limit:
            pipe.xrange(key, min=f"({entry_id(after)}", max="+", count=limit + 1)
        checkpoint, origin, info, *rows = await pipe.execute(raise_on_error=False)
    for result in (checkpoint, origin, *rows):
        if isinstance(result, Exception):
            raise result
    at = int(checkpoint or 0)
    found = entries_of(feed, rows[0]) if rows else []
    return FeedSnapshot(at, _floor(at, origin, info), found[:limit], len(found) > limit)


def _floor(checkpoint: int, origin: bytes | None, info: Any) -> int:
    """The position after which the stream is complete.

    The feeds are complete from their origin on (feed_writes.py); with no origin yet, nothing
    was ever written to them, which is complete from the checkpoint on. Trimming (MAXLEN ~)
    removes the oldest entries, and Redis does not say which: when any were removed, only the
    positions from just before the oldest kept entry on are known to be complete. (A missing
    stream answers XINFO with an error: nothing of it was ever trimmed.)
    """
    floor = int(origin) if origin is not None else checkpoint
    if isinstance(info, ResponseError):
        return floor
    if isinstance(info, Exception):
        raise info
    if int(info["entries-added"]) > int(info["length"]) and info.get("first-entry"):
        floor = max(floor, entry_position(info["first-entry"][0]) - 1)
    return floor
