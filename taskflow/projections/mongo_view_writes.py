"""How the MongoDB task views reach the server: inserts for new views, replaces for known ones.

On FerretDB v1 a replace by `_id` scans the whole view collection (DESIGN.md §9: about 5.6 ms at
a few hundred views, tens of milliseconds at 10,000), while an insert costs the same at any size.
A view created in the batch being written was never stored, so it is inserted. A replayed batch
(a crash between the views and the checkpoint, or a predecessor that stored more than its
checkpoint says) meets the stored view as a duplicate key; that view is then replaced only if it
is older than ours, so a replay never moves a view back. On a real MongoDB replica set both are
index lookups and the outcome is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

# FerretDB v1.24 hangs (and stays stuck) on one bulk write replacing more than about 100
# existing documents (measured: 100 fine, 110 hangs), so replaces go in chunks of this size.
REPLACE_CHUNK = 50
# Inserts have no such limit (the bulk seeder inserts 1,000 commits at a time); this bounds one
# command's size.
INSERT_CHUNK = 500
DUPLICATE_KEY = 11000

Document = dict[str, Any]


async def insert_new(views: AsyncCollection[Document], docs: Sequence[Document]) -> None:
    """Insert views never stored; one already there is replaced only if it is older."""
    for start in range(0, len(docs), INSERT_CHUNK):
        chunk = docs[start : start + INSERT_CHUNK]
        try:
            await views.insert_many(chunk, ordered=False)
        except BulkWriteError as exc:
            await replace_older(views, _duplicates(exc, chunk))


async def replace_known(views: AsyncCollection[Document], docs: Sequence[Document]) -> None:
    """Write views read from (or written to) the collection before: a plain replace by `_id`.

    Only the lease holder writes (DESIGN.md §5) and the filter is exactly `{_id}`, the one
    filter FerretDB hands to SQLite instead of scanning in Go. The upsert covers a view that
    was dropped under us (a version retired while a zombie holder still ran).
    """
    await _in_chunks(views, [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs])


async def replace_older(views: AsyncCollection[Document], docs: Sequence[Document]) -> None:
    """Replace each stored view whose version is lower than the document's (rare: replays)."""
    await _in_chunks(
        views,
        [ReplaceOne({"_id": d["_id"], "version": {"$lt": d["version"]}}, d) for d in docs],
    )


async def _in_chunks(views: AsyncCollection[Document], ops: list[ReplaceOne[Document]]) -> None:
    for start in range(0, len(ops), REPLACE_CHUNK):
        await views.bulk_write(ops[start : start + REPLACE_CHUNK], ordered=False)


def _duplicates(exc: BulkWriteError, chunk: Sequence[Document]) -> list[Document]:
    """The documents of `chunk` refused as duplicate keys; any other failure is raised."""
    details = exc.details
    errors: list[dict[str, Any]] = list(details.get("writeErrors", []))
    if details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return [chunk[int(error["index"])] for error in errors]
