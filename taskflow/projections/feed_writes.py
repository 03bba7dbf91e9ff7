"""The change feeds' writes: every applied task change, and every commit, appended to capped
Redis Streams in the same fenced MULTI/EXEC as the Redis read model's own writes.

So a change is in a feed exactly when, and only if, the read model applied it, and a projector
whose lease was taken over cannot publish (its transaction is refused as a whole). Entry ids
are `<position>-0`: positions are unique and increase, so a stream is in log order, a reader
resumes after a position with `XRANGE (<position>-0 +` or `XREAD`, and no entry can be written
twice. API processes read these streams (feed_reads.py); docs/change-feed.md has the picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio.client import Pipeline

from taskflow.commands.task import TaskState
from taskflow.events.codec import commit_to_json
from taskflow.events.records import Commit
from taskflow.projections.redis_keys import RedisViewKeys

DEFAULT_HISTORY = 200
DEFAULT_AUDIT_HISTORY = 10_000
VIEW_FIELD = "v"  # an owner feed entry: the task's view after the commit (its stored JSON)
COMMIT_FIELD = "c"  # an audit feed entry: the commit as the codec renders it


@dataclass(frozen=True)
class FeedStep:
    """One commit's effect on one task: the view right after it."""

    position: int
    view: TaskState


def entry_id(position: int) -> str:
    return f"{position}-0"


class FeedWriter:
    """Queues one batch's feed entries on the projection's transaction (`pipe`, after MULTI)."""

    def __init__(
        self,
        keys: RedisViewKeys,
        history: int = DEFAULT_HISTORY,
        audit_history: int = DEFAULT_AUDIT_HISTORY,
    ) -> None:
        self.keys = keys
        self.history = history
        self.audit_history = audit_history

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
        for step in sorted(steps, key=lambda s: s.position):
            pipe.xadd(
                self.keys.feed(step.view.owner_id),
                {VIEW_FIELD: step.view.model_dump_json()},
                id=entry_id(step.position),
                maxlen=self.history,
                approximate=True,
            )
        for commit in commits:
            if not commit.is_gap:
                pipe.xadd(
                    self.keys.audit_feed,
                    {COMMIT_FIELD: commit_to_json(commit)},
                    id=entry_id(commit.position),
                    maxlen=self.audit_history,
                    approximate=True,
                )
        pipe.set(self.keys.feed_written, commits[-1].position)
