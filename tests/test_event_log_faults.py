"""Many concurrent writers with injected faults, and a reader that must see every commit once."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis

from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit, Metadata
from taskflow.events.store import ConcurrencyError
from tests.conftest import TEST_HMAC_KEY
from tests.sample_events import NoteWritten


class InjectedCrashError(Exception):
    """A writer dying after it took a position and before it wrote."""


class FaultyStore(MongoEventStore):
    """The real store with faults between taking a position and inserting."""

    rng = random.Random(1234)

    async def _insert(self, commit: Commit) -> None:
        roll = self.rng.random()
        if roll < 0.08:
            raise InjectedCrashError(commit.position)
        if roll < 0.16:
            await asyncio.sleep(self.rng.uniform(0.05, 0.6))  # some outlive the gap timeout
        await super()._insert(commit)


@pytest.mark.slow(11)
@pytest.mark.timeout(240)
async def test_concurrent_faulty_writers_every_commit_read_once_in_stream_order(
    store: MongoEventStore, redis: Redis
) -> None:
    """Crashes, slow writers and conflicts never make the ordered reader skip or repeat."""
    faulty = FaultyStore(
        store.commits.database, redis, HashChain(TEST_HMAC_KEY), hot=store.hot, gap_timeout=0.3
    )
    streams = [f"s-{i}" for i in range(8)]
    committed: dict[str, int] = {}  # commit id -> position
    outcomes = {"conflicts": 0, "crashes": 0}

    async def writer(n: int) -> None:
        rng = random.Random(n)
        for i in range(25):
            stream = rng.choice(streams)
            head = await faulty.stream_head(stream)
            version = head.version if head else (await faulty.load_head(stream))[0].version
            meta = Metadata(actor="w", request_id=f"{n}-{i}", correlation_id="c")
            try:
                result = await faulty.append(stream, version, [NoteWritten(text=f"{n}-{i}")], meta)
            except ConcurrencyError:
                outcomes["conflicts"] += 1
            except InjectedCrashError:
                outcomes["crashes"] += 1
            else:
                committed[f"{stream}:{result.first_version}"] = result.position

    seen: list[Commit] = []
    writing = True

    async def reader() -> None:
        position = 0
        while writing or position < await store.positions.allocated_or_zero():
            async for commit in store.read_all(position):
                seen.append(commit)
                position = commit.position
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(16)))
    writing = False
    await asyncio.wait_for(reading, 60)

    positions = [c.position for c in seen]
    assert positions == list(range(1, len(positions) + 1))  # in order, none skipped, none twice
    read_commits = {c.commit_id: c.position for c in seen if not c.is_gap}
    assert read_commits == committed
    in_log = await store.commits.count_documents({"kind": "commit"})
    assert in_log == len(committed)
    for stream in streams:
        versions = [c.first_version for c in seen if c.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))
    assert outcomes["crashes"] > 0
    assert outcomes["conflicts"] > 0
    assert any(c.is_gap for c in seen)
