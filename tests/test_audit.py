"""Auditors: history, time travel, the global feed, verification and zero-downtime rebuilds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect

from taskflow import auditing, names, operations
from taskflow.api.keys import SERVICES
from taskflow.bootstrap import log_projections, rebuild_read_models
from taskflow.commands.aggregates import TASK
from taskflow.commands.errors import DomainError
from taskflow.commands.runner import Context, execute
from taskflow.commands.task import ChangeTask, CreateTask, DeleteTask, Priority, RestoreTask, Status
from taskflow.events.codec import commit_to_document
from taskflow.events.gaps import make_gap
from taskflow.events.log_reader import in_position_order
from taskflow.events.mongo_store import MongoEventStore
from taskflow.projections.history import TaskHistoryEntry, task_as_of, task_history
from taskflow.projections.runtime import run_until_caught_up
from taskflow.projections.verify import verify_read_models
from taskflow.settings import Settings
from tests.api_support import Client, bearer, create_task, project


async def auditor(client: Client) -> dict[str, str]:
    """A token of a (new) user who holds the auditor role."""
    return await bearer(client, roles=["auditor"])


changes = st.one_of(
    st.builds(lambda s: ChangeTask(task_id="x", status=s), st.sampled_from(list(Status))),
    st.builds(lambda p: ChangeTask(task_id="x", priority=p), st.sampled_from(list(Priority))),
    st.builds(lambda t: ChangeTask(task_id="x", title=t), st.sampled_from(["a", "b", "c d"])),
    st.just(DeleteTask(task_id="x")),
    st.just(RestoreTask(task_id="x")),
)


@hsettings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=st.lists(changes, max_size=8))
async def test_as_of_version_k_is_the_fold_of_the_first_k_events(
    store: MongoEventStore, commands: list[Any]
) -> None:
    """For any command sequence: state at version k = fold of k events; history = the events."""
    task_id = uuid.uuid4().hex
    ctx = Context(actor="owner", request_id="r", correlation_id="c")
    now = datetime.now(UTC)
    await execute(
        store, TASK, task_id, CreateTask(task_id=task_id, owner_id="owner", title="t"), ctx, now
    )
    for command in commands:
        try:
            await execute(
                store, TASK, task_id, command.model_copy(update={"task_id": task_id}), ctx, now
            )
        except DomainError:  # a refused command (e.g. restore of a live task) appends nothing
            continue
    commits = await store.read_stream(TASK.stream_id(task_id))
    events = [e for c in commits for e in c.events]
    history = await task_history(store, task_id)
    assert [(h.version, h.type) for h in history] == [(e.version, e.type) for e in events]
    for k in range(1, len(events) + 1):
        state = await task_as_of(store, task_id, version=k)
        partial = await store.read_stream(TASK.stream_id(task_id), to_version=k)
        assert state == TASK.fold(partial)
        assert state is not None
        assert state.version == k


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(UTC)),
    st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=8)),
)
def test_a_history_entry_is_the_json_the_history_answers(
    occurred: datetime, recorded: datetime, changes: dict[str, Any]
) -> None:
    """The entry's own JSON is the answer: UTC times end in `Z` and keep their microseconds as
    they are (`.123000`), as `isoformat()` spells them; the changes are passed through."""
    entry = TaskHistoryEntry(
        version=3,
        type="TaskRenamed",
        occurred_at=occurred,
        recorded_at=recorded,
        actor="u",
        request_id="r",
        correlation_id="c",
        changes=changes,
    )
    assert entry.model_dump(mode="json") == {
        "version": 3,
        "type": "TaskRenamed",
        "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
        "recorded_at": recorded.isoformat().replace("+00:00", "Z"),
        "actor": "u",
        "request_id": "r",
        "correlation_id": "c",
        "changes": changes,
    }


async def test_history_and_time_travel_over_http(client: Client) -> None:
    """The owner reads every change with its actor, and the task at any version or moment."""
    owner = uuid.uuid4().hex
    auth = await bearer(client, owner)
    task = await create_task(client, auth, title="v1")
    url = f"/api/tasks/{task['id']}"
    await asyncio.sleep(0.01)
    moment = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.01)
    await client.patch(
        url, json={"title": "v2", "status": "done"}, headers={**auth, "If-Match": '"1"'}
    )
    history = await (await client.get(f"{url}/history?limit=2", headers=auth)).json()
    assert [(h["version"], h["type"]) for h in history["items"]] == [
        (1, "TaskCreated"),
        (2, "TaskRenamed"),
    ]
    assert history["items"][1]["changes"] == {"title": "v2"}
    assert history["items"][0]["actor"] == owner
    rest = await (
        await client.get(f"{url}/history?after_version={history['next']}", headers=auth)
    ).json()
    assert [h["type"] for h in rest["items"]] == ["TaskStatusChanged"]
    assert rest["next"] is None
    old = await client.get(f"{url}?version=1", headers=auth)
    assert (await old.json())["title"] == "v1"
    then = await client.get(f"{url}", params={"as_of": moment}, headers=auth)
    assert (await then.json())["title"] == "v1"
    assert (await client.get(f"{url}?version=0", headers=auth)).status == 422
    assert (await client.get(f"{url}?as_of=yesterday", headers=auth)).status == 422
    assert (await client.get(f"{url}?version=99999999999999999999", headers=auth)).status == 422
    overflow = {"as_of": "9999-12-31T23:59:59-23:59"}
    assert (await client.get(url, params=overflow, headers=auth)).status == 422
    assert await _invalid(client, f"{url}?version=4", auth) == ["version"]  # the task is at 3
    assert (await client.get(f"{url}?version=3", headers=auth)).status == 200
    both = {"as_of": moment, "version": "1"}
    assert await _invalid(client, url, auth, both) == ["as_of", "version"]
    assert await _invalid(client, f"{url}/history?after_version=4", auth) == ["after_version"]
    last = await client.get(f"{url}/history?after_version=3", headers=auth)
    assert (await last.json()) == {"items": [], "next": None}
    intruder = await bearer(client)
    assert (await client.get(f"{url}?version=4", headers=intruder)).status == 404
    assert (await client.get(f"{url}/history?after_version=4", headers=intruder)).status == 404
    assert (await client.get(f"{url}/history", headers=intruder)).status == 404
    assert (await client.get(f"{url}?version=1", headers=intruder)).status == 404


async def _invalid(
    client: Client, url: str, auth: dict[str, str], params: dict[str, str] | None = None
) -> list[str]:
    """The fields a 422 names (fails unless the answer is a 422)."""
    response = await client.get(url, params=params, headers=auth)
    assert response.status == 422, await response.text()
    return [error["field"] for error in (await response.json())["errors"]]


async def test_audit_endpoints_are_for_auditors_and_read_only(client: Client) -> None:
    """Auditors read the ordered feed and whole streams; others get 403; nothing can be written."""
    auth = await bearer(client)
    first = await create_task(client, auth, title="one")
    second = await create_task(client, auth, title="two")
    assert (await client.get("/api/audit/events", headers=auth)).status == 403
    assert (await client.get(f"/api/audit/streams/task-{first['id']}", headers=auth)).status == 403
    audit = await auditor(client)
    feed = await (await client.get("/api/audit/events?after=0&limit=10", headers=audit)).json()
    assert [c["stream_id"] for c in feed["items"]] == [
        f"task-{first['id']}",
        f"task-{second['id']}",
    ]
    assert feed["items"][0]["metadata"]["actor"]
    page = await (
        await client.get(f"/api/audit/events?after={feed['items'][0]['position']}", headers=audit)
    ).json()
    assert [c["stream_id"] for c in page["items"]] == [f"task-{second['id']}"]
    stream = await (
        await client.get(f"/api/audit/streams/task-{first['id']}", headers=audit)
    ).json()
    assert [c["first_version"] for c in stream["items"]] == [1]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = await client.request(method, "/api/audit/events", headers=audit, json={})
        assert response.status == 405


async def fill_with_gaps(store: MongoEventStore, count: int) -> None:
    """Take `count` positions and settle each with a gap, as writers that lost a conflict do."""
    for _ in range(count):
        gap = make_gap(await store.positions.take(), datetime.now(UTC))
        await store.commits.insert_one(commit_to_document(gap))
        await store.reader.hint(gap)


async def test_the_feed_passes_over_gaps_and_says_where_it_ends(client: Client) -> None:
    """No empty page in the middle of the log: a page passes over runs of gaps (more than its
    `limit`), and `end` is true exactly when it reaches the settled head."""
    auth, audit = await bearer(client), await auditor(client)
    store = client.app[SERVICES].store
    first = await create_task(client, auth, title="one")
    await fill_with_gaps(store, 150)
    second = await create_task(client, auth, title="two")
    await fill_with_gaps(store, 3)
    third = await create_task(client, auth, title="three")

    async def page(after: int, limit: int) -> tuple[list[int], int, bool]:
        url = f"/api/audit/events?after={after}&limit={limit}"
        body = await (await client.get(url, headers=audit)).json()
        return [c["position"] for c in body["items"]], body["next_after"], body["end"]

    positions = [task["_position"] for task in (first, second, third)]
    assert await page(0, 100) == (positions, positions[2], True)
    assert await page(0, 1) == (positions[:1], positions[1] - 1, False)
    assert await page(positions[0], 100) == (positions[1:], positions[2], True)
    assert await page(positions[1] - 1, 1) == ([positions[1]], positions[2] - 1, False)
    assert await page(positions[2] - 1, 1) == ([positions[2]], positions[2], True)
    assert await page(positions[2], 100) == ([], positions[2], True)
    await fill_with_gaps(store, 2)  # gaps after the last commit: the head moves past them
    assert await page(positions[2], 100) == ([], positions[2] + 2, True)
    redis = client.app[SERVICES].redis
    hints = [key async for key in redis.scan_iter(names.commit_hint_key(0)[:-1] + "*")]
    await redis.delete(*hints)  # hints expire: the same pages, read from MongoDB
    assert await page(0, 1) == (positions[:1], positions[1] - 1, False)
    assert await page(positions[0], 100) == (positions[1:], positions[2] + 2, True)


async def test_audit_verify_names_a_tampered_event_and_a_tampered_view(
    client: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`taskflow audit verify` passes on a clean log and names each kind of tampering."""
    auth = await bearer(client)
    tasks = [await create_task(client, auth, title=f"t{i}") for i in range(3)]
    await project(client)
    assert await operations.audit_verify(settings) == 0
    services = client.app[SERVICES]
    await services.store.commits.update_one(
        {"stream_id": f"task-{tasks[1]['id']}"}, {"$set": {"events.0.data.title": "forged"}}
    )
    await services.views_db[names.task_views_collection(1)].update_one(
        {"_id": tasks[2]["id"]}, {"$set": {"status": "done"}}
    )
    capsys.readouterr()
    assert await operations.audit_verify(settings) == 1
    report = capsys.readouterr().out
    assert f"BROKEN stream task-{tasks[1]['id']} at version 1" in report
    assert f"MISMATCH mongodb task {tasks[2]['id']}" in report


async def test_audit_verify_finds_a_removed_last_commit_and_says_how_far_it_is_sealed(
    client: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream's last commit deleted after it was sealed: `audit verify` names the missing
    position and the seal over it (no chain is broken); it says how far the log is sealed."""
    auth = await bearer(client)
    tasks = [await create_task(client, auth, title=f"t{i}") for i in range(3)]
    url = f"/api/tasks/{tasks[1]['id']}"
    changed = await client.patch(url, json={"title": "x"}, headers={**auth, "If-Match": '"1"'})
    services = client.app[SERVICES]
    [seal] = log_projections(services)
    await run_until_caught_up(services.store, seal)
    sealed = int(changed.headers["X-TaskFlow-Position"])
    await create_task(client, auth, title="after the seal")
    await project(client)
    capsys.readouterr()
    assert await operations.audit_verify(settings) == 0
    assert (
        f"sealed up to position {sealed} (1 seals); positions {sealed + 1}-{sealed + 1} are "
        "covered only by the per-stream hash chains" in capsys.readouterr().out
    )
    await services.store.commits.delete_one({"position": sealed})
    assert await operations.audit_verify(settings) == 1
    report = capsys.readouterr().out
    assert f"MISSING positions {sealed}-{sealed}:" in report
    assert f"SEAL at position {sealed}: the sealed position is missing" in report
    assert "BROKEN" not in report
    assert "0 broken chains, 1 seal problems, 1 missing positions" in report


async def test_an_interrupted_audit_resumes_where_it_saved_and_finds_the_same(
    client: Client, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit verify --state FILE`: a pass stopped part way (here: the server fails after the
    first saved state) is retried from that state, not from the start, and reports what an
    uninterrupted pass reports; the state file is gone once the audit is complete."""
    auth = await bearer(client)
    tasks = [await create_task(client, auth, title=f"t{i}") for i in range(12)]
    services = client.app[SERVICES]
    await services.store.commits.update_one(
        {"stream_id": f"task-{tasks[9]['id']}"}, {"$set": {"events.0.data.title": "forged"}}
    )
    whole = await services.store.audit()
    assert [link.stream_id for link in whole.broken] == [f"task-{tasks[9]['id']}"]

    store_type = type(services.store)
    original = store_type.audit
    passes: list[int] = []

    async def flaky(self: MongoEventStore, *args: Any, **kwargs: Any) -> Any:
        save = kwargs["save"]
        resume = kwargs.get("resume")
        passes.append(0 if resume is None else resume["audit"]["last_position"])

        async def save_then_fail(state: dict[str, Any]) -> None:
            await save(state)
            if len(passes) == 1:
                raise AutoReconnect("the server went away mid-pass")

        kwargs["save"] = save_then_fail
        return await original(self, *args, **{**kwargs, "save_every": 4})

    monkeypatch.setattr(store_type, "audit", flaky)
    monkeypatch.setattr(auditing, "retrying", _retrying_at_once)
    state = tmp_path / "audit.state"
    assert await operations.audit_verify(settings, state) == 1
    assert passes[0] == 0
    assert passes[1] >= 4  # the second pass began after the first saved state, not at 0
    assert not state.exists()
    resumed = await auditing.audit_log(services, None)  # and a clean pass agrees
    assert resumed.broken == whole.broken


async def _retrying_at_once(step: Any) -> Any:
    """auditing.retrying without its waits (the test's failure is injected, not a server's)."""
    try:
        return await step()
    except AutoReconnect:
        return await step()


def test_the_audit_scan_puts_the_log_in_position_order_and_passes_over_holes() -> None:
    """Documents in storage order (each at most a few places from its position) come out in
    position order; a removed position is passed over once `limit` later ones wait."""

    @given(
        st.integers(min_value=1, max_value=300),
        st.sets(st.integers(min_value=1, max_value=300)),
        st.randoms(),
        st.integers(min_value=1, max_value=40),
    )
    @hsettings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
    def check(count: int, removed: set[int], rng: Any, limit: int) -> None:
        positions = [p for p in range(1, count + 1) if p not in removed]
        stored = sorted(positions, key=lambda p: p + rng.uniform(0, limit / 2))

        async def docs() -> Any:
            for position in stored:
                yield {"position": position}

        async def ordered() -> list[int]:
            out = in_position_order(docs(), 0, limit=limit)
            return [int(doc["position"]) async for doc in out]

        assert asyncio.run(ordered()) == positions

    check()


@pytest.fixture
def projector(settings: Settings, tmp_path: Path) -> Iterator[None]:
    """One real projector process on the test's database."""
    env = {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "LEASE_TTL_SECONDS": "2",
        "PROJECTOR_POLL_SECONDS": "0.1",
        "EVENT_LOG_HMAC_KEY": settings.event_log_hmac_key.get_secret_value(),
        "METRICS_PORT": "0",
    }
    with (tmp_path / "projector.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "project"], env=env, stdout=log, stderr=log
        )
    yield
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.timeout(600)  # generous: on a loaded 2-core machine catch-up slows a lot
@pytest.mark.usefixtures("projector")
async def test_rebuild_while_writing_and_reading_never_misses_a_task(client: Client) -> None:
    """Reads keep finding every task during a rebuild; afterwards the new version equals the log."""
    auth = await bearer(client)
    existing = [await create_task(client, auth, title=f"before {i}") for i in range(30)]
    services = client.app[SERVICES]
    for task in existing:  # wait until the projector process has them
        await _until_visible(client, auth, task)
    failures: list[str] = []
    running = True

    async def keep_writing() -> None:
        while running:  # steady live traffic (≤ 5 writes/s), not a flood the rebuild can't outrun
            await create_task(client, auth, title="during")
            await asyncio.sleep(0.2)

    async def keep_reading() -> None:
        while running:
            for task in existing:
                response = await client.get(f"/api/tasks/{task['id']}", headers=auth)
                if response.status != 200:
                    failures.append(f"{task['id']}: {response.status}")
            await asyncio.sleep(0.05)  # reads share this process with the rebuild's own driver

    load = [asyncio.create_task(keep_writing()), asyncio.create_task(keep_reading())]
    result = await rebuild_read_models(services)
    running = False
    await asyncio.gather(*load)
    assert (result.old_version, result.new_version) == (1, 2)
    assert failures == []
    assert await services.redis.get(names.READ_MODEL_ACTIVE) == b"2"
    assert await verify_read_models(services, 2) == []
    assert await services.redis.exists(names.read_model_prefix(1) + "checkpoint") == 0
    assert names.task_views_collection(1) not in await services.views_db.list_collection_names()


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("projector")
async def test_a_projector_process_seals_the_log(client: Client) -> None:
    """The real `taskflow project` holds the log seal's lease and seals up to the head, gaps
    included, a seal per pass rather than per commit; the sealed log verifies."""
    auth = await bearer(client)
    store = client.app[SERVICES].store
    tasks = [await create_task(client, auth, title=f"t{i}") for i in range(5)]
    await fill_with_gaps(store, 2)
    head = tasks[-1]["_position"] + 2

    async def sealed_to_the_head() -> bool:
        return await store.seals.count_documents({"_id": head}) == 1

    deadline = asyncio.get_running_loop().time() + 120
    while not await sealed_to_the_head():
        assert asyncio.get_running_loop().time() < deadline, "the log was never sealed"
        await asyncio.sleep(0.1)
    audit = await store.audit()
    assert audit.ok, audit
    assert audit.sealed_to == audit.last_position == head
    assert audit.seals < head  # paced: not one seal per position


async def _until_visible(client: Client, auth: dict[str, str], task: dict[str, Any]) -> None:
    headers = {**auth, "X-TaskFlow-Position": str(task["_position"])}
    for _ in range(100):
        response = await client.get(f"/api/tasks/{task['id']}", headers=headers)
        if response.status == 200 and "X-TaskFlow-Stale" not in response.headers:
            return
    raise AssertionError("the projector never showed the task")
