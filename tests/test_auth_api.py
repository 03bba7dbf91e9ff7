"""The auth API and its stores, through the real app on the real MongoDB-protocol and Redis."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect
from redis.asyncio import Redis

from taskflow import names
from taskflow.api.auth_routes import REFRESH_COOKIE
from taskflow.api.keys import SERVICES
from taskflow.auth.denylist import DenyList
from taskflow.auth.indexes import ensure_auth_indexes
from taskflow.auth.passwords import PasswordHashing
from taskflow.auth.refresh import (
    InvalidRefreshTokenError,
    RefreshTokenReusedError,
    RefreshTokens,
    hash_token,
)
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import projections
from taskflow.commands.runner import Context
from taskflow.commands.user_handlers import (
    Accounts,
    EmailTakenError,
    InvalidCredentialsError,
    Trace,
    handle_change_password,
    handle_register_user,
)
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.hot_redis import HotRedis
from taskflow.projections.runtime import catch_up
from taskflow.server import create_app
from taskflow.settings import (
    DEFAULT_PASSWORD_MEMORY_KIB,
    DEFAULT_PASSWORD_PARALLELISM,
    DEFAULT_PASSWORD_TIME_COST,
    Settings,
    SettingsError,
    load_settings,
)
from tests.api_support import SAME_SITE
from tests.conftest import TEST_HMAC_KEY, TEST_PASSWORD_HASH_COST, closed_port

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
Db = AsyncDatabase[dict[str, Any]]

PASSWORD = "correct horse battery"
TRACE = Trace("req-1", "corr-1")


async def ready_client(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    """The app on the test servers, ready (indexes created) before any racing insert."""
    client = await aiohttp_client(create_app(settings))
    deadline = time.monotonic() + 60
    while (await client.get("/api/ready")).status != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        await asyncio.sleep(0.05)
    return client


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings, db: Db, redis: Redis) -> Client:
    return await ready_client(aiohttp_client, settings)


async def register(
    client: Client, email: str = "alice@example.com", password: str = PASSWORD, name: str = "Alice"
) -> aiohttp.ClientResponse:
    body = {"email": email, "display_name": name, "password": password}
    return await client.post("/api/auth/register", json=body)


async def login(
    client: Client, email: str = "alice@example.com", password: str = PASSWORD
) -> tuple[str, str]:
    """The access token and refresh token of a successful login."""
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    return (await response.json())["access_token"], response.cookies[REFRESH_COOKIE].value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_refresh(client: Client) -> aiohttp.ClientResponse:
    """POST /api/auth/refresh as a same-site page would (the jar sends the cookie)."""
    return await client.post("/api/auth/refresh", json={}, headers=SAME_SITE)


async def post_logout(client: Client, access: str) -> aiohttp.ClientResponse:
    """POST /api/auth/logout with the access token, as a same-site page would."""
    return await client.post("/api/auth/logout", json={}, headers={**SAME_SITE, **bearer(access)})


async def refresh_with(client: Client, refresh_token: str) -> aiohttp.ClientResponse:
    """POST /api/auth/refresh carrying exactly this cookie (no cookie jar involved)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        response = await session.post(
            client.make_url("/api/auth/refresh"),
            json={},
            headers={**SAME_SITE, "Cookie": f"{REFRESH_COOKIE}={refresh_token}"},
        )
        await response.read()
        return response


async def user_commits(db: Db) -> list[dict[str, Any]]:
    docs = await db[names.COMMITS].find({}).to_list()
    return [d for d in docs if d.get("kind") == "commit" and d["stream_id"].startswith("user-")]


def problem_type(body: dict[str, Any]) -> str:
    return str(body["type"]).rsplit(":", 1)[-1]


async def test_register_login_me_refresh_logout_happy_path(client: Client) -> None:
    """The whole session life cycle works end to end with the cookie jar a browser would use."""
    created = await register(client, email="  Alice@Example.COM ")
    assert created.status == 201
    profile = await created.json()
    assert profile == {
        "user_id": profile["user_id"],
        "email": "alice@example.com",
        "display_name": "Alice",
    }
    assert created.headers["ETag"] == '"1"'
    assert int(created.headers["X-TaskFlow-Position"]) >= 1

    access, first_refresh = await login(client, email="ALICE@example.com")
    me = await client.get("/api/auth/me", headers=bearer(access))
    assert me.status == 200
    assert await me.json() == {**profile, "roles": []}

    refreshed = await post_refresh(client)  # the jar sends the cookie (Path matches)
    assert refreshed.status == 200
    body = await refreshed.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert refreshed.cookies[REFRESH_COOKIE].value != first_refresh
    second_access = body["access_token"]
    assert (await client.get("/api/auth/me", headers=bearer(second_access))).status == 200

    out = await post_logout(client, second_access)
    assert out.status == 204
    assert out.cookies[REFRESH_COOKIE].value == ""
    assert (await client.get("/api/auth/me", headers=bearer(second_access))).status == 401
    # Logout revokes the session's family: an older access token of it is refused at once too.
    assert (await client.get("/api/auth/me", headers=bearer(access))).status == 401
    assert (await post_refresh(client)).status == 401  # the jar dropped the cookie


async def test_refresh_cookie_is_httponly_strict_and_scoped_to_the_auth_path(
    aiohttp_client: ClientFactory, settings: Settings, db: Db, redis: Redis
) -> None:
    """The refresh cookie is HttpOnly, SameSite=Strict, Path=/api/auth, Secure per settings."""
    for secure in (False, True):
        variant = settings.model_copy(update={"cookie_secure": secure})
        client = await ready_client(aiohttp_client, variant)
        await register(client, email=f"cookie-{secure}@example.com")
        response = await client.post(
            "/api/auth/login", json={"email": f"cookie-{secure}@example.com", "password": PASSWORD}
        )
        cookie = SimpleCookie(response.headers["Set-Cookie"])[REFRESH_COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/api/auth"
        assert cookie["max-age"] == str(settings.refresh_token_ttl_seconds)
        assert bool(cookie["secure"]) is secure
        assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("racers", [20, 50])
async def test_concurrent_registrations_of_one_email_have_exactly_one_winner(
    client: Client, db: Db, racers: int
) -> None:
    """N racing registrations of one address (any spelling): one 201, the rest 409, one user."""
    spellings = ["race@example.com", " Race@Example.com", "RACE@EXAMPLE.COM "]
    responses = await asyncio.gather(
        *(register(client, email=spellings[i % 3], name=f"Racer {i}") for i in range(racers))
    )
    statuses = sorted(response.status for response in responses)
    assert statuses == [201] + [409] * (racers - 1)
    losers = [await r.json() for r in responses if r.status == 409]
    assert {problem_type(body) for body in losers} == {"email-taken"}
    [reservation] = await db[names.EMAIL_RESERVATIONS].find({}).to_list()
    [winner] = [await r.json() for r in responses if r.status == 201]
    # Reserved under the address's keyed hash, never the address itself (docs/privacy.md).
    assert reservation["_id"] == client.app[SERVICES].accounts.email_digest("race@example.com")
    assert reservation["user_id"] == winner["user_id"]
    [commit] = await user_commits(db)
    assert commit["stream_id"] == f"user-{winner['user_id']}"


async def test_login_failures_look_alike_for_unknown_email_and_wrong_password(
    aiohttp_client: ClientFactory, settings: Settings, db: Db
) -> None:
    """Unknown e-mail and wrong password give the same 401 body and comparable time (at the
    default hash cost: at the suite's, a hash costs less than the request around it)."""
    default_cost = {
        "password_hash_time_cost": DEFAULT_PASSWORD_TIME_COST,
        "password_hash_memory_kib": DEFAULT_PASSWORD_MEMORY_KIB,
        "password_hash_parallelism": DEFAULT_PASSWORD_PARALLELISM,
    }
    client = await ready_client(aiohttp_client, settings.model_copy(update=default_cost))
    await register(client)

    async def attempt(email: str, password: str) -> tuple[float, int, dict[str, Any]]:
        started = time.perf_counter()
        response = await client.post("/api/auth/login", json={"email": email, "password": password})
        return time.perf_counter() - started, response.status, await response.json()

    await attempt("warm-up@example.com", PASSWORD)  # the dummy hash is made on first use
    wrong = [await attempt("alice@example.com", "wrong password") for _ in range(3)]
    unknown = [await attempt("nobody@example.com", PASSWORD) for _ in range(3)]
    invalid = [await attempt("not-an-email", PASSWORD) for _ in range(3)]
    bodies = {(status, body["type"], body["detail"]) for _, status, body in wrong + unknown}
    assert len(bodies) == 1
    assert {(s, b["detail"]) for _, s, b in invalid} == {(401, "Wrong e-mail or password.")}
    assert next(iter(bodies))[0] == 401
    # Without the dummy verification an unknown e-mail answers many times faster.
    wrong_time = statistics.median(t for t, _, _ in wrong)
    assert statistics.median(t for t, _, _ in unknown) > 0.3 * wrong_time
    assert statistics.median(t for t, _, _ in invalid) > 0.3 * wrong_time


async def test_login_and_me_work_from_mongodb_alone_after_redis_forgets(
    client: Client, redis: Redis
) -> None:
    """Redis holds only caches for users: flushed, login and /me are answered from the log."""
    profile = await (await register(client)).json()
    await redis.flushdb()
    access, _ = await login(client)
    await redis.flushdb()
    me = await client.get("/api/auth/me", headers=bearer(access))
    assert (await me.json())["user_id"] == profile["user_id"]


@pytest.mark.parametrize("grace", [0.0, 5.0])
async def test_fifty_concurrent_refreshes_of_one_token_have_one_winner_then_the_family_dies(
    aiohttp_client: ClientFactory, settings: Settings, grace: float
) -> None:
    """50 racing uses of one refresh token, decided by the unique insert. Without a grace
    window: one 200, and the reuse revokes the winner's family. Within one: every racer gets
    the winner's successor, and the family lives on."""
    client = await ready_client(
        aiohttp_client, settings.model_copy(update={"refresh_grace_seconds": grace})
    )
    await register(client)
    _, refresh_token = await login(client)
    responses = await asyncio.gather(*(refresh_with(client, refresh_token) for _ in range(50)))
    statuses = sorted(response.status for response in responses)
    winners = [r for r in responses if r.status == 200]
    if grace:
        assert statuses == [200] * 50
        assert len({r.cookies[REFRESH_COOKIE].value for r in winners}) == 1
        assert (await refresh_with(client, winners[0].cookies[REFRESH_COOKIE].value)).status == 200
        return
    assert statuses == [200] + [401] * 49
    [winner] = winners
    assert (await refresh_with(client, winner.cookies[REFRESH_COOKIE].value)).status == 401
    _, fresh = await login(client)  # a new login starts a new, healthy family
    assert (await refresh_with(client, fresh)).status == 200


async def test_presenting_a_retired_refresh_token_revokes_its_family(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """After a rotation (and its grace window), the old token coming back kills the old and the
    current token alike."""
    client = await ready_client(
        aiohttp_client, settings.model_copy(update={"refresh_grace_seconds": 0.0})
    )
    await register(client)
    _, first = await login(client)
    rotated = await refresh_with(client, first)
    assert rotated.status == 200
    second = rotated.cookies[REFRESH_COOKIE].value
    reused = await refresh_with(client, first)
    assert reused.status == 401
    assert problem_type(await reused.json()) == "invalid-refresh-token"
    assert (await refresh_with(client, second)).status == 401


async def test_refresh_without_a_cookie_or_with_a_made_up_token_is_401(client: Client) -> None:
    """No cookie, an empty one, an unknown or an absurdly long token: 401, nothing else."""
    assert (await post_refresh(client)).status == 401
    for token in ("", "made-up-token", "x" * 4000):
        assert (await refresh_with(client, token)).status == 401


async def test_logout_denies_the_access_token_and_revokes_the_refresh_family(
    client: Client,
) -> None:
    """A logged-out access token is 401 for the rest of its life; its refresh family is dead."""
    await register(client)
    access, refresh_token = await login(client)
    client.session.cookie_jar.clear()
    out = await client.post(
        "/api/auth/logout",
        json={},
        headers={**SAME_SITE, **bearer(access), "Cookie": f"{REFRESH_COOKIE}={refresh_token}"},
    )
    assert out.status == 204
    denied = await client.get("/api/auth/me", headers=bearer(access))
    assert denied.status == 401
    assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await denied.json())["detail"] == "invalid or expired token"
    assert (await post_logout(client, access)).status == 401
    assert (await refresh_with(client, refresh_token)).status == 401


async def test_missing_or_bad_bearer_tokens_get_the_same_401_with_a_challenge(
    client: Client, settings: Settings
) -> None:
    """No header, another scheme, garbage, or a refresh token as bearer: one 401 shape."""
    await register(client)
    _, refresh_token = await login(client)
    expired = issue_access_token(settings, "someone", [], datetime.now(UTC) - timedelta(hours=1))
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer"},
        bearer("not.a.jwt"),
        bearer(refresh_token),
        bearer(expired.token),
    ]
    for header in headers:
        response = await client.get("/api/auth/me", headers=header)
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="taskflow"')
        body = await response.json()
        assert (problem_type(body), body["detail"]) == ("invalid-token", "invalid or expired token")


async def test_deny_list_unreachable_fails_closed_with_503(
    aiohttp_client: ClientFactory, settings: Settings, db: Db
) -> None:
    """Redis down and no copy of the deny list yet: a signed token is not trusted (503)."""
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    client = await aiohttp_client(create_app(dead))
    token = issue_access_token(dead, "user-1", [], datetime.now(UTC)).token
    response = await client.get("/api/auth/me", headers=bearer(token))
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert problem_type(await response.json()) == "auth-unavailable"
    logout = await post_logout(client, token)
    assert logout.status == 503


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("register", {"email": "a@example.com", "display_name": "A", "password": PASSWORD,
                      "roles": ["auditor"]}, "roles"),
        ("register", {"email": 5, "display_name": "A", "password": PASSWORD}, "email"),
        ("register", {"email": {"$ne": None}, "display_name": "A", "password": PASSWORD}, "email"),
        ("register", {"email": "a@example.com", "display_name": "A" * 101, "password": PASSWORD},
         "display_name"),
        ("register", {"email": "a@example.com", "display_name": "A", "password": "p" * 129},
         "password"),
        ("register", {"email": "a@example.com", "display_name": "A", "password": "short"},
         "password"),
        ("register", {"email": "no-at-sign", "display_name": "A", "password": PASSWORD}, "email"),
        ("register", {"email": "a@example.com", "password": PASSWORD}, "display_name"),
        ("login", {"email": {"$ne": None}, "password": PASSWORD}, "email"),
        ("login", {"email": "a@example.com", "password": {"$gt": ""}}, "password"),
        ("login", {"email": "a@example.com", "password": "p" * 129}, "password"),
        ("login", {"email": "a@example.com", "password": PASSWORD, "admin": True}, "admin"),
    ],
)  # fmt: skip
async def test_bad_bodies_are_422_naming_the_field(
    client: Client, path: str, body: dict[str, Any], field: str
) -> None:
    """Unknown fields, wrong types, operator-shaped values and over-long strings: 422 + field."""
    response = await client.post(f"/api/auth/{path}", json=body)
    assert response.status == 422
    problem = await response.json()
    assert problem_type(problem) == "validation-error"
    assert [error["field"] for error in problem["errors"]] == [field]


async def test_malformed_json_is_400(client: Client) -> None:
    """A body that is not JSON at all is a 400 malformed-json problem."""
    for path in ("register", "login"):
        response = await client.post(
            f"/api/auth/{path}", data=b'{"email": ', headers={"Content-Type": "application/json"}
        )
        assert response.status == 400
        assert problem_type(await response.json()) == "malformed-json"


# -- the handlers and stores directly ---------------------------------------------------------


async def test_an_orphaned_reservation_is_reused_once_by_racing_registrations(
    accounts: Accounts, db: Db
) -> None:
    """A reservation left by a crash is taken over; the unique version key picks one racer."""
    await ensure_auth_indexes(db)
    old = datetime.now(UTC) - timedelta(hours=1)
    await db[names.EMAIL_RESERVATIONS].insert_one(
        {
            "_id": accounts.email_digest("orphan@example.com"),
            "user_id": "orphan-user",
            "reserved_at": old,
        }
    )

    async def attempt(i: int) -> str:
        try:
            outcome = await handle_register_user(
                accounts, email="orphan@example.com", display_name=f"R{i}", password=PASSWORD,
                trace=TRACE,
            )  # fmt: skip
        except EmailTakenError:
            return "taken"
        assert outcome.state is not None
        return outcome.state.user_id

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sorted(results) == ["orphan-user"] + ["taken"] * 19
    [commit] = await user_commits(db)
    assert commit["stream_id"] == "user-orphan-user"
    assert commit["metadata"]["actor"] == "orphan-user"


async def test_a_fresh_reservation_with_an_empty_stream_counts_as_taken(
    accounts: Accounts, db: Db
) -> None:
    """A reservation younger than the orphan delay is a registration in flight: 409, no append."""
    await ensure_auth_indexes(db)
    await db[names.EMAIL_RESERVATIONS].insert_one(
        {
            "_id": accounts.email_digest("busy@example.com"),
            "user_id": "in-flight",
            "reserved_at": datetime.now(UTC),
        }
    )
    with pytest.raises(EmailTakenError):
        await handle_register_user(
            accounts, email="busy@example.com", display_name="B", password=PASSWORD, trace=TRACE
        )
    assert await user_commits(db) == []


class BrokenStore(MongoEventStore):
    """The real store whose one log write fails, as when MongoDB drops mid-registration."""

    async def _insert(self, commit: Commit) -> None:
        raise AutoReconnect("connection lost (injected)")


async def test_a_failed_append_releases_the_reservation(
    accounts: Accounts, db: Db, redis: Redis, hot: HotRedis, settings: Settings
) -> None:
    """If appending UserRegistered fails, the reservation is given back and the e-mail is free."""
    await ensure_auth_indexes(db)
    broken = BrokenStore(db, redis, HashChain(TEST_HMAC_KEY), hot=hot, gap_timeout=0.3)
    with pytest.raises(AutoReconnect):
        await handle_register_user(
            Accounts.create(broken, db, redis, settings),
            email="retry@example.com", display_name="R", password=PASSWORD, trace=TRACE,
        )  # fmt: skip
    assert await db[names.EMAIL_RESERVATIONS].count_documents({}) == 0
    assert await db[names.CREDENTIALS].count_documents({}) == 0  # its hash is not kept either
    outcome = await handle_register_user(
        accounts, email="retry@example.com", display_name="R", password=PASSWORD, trace=TRACE
    )
    assert outcome.version == 1


async def test_change_password_needs_the_current_one_and_replaces_it(client: Client) -> None:
    """Changing the password requires the current one; afterwards only the new one logs in."""
    user_id = (await (await register(client)).json())["user_id"]
    context = Context(actor=user_id, request_id="req-2", correlation_id="corr-2")
    accounts = client.app[SERVICES].accounts
    with pytest.raises(InvalidCredentialsError):
        await handle_change_password(
            accounts, user_id=user_id, current_password="wrong password",
            new_password="new password", context=context,
        )  # fmt: skip
    outcome = await handle_change_password(
        accounts, user_id=user_id, current_password=PASSWORD, new_password="new password",
        context=context,
    )  # fmt: skip
    assert outcome.version == 2
    await login(client, password="new password")
    old = await client.post(
        "/api/auth/login", json={"email": "alice@example.com", "password": PASSWORD}
    )
    assert old.status == 401


async def test_refresh_store_refuses_expired_tokens_against_its_clock(db: Db, redis: Redis) -> None:
    """A refresh token is good until its 30-day life ends, and refused from then on."""
    await ensure_auth_indexes(db)
    tokens = RefreshTokens(db, redis, ttl_seconds=30 * 24 * 3600)
    now = datetime.now(UTC)
    issued = await tokens.issue("user-1", now)
    assert issued.expires_at == now + timedelta(days=30)
    with pytest.raises(InvalidRefreshTokenError):
        await tokens.rotate(issued.token, now + timedelta(days=30))
    rotated = await tokens.rotate(issued.token, now + timedelta(days=29))
    assert rotated.family_id == issued.family_id


async def test_mongodb_stays_the_authority_when_redis_forgets(db: Db, redis: Redis) -> None:
    """With Redis flushed, tokens are found and reuse and revocation still enforced (MongoDB)."""
    await ensure_auth_indexes(db)
    tokens = RefreshTokens(db, redis, ttl_seconds=3600)
    now = datetime.now(UTC)
    first = await tokens.issue("user-1", now)
    stored = await db[names.REFRESH_TOKENS].find_one({})
    assert stored is not None
    assert first.token not in str(stored)  # only the hash is kept
    await redis.flushdb()
    second = await tokens.rotate(first.token, now)
    await redis.flushdb()
    with pytest.raises(RefreshTokenReusedError):
        await tokens.rotate(first.token, now)
    await redis.flushdb()
    with pytest.raises(InvalidRefreshTokenError):
        await tokens.rotate(second.token, now)


async def test_reads_refuse_a_logged_out_token_as_soon_as_the_logout_answered(
    client: Client,
) -> None:
    """One task and list pages check the deny list in their own Redis round trip: a token is
    401 there right after its logout's 204, cached page, new query and read-your-writes alike."""
    await register(client)
    access, _ = await login(client)
    created = await client.post("/api/tasks", json={"title": "t"}, headers=bearer(access))
    assert created.status == 201
    task = await created.json()
    position = created.headers["X-TaskFlow-Position"]
    await catch_up(client.app[SERVICES].store, projections(client.app[SERVICES]))
    reads = [f"/api/tasks/{task['id']}", "/api/tasks", "/api/tasks?limit=5"]
    for path in reads:  # the pages are cached now
        assert (await client.get(path, headers=bearer(access))).status == 200
    assert (await post_logout(client, access)).status == 204
    for path in [*reads, "/api/tasks?priority=low"]:
        for extra in [{}, {"X-TaskFlow-Position": position}]:
            response = await client.get(path, headers={**bearer(access), **extra})
            assert response.status == 401, path
            assert (await response.json())["detail"] == "invalid or expired token"


async def test_guarded_reads_survive_redis_forgetting_their_scripts(
    client: Client, redis: Redis
) -> None:
    """After SCRIPT FLUSH (as after a Redis restart) the read scripts are loaded again."""
    await register(client)
    access, _ = await login(client)
    created = await client.post("/api/tasks", json={"title": "t"}, headers=bearer(access))
    task = await created.json()
    await catch_up(client.app[SERVICES].store, projections(client.app[SERVICES]))
    await redis.script_flush()
    one = await client.get(f"/api/tasks/{task['id']}", headers=bearer(access))
    assert (one.status, (await one.json())["title"]) == (200, "t")
    page = await client.get("/api/tasks", headers=bearer(access))
    assert [item["id"] for item in (await page.json())["items"]] == [task["id"]]


async def test_the_process_that_logs_a_token_out_refuses_it_from_its_copy_at_once(
    redis: Redis, hot: HotRedis, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """Were Redis lost right after a logout, the process that recorded it still refuses the
    token: its own copy of the deny list holds it before the next refresh."""
    deny_list = DenyList(redis, db[names.DENIED_TOKENS], stale_limit=300, hot=hot)
    now = datetime.now(UTC)
    await deny_list.refresh(now)  # a copy that predates the logout
    await deny_list.deny("jti-1", now + timedelta(minutes=5), now)
    assert deny_list.denied_by_copy("jti-1")
    assert not deny_list.denied_by_copy("jti-2")


# -- secure defaults (issue 21) -----------------------------------------------------------------

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "taskflow.env.example"
SECRETS = ("JWT_KEYS", "EVENT_LOG_HMAC_KEY", "DATA_KEKS", "EMAIL_HASH_KEY")


@pytest.mark.parametrize("command", [["serve"], ["project"]])
def test_a_process_outside_development_with_a_built_in_key_refuses_to_start(
    settings: Settings, command: list[str]
) -> None:
    """Without TASKFLOW_ENV=development the built-in keys stop the process at start, with a
    message naming each setting and a command that makes a good key."""
    left_out = {"TASKFLOW_ENV", *SECRETS, *(f"{name}_FILE" for name in SECRETS)}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in left_out | TEST_PASSWORD_HASH_COST.keys()
    }
    env.update(MONGODB_URI=settings.mongodb_uri, REDIS_URL=settings.redis_url, HTTP_PORT="0")
    started = subprocess.run(
        [sys.executable, "-m", "taskflow", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 2, started.stderr
    for name in SECRETS:
        assert f"{name} holds a built-in or example key" in started.stderr
    assert "TASKFLOW_ENV=development" in started.stderr
    assert "secrets.token_urlsafe(48)" in started.stderr
    assert "base64.b64encode(os.urandom(32))" in started.stderr


def at_default_hash_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the suite's cheap password hash cost (tests/conftest.py): production refuses it."""
    for name in TEST_PASSWORD_HASH_COST:
        monkeypatch.delenv(name)


def good_secrets() -> dict[str, str]:
    """A valid value of every secret setting, made as the error messages say."""
    return {
        "JWT_KEYS": f"k1:{secrets.token_urlsafe(48)}",
        "EVENT_LOG_HMAC_KEY": secrets.token_urlsafe(48),
        "DATA_KEKS": f"k1:{base64.b64encode(os.urandom(32)).decode()}",
        "EMAIL_HASH_KEY": secrets.token_urlsafe(48),
    }


@pytest.mark.parametrize("name", SECRETS)
def test_the_example_env_file_placeholders_fail_validation(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Each secret placeholder of deploy/taskflow.env.example (once uncommented) is refused,
    naming the setting, whatever else is set."""
    example = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.lstrip("#").partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            example[key] = value
    values = {**good_secrets(), name: example[name]}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JWT_ACTIVE_KID", "k1")
    monkeypatch.setenv("DATA_KEK_ACTIVE", "k1")
    monkeypatch.setenv("TASKFLOW_ENV", "production")
    at_default_hash_cost(monkeypatch)
    with pytest.raises(SettingsError, match=name):
        load_settings()
    monkeypatch.setenv(name, good_secrets()[name])
    assert load_settings().taskflow_env == "production"  # only the placeholder was refused


def test_every_secret_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> None:
    """`<NAME>_FILE` names a file holding the secret (Docker secrets); both at once, or an
    unreadable file, stop the process naming the setting."""
    values = {
        **good_secrets(),
        "MONGODB_URI": settings.mongodb_uri,
        "REDIS_URL": settings.redis_url,
    }
    for name, value in values.items():
        monkeypatch.delenv(name, raising=False)
        path = tmp_path / name.lower()
        path.write_text(value + "\n", encoding="utf-8")
        monkeypatch.setenv(f"{name}_FILE", str(path))
    monkeypatch.setenv("TASKFLOW_ENV", "production")
    monkeypatch.setenv("JWT_ACTIVE_KID", "k1")
    monkeypatch.setenv("DATA_KEK_ACTIVE", "k1")
    at_default_hash_cost(monkeypatch)
    loaded = load_settings()
    assert loaded.jwt_keys["k1"].get_secret_value() == values["JWT_KEYS"].removeprefix("k1:")
    assert loaded.event_log_hmac_key.get_secret_value() == values["EVENT_LOG_HMAC_KEY"]
    assert loaded.data_keks["k1"].get_secret_value() == values["DATA_KEKS"].removeprefix("k1:")
    assert loaded.email_hash_key.get_secret_value() == values["EMAIL_HASH_KEY"]
    assert (loaded.mongodb_uri, loaded.redis_url) == (settings.mongodb_uri, settings.redis_url)
    monkeypatch.setenv("EMAIL_HASH_KEY", secrets.token_urlsafe(48))
    with pytest.raises(SettingsError, match="EMAIL_HASH_KEY and EMAIL_HASH_KEY_FILE"):
        load_settings()
    monkeypatch.delenv("EMAIL_HASH_KEY")
    monkeypatch.setenv("EMAIL_HASH_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="EMAIL_HASH_KEY_FILE: cannot read"):
        load_settings()


async def test_passwords_hash_at_the_default_cost_and_production_refuses_a_cheaper_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """New hashes are argon2id at t=3, m=64 MiB, p=4 unless configured; outside development a
    cost below OWASP's floor (t=2, m=19 MiB) stops the process naming the setting."""
    at_default_hash_cost(monkeypatch)
    hashed = await PasswordHashing.from_settings(Settings()).hash(PASSWORD)
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    for key, value in {**good_secrets(), "JWT_ACTIVE_KID": "k1", "DATA_KEK_ACTIVE": "k1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TASKFLOW_ENV", "production")
    assert load_settings().password_hash_memory_kib == 65536
    for name, value in [("PASSWORD_HASH_TIME_COST", "1"), ("PASSWORD_HASH_MEMORY_KIB", "8192")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=name):
            load_settings()
        monkeypatch.delenv(name)
    monkeypatch.setenv("PASSWORD_HASH_MEMORY_KIB", str(19 * 1024))
    monkeypatch.setenv("PASSWORD_HASH_TIME_COST", "2")
    assert load_settings().password_hash_time_cost == 2  # the floor itself is allowed


@pytest.mark.parametrize("origins", ["*", "https://app.example.com,*", "null"])
def test_a_wildcard_cors_origin_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, origins: str
) -> None:
    """Credentials are always allowed here, so `*` (or `null`) would hand them to any site."""
    monkeypatch.setenv("CORS_ORIGINS", origins)
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load_settings()


async def throttled_client(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    """The app behind a trusted proxy (X-Forwarded-For names the client), 3 free failures and
    a one-second cap on the per-account wait."""
    throttled = settings.model_copy(
        update={
            "login_free_failures": 3,
            "login_backoff_cap_seconds": 1.0,
            "trust_forwarded_for": True,
        }
    )
    return await ready_client(aiohttp_client, throttled)


async def test_password_guessing_is_throttled_per_account_whatever_the_address(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """Guesses from 30 addresses: the free failures get 401, then 429 with Retry-After and the
    password is not even checked, the right one included; once the wait (at most the cap) is
    over the owner logs in, which starts the count again."""
    client = await throttled_client(aiohttp_client, settings)
    assert (await register(client)).status == 201
    answers = []
    for n in range(30):
        response = await client.post(
            "/api/auth/login",
            json={"email": "alice@example.com", "password": f"guess {n}"},
            headers={"X-Forwarded-For": f"198.51.100.{n}"},
        )
        answers.append(response.status)
        if response.status == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 1  # never beyond the cap
            assert (await response.json())["type"].endswith("login-throttled")
    assert answers[:4] == [401, 401, 401, 401]  # three free, the fourth starts the wait
    assert answers.count(429) >= 20
    owner = await client.post(
        "/api/auth/login", json={"email": "Alice@Example.com", "password": PASSWORD}
    )
    deadline = time.monotonic() + 10
    while owner.status == 429:  # the cap bounds the owner's wait
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        owner = await client.post(
            "/api/auth/login", json={"email": "alice@example.com", "password": PASSWORD}
        )
    assert owner.status == 200
    wrong = await client.post(
        "/api/auth/login", json={"email": "alice@example.com", "password": "one more guess"}
    )
    assert wrong.status == 401  # the success started the count again


async def test_me_refresh_and_logout_do_not_spend_the_login_budget(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """Login and register have a small per-address budget; /me and refresh are ordinary API
    calls. Every answer of a limited route, 401s included, carries the RateLimit-* headers."""
    client = await ready_client(
        aiohttp_client, settings.model_copy(update={"rate_limit_auth": "3/minute"})
    )
    assert (await register(client)).status == 201
    access, _ = await login(client)
    for _ in range(5):
        assert (await client.get("/api/auth/me", headers=bearer(access))).status == 200
    assert (await post_refresh(client)).status == 200
    anonymous = await client.get("/api/tasks")
    assert anonymous.status == 401
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(anonymous.headers)
    wrong = await client.post(
        "/api/auth/login", json={"email": "alice@example.com", "password": "not the one"}
    )
    assert wrong.status == 401  # the third of three: /me and refresh took nothing
    assert wrong.headers["RateLimit-Limit"] == "3"
    assert wrong.headers["RateLimit-Remaining"] == "0"


async def test_logout_with_the_access_token_alone_revokes_the_refresh_family(
    client: Client,
) -> None:
    """The access token names its family: a logout that carries only it ends the session."""
    await register(client)
    access, refresh_token = await login(client)
    client.session.cookie_jar.clear()
    assert (await post_logout(client, access)).status == 204
    assert (await refresh_with(client, refresh_token)).status == 401


async def test_revoking_a_family_refuses_its_access_tokens_at_once(client: Client) -> None:
    """A reused refresh token revokes its family, and every access token issued with it is
    refused at once, on guarded reads and writes alike, not at its expiry."""
    await register(client)
    first_access, first_refresh = await login(client)
    other_access, _ = await login(client)  # another session (family) of the same user
    client.session.cookie_jar.clear()
    rotated = await refresh_with(client, first_refresh)
    assert rotated.status == 200
    second_access = (await rotated.json())["access_token"]
    services = client.app[SERVICES]
    await services.redis.delete(names.refresh_successor_key(hash_token(first_refresh)))
    assert (await refresh_with(client, first_refresh)).status == 401  # reuse: family revoked
    for access in (first_access, second_access):
        assert (await client.get("/api/auth/me", headers=bearer(access))).status == 401
        assert (await client.get("/api/tasks", headers=bearer(access))).status == 401
        made = await client.post("/api/tasks", json={"title": "t"}, headers=bearer(access))
        assert made.status == 401
    assert (await client.get("/api/tasks", headers=bearer(other_access))).status == 200


async def test_two_refreshes_within_the_grace_window_get_the_same_successor(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """Two tabs refreshing one token at once both get the same successor and stay signed in;
    the successor is kept only encrypted and only for the window; after it, a reuse revokes."""
    client = await ready_client(
        aiohttp_client, settings.model_copy(update={"refresh_grace_seconds": 1.0})
    )
    await register(client)
    _, refresh_token = await login(client)
    client.session.cookie_jar.clear()
    first, second = await asyncio.gather(
        refresh_with(client, refresh_token), refresh_with(client, refresh_token)
    )
    assert (first.status, second.status) == (200, 200)
    successor = first.cookies[REFRESH_COOKIE].value
    assert second.cookies[REFRESH_COOKIE].value == successor
    redis = client.app[SERVICES].redis
    slot = names.refresh_successor_key(hash_token(refresh_token))
    kept = await redis.get(slot)
    assert kept is not None
    assert successor.encode() not in kept
    assert 0 < await redis.ttl(slot) <= 1
    deadline = time.monotonic() + 10
    while await redis.exists(slot):  # the window closes by itself
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await refresh_with(client, refresh_token)).status == 401  # reuse after the window
    assert (await refresh_with(client, successor)).status == 401  # ... revoked the family


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {}, 403),  # neither Origin nor the custom header
        ({"Origin": "https://evil.example"}, {}, 403),
        ({"Origin": "https://evil.example", "X-Requested-With": "x"}, {}, 403),
        ({"X-Requested-With": "x", "Content-Type": "text/plain"}, "{}", 415),
        ({"Origin": "https://app.example.com"}, {}, 200),
    ],
)
async def test_refresh_and_logout_need_json_and_a_same_site_request(
    aiohttp_client: ClientFactory,
    settings: Settings,
    headers: dict[str, str],
    body: Any,
    status: int,
) -> None:
    """The cookie alone is not enough: an allowed Origin, or X-Requested-With without one, and
    an application/json body (a cross-site form or text/plain fetch can send neither)."""
    client = await ready_client(
        aiohttp_client, settings.model_copy(update={"cors_origins": ("https://app.example.com",)})
    )
    await register(client)
    access, refresh_token = await login(client)
    cookie = {"Cookie": f"{REFRESH_COOKIE}={refresh_token}"}
    payload = {"data": body} if isinstance(body, str) else {"json": body}
    refreshed = await client.post("/api/auth/refresh", headers={**cookie, **headers}, **payload)
    assert refreshed.status == status
    out = await client.post("/api/auth/logout", headers={**bearer(access), **headers}, **payload)
    assert out.status == (204 if status == 200 else status)


@pytest.mark.parametrize(
    "password",
    ["password", "12345678", "        ", "qwertyuiop", "alice@example.com", "ALICE@example.com"],
)
async def test_weak_passwords_and_the_email_are_refused(client: Client, password: str) -> None:
    """NIST 800-63B: common or easily guessed passwords (zxcvbn's lists, repeats, keyboard
    runs) and the account's own e-mail are refused with 422 naming the password."""
    refused = await register(client, password=password)
    assert refused.status == 422
    assert (await refused.json())["field"] == "password"
    assert (await register(client, password="seventeen purple lanterns")).status == 201


async def test_tokens_of_unknown_users_and_untyped_tokens_are_refused(client: Client) -> None:
    """A genuine token of a user that does not exist, or one whose header does not type it as
    an access token, is 401 on reads and writes."""
    settings = client.app[SERVICES].settings
    stranger = issue_access_token(settings, uuid.uuid4().hex, [], datetime.now(UTC)).token
    await register(client)
    access, _ = await login(client)
    claims = jwt.decode(access, options={"verify_signature": False})
    kid = settings.jwt_active_kid
    untyped = jwt.encode(claims, settings.jwt_keys[kid].get_secret_value(), headers={"kid": kid})
    for token in (stranger, untyped):
        assert (await client.get("/api/tasks", headers=bearer(token))).status == 401
        made = await client.post("/api/tasks", json={"title": "t"}, headers=bearer(token))
        assert made.status == 401
    assert (await client.get("/api/tasks", headers=bearer(access))).status == 200
