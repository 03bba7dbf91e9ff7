"""What a process shares: its clients, and the components built on them (made by bootstrap.py).

A plain container, so that the layers can name it in their signatures without importing the
composition root that fills it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow.commands.user_handlers import Accounts
from taskflow.events.mongo_store import MongoEventStore
from taskflow.hot_redis import HotRedis
from taskflow.privacy.data_keys import DataKeys
from taskflow.settings import Settings

Document = dict[str, Any]


@dataclass(frozen=True)
class Services:
    """Everything a process shares: clients, and the components built on them."""

    settings: Settings
    mongo: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]  # primary: the log, leases, auth
    views_db: AsyncDatabase[Document]  # primary: the MongoDB read models and their checkpoints
    read_db: AsyncDatabase[Document]  # the read models again, from secondaries when there are any
    redis: Redis
    hot: HotRedis  # quick calls of concurrent callers, pipelined on one connection
    store: MongoEventStore
    keys: DataKeys  # the per-user data keys (docs/privacy.md)
    accounts: Accounts  # what the user handlers need
