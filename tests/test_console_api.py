"""The API pieces the web console needs: prefix search on both read models, the trash, tags with
counts, password change ending the other sessions, the projections' status, and `audit verify`
as a background job that runs once at a time; and the console's own files and their CSP."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskflow import names
from taskflow.api.audit_job_routes import AUDIT_JOBS
from taskflow.api.console import CSP, asset_names
from taskflow.api.keys import SERVICES
from taskflow.audit_jobs import AuditJobs
from taskflow.audit_reports import VerifyReport
from taskflow.bootstrap import redis_client
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projections.task_queries import TaskQuery, TaskReads
from taskflow.projections.views import found_by_prefixes
from tests.api_support import Client, bearer, create_task, project
from tests.conftest import closed_port
from tests.fault_tools import until
from tests.test_auth_api import PASSWORD, login, refresh_with, register

NOW = datetime.now(UTC)
NEW_PASSWORD = "a brand new passphrase 42"


async def both_read_models(client: Client) -> tuple[TaskReads, TaskReads, Any]:
    """Reads served by the Redis views, reads served by the MongoDB views (Redis unreachable),
    and the dead Redis client to close."""
    services = client.app[SERVICES]
    dead = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    return TaskReads(services.redis, services.read_db), TaskReads(dead, services.read_db), dead


async def titles(reads: TaskReads, owner: str, q: str) -> list[str]:
    page = await reads.list_tasks(owner, TaskQuery(q=q, sort="created", order="asc"), NOW)
    return [view.title for view in page.items]


def test_a_word_finds_the_terms_it_begins() -> None:
    """Every word must begin one of the terms; a whole term is its own prefix."""
    assert found_by_prefixes(["write", "report"], ["rep"])
    assert found_by_prefixes(["write", "report"], ["rep", "wri"])
    assert not found_by_prefixes(["write", "report"], ["rep", "x"])
    assert not found_by_prefixes(["abc", "zzz"], ["m"])  # between two terms is not in one


async def test_search_as_you_type_finds_words_by_their_beginning_on_both_read_models(
    client: Client,
) -> None:
    """ "rep" finds "report" and "repair" (Redis: ZRANGEBYLEX over the owner's terms; MongoDB: a
    range on the multikey `terms`), every word must match, and a renamed task's old words stop
    finding it: the terms index loses a term once no live task has it."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    report = await create_task(client, auth, title="Write the quarterly report")
    await create_task(client, auth, title="Repair the bike", tags=["home"])
    await create_task(client, auth, title="Pay rent", description="zzz")
    await create_task(client, await bearer(client), title="Report of another user")
    await project(client)
    live, fallback, dead = await both_read_models(client)
    try:
        for reads in (live, fallback):
            assert await titles(reads, owner, "rep") == [
                "Write the quarterly report",
                "Repair the bike",
            ]
            assert await titles(reads, owner, "REP qua") == ["Write the quarterly report"]
            assert await titles(reads, owner, "ho") == ["Repair the bike"]  # a tag's word
            assert await titles(reads, owner, "m") == []  # "abc"… "zzz" spans it, finds nothing
            assert await titles(reads, owner, "report") == ["Write the quarterly report"]
        renamed = await client.patch(
            f"/api/tasks/{report['id']}",
            json={"title": "Write the summary"},
            headers={**auth, "If-Match": '"1"'},
        )
        assert renamed.status == 200
        await project(client)
        for reads in (live, fallback):
            assert await titles(reads, owner, "qua") == []
            assert await titles(reads, owner, "sum") == ["Write the summary"]
        terms = await client.app[SERVICES].redis.zrange(RedisViewKeys(1).terms(owner), 0, -1)
        assert b"quarterly" not in terms
        assert b"summary" in terms
        assert terms == sorted(terms)
    finally:
        await dead.aclose()
    response = await client.get("/api/tasks?q=rep", headers=auth)
    assert [t["title"] for t in (await response.json())["items"]] == ["Repair the bike"]


async def test_the_trash_lists_deleted_tasks_newest_first_and_restoring_takes_one_out(
    client: Client,
) -> None:
    """GET /api/tasks/trash: the caller's deleted tasks (with the version to restore at),
    most recently deleted first, paged by cursor; the same from either read model."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    tasks = [await create_task(client, auth, title=f"task {i}") for i in range(4)]
    for task in (tasks[1], tasks[3], tasks[0]):
        deleted = await client.delete(
            f"/api/tasks/{task['id']}", headers={**auth, "If-Match": '"1"'}
        )
        assert deleted.status == 204
    await create_task(client, await bearer(client), title="someone else's")
    await project(client)
    first = await (await client.get("/api/tasks/trash?limit=2", headers=auth)).json()
    assert [t["title"] for t in first["items"]] == ["task 0", "task 3"]
    assert [t["version"] for t in first["items"]] == [2, 2]
    second = await client.get(f"/api/tasks/trash?limit=2&next={first['next']}", headers=auth)
    rest = await second.json()
    assert [t["title"] for t in rest["items"]] == ["task 1"]
    assert rest["next"] is None
    live, fallback, dead = await both_read_models(client)
    try:
        for reads in (live, fallback):
            page = (await reads.trash(owner, TaskQuery(sort="updated"), NOW)).value
            assert [v.title for v in page.items] == ["task 0", "task 3", "task 1"]
    finally:
        await dead.aclose()
    restored = await client.post(
        f"/api/tasks/{tasks[3]['id']}/restore", headers={**auth, "If-Match": '"2"'}
    )
    assert restored.status == 200
    await project(client)
    after = await (await client.get("/api/tasks/trash", headers=auth)).json()
    assert [t["title"] for t in after["items"]] == ["task 0", "task 1"]
    assert (await client.get("/api/tasks/trash?next=forged", headers=auth)).status == 400
    assert (await client.get("/api/tasks/trash?limit=0", headers=auth)).status == 422


async def test_tags_come_with_how_many_live_tasks_carry_them(client: Client) -> None:
    """GET /api/tasks/tags counts live tasks per tag, most used first; a tag no live task
    carries any more is gone (Redis: a hash kept by the projector; MongoDB: counted)."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    a = await create_task(client, auth, tags=["work", "urgent"])
    await create_task(client, auth, tags=["work"])
    c = await create_task(client, auth, tags=["home"])
    await create_task(client, await bearer(client), tags=["elsewhere"])
    await project(client)
    listed = await (await client.get("/api/tasks/tags", headers=auth)).json()
    assert listed == {
        "items": [
            {"tag": "work", "count": 2},
            {"tag": "home", "count": 1},
            {"tag": "urgent", "count": 1},
        ]
    }
    untag = await client.patch(
        f"/api/tasks/{a['id']}", json={"tags": ["work"]}, headers={**auth, "If-Match": '"1"'}
    )
    assert untag.status == 200
    deleted = await client.delete(f"/api/tasks/{c['id']}", headers={**auth, "If-Match": '"1"'})
    assert deleted.status == 204
    await project(client)
    live, fallback, dead = await both_read_models(client)
    try:
        for reads in (live, fallback):
            assert (await reads.tags(owner)).value == {"work": 2}
    finally:
        await dead.aclose()
    stored = await client.app[SERVICES].redis.hgetall(RedisViewKeys(1).tags(owner))
    assert stored == {b"work": b"2"}


async def test_a_password_change_ends_every_other_session_at_once(client: Client) -> None:
    """POST /api/auth/password: the caller's session goes on; every other session's refresh
    token and access token are refused from now on; the old password no longer logs in."""
    await register(client)
    mine, my_refresh = await login(client)
    theirs, their_refresh = await login(client)
    wrong = await client.post(
        "/api/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {mine}"},
    )
    assert wrong.status == 401
    weak = await client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": "password"},
        headers={"Authorization": f"Bearer {mine}"},
    )
    assert weak.status == 422
    changed = await client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {mine}"},
    )
    assert changed.status == 204, await changed.text()
    assert int(changed.headers["X-TaskFlow-Position"]) > 0
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {mine}"})
    assert me.status == 200
    other = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {theirs}"})
    assert other.status == 401
    assert (await refresh_with(client, their_refresh)).status == 401
    assert (await refresh_with(client, my_refresh)).status == 200
    old = await client.post(
        "/api/auth/login", json={"email": "alice@example.com", "password": PASSWORD}
    )
    assert old.status == 401
    await login(client, password=NEW_PASSWORD)


async def test_auditors_see_every_projection_with_its_position_and_lease(client: Client) -> None:
    """GET /api/audit/projections: each projection's position, lag behind the head, lease."""
    await create_task(client, await bearer(client))
    await project(client)
    auditor = await bearer(client, roles=["auditor"])
    status = await (await client.get("/api/audit/projections", headers=auditor)).json()
    by_name = {item["name"]: item for item in status["items"]}
    assert {"log_seal", "task_views_redis_v1", "task_views_mongo_v1"} <= set(by_name)
    redis_views = by_name["task_views_redis_v1"]
    assert redis_views["position"] == status["head"]
    assert redis_views["lag"] == 0
    denied = await client.get("/api/audit/projections", headers=await bearer(client))
    assert denied.status == 403


async def finished(client: Client, auditor: dict[str, str], job_id: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        response = await client.get(f"/api/audit/verifications/{job_id}", headers=auditor)
        job: dict[str, Any] = await response.json()
        return job if job["state"] != "running" else None

    return await until(ended, 60, "the verification to end")


async def test_a_verification_runs_in_the_background_one_at_a_time(client: Client) -> None:
    """POST /api/audit/verifications starts `audit verify` as a job (202) and returns at once;
    of eight racing starts one wins and all name its job; it reports the CLI's findings, and
    a tampered event fails the next one."""
    auth = await bearer(client)
    tasks = [await create_task(client, auth, title=f"t{i}") for i in range(3)]
    await project(client)
    auditor = await bearer(client, roles=["auditor"])
    url = "/api/audit/verifications"
    assert (await client.post(url, headers=auth)).status == 403
    racing = await asyncio.gather(*(client.post(url, headers=auditor) for _ in range(8)))
    assert sorted(r.status for r in racing) == [200] * 7 + [202]
    jobs = {(await r.json())["id"] for r in racing}
    assert len(jobs) == 1
    [job_id] = jobs
    assert racing[0].headers["Location"] == f"{url}/{job_id}"
    job = await finished(client, auditor, job_id)
    assert job["state"] == "passed", job
    assert job["result"]["ok"] is True
    assert job["result"]["findings"] == []
    assert job["result"]["summary"].startswith("audit verify: OK")
    assert job["progress"]["phase"] == "done"
    services = client.app[SERVICES]
    await services.store.commits.update_one(
        {"stream_id": f"task-{tasks[1]['id']}"}, {"$set": {"events.0.data.title": "forged"}}
    )
    again = await client.post(url, headers=auditor)
    assert again.status == 202
    failed = await finished(client, auditor, (await again.json())["id"])
    assert failed["state"] == "failed"
    assert any(
        f"BROKEN stream task-{tasks[1]['id']}" in line for line in failed["result"]["findings"]
    )
    listed = await (await client.get(url, headers=auditor)).json()
    assert [j["id"] for j in listed["items"]] == [failed["id"], job_id]
    assert await services.db[names.AUDIT_VERIFICATION_SLOTS].count_documents({}) == 2
    missing = await client.get(f"{url}/{uuid.uuid4().hex}", headers=auditor)
    assert missing.status == 404


async def test_a_job_whose_process_died_reads_interrupted_and_a_paused_one_gives_way(
    client: Client,
) -> None:
    """A running job not heard of for `stale_seconds` is interrupted and the next start takes
    the next slot; its runner, should it wake up, sees that slot and stops (superseded)."""
    db = client.app[SERVICES].db
    moment = [datetime.now(UTC)]
    jobs = AuditJobs(db, clock=lambda: moment[0], heartbeat_seconds=0.02, stale_seconds=30)
    first, started = await jobs.start("auditor-1")
    assert started
    assert jobs.state(first) == "running"
    again, started = await jobs.start("auditor-2")
    assert not started
    assert again["_id"] == first["_id"]
    release = asyncio.Event()

    async def paused(progress: Any) -> VerifyReport:
        await release.wait()
        raise AssertionError("a superseded job is cancelled before it goes on")

    runner = asyncio.create_task(jobs.run(first, paused))
    await until(lambda: _heartbeat_after(jobs, first["_id"], moment[0]), 10, "a heartbeat")
    # Another process, 31 s after the last heartbeat it can see: the job's process is gone.
    jobs_later = AuditJobs(db, clock=lambda: moment[0] + timedelta(seconds=31))
    assert jobs_later.state(await _job(jobs, first["_id"])) == "interrupted"
    second, started = await jobs_later.start("auditor-2")
    assert started
    assert second["slot"] == 2
    await asyncio.wait_for(runner, 10)
    assert (await _job(jobs, first["_id"]))["state"] == "superseded"
    release.set()


async def _job(jobs: AuditJobs, job_id: str) -> dict[str, Any]:
    job = await jobs.get(job_id)
    assert job is not None
    return job


async def _heartbeat_after(jobs: AuditJobs, job_id: str, moment: datetime) -> bool:
    job = await _job(jobs, job_id)
    return bool(job["heartbeat_at"].replace(tzinfo=UTC) >= moment.replace(microsecond=0))


async def test_the_api_keeps_a_job_store_per_process(client: Client) -> None:
    """Every API process has the jobs' store on the log's database (any of them answers)."""
    assert client.app[AUDIT_JOBS].db.name == client.app[SERVICES].db.name


# -- the console's files ---------------------------------------------------------------------


async def test_the_console_is_served_at_the_root_under_a_strict_csp(client: Client) -> None:
    """GET / is the console's page; it and every file carry a CSP with no inline script or
    style and connections to this origin only; the page names scripts by URL only."""
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    csp = page.headers["Content-Security-Policy"]
    assert csp == CSP
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/assets/app.js">']
    assert "<style" not in html
    assert " style=" not in html
    assert "http://" not in html
    assert "https://" not in html
    for name in asset_names():
        response = await client.get(f"/assets/{name}")
        assert response.status == 200, name
        assert response.headers["Content-Security-Policy"] == CSP
        body = await response.read()
        assert b"https://" not in body or name.endswith(".svg"), name  # no CDN
        unchanged = await client.get(
            f"/assets/{name}", headers={"If-None-Match": response.headers["ETag"]}
        )
        assert unchanged.status == 304
    types = {
        name.rsplit(".", 1)[1]: (await client.get(f"/assets/{name}")).content_type
        for name in asset_names()
    }
    assert types == {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}


@pytest.mark.parametrize(
    "path", ["/assets/nothing.js", "/assets/index.html", "/assets/..%2Findex.html", "/assets/.env"]
)
async def test_only_the_console_files_are_served(client: Client, path: str) -> None:
    """A name that is not one of the console's files is a 404 problem, never a file read."""
    response = await client.get(path)
    assert response.status == 404
    assert response.content_type == "application/problem+json"
