"""How the MongoDB task views reach the server: fenced by the writer's lease term at the server.

**Fencing.** Every write that could move a stored view or the checkpoint goes in an ordered
`update` command whose first statement is `$inc` on the writer's *term ledger*, a document
`{_id: "~fence:<term>"}` in the view collection itself. A holder that takes the lease over
*closes* every older term first: it sets their ledgers' counter to the text `"closed"`. An `$inc`
of a closed ledger fails at the server (type mismatch), and an ordered command stops at its first
failing statement, so none of a superseded holder's views, nor its checkpoint, are written:
the refusal happens at the server, in the same command as the writes it guards, and a holder
paused between its lease check and its write (SIGSTOP, a long GC, a stalled VM) cannot get past
it. The checkpoint (`{_id: "~checkpoint"}`) lives in the same collection, written by `$max` as
the last statement of the last command, so it never moves backwards and is fenced with the views.

Why a ledger and not a filter on the term (`{_id: "~fence", term: {$lte: T}}`): on FerretDB v1
with SQLite, only a filter that is exactly `{_id: ...}` is handed to SQLite; any other filter is
evaluated in Go over every document of the collection. Measured here at 10,000 views, a replace
by `_id` cost 130 ms and one with an added `version: {$lt: ...}` condition 780 ms
(docs/concurrency.md; the first is about 1 ms with the `_id` lookup fix scripts/services.sh
builds FerretDB with, the second still scans). The ledger keeps every statement's filter
exactly `{_id}`. On a real
MongoDB both are index lookups and each statement is atomic; on FerretDB v1 an update is a read
followed by a write, so a superseded holder's `$inc` that runs at the very moment its successor
closes the ledger can slip one command through (docs/concurrency.md says what then repairs it).

**Inserts.** A view created in the batch being written was never stored, so it is inserted (an
insert is one round trip; an upsert is a lookup, then a write, and FerretDB as published scanned
the collection for each). An
insert only ever creates an absent document, so it needs no fence: it cannot move a stored view
back. A replayed batch meets the stored view as a duplicate key; that view is then replaced, in
a fenced command, only if it is older than ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from taskflow.projections.duty_cycle import DutyCycle
from taskflow.projections.runtime import LeaseLostError

# Replaces go in commands of this many. FerretDB v1.24 hangs (and stays stuck) on one bulk
# write replacing more than about 100 existing documents (measured: 100 fine, 110 hangs), and
# a command of 10 is about 10 ms of its CPU: short enough that the rest after it (duty_cycle.py)
# keeps appends from waiting long behind the views' writes.
REPLACE_CHUNK = 10
# Inserts have no such limit (the bulk seeder inserts 1,000 commits at a time); this bounds one
# command's size.
INSERT_CHUNK = 500
DUPLICATE_KEY = 11000
TYPE_MISMATCH = 14
CHECKPOINT_ID = "~checkpoint"
LEDGER_PREFIX = "~fence:"
CLOSED = "closed"

Document = dict[str, Any]
Statement = dict[str, Any]


def ledger_id(term: int) -> str:
    return f"{LEDGER_PREFIX}{term}"


def is_view(doc: Document) -> bool:
    """Whether a document of the view collection is a task view (not a ledger or checkpoint)."""
    return not str(doc["_id"]).startswith("~")


async def insert_new(views: AsyncCollection[Document], docs: Sequence[Document]) -> list[Statement]:
    """Insert views never stored; the statements that replace those found stored, if older."""
    refused: list[Statement] = []
    for start in range(0, len(docs), INSERT_CHUNK):
        chunk = docs[start : start + INSERT_CHUNK]
        try:
            await views.insert_many(chunk, ordered=False)
        except BulkWriteError as exc:
            refused += [replace_if_older(doc) for doc in _duplicates(exc, chunk)]
    return refused


def replace(doc: Document) -> Statement:
    """Write a view read from (or written to) the collection before: a replace by `_id` alone.

    The filter is exactly `{_id}`, the one FerretDB hands to SQLite instead of scanning in Go.
    The upsert covers a view dropped under us (a version retired while a holder still ran).
    """
    return {"q": {"_id": doc["_id"]}, "u": doc, "upsert": True}


def replace_if_older(doc: Document) -> Statement:
    """Replace the stored view only if its version is lower than the document's (rare: replays)."""
    return {"q": {"_id": doc["_id"], "version": {"$lt": doc["version"]}}, "u": doc}


async def write_fenced(
    views: AsyncCollection[Document],
    statements: Sequence[Statement],
    *,
    term: int,
    checkpoint: int,
    duty: DutyCycle | None = None,
) -> None:
    """Run `statements`, then raise the checkpoint to `checkpoint`, all fenced by `term`, in
    commands of `REPLACE_CHUNK`, each followed by the rest `duty` gives it (none without).

    Term 0 is a writer without a lease (tests, one-shot tools): nothing fences it.
    LeaseLostError when a newer holder has closed `term`.
    """
    chunks = [statements[i : i + REPLACE_CHUNK] for i in range(0, len(statements), REPLACE_CHUNK)]
    chunks = chunks or [[]]
    for n, chunk in enumerate(chunks):
        body = list(chunk)
        if n == len(chunks) - 1:
            body.append(_raise_checkpoint(checkpoint, term))
        command = _run(views, body, term)
        await (command if duty is None else duty.run(command))


async def close_terms_before(views: AsyncCollection[Document], term: int) -> None:
    """Close the ledgers of every older term, newest first, down to one already closed.

    Called when `term` takes the lease, before it reads the checkpoint: from then on no older
    holder writes. A ledger that does not exist yet is created closed (that holder never wrote).
    """
    for older in range(term - 1, 0, -1):
        ledger = await views.find_one({"_id": ledger_id(older)})
        if ledger is not None and ledger.get("writes") == CLOSED:
            return
        await views.update_one(
            {"_id": ledger_id(older)},
            {"$set": {"writes": CLOSED, "closed_by": term, "closed_at": datetime.now(UTC)}},
            upsert=True,
        )


async def read_checkpoint(
    views: AsyncCollection[Document], session: AsyncClientSession | None = None
) -> int | None:
    """The position the views reflect, or None when no holder has written one here yet."""
    doc = await views.find_one({"_id": CHECKPOINT_ID}, session=session)
    return int(doc["position"]) if doc else None


def _raise_checkpoint(position: int, term: int) -> Statement:
    update = {"$max": {"position": position, "term": term}, "$set": {"at": datetime.now(UTC)}}
    return {"q": {"_id": CHECKPOINT_ID}, "u": update, "upsert": True}


async def _run(views: AsyncCollection[Document], body: list[Statement], term: int) -> None:
    fence = [{"q": {"_id": ledger_id(term)}, "u": {"$inc": {"writes": 1}}, "upsert": True}]
    updates = (fence if term else []) + body
    reply = await views.database.command(
        {"update": views.name, "updates": updates, "ordered": True}
    )
    errors: list[dict[str, Any]] = list(reply.get("writeErrors", []))
    if not errors:
        if "writeConcernError" in reply:
            raise OperationFailure(f"view write not acknowledged: {reply}", None, reply)
        return
    first = errors[0]
    if term and first.get("index") == 0 and first.get("code") == TYPE_MISMATCH:
        raise LeaseLostError(f"{views.name}: term {term} was closed by a newer holder")
    raise OperationFailure(f"view write failed: {first}", first.get("code"), reply)


def _duplicates(exc: BulkWriteError, chunk: Sequence[Document]) -> list[Document]:
    """The documents of `chunk` refused as duplicate keys; any other failure is raised."""
    details = exc.details
    errors: list[dict[str, Any]] = list(details.get("writeErrors", []))
    if details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return [chunk[int(error["index"])] for error in errors]
