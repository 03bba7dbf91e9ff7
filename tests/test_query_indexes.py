"""Query indexes are created only where the server can use them (taskflow/mongo_indexes.py)."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from taskflow.events.mongo_store import MongoEventStore
from taskflow.mongo_indexes import serves_query_indexes
from taskflow.projections.mongo_views import MongoTaskViews, task_view_indexes

UNIQUE_LOG_INDEXES = {"position_1", "idempotency_1"}


async def test_query_indexes_follow_what_the_server_plans_and_reads_still_filter(
    store: MongoEventStore, views_db: AsyncDatabase[dict[str, Any]]
) -> None:
    """The unique indexes that decide races are always there (`_id` decides a stream version
    by itself). The query indexes, and the log's stream-order index (unique, but saying no more
    than `_id`), are there exactly when the server hands a field filter to its storage: not on
    FerretDB with SQLite, whose explain of the views' own list filter says it evaluates it
    itself (there they only made every write dearer). Set up twice, as every start does."""
    views = MongoTaskViews(views_db)
    for _ in range(2):
        await store.ensure_indexes()
        await views.setup()
    usable = await serves_query_indexes(views.views)
    listing = {"find": views.views.name, "filter": {"owner_id": "o", "deleted": False}}
    plan = await views_db.command({"explain": listing, "verbosity": "queryPlanner"})
    assert usable == (plan.get("filterPushdown") is not False)

    log_indexes = set((await store.commits.index_information()).keys()) - {"_id_"}
    view_indexes = set((await views.views.index_information()).keys()) - {"_id_"}
    assert log_indexes >= UNIQUE_LOG_INDEXES
    assert ("recorded_at_1" in log_indexes) == usable
    assert ("stream_id_1_first_version_1" in log_indexes) == usable
    assert len(view_indexes) == (len(task_view_indexes()) if usable else 0)

    await views.views.insert_many(
        [{"_id": f"t{n}", "owner_id": f"o{n % 2}", "deleted": False} for n in range(6)]
    )
    found = [doc["_id"] async for doc in views.views.find({"owner_id": "o1"}).sort("_id", 1)]
    assert found == ["t1", "t3", "t5"]  # with or without an index, the same answer
