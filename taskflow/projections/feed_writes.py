"""The change feeds' writes: every applied task change appended to its owner's capped Redis
Stream, and each applied batch to a stream of batches, in the same fenced MULTI/EXEC as the Redis
read model's own writes.

So a change is in a feed exactly when, and only if, the read model applied it, and a projector
whose lease was taken over cannot publish (its transaction is refused as a whole). Entry ids
are `<position>-0`: positions are unique and increase, so a stream is in log order, a reader
resumes after a position with `XRANGE (<position>-0 +` or `XREAD`, and no entry can be written
twice. The auditors' feed reads the commits themselves from the log (its hints first), told by
the batches' stream how far the read model got: one entry per batch, not a copy of each commit
(which doubled the projector's cost per commit). API processes read these streams
(feed_reads.py); docs/change-feed.md has the picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.projections.redis_keys import RedisViewKeys

# Every entry of a batch in one command: an `XADD` call per entry cost about 30 us of redis-py's
# time each (500 in a pipeline: 15-30 ms), one script with them all 4-6 ms.
_XADD_ALL = """
for i = 1, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], ARGV[2 * i + 1], ARGV[2], ARGV[2 * i + 2])
end
return #KEYS
"""
DEFAULT_HISTORY = 200
# Batches kept in the batches' stream: its readers follow it live and never resume from it.
APPLIED_HISTORY = 1_000
VIEW_FIELD = "v"  # an owner feed entry: the task's view after the commit (its stored JSON)
FIRST_FIELD = "first"  # a batch entry (id: the batch's last position): its first position


@dataclass(frozen=True)
class FeedStep:
    """One commit's effect on one task: the view right after it."""

    position: int
    view: TaskState


def entry_id(position: int) -> str:
    return f"{position}-0"


class FeedWriter:
    """Queues one batch's feed entries on the projection's transaction (`pipe`, after MULTI)."""

    def __init__(self, keys: RedisViewKeys, history: int = DEFAULT_HISTORY) -> None:
        self.keys = keys
        self.history = history

    @property
    def read_keys(self) -> tuple[str]:
        """What `write` needs read before the transaction (with the fence and checkpoint)."""
        return (self.keys.feed_written,)

    def write(
        self,
        pipe: Pipeline,
        steps: Iterable[FeedStep],
        commits: Sequence[Commit],
        checkpoint: int,
        written: bytes | str | None,
    ) -> None:
        """The batch `commits` (applied after `checkpoint`) into the feeds.

        `written` is where the last batch that wrote the feeds left the checkpoint. Anything
        else than `checkpoint` means batches were applied without feed entries (the first
        start of a projector with feeds, an older projector, a Redis that lost its data): the
        feeds are complete from here on only, and readers resuming from earlier get a reset.
        """
        if written is None or int(written) != checkpoint:
            pipe.set(self.keys.feed_origin, checkpoint)
        # Log order across tasks: an owner's stream only takes ids above its last one.
        ordered = sorted(steps, key=lambda s: s.position)
        _append(
            pipe,
            [self.keys.feed(step.view.owner_id) for step in ordered],
            [(step.position, step.view.model_dump_json().encode()) for step in ordered],
            VIEW_FIELD,
            self.history,
        )
        pipe.xadd(
            self.keys.applied,
            {FIRST_FIELD: commits[0].position},
            id=entry_id(commits[-1].position),
            maxlen=APPLIED_HISTORY,
            approximate=True,
        )
        pipe.set(self.keys.feed_written, commits[-1].position)


def _append(
    pipe: Pipeline,
    streams: list[str],
    entries: list[tuple[int, bytes]],
    field: str,
    maxlen: int,
) -> None:
    """`XADD stream MAXLEN ~ maxlen <position>-0 field payload` for each entry, in one script."""
    if not streams:
        return
    args: list[str | int | bytes] = [maxlen, field]
    for position, payload in entries:
        args += [entry_id(position), payload]
    # EVAL, not EVALSHA: inside MULTI an unknown SHA would fail the transaction's command; Redis
    # keeps the compiled script by its hash, so sending it again costs its few bytes only.
    pipe.eval(_XADD_ALL, len(streams), *streams, *args)
