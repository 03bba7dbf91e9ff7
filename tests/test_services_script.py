"""`scripts/services.sh` starts and stops real servers; here its opt-in PostgreSQL backend."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

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
