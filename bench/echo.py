"""The raw latency baseline's subscriber: `HSET`s each message published on its channel."""

from __future__ import annotations

import sys

import orjson
import uvloop
from redis.asyncio import Redis


async def echo(redis_url: str, channel: str) -> None:
    """Forever: a message `{key, field, value}` becomes `HSET key field value`."""
    redis = Redis.from_url(redis_url)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message.get("type") == "message":
                item = orjson.loads(message["data"])
                await redis.hset(item["key"], item["field"], item["value"])


def main() -> None:
    uvloop.run(echo(sys.argv[1], sys.argv[2]))  # as the projector runs: on uvloop


if __name__ == "__main__":
    main()
