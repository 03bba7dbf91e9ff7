"""Which read-model version serves reads: recorded in MongoDB, cached in Redis.

A rebuild builds version N+1 beside N and then switches reads to it (rebuild.py). The switch is
an insert of `{_id: N+1}` into `read_model_switches` (insert-only, so two switches never race on
one document) and then `tf:rm:active` in Redis, which every reader looks at. Redis can lose its
data; the version is then read back from MongoDB (the highest switch) and cached again, so a
Redis restart never sends reads back to version 1, whose collections a rebuild dropped.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names

Document = dict[str, Any]
FIRST_VERSION = 1


async def active_version(redis: Redis, views_db: AsyncDatabase[Document]) -> int:
    """The version reads use: Redis's copy, else MongoDB's record (then copied to Redis)."""
    raw = await redis.get(names.READ_MODEL_ACTIVE)
    if raw is not None:
        return int(raw)
    version = await recorded_version(views_db)
    # NX: a switch that lands meanwhile has set the newer version; do not overwrite it.
    await redis.set(names.READ_MODEL_ACTIVE, version, nx=True)
    return version


async def recorded_version(views_db: AsyncDatabase[Document]) -> int:
    """The highest version a switch recorded in MongoDB (a small collection: one per rebuild)."""
    switches = views_db[names.READ_MODEL_SWITCHES]
    last = await switches.find({}).sort("_id", -1).limit(1).to_list()
    return int(last[0]["_id"]) if last else FIRST_VERSION


async def record_switch(views_db: AsyncDatabase[Document], version: int) -> None:
    """Record that reads switch to `version` (before Redis is told); idempotent."""
    with contextlib.suppress(DuplicateKeyError):  # recorded by an earlier attempt
        await views_db[names.READ_MODEL_SWITCHES].insert_one(
            {"_id": version, "at": datetime.now(UTC)}
        )
