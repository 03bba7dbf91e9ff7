"""`python -m bench.raw_relay PORT`: the change feed's raw baseline, an XREAD relay on bare aiohttp.

- `POST /write/{owner}`: one `insert_one` of a commit-sized document (the log's write concern),
  then one `XADD` of a view-sized entry to the owner's stream: the write path without commands,
  events or a projector.
- `GET /events/{owner}`: server-sent events of the owner's stream from now on: one task of the
  process reads every stream a subscriber follows (`XREAD BLOCK`, one connection) and hands each
  entry to that owner's subscribers' queues, as the API's hub does, without authentication,
  snapshots, resuming, heartbeats or limits.

Reads `MONGODB_URI`, `BENCH_DB` and `REDIS_URL` from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvloop
from aiohttp import web
from pymongo import AsyncMongoClient, WriteConcern
from redis.asyncio import Redis

from bench.samples import commit_document
from taskflow import names
from taskflow.bootstrap import redis_client

MONGO = web.AppKey("mongo", AsyncMongoClient)
REDIS = web.AppKey("redis", Redis)
PREFIX = "bench:relay:"
VIEW = orjson.dumps({"title": "Review the quarterly budget", "status": "todo", "version": 1})
_positions = itertools.count(os.getpid() * 1_000_000_000 + 1)
_stream = uuid.uuid4().hex
_TEMPLATE = commit_document("raw", 1, 1)


class Relay:
    """One XREAD reader for every followed stream, fanned out to unbounded queues."""

    def __init__(self, redis_url: str) -> None:
        self.reader = Redis.from_url(redis_url, single_connection_client=True, socket_timeout=10)
        self.followers: defaultdict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
        self.last: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            streams = {PREFIX + owner: self.last[owner] for owner in self.followers}
            if not streams:
                await asyncio.sleep(0.01)
                continue
            # Blocking as long as the API's hub does (feed_hub.BLOCK_SECONDS).
            reply: Any = await self.reader.xread(streams, count=500, block=1000)  # type: ignore[arg-type]
            for key, rows in reply or []:
                owner = key.decode().removeprefix(PREFIX)
                for entry_id, fields in rows:
                    self.last[owner] = entry_id.decode()
                    for queue in self.followers.get(owner, ()):
                        queue.put_nowait(entry_id + b"\n" + fields[b"v"])


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_clients)
    app.router.add_post("/write/{owner}", write)
    app.router.add_get("/events/{owner}", events)
    app.router.add_get("/ready", ready)
    return app


RELAY = web.AppKey("relay", Relay)


async def _clients(app: web.Application) -> AsyncIterator[None]:
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(os.environ["MONGODB_URI"])
    redis = redis_client(os.environ["REDIS_URL"], 2.0)
    relay = Relay(os.environ["REDIS_URL"])
    app[MONGO], app[REDIS], app[RELAY] = mongo, redis, relay
    reading = asyncio.create_task(relay.run())
    yield
    reading.cancel()
    with contextlib.suppress(BaseException):
        await reading
    await relay.reader.aclose()
    await redis.aclose()
    await mongo.close()


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def write(request: web.Request) -> web.Response:
    await request.read()
    position = next(_positions)
    stream = f"raw-{_stream}-{position}"
    doc = {**_TEMPLATE, "_id": f"{stream}:1", "stream_id": stream, "position": position}
    doc["idempotency"] = f"~{stream}:1"
    commits = request.app[MONGO][os.environ["BENCH_DB"]].get_collection(
        names.COMMITS, write_concern=WriteConcern("majority", j=True)
    )
    await commits.insert_one(doc)
    key = PREFIX + request.match_info["owner"]
    entry: Any = await request.app[REDIS].xadd(key, {"v": VIEW}, maxlen=200, approximate=True)
    return web.Response(
        body=b'{"id":"' + entry + b'"}', status=201, content_type="application/json"
    )


async def events(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY]
    owner = request.match_info["owner"]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    if owner not in relay.last:  # from the stream's top now (`$` would miss entries added
        top: Any = await request.app[REDIS].xrevrange(PREFIX + owner, count=1)  # between XREADs)
        relay.last[owner] = top[0][0].decode() if top else "0-0"
    relay.followers[owner].add(queue)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        await response.write(b"event: ready\ndata: {}\n\n")
        while True:
            entry_id, _, data = (await queue.get()).partition(b"\n")
            await response.write(b"id: " + entry_id + b"\ndata: " + data + b"\n\n")
    except ConnectionResetError:
        pass  # the client left
    finally:
        relay.followers[owner].discard(queue)
        if not relay.followers[owner]:
            del relay.followers[owner]
            relay.last.pop(owner, None)
    return response


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
