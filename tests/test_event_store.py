"""Contract tests of the event store against the real local MongoDB-protocol and Redis servers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from taskflow import names
from taskflow.events import log_reader
from taskflow.events.chain import HashChain
from taskflow.events.codec import commit_to_document, decode_events
from taskflow.events.gaps import make_gap
from taskflow.events.log_seals import GENESIS, log_digest
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.positions import BLOCK
from taskflow.events.records import Commit, Metadata
from taskflow.events.store import ConcurrencyError, IdempotencyKeyReusedError
from taskflow.hot_redis import HotRedis
from taskflow.projections.log_seal import LogSeal, SealMismatchError
from taskflow.projections.runtime import run_until_caught_up
from tests.conftest import TEST_HMAC_KEY, commands_sent
from tests.sample_events import NoteTagged, NoteWritten


def meta(actor: str = "u1", fingerprint: str = "") -> Metadata:
    return Metadata(
        actor=actor,
        request_id="req-1",
        correlation_id="corr-1",
        causation_id="cause-1",
        fingerprint=fingerprint,
    )


async def drain(store: MongoEventStore, after: int = 0) -> list[Commit]:
    return [commit async for commit in store.read_all(after)]


async def test_append_stores_all_events_of_a_command_in_one_commit(store: MongoEventStore) -> None:
    """One append of several events is one document with contiguous versions and metadata."""
    result = await store.append("s-1", 0, [NoteWritten(text="a"), NoteWritten(text="b")], meta())
    assert (result.first_version, result.version, result.replayed) == (1, 2, False)
    assert await store.commits.count_documents({}) == 1
    [commit] = await store.read_stream("s-1")
    assert [e.version for e in commit.events] == [1, 2]
    assert decode_events(commit) == [NoteWritten(text="a"), NoteWritten(text="b")]
    assert commit.metadata == meta()
    assert commit.position == result.position
    assert commit.recorded_at.tzinfo is not None


async def test_stale_expected_version_is_a_conflict_carrying_the_current_version(
    store: MongoEventStore, redis: Redis
) -> None:
    """Appending at an old version fails with the stream's real version, cached head or not."""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    await store.append("s-1", 1, [NoteWritten(text="b")], meta())
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s-1", 1, [NoteWritten(text="c")], meta())
    assert caught.value.actual == 2
    await redis.flushdb()  # without the Redis head the log itself decides
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s-1", 0, [NoteWritten(text="c")], meta())
    assert caught.value.actual == 2
    with pytest.raises(ConcurrencyError):
        await store.append("s-1", 5, [NoteWritten(text="c")], meta())


async def test_a_head_cache_behind_the_log_cannot_overwrite_a_version(
    store: MongoEventStore, redis: Redis
) -> None:
    """Rolling the cached head back makes the append collide on the unique version key."""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    old_head = await store.stream_head("s-1")
    await store.append("s-1", 1, [NoteWritten(text="b")], meta())
    assert old_head is not None
    await redis.delete("tf:head:s-1")
    await redis.hset("tf:head:s-1", mapping={"v": old_head.version, "h": old_head.hash})
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s-1", 1, [NoteWritten(text="x")], meta())
    assert caught.value.actual == 2
    assert [c.last_version for c in await store.read_stream("s-1")] == [1, 2]


@pytest.mark.parametrize(("racers", "rounds"), [(50, 5), (200, 3)])
async def test_concurrent_appenders_have_one_winner_per_version(
    store: MongoEventStore, racers: int, rounds: int
) -> None:
    """Of N writers racing at each version exactly one wins, and versions stay contiguous."""
    for version in range(rounds):
        outcomes = await asyncio.gather(
            *(
                store.append("race", version, [NoteWritten(text=f"{version}-{i}")], meta())
                for i in range(racers)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, ConcurrencyError)]
        assert len(winners) == 1
        assert len(losers) == racers - 1
        assert all(loser.actual == version + 1 for loser in losers)
    commits = await store.read_stream("race")
    assert [c.first_version for c in commits] == list(range(1, rounds + 1))
    log = await drain(store)
    positions = [c.position for c in log]
    # No position skipped or repeated: losers filled theirs, up to the last one handed out.
    assert positions == list(range(1, await store.positions.allocated_or_zero() + 1))
    assert [c.first_version for c in log if not c.is_gap] == list(range(1, rounds + 1))


async def test_idempotency_key_returns_the_original_outcome_and_writes_nothing(
    store: MongoEventStore, redis: Redis
) -> None:
    """A retried key replays the first result, even once Redis forgot it; a new command fails."""
    first = await store.append(
        "s-1", 0, [NoteWritten(text="a")], meta(fingerprint="fp-a"), idempotency_key="k1"
    )
    again = await store.append(
        "s-1", 0, [NoteWritten(text="a")], meta(fingerprint="fp-a"), idempotency_key="k1"
    )
    assert (again.replayed, again.position, again.version) == (True, first.position, 1)
    await redis.flushdb()
    from_log = await store.append(
        "s-1", 0, [NoteWritten(text="a")], meta(fingerprint="fp-a"), idempotency_key="k1"
    )
    assert (from_log.replayed, from_log.position) == (True, first.position)
    with pytest.raises(IdempotencyKeyReusedError):
        await store.append(
            "s-1", 1, [NoteWritten(text="b")], meta(fingerprint="fp-b"), idempotency_key="k1"
        )
    other_actor = await store.append(
        "s-2", 0, [NoteWritten(text="a")], meta("u2", fingerprint="fp-b"), idempotency_key="k1"
    )
    assert not other_actor.replayed
    assert await store.commits.count_documents({"kind": "commit"}) == 2


async def test_same_key_on_a_new_stream_replays_instead_of_creating_twice(
    store: MongoEventStore, redis: Redis
) -> None:
    """A retried create with a fresh stream id still hits the key's unique index."""
    first = await store.append(
        "task-a", 0, [NoteWritten(text="a")], meta(fingerprint="c"), idempotency_key="create-1"
    )
    await redis.flushdb()
    retry = await store.append(
        "task-b", 0, [NoteWritten(text="a")], meta(fingerprint="c"), idempotency_key="create-1"
    )
    assert (retry.replayed, retry.stream_id, retry.position) == (True, "task-a", first.position)
    assert await store.read_stream("task-b") == []


async def test_read_stream_up_to_a_version_or_a_moment(store: MongoEventStore) -> None:
    """Reading a stream can stop at a version (inside a commit) or at a recorded time."""
    await store.append("s-1", 0, [NoteWritten(text="a"), NoteWritten(text="b")], meta())
    await asyncio.sleep(0.01)
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.append("s-1", 2, [NoteWritten(text="c")], meta())
    [partial] = await store.read_stream("s-1", to_version=1)
    assert decode_events(partial) == [NoteWritten(text="a")]
    assert [c.last_version for c in await store.read_stream("s-1", as_of=cut)] == [2]
    assert await store.read_stream("s-1", as_of=cut - timedelta(days=1)) == []


async def test_old_schema_versions_are_upcast_when_read(store: MongoEventStore) -> None:
    """An event stored at schema v1 is read as the current v2."""
    await store.append("s-1", 0, [NoteTagged(tags=["x"])], meta())
    await store.commits.update_one(
        {"stream_id": "s-1"},
        {"$set": {"events.0.schema_version": 1, "events.0.data": {"tag": "old"}}},
    )
    [commit] = await store.read_stream("s-1")
    assert decode_events(commit) == [NoteTagged(tags=["old"])]


async def test_editing_a_stored_event_breaks_the_chain_at_that_version(
    store: MongoEventStore,
) -> None:
    """`verify` names the stream and version of a tampered event, and passes untouched streams."""
    for version in range(3):
        await store.append("s-1", version, [NoteWritten(text=str(version))], meta())
    assert await store.verify("s-1") is None
    await store.commits.update_one(
        {"stream_id": "s-1", "first_version": 2}, {"$set": {"events.0.data.text": "forged"}}
    )
    broken = await store.verify("s-1")
    assert broken is not None
    assert (broken.stream_id, broken.version) == ("s-1", 2)
    assert "hash" in broken.reason


async def test_a_position_taken_and_never_written_is_sealed_after_the_timeout(
    store: MongoEventStore,
) -> None:
    """A crashed writer's position stops readers only for the gap timeout, then becomes a gap."""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    lost = await store.positions.take()  # a writer that crashed right after taking a position
    await store.append("s-1", 1, [NoteWritten(text="b")], meta())
    assert [c.position for c in await drain(store)] == [1]  # waits at the hole
    await asyncio.sleep(0.35)

    def no_log_scan(position: int) -> Any:
        raise AssertionError(f"read the log from MongoDB at {position}; the hints had it")

    # After the seal, the rest still comes from the hints: streaming the log instead would
    # scan the whole collection on FerretDB, once per hole.
    store.reader._from_log = no_log_scan  # type: ignore[method-assign]
    rest = await drain(store, 1)
    assert [(c.position, c.is_gap) for c in rest] == [(lost, True), (lost + 1, False)]
    assert await store.head_position() == lost + 1


async def test_reading_the_tail_costs_one_redis_round_trip(
    store: MongoEventStore, hot: HotRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projector woken for a new commit reads its hint, records it settled and learns that
    nothing after it was handed out in one script: one round trip a pass. (It was an MGET and
    a script, and a commit announced between the two, then settled by another reader, sent the
    pass to stream the log from MongoDB; read in one atomic step, that cannot happen.)"""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    sent = commands_sent(hot, monkeypatch)
    assert [c.position for c in await drain(store)] == [1]
    assert sent == ["EVALSHA"]
    sent.clear()
    assert await drain(store, 1) == []  # nothing new: the same one
    assert sent == ["EVALSHA"]


async def test_a_commit_settled_by_another_reader_is_read_from_its_hint_not_the_log(
    store: MongoEventStore, redis: Redis, hot: HotRedis
) -> None:
    """Two projector processes share the settled head. A commit appended after one reader's
    pass and settled by the other reader is read from its hint on the first one's next pass:
    the head past it must not send the first reader to stream the log from MongoDB (a
    whole-collection scan on FerretDB, and a stall of the projector behind it)."""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    other = log_reader.LogReader(
        store.commits, hot, store.positions, gap_timeout=60.0, hint_ttl=3600
    )
    reader = log_reader.LogReader(
        store.commits, hot, store.positions, gap_timeout=60.0, hint_ttl=3600
    )

    def no_log_scan(position: int) -> Any:
        raise AssertionError(f"read the log from MongoDB at {position}; its hint was there")

    reader._from_log = no_log_scan  # type: ignore[method-assign]
    assert [c.position async for c in reader.read(0)] == [1]
    await store.append("s-1", 1, [NoteWritten(text="b")], meta())
    assert [c.position async for c in other.read(0)] == [1, 2]
    assert [c.position async for c in reader.read(1)] == [2]
    assert await redis.get(names.SETTLED_HEAD) == b"2"


async def test_an_append_whose_announce_times_out_is_still_committed(
    store: MongoEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit is durable before its announce: a Redis that misses the announce's deadline
    costs the hint and the wake-up, not the append (readers find the commit in MongoDB)."""

    async def late(commands: Any) -> list[Any]:
        raise TimeoutError("Redis did not answer in time")

    monkeypatch.setattr(store.hot, "execute_all", late)
    result = await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    monkeypatch.undo()
    assert [c.position for c in await store.read_stream("s-1")] == [result.position]


async def test_a_late_writer_whose_position_was_sealed_retries_with_a_new_one(
    store: MongoEventStore,
) -> None:
    """Either the seal or the late commit wins a position, never both; the commit still lands."""
    release = asyncio.Event()
    entered = asyncio.Event()

    class SlowStore(MongoEventStore):
        async def _insert(self, commit: Commit) -> None:
            if commit.stream_id == "slow" and not release.is_set():
                entered.set()
                await release.wait()
            await super()._insert(commit)

    slow = SlowStore(
        store.commits.database, store._redis, store._chain, hot=store.hot, gap_timeout=0.3
    )
    writer = asyncio.create_task(slow.append("slow", 0, [NoteWritten(text="late")], meta()))
    await entered.wait()
    await store.append("fast", 0, [NoteWritten(text="fast")], meta())
    assert await drain(store) == []  # the reader notices the hole and starts its grace period
    await asyncio.sleep(0.35)
    sealed = await drain(store)
    assert [(c.stream_id, c.is_gap) for c in sealed] == [("~gap", True), ("fast", False)]
    release.set()
    result = await writer
    assert result.position == 3
    # It just took the next position: one collision is no reason to re-seed the counter
    # (which would have moved it to the end of the reserved block).
    assert await store.positions.allocated() == 3
    log = await drain(store)
    assert [c.stream_id for c in log] == ["~gap", "fast", "slow"]


async def test_appends_and_reads_survive_redis_losing_everything(
    store: MongoEventStore, redis: Redis
) -> None:
    """With Redis flushed, positions are re-seeded from MongoDB and readers fall back to it.

    The counter resumes after the last reserved block (one small read, not the log's highest
    position), and that block's unused positions are sealed, so readers never wait for them.
    """
    for version in range(3):
        await store.append("s-1", version, [NoteWritten(text=str(version))], meta())
    await redis.flushdb()
    result = await store.append("s-1", 3, [NoteWritten(text="after")], meta())
    assert result.position == BLOCK + 1
    # The sealed positions are hinted like any other: only the lost commits lack hints.
    hinted = await redis.mget([names.commit_hint_key(p) for p in range(1, BLOCK + 1)])
    assert [p for p, raw in enumerate(hinted, start=1) if raw is None] == [1, 2, 3]
    await redis.delete(names.commit_hint_key(result.position))  # a hint that never arrived
    assert await drain(store) == []  # unknown holes get the grace period first
    await asyncio.sleep(0.35)
    log = await drain(store)
    assert [c.position for c in log] == list(range(1, BLOCK + 2))
    assert [c.position for c in log if not c.is_gap] == [1, 2, 3, BLOCK + 1]


async def test_a_log_from_before_position_blocks_is_reseeded_from_its_highest_position(
    store: MongoEventStore, redis: Redis
) -> None:
    """A log written before blocks were reserved is read once for its highest position."""
    for version in range(3):
        await store.append("s-1", version, [NoteWritten(text=str(version))], meta())
    await store.commits.database[names.POSITION_BLOCKS].drop()
    await redis.flushdb()
    result = await store.append("s-1", 3, [NoteWritten(text="after")], meta())
    assert result.position == BLOCK + 1
    blocks = await store.commits.database[names.POSITION_BLOCKS].find({}).to_list()
    assert [block["_id"] for block in blocks] == [0, 1]


async def test_the_next_block_is_reserved_ahead_not_while_a_position_is_held(
    store: MongoEventStore, redis: Redis
) -> None:
    """An append near the end of the reserved range reserves the next block after its insert,
    so the append that crosses into it takes its position with nothing more to do."""
    blocks = store.commits.database[names.POSITION_BLOCKS]
    await store.append("s-0", 0, [NoteWritten(text="first")], meta())
    assert [block["_id"] async for block in blocks.find({})] == [0]
    await redis.set(names.POSITION_COUNTER, BLOCK - 10)  # as if more had been taken
    await store.append("s-1", 0, [NoteWritten(text="near the end of block 0")], meta())
    assert sorted([block["_id"] async for block in blocks.find({})]) == [0, 1]
    assert int(await redis.get(names.POSITION_RESERVED) or 0) == 2 * BLOCK

    reserved_while_held: list[int] = []
    take = store.positions.reserve

    async def watched_reserve(block: int) -> None:
        reserved_while_held.append(block)
        await take(block)

    store.positions.reserve = watched_reserve  # type: ignore[method-assign]
    await redis.set(names.POSITION_COUNTER, BLOCK)
    result = await store.append("s-2", 0, [NoteWritten(text="first of block 1")], meta())
    assert result.position == BLOCK + 1
    assert reserved_while_held == []


async def test_positions_of_every_block_are_reserved_before_they_are_used(
    store: MongoEventStore, redis: Redis
) -> None:
    """Crossing into a new block inserts its reservation; the mark in Redis follows it."""
    await store.append("s-0", 0, [NoteWritten(text="first")], meta())
    await redis.set(names.POSITION_COUNTER, BLOCK - 1)  # as if BLOCK - 2 more had been taken
    await store.append("s-1", 0, [NoteWritten(text="last of block 0")], meta())
    await store.append("s-2", 0, [NoteWritten(text="first of block 1")], meta())
    blocks = await store.commits.database[names.POSITION_BLOCKS].find({}).to_list()
    assert sorted(block["_id"] for block in blocks) == [0, 1]
    assert int(await redis.get(names.POSITION_RESERVED) or 0) == 2 * BLOCK


async def test_an_append_after_redis_forgot_its_scripts_still_caches_the_head(
    store: MongoEventStore, redis: Redis
) -> None:
    """The announce runs the head script by its SHA; after SCRIPT FLUSH it loads it again."""
    await store.append("s-1", 0, [NoteWritten(text="a")], meta())
    await redis.script_flush()
    result = await store.append("s-1", 1, [NoteWritten(text="b")], meta())
    head = await store.stream_head("s-1")
    assert head is not None
    assert head.version == result.version == 2
    assert [c.position async for c in store.read_all(0)] == [1, result.position]


async def test_a_stream_head_is_kept_until_told_otherwise(
    store: MongoEventStore, redis: Redis
) -> None:
    """Heads never expire by default (a lost head costs a read of the log); a TTL is opt-in."""
    await store.append("kept", 0, [NoteWritten(text="a")], meta(), snapshot=b"{}")
    assert await redis.ttl(names.stream_head_key("kept")) == -1  # exists, no expiry
    expiring = MongoEventStore(
        store.commits.database, redis, HashChain(TEST_HMAC_KEY), hot=store.hot, head_ttl=60
    )
    await expiring.append("kept", 1, [NoteWritten(text="b")], meta(), snapshot=b"{}")
    assert 0 < await redis.ttl(names.stream_head_key("kept")) <= 60
    await store.append("kept", 2, [NoteWritten(text="c")], meta(), snapshot=b"{}")
    assert await redis.ttl(names.stream_head_key("kept")) == -1  # the default persists it again


@pytest.mark.parametrize("reorder_limit", [10_000, 2])
async def test_the_log_is_read_in_position_order_whatever_order_it_is_stored_in(
    store: MongoEventStore, redis: Redis, monkeypatch: pytest.MonkeyPatch, reorder_limit: int
) -> None:
    """Without hints the reader streams MongoDB unsorted and puts documents back in order.

    Position 2 is stored last (as a gap sealed late would be). With a reorder buffer too small
    to hold what comes before it, the reader finishes the run with a sorted read instead.
    """
    monkeypatch.setattr(log_reader, "REORDER_LIMIT", reorder_limit)
    for i in range(6):
        await store.append(f"s-{i}", 0, [NoteWritten(text=str(i))], meta())
    assert len(await drain(store)) == 6  # read once: the settled head is at 6
    second = await store.commits.find_one_and_delete({"position": 2})
    assert second is not None
    await store.commits.insert_one(second)
    stored = [doc["position"] async for doc in store.commits.find({})]
    await redis.delete(*[names.commit_hint_key(p) for p in range(1, 7)])
    log = await drain(store)
    assert [c.position for c in log] == [1, 2, 3, 4, 5, 6]
    assert [c.stream_id for c in log] == [f"s-{i}" for i in range(6)]
    assert stored[-1] == 2  # the server did hand it over last (storage order)


# -- log seals: a chain over the whole log (events/log_seals.py, projections/log_seal.py) ------


async def write_log_with_gaps(store: MongoEventStore) -> None:
    """Positions 1-13: three streams with a gap after every third commit, and s-1 at 13."""
    for i in range(3):
        for stream in ("s-1", "s-2", "s-3"):
            await store.append(stream, i, [NoteWritten(text=f"{stream} {i}")], meta())
        gap = make_gap(await store.positions.take(), datetime.now(UTC))  # a writer's lost race
        await store.commits.insert_one(commit_to_document(gap))
        await store.reader.hint(gap)
    await store.append("s-1", 3, [NoteWritten(text="s-1 3")], meta())


async def sealed_log(store: MongoEventStore) -> list[Commit]:
    """The log of `write_log_with_gaps`, sealed in batches of 4 (seals at 4, 8, 12, 13)."""
    await write_log_with_gaps(store)
    await run_until_caught_up(store, LogSeal(store.commits.database, store.chain), batch_size=4)
    return await drain(store)


async def seal_positions(store: MongoEventStore) -> list[int]:
    return [int(doc["_id"]) async for doc in store.seals.find({}).sort("_id", 1)]


async def test_an_untouched_sealed_log_with_gaps_verifies(store: MongoEventStore) -> None:
    """Seals every batch (gaps included); verify finds nothing and says it is sealed to the end;
    every seal is the running digest at its position, whatever the batch boundaries."""
    log = await sealed_log(store)
    assert await seal_positions(store) == [4, 8, 12, 13]
    audit = await store.audit()
    assert audit.ok, audit
    assert (audit.sealed_to, audit.last_position, audit.seals) == (13, 13, 4)
    digest, at = GENESIS, {}
    for commit in log:
        digest = at[commit.position] = log_digest(digest, commit)
    async for doc in store.seals.find({}):
        assert doc["digest"] == at[doc["_id"]]


@pytest.mark.parametrize(
    ("stream", "version", "seal"),
    [("s-2", 3, 12), ("s-1", 2, 8), ("s-1", 4, 13)],
    ids=["last of its stream", "middle of its stream", "last of the log"],
)
async def test_removing_any_sealed_commit_is_found_by_verify(
    store: MongoEventStore, stream: str, version: int, seal: int
) -> None:
    """Deleting a commit, even a stream's last (no stream chain notices) or the log's last, is
    reported: its position is missing below the highest seal, and the seal over it fails."""
    await sealed_log(store)
    [victim] = [c for c in await store.read_stream(stream) if c.last_version == version]
    await store.commits.delete_one({"_id": victim.commit_id})
    audit = await store.audit()
    assert not audit.ok
    assert audit.missing == [(victim.position, victim.position)]
    assert [problem.position for problem in audit.seal_problems] == [seal]
    chains = [(link.stream_id, link.version) for link in audit.broken]
    assert chains == ([("s-1", 3)] if version == 2 else [])  # only a middle commit breaks one


async def test_a_removed_unsealed_commit_below_the_settled_head_is_missing(
    store: MongoEventStore,
) -> None:
    """Without any seal yet, the log's last commit removed is still a missing position: every
    position up to the settled head held a commit or a gap."""
    await write_log_with_gaps(store)
    await drain(store)  # a reader has settled the log up to its end
    await store.commits.delete_one({"position": 13})
    audit = await store.audit()
    assert (audit.missing, audit.sealed_to, audit.broken) == ([(13, 13)], 0, [])


async def test_a_tampered_or_forged_seal_is_reported(store: MongoEventStore) -> None:
    """A seal whose digest was changed, or one inserted without the key, fails its MAC."""
    await sealed_log(store)
    await store.seals.update_one({"_id": 8}, {"$set": {"digest": GENESIS}})
    await store.seals.insert_one({"_id": 10, "digest": GENESIS, "mac": "0" * 64})
    audit = await store.audit()
    assert [(p.position, "MAC" in p.reason) for p in audit.seal_problems] == [
        (8, True),
        (10, True),
    ]
    assert audit.missing == []


async def test_replayed_and_racing_seal_batches_write_identical_seals(
    store: MongoEventStore,
) -> None:
    """The same batch applied twice, a zombie under an older term, two sealers racing, and a
    checkpoint that went backwards: no error, and the seals are exactly the deterministic ones."""
    for i in range(12):
        await store.append(f"s-{i % 3}", i // 3, [NoteWritten(text=str(i))], meta())
    log = await drain(store)
    db = store.commits.database
    old, new = LogSeal(db, store.chain), LogSeal(db, store.chain)
    await old.fence(1)
    await old.apply(log[:5], term=1)
    await new.fence(2)  # a new holder; `old` is a zombie from here on
    await new.apply(log[:5], term=2)  # its replay of the same batch: the checkpoint is ahead
    await new.apply(log[5:8], term=2)
    await old.apply(log[5:8], term=1)  # the zombie's late batch: identical seal, duplicate key
    await asyncio.gather(new.apply(log[8:], term=2), old.apply(log[8:], term=1))
    assert await seal_positions(store) == [5, 8, 12]
    assert await new.position() == 12
    # A checkpoint lowered (a racing write on a server without atomic updates): re-sealing
    # from there meets the stored seals, identical, and the checkpoint comes back up.
    await db[names.LOG_SEAL_CHECKPOINT].delete_many({})
    again = LogSeal(db, store.chain)
    assert await run_until_caught_up(store, again, batch_size=4) == 12
    assert await seal_positions(store) == [4, 5, 8, 12]
    assert await again.position() == 12
    assert (await store.audit()).ok


async def test_a_changed_log_below_a_stored_seal_stops_the_sealer(store: MongoEventStore) -> None:
    """Re-sealing a log whose sealed part was altered meets a different seal: an error, not a
    silent second opinion."""
    await sealed_log(store)
    await store.commits.delete_one({"position": 2})
    gap = make_gap(2, datetime.now(UTC))
    await store.commits.insert_one(commit_to_document(gap))
    await store.reader.hint(gap)  # the hint of the removed commit expires, or is replaced
    await store.commits.database[names.LOG_SEAL_CHECKPOINT].delete_many({})
    with pytest.raises(SealMismatchError):
        await run_until_caught_up(store, LogSeal(store.commits.database, store.chain), batch_size=4)


async def test_appends_crossing_into_a_block_together_reserve_it_once(
    store: MongoEventStore, redis: Redis
) -> None:
    """Appends that take the first positions of a new block at the same moment wait for one
    reservation insert, not one each: each would be a write transaction of its own, and on
    SQLite's single writer the commits' insert waited behind them (busy sleeps)."""
    await store.append("s-0", 0, [NoteWritten(text="first")], meta())
    stored: list[int] = []
    all_waiting, released = asyncio.Event(), asyncio.Event()
    reserve, store_block = store.positions.reserve, store.positions._store_block
    callers = 0

    async def counted_reserve(block: int) -> None:
        nonlocal callers
        callers += 1
        if callers == 8:
            all_waiting.set()
        await reserve(block)

    async def held_back(block: int) -> None:
        stored.append(block)
        await released.wait()  # until every append needs the block
        await store_block(block)

    store.positions.reserve = counted_reserve  # type: ignore[method-assign]
    store.positions._store_block = held_back  # type: ignore[method-assign]
    await redis.set(names.POSITION_COUNTER, BLOCK)  # the next take is block 1's first
    appends = asyncio.gather(
        *(store.append(f"c-{n}", 0, [NoteWritten(text=str(n))], meta()) for n in range(8))
    )
    async with asyncio.timeout(10):
        await all_waiting.wait()
    released.set()
    results = await appends
    assert sorted(r.position for r in results) == list(range(BLOCK + 1, BLOCK + 9))
    assert stored == [1]
    blocks = await store.commits.database[names.POSITION_BLOCKS].find({}).to_list()
    assert sorted(block["_id"] for block in blocks) == [0, 1]
