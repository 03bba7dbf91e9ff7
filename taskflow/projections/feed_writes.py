"""The change feeds' writes: every applied task change appended to its owner's capped Redis
Stream, and each applied batch to a stream of batches, in the same fenced script as the Redis
read model's own writes (guarded_writes.py).

So a change is in a feed exactly when, and only if, the read model applied it, and a projector
whose lease was taken over cannot publish (its script writes nothing). Entry ids
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

from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.projections.guarded_writes import GuardedWrites
from taskflow.projections.redis_keys import RedisViewKeys

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
    """Records one batch's feed entries among the projection's guarded writes."""

    def __init__(self, keys: RedisViewKeys, history: int = DEFAULT_HISTORY) -> None:
        self.keys = keys
        self.history = history

    def write(
        self,
        writes: GuardedWrites,
        steps: Iterable[FeedStep],
        commits: Sequence[Commit],
        checkpoint: int,
    ) -> None:
        """The batch `commits` (applied after `checkpoint`) into the feeds.

        Where the last batch that wrote the feeds left the checkpoint (`feed_written`) is
        compared in the script: anything else than `checkpoint` means batches were applied
        without feed entries (the first start of a projector with feeds, an older projector, a
        Redis that lost its data), so the feeds are complete from here on only, and readers
        resuming from earlier get a reset.
        """
        writes.reset_origin(self.keys.feed_written, self.keys.feed_origin, checkpoint)
        # Log order across tasks: an owner's stream only takes ids above its last one.
        for step in sorted(steps, key=lambda s: s.position):
            writes.command(
                "XADD",
                [self.keys.feed(step.view.owner_id)],
                "MAXLEN",
                "~",
                self.history,
                entry_id(step.position),
                VIEW_FIELD,
                step.view.model_dump_json().encode(),
            )
        writes.command(
            "XADD",
            [self.keys.applied],
            "MAXLEN",
            "~",
            APPLIED_HISTORY,
            entry_id(commits[-1].position),
            FIRST_FIELD,
            commits[0].position,
        )
        writes.command("SET", [self.keys.feed_written], commits[-1].position)
