"""`scripts/services.sh` starts and stops real servers: its opt-in PostgreSQL backend, and the
`_id` lookup fix it builds FerretDB with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "services.sh"
PROFILE = "pgcheck"


def _services(*args: str, backend: str) -> None:
    env = {**os.environ, "FERRETDB_BACKEND": backend}
    subprocess.run([str(SCRIPT), *args], check=True, env=env, timeout=180, capture_output=True)


def _postgres_running(state: Path) -> bool:
    return (state / PROFILE / "pg" / "data" / "postmaster.pid").exists()


async def test_the_postgresql_backend_starts_serves_the_log_and_stops(tmp_path: Path) -> None:
    """FERRETDB_BACKEND=postgresql: FerretDB on a private PostgreSQL, which `stop` also ends."""
    state = Path(os.environ.get("TASKFLOW_STATE_DIR", ROOT / ".state"))
    # Fresh data: FerretDB 1.24 on PostgreSQL fails to re-create a database whose last
    # collection was dropped ("relation _ferretdb_database_metadata already exists").
    shutil.rmtree(state / PROFILE, ignore_errors=True)
    _services("start", PROFILE, backend="postgresql")
    try:
        env = dict(
            line.split("=", 1)
            for line in (state / PROFILE / "services.env").read_text().splitlines()
            if "=" in line
        )
        assert env["FERRETDB_BACKEND"] == "postgresql"
        assert _postgres_running(state)
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(env["MONGODB_URI"])
        try:
            collection = client["pgcheck"]["things"]
            await collection.create_index("n", unique=True)
            await collection.insert_many([{"n": n} for n in range(5)])
            assert [d["n"] async for d in collection.find({"n": {"$gte": 3}}).sort("n")] == [3, 4]
            with pytest.raises(Exception, match="E11000"):
                await collection.insert_one({"n": 1})
        finally:
            await client.close()
    finally:
        _services("stop", PROFILE, backend="postgresql")
    assert not _postgres_running(state)
    assert not (state / PROFILE / "services.env").exists()


async def test_id_lookups_use_the_id_index_and_find_the_right_document(
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    """The FerretDB that services.sh builds looks `_id` up through its index on SQLite (the
    module as published scans the table for every find, update and delete by `_id`), and the
    fixed lookup still matches exactly the document asked for, string or ObjectId."""
    things = db["things"]
    oid = ObjectId()
    await things.insert_many([{"_id": f"t{n}", "n": n} for n in range(50)])
    await things.insert_one({"_id": oid, "n": -1})
    reply = await db.command(
        {"explain": {"find": "things", "filter": {"_id": "t7"}}, "verbosity": "queryPlanner"}
    )
    plan = " ".join(str(line) for line in reply["queryPlanner"].get("Plan", []))
    if "detail=" not in plan:
        pytest.skip(f"not FerretDB's SQLite backend (its plan reads {plan[:80]!r})")
    assert "USING INDEX" in plan, plan
    assert "SCAN" not in plan, plan

    assert await things.find_one({"_id": "t7"}) == {"_id": "t7", "n": 7}
    assert await things.find_one({"_id": oid}) == {"_id": oid, "n": -1}
    replaced = await things.replace_one({"_id": "t8"}, {"n": 80})
    updated = await things.update_one({"_id": oid}, {"$inc": {"n": -1}})
    deleted = await things.delete_one({"_id": "t9"})
    assert (replaced.modified_count, updated.modified_count, deleted.deleted_count) == (1, 1, 1)
    left = {doc["_id"]: doc["n"] async for doc in things.find()}
    expected: dict[object, int] = {f"t{n}": n for n in range(50) if n != 9}
    assert left == expected | {"t8": 80, oid: -2}
