"""Hostile input and access through the real app: injection, other users' tasks, mass
assignment, oversized input, brute force, forged tokens, and the security headers.

Every test has a victim (with a task, projected) and an attacker. Whatever the attacker sends,
the answer is a 4xx (or a 2xx about the attacker's own data), never a 5xx, never anything of the
victim's, and nothing is written that should not be.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse

from taskflow.api.keys import SERVICES
from taskflow.api.observability import SECURITY_HEADERS
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import redis_client
from taskflow.logs import configure_logging
from taskflow.projections.task_queries import TaskQuery, TaskReads
from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import (
    SAME_SITE,
    Client,
    ClientFactory,
    bearer,
    create_task,
    project,
    wait_ready,
)
from tests.conftest import closed_port
from tests.fault_tools import until

pytestmark = pytest.mark.usefixtures("mongo")  # drops each test's database afterwards

VICTIM_TITLE = "victim-secret-title"
VICTIM_EMAIL = "victim@example.com"
VICTIM_PASSWORD = "correct horse battery"

# Values that would mean something to MongoDB if they ever reached a filter or an update.
OPERATOR_VALUES: list[Any] = [
    {"$ne": None},
    {"$gt": ""},
    {"$regex": ".*"},
    {"$where": "1 == 1"},
    {"$in": ["todo", "done"]},
    [{"$ne": None}],
]
# The same ideas as they arrive in a query string or a path: always text.
OPERATOR_TEXTS = [
    '{"$ne": null}',
    '{"$gt": ""}',
    '{"$regex": ".*"}',
    "$ne",
    "$where",
    ".*",
    "this.owner_id != ''",
    "a.b",
    "owner_id.$ne",
]


@dataclass
class World:
    """Two users, each with a task; the victim's is projected into the read models."""

    client: Client
    victim: dict[str, str]
    attacker: dict[str, str]
    attacker_id: str
    victim_task: dict[str, Any]
    attacker_task: dict[str, Any]

    async def commits(self) -> int:
        store = self.client.app[SERVICES].store
        return await store.commits.count_documents({"kind": "commit"})

    async def safe(self, response: ClientResponse, *, sent_victims_id: bool = False) -> int:
        """The status, after checking the answer is no 5xx and leaks nothing of the victim's.

        The victim's task id may come back only where the attacker sent it (a 404's `instance`).
        """
        text = await response.text()
        assert response.status < 500, text
        assert sent_victims_id or self.victim_task["id"] not in text
        assert VICTIM_TITLE not in text
        return response.status


@pytest.fixture
async def world(client: Client) -> World:
    attacker_id = uuid.uuid4().hex
    victim, attacker = await bearer(client), await bearer(client, attacker_id)
    victim_task = await create_task(client, victim, title=VICTIM_TITLE, tags=["secret"])
    attacker_task = await create_task(client, attacker, title="mine")
    await project(client)
    return World(client, victim, attacker, attacker_id, victim_task, attacker_task)


# -- MongoDB operator injection -----------------------------------------------------------------

BODIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "register": (
        "POST",
        "/api/auth/register",
        {"email": "new@example.com", "password": "a long password", "display_name": "New"},
    ),
    "login": ("POST", "/api/auth/login", {"email": VICTIM_EMAIL, "password": VICTIM_PASSWORD}),
    "create": (
        "POST",
        "/api/tasks",
        {
            "title": "t",
            "description": "d",
            "status": "todo",
            "priority": "low",
            "due_at": "2030-01-01T00:00:00Z",
            "tags": ["a"],
        },
    ),
    "patch": (
        "PATCH",
        "/api/tasks/{task}",
        {
            "title": "t",
            "description": "d",
            "status": "done",
            "priority": "high",
            "due_at": "2031-01-01T00:00:00Z",
            "tags": ["b"],
        },
    ),
}


async def _send_body(world: World, endpoint: str, body: dict[str, Any]) -> ClientResponse:
    method, path, _ = BODIES[endpoint]
    headers = {} if endpoint in {"register", "login"} else {**world.attacker, "If-Match": '"1"'}
    url = path.format(task=world.attacker_task["id"])
    return await world.client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_operator_values_in_any_body_field_are_refused_and_write_nothing(
    world: World, endpoint: str
) -> None:
    """`{"$ne": null}` and friends in every field of the body: 422, and nothing is written."""
    if endpoint == "login":  # the login bypass only means something for a real account
        register = {"email": VICTIM_EMAIL, "password": VICTIM_PASSWORD, "display_name": "V"}
        assert (await world.client.post("/api/auth/register", json=register)).status == 201
    before = await world.commits()
    for field in BODIES[endpoint][2]:
        for value in OPERATOR_VALUES:
            body = {**BODIES[endpoint][2], field: value}
            response = await _send_body(world, endpoint, body)
            assert await world.safe(response) == 422, (field, value)
            assert "access_token" not in await response.text()
    assert await world.commits() == before


@pytest.mark.parametrize("endpoint", list(BODIES))
async def test_operator_shaped_keys_in_any_body_are_refused(world: World, endpoint: str) -> None:
    """Dotted and $-prefixed keys (and unknown ones) in a body: 422, nothing written."""
    before = await world.commits()
    for key in ["$where", "$set", "title.$ne", "tags.0", "owner_id", "a.b", "$", "__proto__"]:
        body = {**BODIES[endpoint][2], key: {"$ne": None}}
        assert await world.safe(await _send_body(world, endpoint, body)) == 422, key
    assert await world.commits() == before


LIST_PARAMS = ["status", "priority", "tags", "due_before", "due_after", "overdue", "q"]
LIST_PARAMS += ["sort", "order", "limit", "next"]
STRAY_PARAMS = ["owner_id", "owner_id[$ne]", "status[$ne]", "$where", "q[$regex]", "_id"]


async def test_operator_texts_in_list_parameters_never_reach_a_filter(world: World) -> None:
    """Any query parameter of GET /api/tasks carrying operator text: 4xx, or only own tasks."""
    for param, text in itertools.product(LIST_PARAMS + STRAY_PARAMS, OPERATOR_TEXTS):
        query = urllib.parse.urlencode({param: text})
        response = await world.client.get(f"/api/tasks?{query}", headers=world.attacker)
        status = await world.safe(response)
        if param in {"q", "tags"} and status == 200:  # free words, or a tag (a.b is one)
            items = (await response.json())["items"]
            assert {item["id"] for item in items} <= {world.attacker_task["id"]}
        else:
            assert 400 <= status < 500, (param, text)


async def test_stats_ignore_parameters_and_count_only_the_caller(world: World) -> None:
    """GET /api/tasks/stats with any parameter counts the caller's tasks only."""
    for param, text in itertools.product([*STRAY_PARAMS, "status"], OPERATOR_TEXTS):
        query = urllib.parse.urlencode({param: text})
        response = await world.client.get(f"/api/tasks/stats?{query}", headers=world.attacker)
        assert await world.safe(response) == 200
        assert (await response.json())["by_status"] == {"todo": 1, "in_progress": 0, "done": 0}


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/tasks/{task}", ["version", "as_of"]),
        ("/api/tasks/{task}/history", ["after_version", "limit", "after_version[$gt]", "$where"]),
    ],
    ids=["as-of", "history"],
)
async def test_operator_texts_in_task_read_parameters_are_refused(
    world: World, path: str, params: list[str]
) -> None:
    """Time-travel and history parameters carrying operator text: 422, never a 5xx."""
    url = path.format(task=world.attacker_task["id"])
    for param in params:
        for text in OPERATOR_TEXTS:
            query = urllib.parse.urlencode({param: text})
            response = await world.client.get(f"{url}?{query}", headers=world.attacker)
            assert await world.safe(response) == 422, (param, text)
    for stray in ["version[$ne]", "as_of[$gt]", "owner_id"]:  # ignored by a plain read: own task
        query = urllib.parse.urlencode({stray: '{"$ne": null}'})
        response = await world.client.get(f"{url}?{query}", headers=world.attacker)
        assert await world.safe(response) in {200, 422}


async def test_operator_texts_in_the_audit_feed_parameters_are_refused(world: World) -> None:
    """The auditor's feed parameters carrying operator text: 422 (and 403 for non-auditors)."""
    auditor = await bearer(world.client, roles=["auditor"])
    for param in ["after", "limit", "after[$gt]", "$where"]:
        for text in OPERATOR_TEXTS:
            query = urllib.parse.urlencode({param: text})
            response = await world.client.get(f"/api/audit/events?{query}", headers=auditor)
            assert response.status == 422, (param, text)
            refused = await world.client.get(f"/api/audit/events?{query}", headers=world.attacker)
            assert await world.safe(refused) == 403


PATH_IDS = [*OPERATOR_TEXTS, "%00", "..", "{victim}$", "{VICTIM}", "{victim}%0a", "{victim}.*"]


async def test_operator_texts_as_task_ids_find_nothing(world: World) -> None:
    """A hostile task id in any task path: 404 from every endpoint, nothing written."""
    victim_id = world.victim_task["id"]
    pinned = {**world.attacker, "If-Match": '"1"'}
    before = await world.commits()
    endpoints = [
        ("GET", "", world.attacker),
        ("GET", "/history", world.attacker),
        ("PATCH", "", pinned),
        ("DELETE", "", pinned),
        ("POST", "/restore", pinned),
    ]
    for raw, (method, suffix, headers) in itertools.product(PATH_IDS, endpoints):
        task_id = raw.replace("{victim}", victim_id).replace("{VICTIM}", victim_id.upper())
        url = f"/api/tasks/{urllib.parse.quote(task_id, safe='%')}{suffix}"
        body = {"title": "x"} if method == "PATCH" else None
        response = await world.client.request(method, url, json=body, headers=headers)
        status = await world.safe(response, sent_victims_id=True)
        # `valid_task_id`'s `$` lets a trailing newline through; the command model refuses it.
        assert status == 404 or (raw.endswith("%0a") and status == 422), (method, url, status)
    assert await world.commits() == before


async def test_operator_texts_in_headers_and_cookies_are_inert(world: World) -> None:
    """If-Match, position, idempotency key, request id, bearer and refresh cookie: no effect."""
    client, url = world.client, f"/api/tasks/{world.attacker_task['id']}"
    for text in OPERATOR_TEXTS:
        pinned = {**world.attacker, "If-Match": text}
        assert await world.safe(await client.patch(url, json={"title": "x"}, headers=pinned)) == 400
        position = {**world.attacker, "X-TaskFlow-Position": text}
        assert await world.safe(await client.get(url, headers=position)) == 400
        forged = {"Authorization": f"Bearer {text}"}
        assert await world.safe(await client.get("/api/tasks", headers=forged)) == 401
        cookie = {**SAME_SITE, "Cookie": f"taskflow_refresh={urllib.parse.quote(text)}"}
        refreshed = await client.post("/api/auth/refresh", json={}, headers=cookie)
        assert await world.safe(refreshed) == 401
        traced = await client.get("/api/health", headers={"X-Request-ID": text})
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", traced.headers["X-Request-ID"])


async def test_an_idempotency_key_is_scoped_to_its_user(world: World) -> None:
    """The victim's Idempotency-Key sent by the attacker replays nothing of the victim's."""
    key = {"Idempotency-Key": '{"$ne":null}'}
    body = {"title": VICTIM_TITLE}
    first = await world.client.post("/api/tasks", json=body, headers={**world.victim, **key})
    assert first.status == 201
    victims = (await first.json())["id"]
    stolen = await world.client.post("/api/tasks", json=body, headers={**world.attacker, **key})
    assert stolen.status == 201
    assert "Idempotent-Replayed" not in stolen.headers
    assert (await stolen.json())["id"] != victims


async def test_a_search_without_words_answers_the_same_from_redis_and_mongodb(
    world: World,
) -> None:
    """`q=.*` (no word in it) finds the same tasks whether Redis or MongoDB serves the list."""
    services = world.client.app[SERVICES]
    dead = redis_client(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    try:
        query, now = TaskQuery(q=".*", limit=100), datetime.now(UTC)
        from_redis = await TaskReads(services.redis, services.read_db).list_tasks(
            world.attacker_id, query, now
        )
        from_mongodb = await TaskReads(dead, services.read_db).list_tasks(
            world.attacker_id, query, now
        )
    finally:
        await dead.aclose()
    assert [t.task_id for t in from_redis.items] == [t.task_id for t in from_mongodb.items]
    assert from_redis.items  # narrowing by no word at all leaves every task


# -- another user's task ------------------------------------------------------------------------


async def test_another_users_task_is_404_through_every_endpoint(world: World) -> None:
    """Reads, history, time travel, writes, and restore of someone else's task: all 404."""
    client, task_id = world.client, world.victim_task["id"]
    url = f"/api/tasks/{task_id}"
    now = urllib.parse.quote(datetime.now(UTC).isoformat())
    pinned = {**world.attacker, "If-Match": '"1"'}

    async def every_endpoint() -> list[int]:
        answers = [
            await client.get(url, headers=world.attacker),
            await client.get(f"{url}?version=1", headers=world.attacker),
            await client.get(f"{url}?as_of={now}", headers=world.attacker),
            await client.get(f"{url}/history", headers=world.attacker),
            await client.patch(url, json={"title": "x"}, headers=pinned),
            await client.delete(url, headers=pinned),
            await client.post(f"{url}/restore", headers=pinned),
        ]
        return [await world.safe(answer, sent_victims_id=True) for answer in answers]

    assert await every_endpoint() == [404] * 7
    deleted = await client.delete(url, headers={**world.victim, "If-Match": '"1"'})
    assert deleted.status == 204
    await project(client)
    assert await every_endpoint() == [404] * 7  # a deleted task of someone else's too
    listed = await client.get("/api/tasks?limit=100", headers=world.attacker)
    assert [t["id"] for t in (await listed.json())["items"]] == [world.attacker_task["id"]]
    stream = await client.app[SERVICES].store.read_stream(f"task-{task_id}")
    actors = {commit.metadata.actor for commit in stream if commit.metadata is not None}
    assert (len(stream), len(actors)) == (2, 1)  # created and deleted, both by the victim


# -- mass assignment ----------------------------------------------------------------------------

SERVER_FIELDS: dict[str, Any] = {
    "owner_id": "someone-else",
    "version": 99,
    "created_at": "2000-01-01T00:00:00Z",
    "updated_at": "2000-01-01T00:00:00Z",
    "id": "0" * 32,
    "task_id": "0" * 32,
    "deleted": True,
    "position": 1,
    "events": [],
}


async def test_server_owned_task_fields_cannot_be_assigned(world: World) -> None:
    """Create or patch carrying owner, version, timestamps or ids: 422, nothing written."""
    before = await world.commits()
    for field, endpoint in itertools.product(SERVER_FIELDS, ("create", "patch")):
        body = {"title": "t", field: SERVER_FIELDS[field]}
        response = await _send_body(world, endpoint, body)
        assert await world.safe(response) == 422, (field, endpoint)
        problem = await response.json()
        assert field in [error["field"] for error in problem["errors"]]
    assert await world.commits() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", "0" * 32), ("roles", ["auditor"]), ("password_hash", "$argon2id$x")],
)
async def test_server_owned_user_fields_cannot_be_assigned(
    client: Client, field: str, value: Any
) -> None:
    """Registering with a user id, roles or a password hash: 422, and no account is made."""
    body = {"email": "mallory@example.com", "password": "a long password", "display_name": "M"}
    refused = await client.post("/api/auth/register", json={**body, field: value})
    assert refused.status == 422
    assert (await client.post("/api/auth/register", json=body)).status == 201  # e-mail was free
    login = await client.post("/api/auth/login", json={k: body[k] for k in ("email", "password")})
    token = (await login.json())["access_token"]
    feed = await client.get("/api/audit/events", headers={"Authorization": f"Bearer {token}"})
    assert feed.status == 403  # no auditor role came with it


# -- oversized input ----------------------------------------------------------------------------


async def test_oversized_bodies_are_413_on_every_body_endpoint(world: World) -> None:
    """A body over MAX_BODY_BYTES, with or without Content-Length: 413 everywhere."""
    limit = world.client.app[SERVICES].settings.max_body_bytes
    huge = b'{"title": "' + b"x" * (limit + 1) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(huge), 4096):
            yield huge[start : start + 4096]

    for endpoint in BODIES:
        method, path, _ = BODIES[endpoint]
        url = path.format(task=world.attacker_task["id"])
        headers = {**world.attacker, "If-Match": '"1"', "Content-Type": "application/json"}
        sized = await world.client.request(method, url, data=huge, headers=headers)
        assert await world.safe(sized) == 413, endpoint
        chunked = await world.client.request(method, url, data=chunks(), headers=headers)
        assert await world.safe(chunked) == 413, endpoint


OVERSIZED: list[tuple[str, str, Any]] = [
    ("create", "title", "x" * 201),
    ("create", "description", "d" * 10_001),
    ("create", "tags", ["t" * 33]),
    ("create", "tags", [f"t{i}" for i in range(21)]),
    ("patch", "title", "x" * 201),
    ("patch", "tags", [f"t{i}" for i in range(21)]),
    ("register", "display_name", "n" * 101),
    ("register", "email", "e" * 250 + "@x.co"),
    ("register", "password", "p" * 129),
    ("login", "password", "p" * 129),
]


async def test_oversized_strings_and_lists_are_422(world: World) -> None:
    """Strings and tag lists past their limits: 422 naming the field, nothing written."""
    before = await world.commits()
    for endpoint, field, value in OVERSIZED:
        response = await _send_body(world, endpoint, {**BODIES[endpoint][2], field: value})
        assert await world.safe(response) == 422, (endpoint, field)
        problem = await response.json()
        assert any(error["field"].split(".")[0] == field for error in problem["errors"])
    assert await world.commits() == before


OVERSIZED_QUERIES = [
    "/api/tasks?limit=0",
    "/api/tasks?limit=101",
    "/api/tasks?limit=-1",
    f"/api/tasks?limit={10**30}",
    "/api/tasks?" + "&".join(f"tags=t{i}" for i in range(21)),
    "/api/tasks?q=" + "w%20" * 100 + "x" * 5,
    "/api/tasks?next=" + "A" * 513,
    "/api/tasks/{task}/history?limit=101",
    "/api/tasks/{task}/history?limit=0",
]


async def test_oversized_pages_and_filters_are_422(world: World) -> None:
    """Pages past 100, tag filters past 20, searches past 200 characters, huge cursors: 422."""
    for url in OVERSIZED_QUERIES:
        path = url.format(task=world.attacker_task["id"])
        assert await world.safe(await world.client.get(path, headers=world.attacker)) == 422, url


async def test_oversized_headers_paths_and_nesting_are_4xx(world: World) -> None:
    """Huge header values, URLs, keys, positions and nesting: a 4xx, never a 5xx."""
    client = world.client
    answers = [
        await client.post(
            "/api/tasks",
            json={"title": "t"},
            headers={**world.attacker, "Idempotency-Key": "k" * 256},
        ),
        await client.get("/api/tasks", headers={**world.attacker, "X-TaskFlow-Position": "9" * 19}),
        await client.get("/api/tasks", headers={"Authorization": "Bearer " + "a" * 9000}),
        await client.get("/api/tasks/" + "a" * 10_000, headers=world.attacker),
        await client.post(
            "/api/tasks",
            data=b'{"title": "t", "description": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            headers={**world.attacker, "Content-Type": "application/json"},
        ),
        await client.post(
            "/api/tasks",
            data=json.dumps({f"k{i}": 1 for i in range(5000)}).encode(),
            headers={**world.attacker, "Content-Type": "application/json"},
        ),
    ]
    statuses = [await world.safe(answer) for answer in answers]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert statuses[:2] == [400, 400]


# -- brute force --------------------------------------------------------------------------------


async def test_login_brute_force_is_rate_limited_per_address(
    aiohttp_client: ClientFactory, client: Client, settings: Settings
) -> None:
    """After 5 attempts a minute, logins get 429 with Retry-After, right password or not."""
    register = {"email": VICTIM_EMAIL, "password": VICTIM_PASSWORD, "display_name": "V"}
    assert (await client.post("/api/auth/register", json=register)).status == 201
    limited = await aiohttp_client(
        create_app(settings.model_copy(update={"rate_limit_auth": "5/minute"}))
    )
    await wait_ready(limited)
    guesses = [f"guess number {n}" for n in range(5)]
    for guess in guesses:
        wrong = await limited.post(
            "/api/auth/login", json={"email": VICTIM_EMAIL, "password": guess}
        )
        assert wrong.status == 401
    attempts = [
        ({}, {"email": VICTIM_EMAIL, "password": "guess number 6"}),
        ({}, {"email": VICTIM_EMAIL, "password": VICTIM_PASSWORD}),
        ({"X-Forwarded-For": "203.0.113.7"}, {"email": VICTIM_EMAIL, "password": "x" * 8}),
        ({}, {"email": "other@example.com", "password": "x" * 8}),
    ]
    for headers, body in attempts:
        refused = await limited.post("/api/auth/login", json=body, headers=headers)
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert "access_token" not in await refused.text()
    again = await limited.post("/api/auth/register", json={**register, "email": "n@example.com"})
    assert again.status == 429  # registration shares the per-address budget


# -- forged access tokens over HTTP (tests/test_tokens.py covers verification itself) ----------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged_tokens(settings: Settings, user_id: str) -> dict[str, str]:
    """Tokens an attacker can make without the key, each claiming the auditor role."""
    now = datetime.now(UTC)
    genuine = issue_access_token(settings, user_id, [], now).token
    header, payload, signature = genuine.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    elevated = _b64(json.dumps({**claims, "roles": ["auditor"]}).encode())
    unsigned_header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "dev"}).encode())
    guessed = f"{header}.{elevated}"
    weak = hmac.new(b"secret", guessed.encode(), hashlib.sha256).digest()
    expired = issue_access_token(settings, user_id, ["auditor"], now - timedelta(hours=2)).token
    other = settings.model_copy(update={"jwt_audience": "another-api"})
    return {
        "alg-none": f"{unsigned_header}.{elevated}.",
        "tampered-roles": f"{header}.{elevated}.{signature}",
        "guessed-key": f"{guessed}.{_b64(weak)}",
        "expired": expired,
        "other-audience": issue_access_token(other, user_id, ["auditor"], now).token,
    }


async def test_forged_tokens_get_401_and_never_the_auditor_feed(world: World) -> None:
    """alg none, tampered roles, a guessed key, expired, other audience: 401 everywhere."""
    settings = world.client.app[SERVICES].settings
    for name, forged in _forged_tokens(settings, uuid.uuid4().hex).items():
        for path in ("/api/audit/events", "/api/tasks", "/api/auth/me"):
            response = await world.client.get(path, headers={"Authorization": f"Bearer {forged}"})
            assert await world.safe(response) == 401, (name, path)
        by_query = await world.client.get(f"/api/tasks?access_token={forged}")
        assert by_query.status in {401, 422}
    assert (await world.client.get("/api/audit/events", headers=world.attacker)).status == 403


# -- e-mail addresses with invisible characters -------------------------------------------------


@pytest.mark.parametrize("suffix", ["\u200b", "\x00", "\u00ad"])
async def test_an_email_with_an_invisible_character_is_not_a_new_account(
    client: Client, suffix: str
) -> None:
    """`victim@example.com` plus a zero-width space, NUL or soft hyphen is not another user."""
    body = {"email": VICTIM_EMAIL, "password": VICTIM_PASSWORD, "display_name": "V"}
    assert (await client.post("/api/auth/register", json=body)).status == 201
    lookalike = await client.post(
        "/api/auth/register", json={**body, "email": VICTIM_EMAIL + suffix}
    )
    assert lookalike.status in {409, 422}


# -- security headers ---------------------------------------------------------------------------


# Three apps start and stop in this test; now and then (about 1 run in 8, on older code too) a
# MongoDB socket is collected unclosed after they closed, which pytest reports as an error at
# teardown. Our background tasks are stopped before the clients close (`cancel_and_wait`), so
# what is left looks like the driver's own monitor losing a cancel on Python 3.11 (reliability
# D6); not root-caused. Only that report is ignored here; the assertions below are unchanged.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_security_headers_on_every_kind_of_answer(
    aiohttp_client: ClientFactory, world: World, settings: Settings
) -> None:
    """2xx, 304, every 4xx the API gives, 429 and 503 all carry the security headers."""
    client, auth = world.client, world.attacker
    url = f"/api/tasks/{world.attacker_task['id']}"
    pinned = {**auth, "If-Match": '"1"'}
    json_type = {"Content-Type": "application/json"}
    answers = {
        200: await client.get("/api/tasks", headers=auth),
        201: await client.post("/api/tasks", json={"title": "t"}, headers=auth),
        304: await client.get(url, headers={**auth, "If-None-Match": '"1"'}),
        400: await client.post("/api/tasks", data=b"{", headers={**auth, **json_type}),
        401: await client.get("/api/tasks"),
        403: await client.get("/api/audit/events", headers=auth),
        404: await client.get("/api/nowhere"),
        405: await client.put("/api/tasks", headers=auth),
        412: await client.patch(url, json={"title": "x"}, headers={**auth, "If-Match": '"9"'}),
        413: await client.post("/api/tasks", data=b"x" * 70_000, headers={**auth, **json_type}),
        415: await client.post("/api/tasks", data=b"x", headers=auth),
        422: await client.post("/api/tasks", json={"title": ""}, headers=auth),
        428: await client.patch(url, json={"title": "x"}, headers=auth),
        204: await client.delete(url, headers=pinned),
    }
    limited = await aiohttp_client(
        create_app(settings.model_copy(update={"rate_limit_api": "1/minute"}))
    )
    await limited.get("/api/openapi.json")
    answers[429] = await limited.get("/api/openapi.json")
    dead = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0", "redis_timeout_seconds": 0.2}
    )
    answers[503] = await (await aiohttp_client(create_app(dead))).get("/api/tasks", headers=auth)
    for status, response in answers.items():
        assert response.status == status, (status, await response.text())
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (status, name)
        assert response.headers.get("Server") == "TaskFlow", status  # no versions disclosed
        if status >= 400:
            assert response.content_type == "application/problem+json", status


# -- secure defaults (issue 21) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": "first", "title": "second"}',
        b'{"title": "t", "tags": ["a"], "tags": ["b"]}',
        b'{"title": "t", "description": "d", "due_at": null, "due_at": "2030-01-01T00:00:00Z"}',
    ],
)
async def test_duplicate_json_keys_are_400_and_write_nothing(world: World, body: bytes) -> None:
    """A key given twice means different things to different parsers: 400, nothing stored."""
    client = world.client
    before = await client.get("/api/tasks", headers=world.attacker)
    response = await client.post(
        "/api/tasks",
        data=body,
        headers={**world.attacker, "Content-Type": "application/json"},
    )
    assert await world.safe(response) == 400
    assert (await response.json())["type"].endswith("duplicate-json-key")
    register = b'{"email": "d@example.com", "email": "e@example.com", "password": "x"}'
    again = await client.post(
        "/api/auth/register", data=register, headers={"Content-Type": "application/json"}
    )
    assert await world.safe(again) == 400
    after = await client.get("/api/tasks", headers=world.attacker)
    assert (await after.json())["items"] == (await before.json())["items"]


@pytest.mark.parametrize(
    "text",
    [
        "nul\x00byte",
        "ansi \x1b[31mred\x1b[0m",
        "bell\x07",
        "del\x7f",
        "c1 \x85 next line",
        "c1\x9b",
        "bidi \u202egnp.exe",
        "isolate \u2066x\u2069",
        "embed \u202ax\u202c",
    ],
)
async def test_control_and_bidi_characters_are_refused_in_titles_and_tags(
    world: World, text: str
) -> None:
    """C0/C1 controls (NUL, ANSI escapes, DEL, NEL) and bidi overrides: 422 in a title, a tag
    or a description, on create and on change; nothing is stored."""
    client, auth = world.client, world.attacker
    task = world.attacker_task
    attempts = [
        await client.post("/api/tasks", json={"title": text}, headers=auth),
        await client.post("/api/tasks", json={"title": "t", "tags": [text]}, headers=auth),
        await client.post("/api/tasks", json={"title": "t", "description": text}, headers=auth),
        await client.patch(
            f"/api/tasks/{task['id']}",
            json={"title": text},
            headers={**auth, "If-Match": f'"{task["version"]}"'},
        ),
    ]
    assert [await world.safe(answer) for answer in attempts] == [422] * 4
    bodies = [await answer.json() for answer in attempts]
    assert [body["errors"][0]["field"] for body in bodies] == [
        "title",
        "tags.0",
        "description",
        "title",
    ]


async def test_tabs_and_newlines_are_kept_in_descriptions(world: World) -> None:
    """Descriptions are prose: tab and line breaks are the control characters they may hold."""
    description = "line one\n\tindented\r\nline three"
    made = await world.client.post(
        "/api/tasks", json={"title": "t", "description": description}, headers=world.attacker
    )
    assert made.status == 201
    assert (await made.json())["description"] == description


async def test_a_position_beyond_the_log_is_answered_stale_at_once(world: World) -> None:
    """A read asking for a position no write has returned is not held for the wait's bound."""
    far = {**world.attacker, "X-TaskFlow-Position": str(10**15)}
    for path in ["/api/tasks", f"/api/tasks/{world.attacker_task['id']}", "/api/tasks/stats"]:
        started = time.monotonic()
        response = await world.client.get(path, headers=far)
        assert response.status == 200
        assert response.headers["X-TaskFlow-Stale"] == "true"
        assert time.monotonic() - started < 1.0  # READ_YOUR_WRITES_TIMEOUT_SECONDS is 2


async def test_malformed_http_is_logged_at_info_with_its_reason(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A request the HTTP parser refuses (over-long header, bad request line) is an INFO line
    naming the reason, never an ERROR with a traceback; tracebacks that are logged render as
    text in the JSON lines."""
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    configure_logging("INFO", json=True)
    handler = root.handlers[0]
    root.addHandler(caplog.handler)
    try:
        server = world.client.server
        for raw in [
            b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
            b"GET /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ]:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(raw)
            await writer.drain()
            status_line = await reader.readline()
            assert b" 400 " in status_line, status_line
            writer.close()
            await writer.wait_closed()
        await until(lambda: _malformed_lines(caplog), 10, "two malformed_request lines")
        server_records = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert all(r.levelno < logging.WARNING and not r.exc_info for r in server_records)
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            record = logging.LogRecord(
                "x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
            )
        rendered = json.loads(handler.format(record))
        assert "Traceback (most recent call last)" in rendered["exception"]
        assert "<traceback object" not in json.dumps(rendered)
    finally:
        root.handlers[:], level = kept
        root.setLevel(level)


async def _malformed_lines(caplog: pytest.LogCaptureFixture) -> bool:
    return sum("malformed_request" in r.getMessage() for r in caplog.records) >= 2


@pytest.mark.parametrize("depth", [40, 900, 1000])
async def test_deeply_nested_bodies_are_400(world: World, depth: int) -> None:
    """Nesting no body needs (within orjson's limit or past it) is a 400, never a 500."""
    body = b'{"title": "t", "tags": ' + b"[" * depth + b"]" * depth + b"}"
    response = await world.client.post(
        "/api/tasks", data=body, headers={**world.attacker, "Content-Type": "application/json"}
    )
    assert await world.safe(response) == 400
