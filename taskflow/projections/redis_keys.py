"""Key names of one version of the Redis task read model."""

from __future__ import annotations

from dataclasses import dataclass

from taskflow import names


@dataclass(frozen=True)
class RedisViewKeys:
    """Every key of read-model version `version`; per-user keys keep each user's reads small."""

    version: int

    @property
    def prefix(self) -> str:
        return names.read_model_prefix(self.version)

    @property
    def checkpoint(self) -> str:
        return self.prefix + "checkpoint"

    @property
    def fence(self) -> str:
        return self.prefix + "fence"

    @property
    def live(self) -> str:
        """Present once the views have caught up with the log in this Redis dataset: reads
        trust them only then. Redis losing its data (a restart without persistence, a flush)
        takes it away with everything else, so an emptied model is never served as complete."""
        return self.prefix + "live"

    @property
    def owners(self) -> str:
        """Hash: task id → owner id (later events do not repeat the owner)."""
        return self.prefix + "owners"

    def tasks(self, user_id: str) -> str:
        """Hash: task id → task view JSON, for one owner."""
        return f"{self.prefix}u:{user_id}:tasks"

    def term(self, user_id: str, term: str) -> str:
        """Set: ids of the owner's live tasks found by one search term (an inverted index)."""
        return f"{self.prefix}u:{user_id}:q:{term}"

    def terms(self, user_id: str) -> str:
        """Sorted set, every score 0: the owner's search terms that find a live task, in byte
        order, so that ZRANGEBYLEX lists the terms a prefix begins (search as you type)."""
        return f"{self.prefix}u:{user_id}:terms"

    def tags(self, user_id: str) -> str:
        """Hash: tag → number of the owner's live tasks that carry it (no entry at zero)."""
        return f"{self.prefix}u:{user_id}:tags"

    def counts(self, user_id: str) -> str:
        """Hash: status → number of the owner's live tasks."""
        return f"{self.prefix}u:{user_id}:counts"

    def due(self, user_id: str) -> str:
        """Sorted set: the owner's open tasks with a due date, scored by it (for overdue)."""
        return f"{self.prefix}u:{user_id}:due"

    def generation(self, user_id: str) -> str:
        """Counter bumped on every change of the owner's tasks; retires cached list pages."""
        return f"{self.prefix}u:{user_id}:gen"

    def list_page(self, user_id: str, generation: int, query: str) -> str:
        return f"{self.prefix}u:{user_id}:page:{generation}:{query}"

    # The change feeds (feed_writes.py): Redis Streams whose entry ids are global positions.

    def feed(self, user_id: str) -> str:
        """Stream: the owner's last task changes, one entry per commit, id `<position>-0`."""
        return f"{self.prefix}u:{user_id}:feed"

    @property
    def applied(self) -> str:
        """Stream: one entry per applied batch, id `<its last position>-0` (the audit feed's
        wake-up: the commits themselves are read from the log)."""
        return self.prefix + "feed:applied"

    @property
    def feed_origin(self) -> str:
        """The checkpoint from which every applied change is in the feeds (their oldest floor)."""
        return self.prefix + "feed:origin"

    @property
    def feed_written(self) -> str:
        """The checkpoint the last batch that wrote the feeds left (a gap below marks a hole)."""
        return self.prefix + "feed:written"
