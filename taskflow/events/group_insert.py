"""One process's commit inserts, sent together: a group commit.

An insert that arrives while none is in flight goes out at once, alone; those that arrive
while one is in flight wait for it and then go out together, as one `insert_many`, lowest
position first. At low load nothing waits; under load a batch costs little more than one
insert: on FerretDB with SQLite, 16 commits in one `insert_many` took 0.3 ms each against
1.8-2.1 ms alone, and the driver's CPU per commit fell from 0.7-0.8 ms to 0.08 ms
(`python -m bench.ferretdb_probes batches`; docs/benchmarks.md, "Group commit"). SQLite
also has a single writer and answers concurrent ones with backoff sleeps of up to 100 ms, so
one batch in flight at a time is also what keeps the tail short there (the same file,
"FerretDB's writers").

Each commit is still its own document, decided by the log's unique indexes on its own: the
batch is unordered, so a duplicate key refuses only the commit that has it, and its appender
sees the same `DuplicateKeyError` an `insert_one` raises. Readers apply the log in position
order, so the lowest positions go first when more are waiting than one batch takes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteConcernError, WriteError

from taskflow.metrics import LOG_INSERT_BATCH

_DUPLICATE_KEY = 11000

Document = dict[str, Any]


class GroupInsert:
    """Inserts into `collection` in batches of up to `max_batch`, one batch at a time."""

    def __init__(self, collection: AsyncCollection[Document], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one document")
        self._collection = collection
        self._max_batch = max_batch
        self._waiting: list[tuple[int, int, Document, asyncio.Future[None]]] = []
        self._arrivals = 0  # breaks ties between equal positions (a heap never compares docs)
        self._sender: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Inserts waiting for their batch to leave (not those of the batch in flight)."""
        return len(self._waiting)

    async def insert(self, position: int, document: Document) -> None:
        """Insert `document` (the commit at `position`); raise what its own insert would."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        heapq.heappush(self._waiting, (position, self._arrivals, document, done))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_while_waiting())
        # A caller cancelled before its batch leaves is dropped from it (its future is done);
        # one cancelled after that is written or not, as with a cancelled `insert_one`.
        await done

    async def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch = [
                    heapq.heappop(self._waiting)
                    for _ in range(min(self._max_batch, len(self._waiting)))
                ]
                live = [(document, done) for _, _, document, done in batch if not done.done()]
                if live:
                    LOG_INSERT_BATCH.observe(len(live))
                    await self._send(live)
        finally:
            self._sender = None
            # Only reached with callers still waiting if this task itself was cancelled (the
            # event loop shutting down): they must not wait for ever.
            for _, _, _, done in self._waiting:
                done.cancel()
            self._waiting.clear()

    async def _send(self, batch: list[tuple[Document, asyncio.Future[None]]]) -> None:
        try:
            await self._collection.insert_many([document for document, _ in batch], ordered=False)
        except BulkWriteError as exc:
            _settle(batch, exc.details)
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # the batch as a whole failed: so did each insert in it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            _settle(batch, {})  # no error reported: every commit is stored


def _settle(batch: list[tuple[Document, asyncio.Future[None]]], details: Mapping[str, Any]) -> None:
    """Each commit's own outcome from an unordered bulk insert's report."""
    refused: dict[int, Exception] = {}
    for error in details.get("writeErrors", []):
        kind = DuplicateKeyError if error.get("code") == _DUPLICATE_KEY else WriteError
        refused[int(error["index"])] = kind(error.get("errmsg", ""), error.get("code"), error)
    concern = details.get("writeConcernErrors") or []
    for index, (_, done) in enumerate(batch):
        if done.done():
            continue
        if index in refused:
            done.set_exception(refused[index])
        elif concern:
            # Written, but not known to be durable as asked: what `insert_one` would raise.
            done.set_exception(WriteConcernError(concern[0].get("errmsg", ""), None, concern[0]))
        else:
            done.set_result(None)
