"""Projection leases: one process applies a projection at a time; a standby takes over.

Each term of a lease is its own document `{_id: "<name>:<term>"}`. Taking the lease over is an
insert of the next term under the unique `_id`, so of any number of racing standbys exactly one
wins (docs/concurrency.md). Renewal updates only the holder's own term document (one writer).
A lease only says who *should* write: a holder paused past its expiry does not know it was
superseded, so each read model also fences its writes by the term (`Projection.fence`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError


class Lease:
    """One process's claim on one projection."""

    def __init__(
        self,
        leases: AsyncCollection[dict[str, Any]],
        name: str,
        holder: str,
        *,
        ttl: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._leases = leases
        self.name = name
        self.holder = holder
        self._ttl = timedelta(seconds=ttl)
        self._clock = clock
        self.term: int | None = None
        # When the live term another process holds expires, as last read (a standby sleeps
        # until then instead of polling, so it takes over as soon as the lease lapses).
        self.held_until: datetime | None = None

    async def acquire(self) -> bool:
        """Take the lease if nobody holds a live term; True when this process now holds it."""
        latest = await self.latest()
        now = self._clock()
        if latest is not None and latest["expires_at"] > now:
            self.held_until = latest["expires_at"]
            return False
        self.held_until = None
        term = 1 if latest is None else int(latest["term"]) + 1
        try:
            await self._leases.insert_one(
                {
                    "_id": f"{self.name}:{term}",
                    "name": self.name,
                    "term": term,
                    "holder": self.holder,
                    "acquired_at": now,
                    "expires_at": now + self._ttl,
                }
            )
        except DuplicateKeyError:
            return False  # another standby took this term first
        self.term = term
        return True

    def seconds_until_lapse(self) -> float | None:
        """How long until the live term another process holds expires, if one was seen."""
        if self.held_until is None:
            return None
        return max((self.held_until - self._clock()).total_seconds(), 0.0)

    async def renew(self) -> bool:
        """Extend the lease; False (and no longer held) if a newer term exists."""
        if self.term is None:
            return False
        if await self._leases.find_one({"_id": f"{self.name}:{self.term + 1}"}) is not None:
            self.term = None
            return False
        await self._leases.update_one(
            {"_id": f"{self.name}:{self.term}"}, {"$set": {"expires_at": self._clock() + self._ttl}}
        )
        return True

    async def release(self) -> None:
        """Let a standby take over at once (graceful shutdown)."""
        if self.term is not None:
            await self._leases.update_one(
                {"_id": f"{self.name}:{self.term}"}, {"$set": {"expires_at": self._clock()}}
            )
            self.term = None

    async def latest(self) -> dict[str, Any] | None:
        docs = await self._leases.find({"name": self.name}).sort("term", -1).limit(1).to_list()
        return docs[0] if docs else None
