"""The MongoDB read models live in a database of their own, apart from the log.

On FerretDB's SQLite backend each database is a file with a single writer: in the log's file, a
pass of view writes held the log's inserts (and so every later commit) back for up to 1.5 s
(docs/benchmarks.md, "The read models' own database").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from taskflow import names
from taskflow.bootstrap import ensure_indexes, open_services, projections
from taskflow.projections.mongo_view_writes import CHECKPOINT_ID
from taskflow.projections.runtime import catch_up
from taskflow.services import Services
from taskflow.settings import Settings
from tests.workload import write_workload


@pytest.fixture
async def services(
    settings: Settings, mongo: AsyncMongoClient[dict[str, Any]]
) -> AsyncIterator[Services]:
    async with open_services(settings) as opened:
        await ensure_indexes(opened)
        yield opened


async def test_the_projector_writes_the_mongodb_views_and_their_checkpoint_apart_from_the_log(
    settings: Settings, services: Services, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    await write_workload(services.store, tasks=4, changes=12)
    await catch_up(services.store, projections(services))
    head = await services.store.head_position()

    views = await mongo[f"{settings.mongodb_db}_views"].list_collection_names()
    log = await mongo[settings.mongodb_db].list_collection_names()
    assert names.task_views_collection(1) in views
    assert names.COMMITS in log
    assert names.task_views_collection(1) not in log
    # The checkpoint lives with the views it describes, so one fenced command writes both.
    checkpoint = await mongo[settings.views_db_name][names.task_views_collection(1)].find_one(
        {"_id": CHECKPOINT_ID}
    )
    assert checkpoint is not None
    assert checkpoint["position"] == head


def test_mongodb_views_db_names_the_read_models_database() -> None:
    assert Settings(mongodb_db="tf").views_db_name == "tf_views"
    assert Settings(mongodb_db="tf", mongodb_views_db="reads").views_db_name == "reads"
