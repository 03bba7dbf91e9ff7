"""The log seal: a projection that folds the running digest of the whole log and signs it.

It runs in the projector like the views (same `Projection` protocol, its own lease), reads the
log in global order, gaps included, and after each batch INSERTS a seal `{_id: <the batch's
last position>, digest, mac, at}` (events/log_seals.py). Appends stay concurrent: writers never
see the seal, which follows the settled log from behind.

It needs no fencing. The digest at a position depends only on the log up to it, so any holder,
current or superseded, computes the same seal for the same position: a replayed batch, or a
zombie's, meets the unique `_id` with an identical document (checked: a different one means
the log changed below an existing seal, and sealing stops with `SealMismatchError`). Its
checkpoint (position and digest to continue from) is written conditionally, never lowered on
purpose; on FerretDB a conditional update is not atomic, so a racing lower write can still
land, which costs only re-sealing from there (identical seals again). A checkpoint found ahead
of a batch means someone sealed further already: the batch continues from it, or is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import ReadPreference, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from taskflow import names
from taskflow.events.chain import HashChain
from taskflow.events.log_seals import GENESIS, Seal, log_digest
from taskflow.events.records import Commit

NAME = "log_seal"
# At most one pass, and so one seal, this often (more while catching up: one per batch): a quiet
# log gets a seal every few seconds at most, not one per commit. Positions above the last seal
# are covered by the stream chains and contiguity until the next one (docs/event-log.md).
PACE_SECONDS = 5.0

log = structlog.get_logger(__name__)


class SealMismatchError(Exception):
    """A seal already stored at a position differs from the digest of the log up to it."""


class SealCheckpointBehindError(Exception):
    """The stored checkpoint is below the batch it was asked to seal (it was lowered)."""


@dataclass(frozen=True)
class _At:
    """A position of the log and its running digest."""

    position: int
    digest: str


class LogSeal:
    """`Projection` sealing the log into `log_seals` (in the log's own database)."""

    name = NAME
    pace_seconds = PACE_SECONDS
    # The digest covers each commit's stored hash: nothing inside an event is read, so nothing
    # is opened (sealed personal data stays sealed, and a pass costs a third of what it did).
    reads_stored = True

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        chain: HashChain,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # As durable as the log they seal, and read where it is written.
        db = db.with_options(
            write_concern=WriteConcern("majority", j=True), read_preference=ReadPreference.PRIMARY
        )
        self.seals = db[names.LOG_SEALS]
        self._checkpoints = db[names.LOG_SEAL_CHECKPOINT]
        self._chain = chain
        self._clock = clock
        self._at: _At | None = None  # where the last batch this process sealed ended

    async def setup(self) -> None:
        """Nothing to create: the seals' unique `_id` is all they need."""

    async def position(self) -> int:
        return (await self._checkpoint()).position

    async def fence(self, term: int) -> None:
        # Another holder may have sealed further meanwhile: start from the stored checkpoint.
        self._at = None

    async def caught_up(self, position: int, term: int) -> None:
        return None  # nothing reads the seals as a model to be served

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        if not commits:
            return
        at = await self._start(commits[0].position - 1)
        todo = [commit for commit in commits if commit.position > at.position]
        if not todo:
            self._at = at
            return
        digest = at.digest
        for commit in todo:
            digest = log_digest(digest, commit)
        end = _At(todo[-1].position, digest)
        await self._insert(Seal.made(self._chain, end.position, end.digest))
        await self._save_checkpoint(end)
        self._at = end

    async def _start(self, before: int) -> _At:
        """The digest the batch after `before` continues from (or a checkpoint ahead of it)."""
        if self._at is not None and self._at.position == before:
            return self._at
        stored = await self._checkpoint()
        if stored.position < before:
            raise SealCheckpointBehindError(
                f"{NAME}: the checkpoint is at {stored.position}, the batch starts after {before}"
            )
        return stored  # at `before`, or ahead: someone sealed further, go on from there

    async def _insert(self, seal: Seal) -> None:
        try:
            await self.seals.insert_one(seal.document(self._clock()))
        except DuplicateKeyError:
            # A replayed batch, or another holder's: the same log gives the same seal.
            stored = await self.seals.find_one({"_id": seal.position})
            if stored is None or Seal.of(stored) != seal:
                log.error("log_seal_mismatch", position=seal.position)
                raise SealMismatchError(
                    f"the seal at {seal.position} does not match the log up to it: run "
                    "`taskflow audit verify`"
                ) from None

    async def _save_checkpoint(self, at: _At) -> None:
        """Move the checkpoint up to `at`; a checkpoint already there or beyond stays."""
        try:
            await self._checkpoints.update_one(
                {"_id": NAME, "position": {"$lt": at.position}},
                {"$set": {"position": at.position, "digest": at.digest, "at": self._clock()}},
                upsert=True,
            )
        except DuplicateKeyError:
            return  # the upsert's insert: the checkpoint exists at or beyond `at`

    async def _checkpoint(self) -> _At:
        doc = await self._checkpoints.find_one({"_id": NAME})
        if doc is None:
            return _At(0, GENESIS)
        return _At(int(doc["position"]), str(doc["digest"]))
