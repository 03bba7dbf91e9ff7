"""`python -m bench.rawserver PORT`: the raw HTTP baselines, bare aiohttp handlers on uvloop.

- `GET /l0`: a constant JSON body (L0: what aiohttp itself costs).
- `POST /l1`: one `insert_one` of a commit-sized document into `BENCH_DB.event_commits` (L1),
  with the log's write concern; the bench creates the log's indexes there first.
- `GET /get/{key}`: one Redis `GET`, the stored bytes as the body (Rraw).
- `GET /hvals/{key}`: one Redis `HVALS`, the values as a JSON array (the uncached list's fetch).

Reads `MONGODB_URI`, `BENCH_DB` and `REDIS_URL` from the environment. Run as several
processes on one port under gunicorn, as the API's workers are:
`python -m gunicorn 'bench.rawserver:create_app()' -k aiohttp.GunicornUVLoopWebWorker -w 2`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from collections.abc import AsyncIterator

import orjson
import uvloop
from aiohttp import web
from pymongo import AsyncMongoClient, WriteConcern
from redis.asyncio import Redis

from bench.samples import commit_document
from taskflow import names

MONGO = web.AppKey("mongo", AsyncMongoClient)
REDIS = web.AppKey("redis", Redis)
BODY = orjson.dumps({"ok": True, "service": "bench"})
JSON = "application/json"


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_clients)
    app.router.add_get("/l0", l0)
    app.router.add_post("/l1", l1)
    app.router.add_get("/get/{key}", get)
    app.router.add_get("/hvals/{key}", hvals)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(os.environ["MONGODB_URI"])
    # redis-py's client as a handler written without TaskFlow would make it: its defaults (a
    # plain pool, no per-command timeout), the C parser when hiredis is installed. (Until
    # issue 26 this was the API's general pool, a blocking one with per-command timeouts, which
    # the API's guarded reads no longer use: docs/benchmarks.md.)
    redis: Redis = Redis.from_url(os.environ["REDIS_URL"])
    app[MONGO], app[REDIS] = mongo, redis
    yield
    await redis.aclose()
    await mongo.close()


async def l0(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type=JSON)


# Disjoint per process, so that several on one port never insert the same position.
_positions = itertools.count(os.getpid() * 1_000_000_000 + 1)
_stream = uuid.uuid4().hex
# Built once: a handler that only inserts, not one that also builds a pydantic commit.
_TEMPLATE = commit_document("raw", 1, 1)


async def l1(request: web.Request) -> web.Response:
    await request.read()
    position = next(_positions)
    stream = f"raw-{_stream}-{position}"
    doc = {**_TEMPLATE, "_id": f"{stream}:1", "stream_id": stream, "position": position}
    doc["idempotency"] = f"~{stream}:1"
    commits = request.app[MONGO][os.environ["BENCH_DB"]].get_collection(
        names.COMMITS, write_concern=WriteConcern("majority", j=True)
    )
    await commits.insert_one(doc)
    return web.Response(body=orjson.dumps({"id": doc["_id"]}), status=201, content_type=JSON)


async def get(request: web.Request) -> web.Response:
    raw = await request.app[REDIS].get(request.match_info["key"])
    if raw is None:
        raise web.HTTPNotFound()
    return web.Response(body=raw, content_type=JSON)


async def hvals(request: web.Request) -> web.Response:
    values = await request.app[REDIS].hvals(request.match_info["key"])
    body = b",".join(v if isinstance(v, bytes) else v.encode() for v in values)
    return web.Response(body=b"[" + body + b"]", content_type=JSON)


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `taskflow serve` does
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
