"""Auto-pipelining (taskflow/auto_pipeline.py) on the real Redis: concurrent callers' commands
share pipelines, and each keeps its own reply and its own error."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskflow.auto_pipeline import AutoPipeline
from taskflow.bootstrap import redis_client
from taskflow.events.mongo_store import MongoEventStore
from tests.conftest import closed_port
from tests.sample_events import NoteWritten
from tests.test_event_store import meta


async def test_concurrent_callers_share_pipelines_and_each_gets_its_own_reply(
    redis: Redis,
) -> None:
    pipeline = AutoPipeline(redis)
    replies = await asyncio.gather(*(pipeline.execute("INCR", "counter") for _ in range(100)))
    # Every INCR ran once, and each caller got the reply to its own command.
    assert sorted(replies) == list(range(1, 101))
    # The first leaves alone on the loop's next turn with whoever queued in this one: here
    # all of them, as a handful of batches at most.
    assert pipeline.batches <= 2, pipeline.batches


async def test_an_error_reply_fails_only_the_command_that_got_it(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    await redis.set("text", "not a number")

    async def increment_text() -> object:
        with pytest.raises(ResponseError, match="not an integer"):
            await pipeline.execute("INCR", "text")
        return "refused"

    many, refused, fine = await asyncio.gather(
        pipeline.execute_many([("SET", "a", "1"), ("INCR", "text"), ("GET", "a")]),
        increment_text(),
        pipeline.execute("INCR", "number"),
    )
    assert pipeline.batches == 1  # all in one pipeline
    assert many[0] is True
    assert many[2] == b"1"
    assert isinstance(many[1], ResponseError)
    assert refused == "refused"
    assert fine == 1


async def test_a_caller_cancelled_before_its_batch_leaves_is_dropped(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    cancelled = asyncio.ensure_future(pipeline.execute("INCR", "dropped"))
    kept = asyncio.ensure_future(pipeline.execute("INCR", "kept"))
    await asyncio.sleep(0)  # both queued; the sender has not run yet
    cancelled.cancel()
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await redis.get("dropped") is None


async def test_a_callers_commands_are_never_split_over_two_batches(redis: Redis) -> None:
    pipeline = AutoPipeline(redis, max_batch=3)
    groups = [[("RPUSH", f"list-{i}", str(n)) for n in range(3)] for i in range(4)]
    await asyncio.gather(*(pipeline.execute_many(group) for group in groups))
    assert pipeline.batches == 4  # three commands each: one caller a batch
    for i in range(4):
        assert await redis.lrange(f"list-{i}", 0, -1) == [b"0", b"1", b"2"]


async def test_a_script_redis_forgot_is_loaded_again(redis: Redis) -> None:
    pipeline = AutoPipeline(redis)
    script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await pipeline.evalsha(script, ["total"], [5]) == 5
    await redis.script_flush()
    assert await pipeline.evalsha(script, ["total"], [2]) == 7


async def test_when_redis_cannot_be_reached_every_caller_in_the_batch_fails() -> None:
    down = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=1)
    try:
        pipeline = AutoPipeline(down)
        outcomes = await asyncio.gather(
            *(pipeline.execute("GET", f"key-{n}") for n in range(5)), return_exceptions=True
        )
        assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
        assert pipeline.batches == 1
    finally:
        await down.aclose()


async def test_concurrent_appends_share_their_redis_round_trips(store: MongoEventStore) -> None:
    await asyncio.gather(
        *(store.append(f"note-{n}", 0, [NoteWritten(text=str(n))], meta()) for n in range(16))
    )
    # Each append took a position and announced its commit (four commands) through the
    # pipeline, and the appends shared round trips: about half as many as calls, here.
    sent = store.pipeline
    assert sent.commands >= 16 * 4, sent.commands
    assert sent.batches < 16 * 2, (sent.batches, sent.commands)
    heads = [await store.stream_head(f"note-{n}") for n in range(16)]
    assert all(head is not None and head.version == 1 for head in heads)
