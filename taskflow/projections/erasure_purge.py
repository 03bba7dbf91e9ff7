"""Erasure's share of the read side: the Redis entries around the read models that name or hold
an erased user's data (commands/erasure.py is the rest; docs/privacy.md).

The task views themselves are the projectors' to strip, in log order, when they meet the
UserErased event; this deletes what is cached beside them.
"""

from __future__ import annotations

import re

from redis.asyncio import Redis

from taskflow import names
from taskflow.commands.aggregates import TASK, USER
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.text import as_text

SCAN_BATCH = 1000


async def purge_caches_of(redis: Redis, user_id: str) -> None:
    """Delete the user's cached stream heads, list pages (and list indexes, whose keys are page
    keys: list_index.py), change feeds and idempotent outcomes.

    The task views themselves are the projectors' (they erase them in log order). Finding the
    pages and outcomes takes a SCAN of the whole key space: an erasure is rare, and no request
    path pays for it.
    """
    heads = [names.stream_head_key(USER.stream_id(user_id))]
    for version in await _read_model_versions(redis):
        task_ids = await redis.hkeys(RedisViewKeys(version).tasks(user_id))
        heads += [names.stream_head_key(TASK.stream_id(as_text(t))) for t in task_ids]
    await redis.unlink(*heads)
    pattern = re.compile(
        rf"^{re.escape(names.PREFIX)}(idem:{re.escape(user_id)}:|rm:\d+:u:{re.escape(user_id)}:(page:|feed$))".encode()
    )
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{names.PREFIX}*", count=SCAN_BATCH):
        raw = key if isinstance(key, bytes) else str(key).encode()
        if pattern.match(raw):
            batch.append(raw)
        if len(batch) >= SCAN_BATCH:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)


async def _read_model_versions(redis: Redis) -> set[int]:
    active, building = await redis.mget([names.READ_MODEL_ACTIVE, names.READ_MODEL_NEXT])
    return {int(v) for v in (active, building) if v} or {1}
