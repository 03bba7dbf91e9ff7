"""Group commit (taskflow/events/group_insert.py) on the real servers.

The log collection is wrapped so a test sees each `insert_many` the group sends and can hold
the first one back while other appends queue up behind it; the inserts themselves reach
FerretDB and its unique indexes.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect
from redis.asyncio import Redis

from taskflow.events.chain import HashChain
from taskflow.events.group_insert import GroupInsert
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.events.store import ConcurrencyError
from tests.conftest import TEST_HMAC_KEY
from tests.sample_events import NoteWritten
from tests.test_event_store import drain, meta
from tests.test_projector_processes import until

Document = dict[str, Any]


class WatchedLog:
    """The log collection as the group sees it: each batch's positions, recorded."""

    def __init__(self, real: AsyncCollection[Document]) -> None:
        self.real = real
        self.batches: list[list[int]] = []
        self.streams: list[list[str]] = []
        self.in_flight = 0
        self.most_at_once = 0
        self.first_held = asyncio.Event()  # the first batch is in, held until `release`
        self.release = asyncio.Event()
        self.failing = False

    async def insert_many(self, documents: list[Document], ordered: bool = True) -> Any:
        self.batches.append([int(doc["position"]) for doc in documents])
        self.streams.append([str(doc["stream_id"]) for doc in documents])
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            if len(self.batches) == 1:
                self.first_held.set()
                await self.release.wait()
            if self.failing:
                raise AutoReconnect("connection lost (injected)")
            return await self.real.insert_many(documents, ordered=ordered)
        finally:
            self.in_flight -= 1


def watched_store(
    store: MongoEventStore, redis: Redis, max_batch: int
) -> tuple[MongoEventStore, WatchedLog]:
    grouped = MongoEventStore(
        store.commits.database,
        redis,
        HashChain(TEST_HMAC_KEY),
        hot=store.hot,
        gap_timeout=0.3,
        insert_batch=max_batch,
    )
    watched = WatchedLog(grouped.commits)
    grouped._group = GroupInsert(cast("AsyncCollection[Document]", watched), max_batch)
    return grouped, watched


def batches_counted() -> tuple[float, float]:
    """How many inserts the group commit histogram has seen, and how many commits in all."""
    count = REGISTRY.get_sample_value("taskflow_log_insert_batch_commits_count") or 0.0
    commits = REGISTRY.get_sample_value("taskflow_log_insert_batch_commits_sum") or 0.0
    return count, commits


async def drained_to(store: MongoEventStore, position: int) -> list[Commit]:
    """The log read in order up to `position`, once readers have sealed the holes before it
    (each after the gap timeout: a few tenths of a second apiece)."""

    async def reached() -> bool:
        log = await drain(store)
        return bool(log) and log[-1].position >= position

    await until(reached, 60, f"the log to reach position {position}")
    return await drain(store)


async def queued_behind_first(
    grouped: MongoEventStore, watched: WatchedLog, streams: list[str]
) -> list[asyncio.Task[Any]]:
    """An append to `first` whose insert is held, then appends to `streams` queued behind it."""
    first = asyncio.create_task(grouped.append("first", 0, [NoteWritten(text="1")], meta()))
    await watched.first_held.wait()
    later = [
        asyncio.create_task(grouped.append(stream, 0, [NoteWritten(text=stream)], meta()))
        for stream in streams
    ]
    group = cast("GroupInsert", grouped._group)

    async def all_queued() -> bool:  # each takes its position and queues behind the first
        return group.queued == len(streams)

    await until(all_queued, 60, f"{len(streams)} appends to queue behind the first")
    return [first, *later]


@pytest.mark.parametrize("max_batch", [100, 4, 1])
async def test_appends_waiting_for_an_insert_go_out_together_lowest_position_first(
    store: MongoEventStore, redis: Redis, max_batch: int
) -> None:
    """15 appends queued behind an insert in flight go out in batches of up to `max_batch`,
    one batch at a time, lowest positions first; every commit lands, gap-free."""
    grouped, watched = watched_store(store, redis, max_batch)
    counted = batches_counted()
    tasks = await queued_behind_first(grouped, watched, [f"q-{i}" for i in range(15)])
    assert watched.batches == [[1]]  # nothing else goes out while the first is in flight
    watched.release.set()
    results = await asyncio.gather(*tasks)

    assert watched.batches[0] == [1]
    sent = [position for batch in watched.batches[1:] for position in batch]
    assert sent == list(range(2, 17))  # lowest first, across batches and within each
    assert [len(batch) for batch in watched.batches[1:]] == [
        min(max_batch, 15 - start) for start in range(0, 15, max_batch)
    ]
    assert watched.most_at_once == 1
    # The metric operators watch: one observation per insert, of its number of commits.
    assert batches_counted() == (counted[0] + len(watched.batches), counted[1] + 16)
    assert sorted(r.position for r in results) == list(range(1, 17))
    assert [(c.position, c.is_gap) for c in await drain(store)] == [
        (p, False) for p in range(1, 17)
    ]


async def test_a_duplicate_in_a_batch_refuses_only_its_own_commit(
    store: MongoEventStore, redis: Redis
) -> None:
    """Two appends racing for one stream version in the same batch: exactly one wins, the
    other gets a conflict and fills its position with a gap, the rest of the batch lands."""
    grouped, watched = watched_store(store, redis, 100)
    streams = ["same", "other-1", "same", "other-2", "other-3"]
    tasks = await queued_behind_first(grouped, watched, streams)
    watched.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert sorted(watched.streams[1]) == sorted(streams)  # the racers shared one insert
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert [(type(e), getattr(e, "stream_id", None)) for e in errors] == [
        (ConcurrencyError, "same")
    ]
    log = await drain(store)
    assert [c.position for c in log] == list(range(1, 7))
    assert sorted(c.stream_id for c in log if not c.is_gap) == [
        "first",
        "other-1",
        "other-2",
        "other-3",
        "same",
    ]
    assert sum(c.is_gap for c in log) == 1


async def test_a_failed_batch_fails_each_of_its_appends_and_the_next_batch_goes_out(
    store: MongoEventStore, redis: Redis
) -> None:
    """A connection lost under a batch is every one of its appends' error (none is reported
    stored); the group keeps going, and readers seal the positions nobody wrote."""
    grouped, watched = watched_store(store, redis, 100)
    watched.failing = True
    tasks = await queued_behind_first(grouped, watched, ["a", "b", "c"])
    watched.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, AutoReconnect) for o in outcomes), outcomes

    watched.failing = False
    result = await grouped.append("after", 0, [NoteWritten(text="after")], meta())
    assert result.position == 5
    assert await drain(store) == []  # waits at the unwritten positions for the gap timeout
    assert [(c.position, c.is_gap) for c in await drained_to(store, 5)] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (5, False),
    ]


async def test_an_append_cancelled_while_queued_is_left_out_of_the_batch(
    store: MongoEventStore, redis: Redis
) -> None:
    """A request that goes away before its batch leaves writes nothing; its position is
    sealed like any unwritten one, and the rest of the batch lands."""
    grouped, watched = watched_store(store, redis, 100)
    first, gone, kept = await queued_behind_first(grouped, watched, ["gone", "kept"])
    gone.cancel()
    watched.release.set()
    await asyncio.gather(first, kept)
    with pytest.raises(asyncio.CancelledError):
        await gone

    assert watched.streams == [["first"], ["kept"]]
    log = await drained_to(store, 3)
    assert log[0].stream_id == "first"
    assert sorted((c.stream_id, c.is_gap) for c in log[1:]) == [("kept", False), ("~gap", True)]
