"""Privacy (docs/privacy.md): no credential in any auditor output, personal data sealed per user,
erasure by crypto-shredding, KEK rotation and checks; on the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow import names, operations
from taskflow.api.keys import SERVICES
from taskflow.auth.passwords import PasswordHashing
from taskflow.auth.refresh import RefreshTokens
from taskflow.bootstrap import rebuild_read_models
from taskflow.commands.erasure import handle_erase_user
from taskflow.commands.runner import Context
from taskflow.commands.task import CreateTask
from taskflow.commands.task_handlers import handle_create_task
from taskflow.events.codec import commit_to_document, to_millis
from taskflow.events.log_seals import GENESIS, log_digest
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit, Metadata, StoredEvent
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys
from taskflow.projections.erasure_purge import purge_caches_of
from taskflow.projections.history import task_as_of
from taskflow.projections.log_seal import LogSeal
from taskflow.projections.runtime import run_until_caught_up
from taskflow.server import create_app
from taskflow.services import Services
from taskflow.settings import Settings
from taskflow.text import as_text
from tests.api_support import SAME_SITE, Client, ClientFactory, project, wait_ready
from tests.test_audit import auditor

PASSWORD = "correct horse battery"
HASH_MARK = b"$argon2"
OTHER_KEK = "YW5vdGhlci1rZWstb2YtZXhhY3RseS0zMi1ieXRlcyE="  # 32 bytes, base64


# -- helpers ----------------------------------------------------------------------------------


async def register(client: Client, email: str, name: str = "Someone") -> str:
    body = {"email": email, "password": PASSWORD, "display_name": name}
    response = await client.post("/api/auth/register", json=body)
    assert response.status == 201, await response.text()
    user_id: str = (await response.json())["user_id"]
    return user_id


async def login(client: Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def auditor_outputs(client: Client, settings: Settings, stream_ids: list[str]) -> bytes:
    """Everything an auditor can read: the feed, whole streams, and `taskflow audit export`."""
    headers = await auditor(client)
    parts = [await (await client.get("/api/audit/events?limit=1000", headers=headers)).read()]
    for stream_id in stream_ids:
        response = await client.get(f"/api/audit/streams/{stream_id}", headers=headers)
        assert response.status == 200
        parts.append(await response.read())
    export = io.StringIO()
    assert await operations.audit_export(settings, 0, export) == 0
    parts.append(export.getvalue().encode())
    return b"\n".join(parts)


async def everything_stored(
    databases: list[AsyncDatabase[dict[str, Any]]], redis: Redis
) -> list[tuple[str, bytes]]:
    """Every document of every collection of the databases, and every Redis key with its value,
    as (where, bytes) pairs."""
    found: list[tuple[str, bytes]] = []
    for db in databases:
        for collection in await db.list_collection_names():
            async for doc in db[collection].find({}):
                found.append((f"{db.name}.{collection}/{doc.get('_id')}", bson.encode(doc)))
    async for key in redis.scan_iter(count=1000):
        kind = as_text(await redis.type(key))
        value: Any
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            value = await redis.xrange(key, "-", "+")
        else:
            raise AssertionError(f"a Redis {kind} this scan does not read: {key!r}")
        found.append((f"redis {key!r}", key + b" " + repr(value).encode()))
    return found


def plaintext(stored: list[tuple[str, bytes]], secrets: list[str]) -> list[str]:
    """Where any of `secrets` (or its lower-case form) appears in plain text."""
    needles = {s.encode() for s in secrets} | {s.lower().encode() for s in secrets}
    return [
        f"{where}: {needle.decode()}"
        for where, raw in stored
        for needle in needles
        if needle in raw or needle in raw.lower()
    ]


def legacy_commit(
    stream_id: str, version: int, prev_hash: str, events: list[StoredEvent]
) -> Commit:
    """A commit as versions before sealing wrote it (unsigned, no position yet)."""
    return Commit(
        commit_id=f"{stream_id}:{version}",
        stream_id=stream_id,
        first_version=version,
        last_version=version + len(events) - 1,
        position=0,
        recorded_at=to_millis(datetime.now(UTC)),
        events=tuple(events),
        metadata=Metadata(actor="legacy", request_id="r", correlation_id="c"),
        idempotency=f"~{stream_id}:{version}",
        prev_hash=prev_hash,
    )


async def write_legacy(services: Services, commits: list[Commit]) -> None:
    """Sign and store commits directly in the log, with their hints, as the old code did."""
    prev = ""
    for commit in commits:
        unsigned = commit.model_copy(update={"prev_hash": prev})
        signed = unsigned.model_copy(
            update={
                "hash": services.store.chain.sign(unsigned),
                "position": await services.store.positions.take(),
            }
        )
        await services.store.commits.insert_one(commit_to_document(signed))
        await services.store.reader.hint(signed)
        prev = signed.hash


# -- credentials ------------------------------------------------------------------------------


async def test_no_password_hash_reaches_any_auditor_output(
    client: Client, settings: Settings
) -> None:
    """New events name a credential id only: feed, streams and export show no hash, and the
    hash lives in `credentials` alone."""
    user_id = await register(client, "hashes@example.com")
    await login(client, "hashes@example.com")
    outputs = await auditor_outputs(client, settings, [f"user-{user_id}"])
    assert b"UserRegistered" in outputs
    assert HASH_MARK not in outputs
    services = client.app[SERVICES]
    stored = await everything_stored([services.db], services.redis)
    holders = {where.split("/")[0] for where, raw in stored if HASH_MARK in raw}
    assert holders == {f"{services.db.name}.{names.CREDENTIALS}"}


async def test_events_written_the_old_way_show_no_hash_and_are_rewritten(
    client: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Version-1 user events with a hash, plain personal data: readers never show the hash, the
    account still logs in, and `taskflow audit rewrite-legacy` seals the log (twice is a no-op)
    after which `taskflow audit verify` passes."""
    services = client.app[SERVICES]
    user_id, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    email, password_hash = (
        "veteran@example.com",
        await PasswordHashing.from_settings(settings).hash(PASSWORD),
    )
    registered = StoredEvent(
        type="UserRegistered",
        schema_version=1,
        version=1,
        data={
            "user_id": user_id,
            "occurred_at": "2024-05-01T10:00:00Z",
            "email": email,
            "display_name": "Vera Veteran",
            "password_hash": password_hash,
        },
    )
    granted = StoredEvent(
        type="UserRoleGranted",
        schema_version=1,
        version=2,
        data={"user_id": user_id, "occurred_at": "2024-05-02T10:00:00Z", "role": "auditor"},
    )
    created = StoredEvent(
        type="TaskCreated",
        schema_version=1,
        version=1,
        data={
            "task_id": task_id,
            "occurred_at": "2024-05-03T10:00:00Z",
            "owner_id": user_id,
            "title": "veteranplan",
            "description": "",
            "status": "todo",
            "priority": "medium",
            "due_at": None,
            "tags": ["veterantag"],
        },
    )
    await write_legacy(
        services,
        [
            legacy_commit(f"user-{user_id}", 1, "", [registered]),
            legacy_commit(f"user-{user_id}", 2, "", [granted]),
        ],
    )
    await write_legacy(services, [legacy_commit(f"task-{task_id}", 1, "", [created])])
    await services.db[names.EMAIL_RESERVATIONS].insert_one(
        {"_id": email, "user_id": user_id, "reserved_at": datetime.now(UTC)}
    )
    streams = [f"user-{user_id}", f"task-{task_id}"]

    outputs = await auditor_outputs(client, settings, streams)
    assert b"veteranplan" in outputs  # an auditor reads the log (opened)...
    assert HASH_MARK not in outputs  # ...but never a credential
    await login(client, email)  # the legacy account still works

    capsys.readouterr()
    assert await operations.audit_rewrite_legacy(settings) == 0
    assert "3 commits of 2 streams rewritten, 1 e-mail reservations re-keyed" in (
        capsys.readouterr().out
    )
    stored = await everything_stored([services.db], services.redis)
    log_docs = [raw for where, raw in stored if f".{names.COMMITS}/" in where]
    assert all(HASH_MARK not in raw for raw in log_docs)
    assert plaintext([(w, r) for w, r in stored if f".{names.COMMITS}/" in w], [email]) == []
    assert all(b"veteranplan" not in raw for raw in log_docs)
    assert await services.db[names.EMAIL_RESERVATIONS].find_one({"_id": email}) is None
    assert await operations.audit_verify(settings) == 0
    assert await operations.audit_rewrite_legacy(settings) == 0
    assert "0 commits of 0 streams rewritten" in capsys.readouterr().out
    await login(client, email)
    feed = await auditor_outputs(client, settings, streams)
    assert b"veteranplan" in feed
    assert HASH_MARK not in feed


async def test_the_rewrite_refuses_a_tampered_stream(
    client: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A legacy commit whose content no longer matches its hash is reported, not re-signed."""
    services = client.app[SERVICES]
    user_id = uuid.uuid4().hex
    event = StoredEvent(
        type="UserRegistered",
        schema_version=1,
        version=1,
        data={
            "user_id": user_id,
            "occurred_at": "2024-05-01T10:00:00Z",
            "email": "forged@example.com",
            "display_name": "F",
            "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y",
        },
    )
    await write_legacy(services, [legacy_commit(f"user-{user_id}", 1, "", [event])])
    await services.store.commits.update_one(
        {"stream_id": f"user-{user_id}"}, {"$set": {"events.0.data.display_name": "G"}}
    )
    capsys.readouterr()
    assert await operations.audit_rewrite_legacy(settings) == 1
    assert f"REFUSED user-{user_id}: version 1: content does not match its hash" in (
        capsys.readouterr().out
    )


# -- erasure ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_erasure_leaves_no_plaintext_anywhere_and_the_log_still_verifies(
    client: Client, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """After DELETE /api/auth/me: no document of either database and no Redis key holds the
    user's e-mail, name or task texts; tokens are refused; verify and rebuild pass; the auditor
    sees the events with their personal fields marked erased; the e-mail is free again."""
    services = client.app[SERVICES]
    email, name = "zebulon.quaxley@example.com", "Zebulon Quaxley"
    secrets = [email, name, "zebulon", "quaxley"]
    texts = ["xylophonic", "marzipanic", "quokkatag", "wombatwords", "renamedgrail"]
    secrets += texts
    other = await register(client, "bystander@example.com", "Bystander")
    user_id = await register(client, email, name)
    auth = await login(client, email)
    refresh_cookie = client.session.cookie_jar.filter_cookies(client.make_url("/api/auth/"))
    assert refresh_cookie
    created = []
    for i in range(3):
        response = await client.post(
            "/api/tasks",
            json={
                "title": f"xylophonic plan {i}",
                "description": "marzipanic wombatwords notes",
                "tags": ["quokkatag", f"t{i}"],
            },
            headers={**auth, "Idempotency-Key": f"key-{i}"},
        )
        assert response.status == 201
        created.append(await response.json())
    task = created[0]
    renamed = await client.patch(
        f"/api/tasks/{task['id']}",
        json={"title": "renamedgrail"},
        headers={**auth, "If-Match": f'"{task["version"]}"'},
    )
    assert renamed.status == 200
    await project(client)
    listed = await client.get("/api/tasks?q=marzipanic", headers=auth)  # a cached list page
    assert len((await listed.json())["items"]) == 3
    assert (await client.get(f"/api/tasks/{task['id']}", headers=auth)).status == 200
    before = await everything_stored([services.db, services.views_db], services.redis)
    assert plaintext(before, texts), "the read models held the texts before the erasure"

    wrong = await client.delete("/api/auth/me", json={"password": "not it"}, headers=auth)
    assert wrong.status == 401
    erased = await client.delete("/api/auth/me", json={"password": PASSWORD}, headers=auth)
    assert erased.status == 204
    await project(client)

    after = await everything_stored([services.db, services.views_db], services.redis)
    assert plaintext(after, secrets) == []
    assert (await client.get("/api/tasks", headers=auth)).status == 401
    assert (await client.get(f"/api/tasks/{task['id']}", headers=auth)).status == 401
    assert (await client.get("/api/auth/me", headers=auth)).status == 401
    assert (await client.post("/api/auth/refresh", json={}, headers=SAME_SITE)).status == 401
    login_again = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login_again.status == 401

    stream = await client.get(
        f"/api/audit/streams/task-{task['id']}", headers=await auditor(client)
    )
    commits = (await stream.json())["items"]
    assert [(c["first_version"], [e["type"] for e in c["events"]]) for c in commits] == [
        (1, ["TaskCreated"]),
        (2, ["TaskRenamed"]),
    ]
    created_event = commits[0]["events"][0]
    assert created_event["data"]["~erased"] == ["title", "description", "tags"]
    assert "title" not in created_event["data"]
    assert created_event["data"]["status"] == "todo"
    assert all(c["recorded_at"] and c["position"] for c in commits)

    then = await task_as_of(services.store, task["id"], version=1)  # time travel still folds
    assert then is not None
    assert (then.title, then.description, then.tags, then.version) == ("", "", (), 1)

    capsys.readouterr()
    assert await operations.audit_verify(settings) == 0
    assert await operations.erase_user(settings, user_id) == 0  # a second erasure is harmless
    assert "was erased already" in capsys.readouterr().out
    result = await rebuild_read_models(services)
    assert result.new_version == 2
    rebuilt = await everything_stored([services.db, services.views_db], services.redis)
    assert plaintext(rebuilt, secrets) == []
    assert await operations.audit_verify(settings) == 0
    bystander = await client.get(f"/api/audit/streams/user-{other}", headers=await auditor(client))
    assert b"bystander@example.com" in await bystander.read()  # others' data is untouched

    again = await register(client, email, "Somebody Else")
    assert again != user_id
    await login(client, email)


async def test_a_command_racing_the_erasure_leaves_nothing_readable(
    client: Client, settings: Settings
) -> None:
    """A process that has not heard of the erasure yet still holds the key and appends a task:
    ciphertext under a key that no longer exists. The log, heads, hints and views hold
    nothing readable, and the auditor sees the task's personal fields as erased."""
    services = client.app[SERVICES]
    user_id = await register(client, "racer@example.com", "Racer")
    late_keys = DataKeys(services.db, services.redis, KeyEncryptionKeys.from_settings(settings))
    await late_keys.sealing_key(user_id)  # cached there, and no announcement will reach it
    late_store = MongoEventStore(
        services.db,
        services.redis,
        services.store.chain,
        hot=services.hot,
        gap_timeout=0.3,
        keys=late_keys,
    )
    await handle_erase_user(
        services.accounts,
        services.keys,
        RefreshTokens(services.db, services.redis, 60),
        user_id=user_id,
        context=Context(actor="operator", request_id="r", correlation_id="c"),
    )
    await purge_caches_of(services.redis, user_id)
    task_id = uuid.uuid4().hex
    await handle_create_task(
        late_store,
        CreateTask(task_id=task_id, owner_id=user_id, title="racingsecret", tags=("racetag",)),
        Context(actor=user_id, request_id="r", correlation_id="c"),
        datetime.now(UTC),
    )
    await project(client)
    stored = await everything_stored([services.db, services.views_db], services.redis)
    assert plaintext(stored, ["racingsecret", "racetag", "racer@example.com"]) == []
    stream = await client.get(f"/api/audit/streams/task-{task_id}", headers=await auditor(client))
    [commit] = (await stream.json())["items"]
    assert commit["events"][0]["data"]["~erased"] == ["title", "description", "tags"]
    assert await operations.audit_verify(settings) == 0


# -- the log seal -------------------------------------------------------------------------------


async def test_the_log_seal_reads_the_log_as_stored_and_opens_nothing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log seal folds positions and hashes only, so it is fed the log as stored: personal
    fields stay sealed (no key is fetched, nothing decrypted, two thirds of a pass's CPU
    before), and its seals are those of the opened log, whose hashes are the same."""
    services = client.app[SERVICES]
    store = services.store
    user_id = await register(client, "sealer@example.com", "Sealer")
    task_id = uuid.uuid4().hex
    await handle_create_task(
        store,
        CreateTask(task_id=task_id, owner_id=user_id, title="lanternsecret"),
        Context(actor=user_id, request_id="r", correlation_id="c"),
        datetime.now(UTC),
    )
    opened = [commit async for commit in store.read_all(0)]
    as_stored = [commit async for commit in store.read_all_stored(0)]
    assert [(c.position, c.hash) for c in as_stored] == [(c.position, c.hash) for c in opened]
    [created] = [c for c in as_stored if c.stream_id == f"task-{task_id}"]
    assert "~sealed" in created.events[0].data
    assert "lanternsecret" not in created.model_dump_json()
    [created_opened] = [c for c in opened if c.stream_id == f"task-{task_id}"]
    assert created_opened.events[0].data["title"] == "lanternsecret"

    async def refuse(commit: Commit) -> Commit:
        raise AssertionError(f"the log seal opened the commit at {commit.position}")

    monkeypatch.setattr(store, "open", refuse)
    await run_until_caught_up(store, LogSeal(store.commits.database, store.chain))
    digest = GENESIS
    for commit in opened:
        digest = log_digest(digest, commit)
    last = await store.seals.find_one({"_id": opened[-1].position})
    assert last is not None
    assert last["digest"] == digest


# -- keys -------------------------------------------------------------------------------------


def with_keks(settings: Settings, keks: dict[str, str], active: str) -> Settings:
    return settings.model_copy(
        update={"data_keks": {k: _secret(v) for k, v in keks.items()}, "data_kek_active": active}
    )


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


@pytest.mark.timeout(300)
async def test_kek_rotation_keeps_everything_readable(
    aiohttp_client: ClientFactory, client: Client, settings: Settings
) -> None:
    """Add a KEK, make it active, `taskflow keys rotate`, drop the old one: logins, profiles and
    the auditor's view of the log still read, and verify passes."""
    dev = settings.data_keks["dev"].get_secret_value()
    user_id = await register(client, "rotor@example.com", "Rotor Rotation")
    auth = await login(client, "rotor@example.com")
    made = await client.post("/api/tasks", json={"title": "rotatedtitle"}, headers=auth)
    assert made.status == 201
    task_id = (await made.json())["id"]
    both = with_keks(settings, {"dev": dev, "k2": OTHER_KEK}, "k2")
    assert await operations.keys_rotate(both) == 0
    only_new = with_keks(settings, {"k2": OTHER_KEK}, "k2")
    services = client.app[SERVICES]
    assert {d["kek_id"] async for d in services.db[names.DATA_KEYS].find({})} == {"k2"}
    assert [d["_id"] async for d in services.db[names.KEK_CHECKS].find({})] == ["k2"]
    rotated = await aiohttp_client(create_app(only_new))
    await wait_ready(rotated)
    new_auth = await login(rotated, "rotor@example.com")
    me = await (await rotated.get("/api/auth/me", headers=new_auth)).json()
    assert (me["email"], me["display_name"]) == ("rotor@example.com", "Rotor Rotation")
    stream = await rotated.get(f"/api/audit/streams/task-{task_id}", headers=await auditor(rotated))
    assert b"rotatedtitle" in await stream.read()
    assert await operations.audit_verify(only_new) == 0
    assert user_id


def _taskflow(
    settings: Settings, command: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    base = {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "METRICS_PORT": "0",
        "HTTP_PORT": "0",
        "LOG_JSON": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "taskflow", *command],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", [["project"], ["serve"], ["audit", "verify"]])
async def test_a_missing_or_wrong_kek_stops_the_process_at_start(
    client: Client, settings: Settings, command: list[str]
) -> None:
    """Once data keys are wrapped by KEK "dev": a process without it, or with another key under
    its id, exits at start (status 2) naming DATA_KEKS; so does a malformed setting."""
    await register(client, "kek@example.com")  # records "dev" and wraps a data key with it
    missing = _taskflow(settings, command, DATA_KEKS=f"k9:{OTHER_KEK}", DATA_KEK_ACTIVE="k9")
    assert missing.returncode == 2, missing.stderr
    assert "DATA_KEKS has no key 'dev'" in missing.stderr
    wrong = _taskflow(settings, command, DATA_KEKS=f"dev:{OTHER_KEK}", DATA_KEK_ACTIVE="dev")
    assert wrong.returncode == 2, wrong.stderr
    assert "DATA_KEKS: key 'dev' is not the key" in wrong.stderr
    malformed = _taskflow(settings, command, DATA_KEKS="dev:short")
    assert malformed.returncode == 2
    assert "DATA_KEKS" in malformed.stderr
    unknown = _taskflow(settings, command, DATA_KEK_ACTIVE="nope")
    assert unknown.returncode == 2
    assert "DATA_KEK_ACTIVE" in unknown.stderr


async def test_an_erasure_reaches_another_process_cached_key_at_once(
    db: AsyncDatabase[dict[str, Any]], redis: Redis, settings: Settings
) -> None:
    """A process holding a user's key in its cache drops it when another process erases the
    user: the announcement on `tf:keys:erased`, not the minute the entry would live."""
    keks = KeyEncryptionKeys.from_settings(settings)
    listening, eraser = DataKeys(db, redis, keks), DataKeys(db, redis, keks)
    listener = asyncio.create_task(listening.listen())
    try:
        await until(lambda: _subscribed(redis))
        await listening.sealing_key("u1")  # cached, live
        assert not await listening.is_erased("u1")
        await eraser.destroy("u1")
        await until(lambda: listening.is_erased("u1"))
        assert await listening.opening_key("u1", 1) is None
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def _subscribed(redis: Redis) -> bool:
    [(_, count)] = await redis.pubsub_numsub(names.KEYS_ERASED_CHANNEL)
    return int(count) > 0


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)
