"""HTTP → command → log → projector → read model → HTTP, on the real servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskflow.api.keys import SERVICES
from taskflow.events.codec import decode_events
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
