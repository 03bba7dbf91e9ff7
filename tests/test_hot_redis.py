"""The pipelined connection of quick Redis calls (guarded reads, deny-list checks, appends):
replies in order, every call bounded, concurrent callers sharing writes."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskflow.events.mongo_store import MongoEventStore
from taskflow.hot_redis import HotRedis, HotScript
from taskflow.settings import Settings
from tests.conftest import closed_port
from tests.sample_events import NoteWritten
from tests.test_event_store import meta


async def test_concurrent_calls_each_get_their_own_reply(hot: HotRedis, redis: Redis) -> None:
    """Many calls in flight on the one connection: each gets the reply to its own command, an
    error reply fails only its own call, and the URL's database is the one written."""
    keys = [f"k:{i}" for i in range(200)]
    await redis.mset({key: f"value {i}" for i, key in enumerate(keys)})

    async def wrong() -> None:
        with pytest.raises(ResponseError):
            await hot.execute("HGET", keys[0], "field")  # a string is not a hash

    replies, _ = await asyncio.gather(
        asyncio.gather(*(hot.execute("GET", key) for key in keys)), wrong()
    )
    assert replies == [f"value {i}".encode() for i in range(len(keys))]
    await hot.execute("SET", "from:hot", b"x")
    assert await redis.get("from:hot") == b"x"  # the general client's database


async def test_a_script_redis_does_not_know_is_loaded(hot: HotRedis, redis: Redis) -> None:
    """EVALSHA of a script Redis has not seen (or forgot) loads it and runs it."""
    script = HotScript(f"return {{ARGV[1], '{uuid.uuid4().hex}'}}")
    await redis.script_flush()
    answer = await hot.evalsha(script, [], ["a"])
    assert answer[0] == b"a"
    assert await hot.evalsha(script, [], ["b"]) == [b"b", answer[1]]


async def test_a_caller_that_gives_up_leaves_the_connection_in_step(hot: HotRedis) -> None:
    """A cancelled call's reply is read and dropped: the next calls get their own replies."""
    blocked = asyncio.create_task(hot.execute("BLPOP", f"empty:{uuid.uuid4().hex}", "0.3"))
    await asyncio.sleep(0)  # the command is queued
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await hot.execute("ECHO", "after") == b"after"
    assert await hot.execute("PING") == b"PONG"


async def test_a_call_not_answered_in_time_fails_and_the_next_connects_afresh(
    settings: Settings,
) -> None:
    """Past its timeout a call fails with TimeoutError (the connection is given up, with the
    calls behind it); the next call is answered on a new connection."""
    hot = HotRedis(settings.redis_url, timeout=0.2)
    try:
        started = time.monotonic()
        stuck = hot.execute("BLPOP", f"empty:{uuid.uuid4().hex}", "5")
        behind = hot.execute("PING")
        results = await asyncio.gather(stuck, behind, return_exceptions=True)
        assert all(isinstance(result, TimeoutError) for result in results)
        assert time.monotonic() - started < 2.0
        assert await hot.execute("PING") == b"PONG"
    finally:
        await hot.aclose()


async def test_a_connection_redis_closed_is_replaced(hot: HotRedis, redis: Redis) -> None:
    """Redis closing the connection (a restart, its idle timeout) costs no failed call."""
    own_id = await hot.execute("CLIENT", "ID")
    assert await redis.client_kill_filter(_id=own_id) == 1
    assert await hot.execute("PING") == b"PONG"
    assert await hot.execute("CLIENT", "ID") != own_id


async def test_commands_sent_together_keep_their_order_and_their_own_errors(
    hot: HotRedis, redis: Redis
) -> None:
    """An append's announce: its commands leave in one write, in order, each with its own
    reply or error; on a connection Redis closed meanwhile they are all sent again."""
    await redis.set("text", "not a number")
    await hot.execute("PING")  # connected (with its SELECT of the test's database) beforehand
    writes = hot.writes
    replies = await hot.execute_all(
        [("SET", "a", "1"), ("INCR", "text"), ("APPEND", "a", "2"), ("GET", "a")]
    )
    assert hot.writes == writes + 1
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)
    assert replies[2:] == [2, b"12"]
    assert await redis.client_kill_filter(_id=await hot.execute("CLIENT", "ID")) == 1
    assert await hot.execute_all([("SET", "b", "x"), ("GET", "b")]) == [b"OK", b"x"]


async def test_concurrent_appends_share_their_redis_writes(store: MongoEventStore) -> None:
    """Each append takes a position and announces its commit (four commands, two calls): 16
    at once make 32 calls or more (the first take also seeds the counter), in fewer writes."""
    await store.hot.execute("PING")  # connected beforehand
    writes = store.hot.writes
    await asyncio.gather(
        *(store.append(f"note-{n}", 0, [NoteWritten(text=str(n))], meta()) for n in range(16))
    )
    sent = store.hot.writes - writes
    assert 1 <= sent < 32, sent
    heads = [await store.stream_head(f"note-{n}") for n in range(16)]
    assert all(head is not None and head.version == 1 for head in heads)


async def test_callers_waiting_for_an_unreachable_redis_wait_one_timeout_together() -> None:
    """A server that accepts connections but never answers (a stalled Redis): every call in
    flight fails with TimeoutError within about one timeout, not one timeout each in turn."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # the kernel completes the connections; nobody reads them
        port = server.getsockname()[1]
        hot = HotRedis(f"redis://127.0.0.1:{port}/1", timeout=0.3)  # SELECT 1 never answered
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(hot.execute("PING") for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(result, TimeoutError) for result in results), results
            assert time.monotonic() - started < 2.0  # in turn, 20 x 0.3 s
        finally:
            await hot.aclose()


async def test_a_redis_that_refuses_connections_is_a_redis_error() -> None:
    """Refused, as when Redis is down: a RedisError (the API's 503), not a bare OSError."""
    hot = HotRedis(f"redis://127.0.0.1:{closed_port()}/0", timeout=2.0)
    try:
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await hot.execute("PING")
    finally:
        await hot.aclose()
