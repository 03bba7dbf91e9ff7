"""HTTP → command → log → projector → read model → HTTP, on the real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from aiohttp import ClientResponse
from pymongo.errors import NetworkTimeout

from taskflow.api.keys import SERVICES
from taskflow.events.codec import decode_events
from taskflow.events.records import Commit
from taskflow.settings import Settings
from tests.api_support import (
    Client,
    bearer,
    create_task,
    live_projector,
    project,
)


async def commit_count(client: Client) -> int:
    return await client.app[SERVICES].store.commits.count_documents({"kind": "commit"})


async def test_create_then_read_through_the_projection(client: Client) -> None:
    """A created task has Location, ETag and position; once projected it reads back the same."""
    auth = await bearer(client)
    response = await client.post(
        "/api/tasks",
        json={
            "title": "  Write report  ",
            "tags": ["Work", "Q3 Plans"],
            "priority": "high",
            "due_at": "2030-01-02T03:04:05+02:00",
        },
        headers=auth,
    )
    assert response.status == 201
    created = await response.json()
    assert response.headers["Location"] == f"/api/tasks/{created['id']}"
    assert response.headers["ETag"] == '"1"'
    position = response.headers["X-TaskFlow-Position"]
    assert created["title"] == "Write report"
    assert created["tags"] == ["work", "q3-plans"]
    assert created["due_at"] == "2030-01-02T01:04:05Z"
    assert (await client.get(f"/api/tasks/{created['id']}", headers=auth)).status == 404
    await project(client)
    read = await client.get(
        f"/api/tasks/{created['id']}", headers={**auth, "X-TaskFlow-Position": position}
    )
    assert read.status == 200
    assert await read.json() == created
    assert read.headers["ETag"] == '"1"'
    assert read.headers["Cache-Control"] == "private, no-cache"
    assert "X-TaskFlow-Stale" not in read.headers
    again = await client.get(
        f"/api/tasks/{created['id']}", headers={**auth, "If-None-Match": '"1"'}
    )
    assert again.status == 304


async def test_patch_emits_only_real_changes_and_needs_if_match(client: Client) -> None:
    """PATCH is a merge patch guarded by If-Match; each changed field is one event."""
    auth = await bearer(client)
    task = await create_task(client, auth, description="d", due_at="2030-01-01T00:00:00Z")
    url = f"/api/tasks/{task['id']}"
    assert (await client.patch(url, json={"title": "x"}, headers=auth)).status == 428
    patch = {"title": "renamed", "status": "in_progress", "due_at": None, "description": "d"}
    response = await client.patch(url, json=patch, headers={**auth, "If-Match": '"1"'})
    assert response.status == 200, await response.text()
    assert response.headers["ETag"] == '"4"'  # three fields changed; description did not
    body = await response.json()
    assert (body["title"], body["status"], body["due_at"]) == ("renamed", "in_progress", None)
    [_, commit] = await client.app[SERVICES].store.read_stream(f"task-{task['id']}")
    types = [type(e).__name__ for e in decode_events(commit)]
    assert types == ["TaskRenamed", "TaskStatusChanged", "TaskDueDateCleared"]
    stale = await client.patch(url, json={"title": "y"}, headers={**auth, "If-Match": '"1"'})
    assert stale.status == 412
    assert (await stale.json())["current_version"] == 4
    assert stale.headers["ETag"] == '"4"'
    noop = await client.patch(url, json={"title": "renamed"}, headers={**auth, "If-Match": '"4"'})
    assert noop.status == 200
    assert noop.headers["ETag"] == '"4"'
    assert "X-TaskFlow-Position" not in noop.headers


async def test_null_in_a_merge_patch_clears_or_is_refused_naming_the_field(client: Client) -> None:
    """RFC 7396: null clears description, due_at and tags; for title, status or priority it is
    a 422 naming that field (not the body), and nothing is written."""
    auth = await bearer(client)
    task = await create_task(
        client, auth, description="d", due_at="2030-01-01T00:00:00Z", tags=["a", "b"]
    )
    url = f"/api/tasks/{task['id']}"
    for field in ("title", "status", "priority"):
        refused = await client.patch(
            url, json={field: None, "description": None}, headers={**auth, "If-Match": '"1"'}
        )
        assert refused.status == 422, await refused.text()
        assert [e["field"] for e in (await refused.json())["errors"]] == [field]
    assert await commit_count(client) == 1
    cleared = await client.patch(
        url,
        data=b'{"description": null, "due_at": null, "tags": null}',
        headers={**auth, "If-Match": '"1"', "Content-Type": "application/merge-patch+json"},
    )
    assert cleared.status == 200, await cleared.text()
    body = await cleared.json()
    assert (body["description"], body["due_at"], body["tags"]) == ("", None, [])
    assert (body["title"], body["status"], body["priority"]) == ("a task", "todo", "medium")
    assert cleared.headers["ETag"] == '"4"'  # one event per cleared field
    [_, commit] = await client.app[SERVICES].store.read_stream(f"task-{task['id']}")
    types = [type(e).__name__ for e in decode_events(commit)]
    assert types == ["TaskDescriptionChanged", "TaskDueDateCleared", "TaskUntagged"]
    again = await client.patch(url, json={"tags": None}, headers={**auth, "If-Match": '"4"'})
    assert (again.status, again.headers["ETag"]) == (200, '"4"')  # already empty: no change


async def test_delete_accepts_only_restore_and_hides_the_task(client: Client) -> None:
    """A deleted task disappears from reads, refuses changes, and comes back on restore."""
    auth = await bearer(client)
    task = await create_task(client, auth)
    url = f"/api/tasks/{task['id']}"
    deleted = await client.delete(url, headers={**auth, "If-Match": '"1"'})
    assert deleted.status == 204
    assert deleted.headers["ETag"] == '"2"'
    refused = await client.patch(url, json={"title": "z"}, headers={**auth, "If-Match": '"2"'})
    assert refused.status == 409
    assert (await refused.json())["type"].endswith(":task-deleted")
    await project(client)
    assert (await client.get(url, headers=auth)).status == 404
    assert (await (await client.get("/api/tasks", headers=auth)).json())["items"] == []
    restored = await client.post(f"{url}/restore", headers={**auth, "If-Match": '"2"'})
    assert restored.status == 200
    await project(client)
    assert (await client.get(url, headers=auth)).status == 200


async def test_another_users_task_is_404_everywhere(client: Client) -> None:
    """Every endpoint answers 404 for someone else's task, even with a correct If-Match."""
    owner, intruder = await bearer(client), await bearer(client)
    task = await create_task(client, owner)
    await project(client)
    url = f"/api/tasks/{task['id']}"
    pinned = {**intruder, "If-Match": '"1"'}
    stale = {**intruder, "If-Match": '"7"'}
    answers = [
        await client.get(url, headers=intruder),
        await client.patch(url, json={"title": "mine"}, headers=pinned),
        await client.patch(url, json={"title": "mine"}, headers=stale),
        await client.delete(url, headers=pinned),
        await client.post(f"{url}/restore", headers=pinned),
    ]
    assert [a.status for a in answers] == [404] * 5
    assert (await (await client.get("/api/tasks", headers=intruder)).json())["items"] == []
    assert await commit_count(client) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "ok", "owner_id": "someone"}, "owner_id"),
        ({"title": "ok", "version": 9}, "version"),
        ({"title": {"$ne": None}}, "title"),
        ({"title": "ok", "tags.0": "x"}, "tags.0"),
        ({"title": "ok", "$where": "1"}, "$where"),
        ({"title": 5}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": "ok", "description": "d" * 10_001}, "description"),
        ({"title": "ok", "tags": [f"t{i}" for i in range(21)]}, "tags"),
        ({"title": "ok", "tags": ["x" * 33]}, "tags.0"),
        ({"title": "ok", "status": "archived"}, "status"),
        ({"title": "ok", "due_at": "2030-01-01T00:00:00"}, "due_at"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_writes_nothing(
    client: Client, body: dict[str, Any], field: str
) -> None:
    """Unknown, operator-shaped, mistyped and over-long fields are refused before any write."""
    response = await client.post("/api/tasks", json=body, headers=await bearer(client))
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert field in [error["field"] for error in problem["errors"]]
    assert await commit_count(client) == 0


async def test_malformed_and_oversized_bodies(client: Client) -> None:
    """Broken JSON is 400, a non-JSON body 415, an oversized one 413; nothing is written."""
    auth = await bearer(client)
    broken = await client.post(
        "/api/tasks", data=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert broken.status == 400
    text = await client.post(
        "/api/tasks", data=b"x", headers={**auth, "Content-Type": "text/plain"}
    )
    assert text.status == 415
    huge = await client.post(
        "/api/tasks",
        data=b'{"title": "' + b"x" * 100_000 + b'"}',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert huge.status == 413
    assert huge.content_type == "application/problem+json"
    assert await commit_count(client) == 0


async def test_idempotency_key_replays_the_original_create(client: Client) -> None:
    """A retried POST with the same key returns the first task and writes nothing more."""
    auth = {**await bearer(client), "Idempotency-Key": "create-42"}
    first = await client.post("/api/tasks", json={"title": "once"}, headers=auth)
    second = await client.post("/api/tasks", json={"title": "once"}, headers=auth)
    assert (first.status, second.status) == (201, 201)
    assert (await first.json())["id"] == (await second.json())["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["X-TaskFlow-Position"] == first.headers["X-TaskFlow-Position"]
    other = await client.post("/api/tasks", json={"title": "twice"}, headers=auth)
    assert other.status == 422
    assert (await other.json())["type"].endswith(":idempotency-key-reused")
    assert await commit_count(client) == 1
    # The fingerprint says which request a key was used with; a write without a key has none
    # to compare and stores none (the API does not compute it then).
    unkeyed = await client.post("/api/tasks", json={"title": "once"}, headers=await bearer(client))
    assert unkeyed.status == 201
    commits = client.app[SERVICES].store.commits
    keyed = await commits.find_one({"stream_id": f"task-{(await first.json())['id']}"})
    plain = await commits.find_one({"stream_id": f"task-{(await unkeyed.json())['id']}"})
    assert keyed is not None
    assert plain is not None
    assert len(keyed["metadata"]["fingerprint"]) == 64
    assert plain["metadata"]["fingerprint"] == ""


async def test_idempotency_compares_the_parsed_request_not_its_bytes(client: Client) -> None:
    """The same JSON with other whitespace, key order or spelling replays with its key; another
    command with the key is still refused (create and patch alike)."""
    auth = await bearer(client)
    raw = {**auth, "Content-Type": "application/json", "Idempotency-Key": "create-7"}
    first = await client.post(
        "/api/tasks", data=b'{"title":"once","tags":["Work"],"priority":"high"}', headers=raw
    )
    assert first.status == 201, await first.text()
    task = await first.json()
    same = [
        b'{ "priority" : "high",\n  "tags" : [ "Work" ], "title" : "once" }',
        b'{"tags":["work"],"title":"once","priority":"high","description":""}',
    ]
    for body in same:
        again = await client.post("/api/tasks", data=body, headers=raw)
        assert again.status == 201, await again.text()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (await again.json())["id"] == task["id"]
    other = await client.post("/api/tasks", data=b'{"title":"once","tags":[]}', headers=raw)
    assert other.status == 422
    assert (await other.json())["type"].endswith(":idempotency-key-reused")
    url = f"/api/tasks/{task['id']}"
    patch = {**raw, "If-Match": '"1"', "Idempotency-Key": "patch-7"}
    changed = await client.patch(url, data=b'{"status":"done","title":"twice"}', headers=patch)
    assert changed.status == 200, await changed.text()
    replayed = await client.patch(
        url, data=b'{\t"title": "twice",  "status": "done"\n}', headers=patch
    )
    assert (replayed.status, replayed.headers["Idempotent-Replayed"]) == (200, "true")
    assert replayed.headers["ETag"] == changed.headers["ETag"] == '"3"'
    fewer = await client.patch(url, data=b'{"status":"done"}', headers=patch)
    assert fewer.status == 422
    assert (await fewer.json())["type"].endswith(":idempotency-key-reused")
    assert await commit_count(client) == 2


async def test_a_write_answered_503_after_it_was_stored_replays_with_its_key(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log insert lands but its reply is lost (a timeout, a dropped connection, a failed
    group-commit batch): the client gets 503; its retry with the same Idempotency-Key answers
    the stored outcome, even once another command has reloaded the stream's head."""
    auth = await bearer(client)
    store = client.app[SERVICES].store
    real_insert = store._insert

    async def stored_then_reply_lost(commit: Commit) -> None:
        await real_insert(commit)
        raise NetworkTimeout("injected: the insert was applied, its reply lost")

    async def lost(send: Awaitable[ClientResponse]) -> None:
        monkeypatch.setattr(store, "_insert", stored_then_reply_lost)
        response = await send
        monkeypatch.setattr(store, "_insert", real_insert)
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"] == "1"

    create = {**auth, "Idempotency-Key": "lost-create"}
    await lost(client.post("/api/tasks", json={"title": "stored"}, headers=create))
    [stored] = [c async for c in store.scan() if not c.is_gap]
    retried = await client.post("/api/tasks", json={"title": "stored"}, headers=create)
    assert (retried.status, retried.headers["Idempotent-Replayed"]) == (201, "true")
    task = await retried.json()
    assert f"task-{task['id']}" == stored.stream_id
    assert int(retried.headers["X-TaskFlow-Position"]) == stored.position
    url = f"/api/tasks/{task['id']}"
    for version, key in ((1, "lost-patch"), (2, "lost-after-reload")):
        pinned = {**auth, "If-Match": f'"{version}"', "Idempotency-Key": key}
        body = {"title": f"v{version + 1}"}
        await lost(client.patch(url, json=body, headers=pinned))
        if key == "lost-after-reload":
            await store.load_head(stored.stream_id)  # as another command's reload would
        again = await client.patch(url, json=body, headers=pinned)
        assert (again.status, again.headers["Idempotent-Replayed"]) == (200, "true")
        assert again.headers["ETag"] == f'"{version + 1}"'
        assert (await again.json())["title"] == f"v{version + 1}"
    assert await commit_count(client) == 3


async def test_an_insert_sent_again_after_it_was_applied_is_answered_as_done(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver retries an insert whose reply was lost, and the retry meets the first try's
    document: without an Idempotency-Key that was a 409 (create) or 412 (PATCH) for a write
    that was in fact committed; it is the write's own success."""
    auth = await bearer(client)
    store = client.app[SERVICES].store
    real_insert = store._insert

    async def applied_then_sent_again(commit: Commit) -> None:
        await real_insert(commit)
        await real_insert(commit)  # what PyMongo's automatic retry of a write does here

    monkeypatch.setattr(store, "_insert", applied_then_sent_again)
    created = await client.post("/api/tasks", json={"title": "once"}, headers=auth)
    assert created.status == 201, await created.text()
    task = await created.json()
    changed = await client.patch(
        f"/api/tasks/{task['id']}", json={"title": "twice"}, headers={**auth, "If-Match": '"1"'}
    )
    assert changed.status == 200, await changed.text()
    assert (changed.headers["ETag"], "Idempotent-Replayed" in changed.headers) == ('"2"', False)
    assert await commit_count(client) == 2
    [first, second] = [c async for c in store.scan() if not c.is_gap]
    assert int(created.headers["X-TaskFlow-Position"]) == first.position
    assert int(changed.headers["X-TaskFlow-Position"]) == second.position


async def test_an_append_that_finds_no_free_position_is_503_and_stores_nothing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counter that keeps handing out settled positions (every one sealed first) ends in a
    503 with Retry-After, not a 500, and nothing is stored."""
    auth = await bearer(client)
    task = await create_task(client, auth)
    store = client.app[SERVICES].store

    async def a_taken_position() -> int:
        return int(task["_position"])

    monkeypatch.setattr(store.positions, "take", a_taken_position)
    response = await client.post("/api/tasks", json={"title": "no room"}, headers=auth)
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "1"
    assert await commit_count(client) == 1


async def test_two_patches_with_the_same_if_match_one_wins(client: Client) -> None:
    """Concurrent PATCHes pinned to one version: exactly one 200, the other 412."""
    auth = await bearer(client)
    task = await create_task(client, auth)
    url = f"/api/tasks/{task['id']}"
    for round_ in range(3):
        headers = {**auth, "If-Match": f'"{round_ + 1}"'}
        answers = await asyncio.gather(
            client.patch(url, json={"title": f"a{round_}"}, headers=headers),
            client.patch(url, json={"title": f"b{round_}"}, headers=headers),
        )
        assert sorted(a.status for a in answers) == [200, 412]
    assert len(await client.app[SERVICES].store.read_stream(f"task-{task['id']}")) == 4


async def test_a_read_carrying_a_write_position_sees_the_write(client: Client) -> None:
    """With a projector running, every read that carries its write's position sees that write."""
    auth = await bearer(client)
    async with live_projector(client):
        for i in range(10):
            task = await create_task(client, auth, title=f"t{i}")
            position = {"X-TaskFlow-Position": str(task["_position"])}
            read = await client.get(f"/api/tasks/{task['id']}", headers={**auth, **position})
            assert read.status == 200
            assert "X-TaskFlow-Stale" not in read.headers
            listed = await client.get("/api/tasks?limit=100", headers={**auth, **position})
            assert task["id"] in [t["id"] for t in (await listed.json())["items"]]


async def test_a_position_not_reached_in_time_is_flagged_stale(
    client: Client, settings: Settings
) -> None:
    """Without a projector the bounded wait passes and the response says it may be stale."""
    settings.read_your_writes_timeout_seconds = 0.05
    auth = await bearer(client)
    task = await create_task(client, auth)
    read = await client.get(
        "/api/tasks", headers={**auth, "X-TaskFlow-Position": str(task["_position"])}
    )
    assert read.status == 200
    assert read.headers["X-TaskFlow-Stale"] == "true"
    superscript = {**auth, "X-TaskFlow-Position": "²"}  # a digit to str.isdigit(), not to us
    assert (await client.get("/api/tasks", headers=superscript)).status == 400
