"""The live change feeds over server-sent events, on the real servers: exactly the log's changes
for the caller, in order, across reconnections; resets, tickets, logouts, limits, slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskflow.api.keys import CHANGE_HUB, SERVICES
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import rebuild_read_models
from taskflow.metrics import CHANGE_STREAMS_ENDED
from taskflow.projections import feed_reads
from taskflow.projections.feed_reads import entry_position
from taskflow.projections.redis_keys import RedisViewKeys
from taskflow.projector import Supervisor
from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import (
    SAME_SITE,
    Client,
    ClientFactory,
    bearer,
    create_task,
    live_projector,
    project,
)
from tests.change_feed_support import OpenStream, as_changes, changes_in_log
from tests.fault_tools import until

# Checks and heartbeats fast enough for tests to wait on them.
FAST = {"change_feed_auth_check_seconds": 0.2, "change_feed_heartbeat_seconds": 0.5}
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: ClientFactory, settings: Settings, mongo: Any) -> MakeClient:
    """The real app on the test servers with FAST and any other settings changed."""
    from tests.api_support import wait_ready

    async def make(**changes: Any) -> Client:
        app = create_app(settings.model_copy(update={**FAST, **changes}))
        client = await aiohttp_client(app)
        await wait_ready(client)
        return client

    return make


def at_least(count: int) -> Callable[[OpenStream], bool]:
    return lambda stream: len(stream.changes) >= count


def has_position(position: int) -> Callable[[OpenStream], bool]:
    return lambda stream: any(event.id == str(position) for event in stream.events)


async def open_stream(
    client: Client, path: str = "/api/tasks/changes", **headers: str
) -> OpenStream:
    response = await client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return OpenStream(response).start()


async def change(client: Client, auth: dict[str, str], task: dict[str, Any], **fields: Any) -> int:
    """PATCH the task at its current version; its new version (kept in `task`)."""
    response = await client.patch(
        f"/api/tasks/{task['id']}",
        json=fields,
        headers={**auth, "If-Match": f'"{task["version"]}"'},
    )
    assert response.status == 200, await response.text()
    task["version"] = (await response.json())["version"]
    return int(task["version"])


async def test_a_stream_sends_each_change_in_log_order_as_get_shows_it(
    make_client: MakeClient,
) -> None:
    """From position 0: every change of the caller's tasks, `id` its position, `data` the task as
    GET /api/tasks/{id} shows it with its ETag; a deleted task says so."""
    client = await make_client()
    auth = await bearer(client, "ada")
    task = await create_task(client, auth, title="write", tags=["work"])
    await change(client, auth, task, status="in_progress")
    deleted = await client.delete(
        f"/api/tasks/{task['id']}", headers={**auth, "If-Match": f'"{task["version"]}"'}
    )
    assert deleted.status == 204
    other = await create_task(client, auth, title="read")
    await project(client)

    stream = await open_stream(client, "/api/tasks/changes?after=0", **auth)
    await stream.wait_for(lambda s: len(s.changes) == 4)
    await stream.close()

    ready = stream.events[0]
    assert (ready.event, ready.id, ready.retry) == ("ready", "0", 2000)
    store = client.app[SERVICES].store
    assert as_changes(stream.changes) == await changes_in_log(store, "ada")
    created, changed, gone, fresh = (event.json() for event in stream.changes)
    assert (created["deleted"], created["etag"]) == (False, '"1"')
    assert changed["task"]["status"] == "in_progress"
    assert gone == {"id": task["id"], "etag": '"3"', "deleted": True, "task": None}
    response = await client.get(f"/api/tasks/{other['id']}", headers=auth)
    assert fresh["task"] == await response.json()
    assert fresh["etag"] == response.headers["ETag"]


async def test_a_new_stream_starts_now_and_follows_live_changes(make_client: MakeClient) -> None:
    """Without a position the stream starts at the read model's checkpoint (`ready`'s id) and
    then sends each change as the projector applies it; other owners' changes never come."""
    client = await make_client()
    ada, bob = await bearer(client, "ada"), await bearer(client, "bob")
    old = await create_task(client, ada, title="before")
    await project(client)
    stream = await open_stream(client, **ada)
    await stream.wait_for(lambda s: bool(s.named("ready")))
    assert stream.named("ready")[0].position == old["_position"]

    async with live_projector(client):
        mine = await create_task(client, ada, title="after")
        await create_task(client, bob, title="not ada's")
        await change(client, ada, mine, title="after, renamed")
        await create_task(client, bob, title="not ada's either")
        await stream.wait_for(lambda s: len(s.changes) == 2)
        last = await create_task(client, ada, title="last")
        await stream.wait_for(lambda s: len(s.changes) == 3)
    await stream.close()
    store = client.app[SERVICES].store
    assert as_changes(stream.changes) == (await changes_in_log(store, "ada"))[1:]
    assert stream.changes[-1].position == last["_position"]


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_client_that_hangs_up_at_random_and_resumes_misses_nothing(
    make_client: MakeClient, seed: int
) -> None:
    """Writes to two owners while ada's client hangs up at random points (mid catch-up too)
    and resumes with Last-Event-ID: it gets exactly the log's changes of ada's tasks, in order,
    none twice, none of bob's."""
    rng = random.Random(seed)
    client = await make_client()
    ada, bob = await bearer(client, "ada"), await bearer(client, "bob")
    received: list[Any] = []
    done = asyncio.Event()

    async def write() -> None:
        tasks: list[tuple[dict[str, str], dict[str, Any]]] = []
        for n in range(60):
            auth = rng.choice([ada, ada, bob])
            mine = [task for who, task in tasks if who is auth]
            if mine and rng.random() < 0.5:
                await change(client, auth, rng.choice(mine), title=f"change {n}")
            else:
                tasks.append((auth, await create_task(client, auth, title=f"task {n}")))
        done.set()

    async def subscribe() -> None:
        last: str | None = None
        while True:
            headers = {**ada, **({"Last-Event-ID": last} if last else {})}
            stream = await open_stream(client, "/api/tasks/changes?after=0", **headers)
            # Hang up after a random number of changes, or a random time, whichever is first.
            with contextlib.suppress(AssertionError):
                await stream.wait_for(at_least(rng.randint(0, 6)), seconds=rng.random())
            await stream.close()
            fresh = stream.changes
            received.extend(fresh)
            ids = [event.id for event in stream.events if event.id is not None]
            last = ids[-1] if ids else last
            if done.is_set() and not fresh and last is not None:
                log = await changes_in_log(client.app[SERVICES].store, "ada")
                if int(last) >= log[-1][0]:
                    return

    async with live_projector(client):
        await asyncio.wait_for(asyncio.gather(write(), subscribe()), timeout=90)
    expected = await changes_in_log(client.app[SERVICES].store, "ada")
    assert as_changes(received) == expected
    assert len(expected) > 20


async def test_a_position_older_than_the_kept_history_gets_one_reset(
    make_client: MakeClient,
) -> None:
    """The projector keeps about CHANGE_FEED_HISTORY changes per owner; resuming from before the
    oldest kept one gets `reset` (with the checkpoint as its id), then live changes; resuming
    from within the history gets exactly the changes after it."""
    client = await make_client(change_feed_history=10)
    auth = await bearer(client, "ada")
    task = await create_task(client, auth, title="busy")
    for n in range(230):  # Redis trims whole nodes of 100 entries (MAXLEN ~)
        await change(client, auth, task, title=f"busy {n}")
    await project(client)
    services = client.app[SERVICES]
    kept: Any = await services.redis.xrange(client.app[CHANGE_HUB].keys.feed("ada"))
    oldest = entry_position(kept[0][0])
    assert oldest > task["_position"], "nothing was trimmed: the test proves nothing"

    stale = await open_stream(client, **{**auth, "Last-Event-ID": str(task["_position"])})
    await stale.wait_for(lambda s: bool(s.named("reset")))
    reset = stale.named("reset")[0]
    checkpoint = int(await services.redis.get(client.app[CHANGE_HUB].keys.checkpoint) or 0)
    assert reset.position == checkpoint
    assert reset.json() == {"after": checkpoint, "reason": "history-exceeded"}
    async with live_projector(client):
        await change(client, auth, task, title="after the reset")
        await stale.wait_for(lambda s: len(s.changes) == 1)
    await stale.close()
    assert [e.event for e in stale.events if e.event != ":"] == ["ready", "reset", "message"]

    within = await open_stream(client, **{**auth, "Last-Event-ID": str(oldest)})
    log = await changes_in_log(services.store, "ada")
    after_oldest = [c for c in log if c[0] > oldest]
    await within.wait_for(lambda s: len(s.changes) == len(after_oldest))
    await within.close()
    assert not within.named("reset")
    assert as_changes(within.changes) == after_oldest


async def test_the_audit_feed_sends_every_commit_to_auditors_only(make_client: MakeClient) -> None:
    """Auditors get every commit of the log (users' and tasks') as GET /api/audit/events shows
    them, from any position on; anyone else gets 403."""
    client = await make_client()
    audit = await bearer(client, "auditor-1", roles=["auditor"])
    registered = await client.post(
        "/api/auth/register",
        json={"email": "ada@example.com", "password": "correct horse battery", "display_name": "A"},
    )
    assert registered.status == 201
    ada = await bearer(client, "ada")
    await create_task(client, ada, title="one")
    await create_task(client, await bearer(client, "bob"), title="two")
    await project(client)

    refused = await client.get("/api/audit/changes", headers=ada)
    assert refused.status == 403
    stream = await open_stream(client, "/api/audit/changes?after=0", **audit)
    page = await (await client.get("/api/audit/events?after=0", headers=audit)).json()
    await stream.wait_for(lambda s: len(s.changes) == len(page["items"]))
    async with live_projector(client):
        live = await create_task(client, ada, title="three")
        await stream.wait_for(lambda s: len(s.changes) == len(page["items"]) + 1)
    await stream.close()
    assert [event.json() for event in stream.changes[:-1]] == page["items"]
    assert stream.changes[-1].position == live["_position"]
    assert stream.changes[-1].json()["stream_id"] == f"task-{live['id']}"

    # It reads the log itself: a resume from any position gets exactly what follows, no reset.
    after = page["items"][1]["position"]
    resumed = await open_stream(
        client, "/api/audit/changes", **audit, **{"Last-Event-ID": str(after)}
    )
    rest = await (await client.get(f"/api/audit/events?after={after}", headers=audit)).json()
    await resumed.wait_for(lambda s: len(s.changes) == len(rest["items"]))
    await resumed.close()
    assert not resumed.named("reset")
    assert [event.json() for event in resumed.changes] == rest["items"]


async def test_a_stream_ticket_opens_one_stream_once(make_client: MakeClient) -> None:
    """POST /api/stream-tickets gives a one-time ticket: it opens a stream as the caller once;
    again, or unknown, it is a 401; an access token in the URL is refused outright."""
    client = await make_client()
    auth = await bearer(client, "ada")
    issued = await client.post("/api/stream-tickets", headers=auth)
    assert issued.status == 201
    body = await issued.json()
    assert body["expires_in"] == 30
    ticket = body["ticket"]

    # Two requests race for one ticket: exactly one stream opens.
    first, second = await asyncio.gather(
        client.get(f"/api/tasks/changes?ticket={ticket}"),
        client.get(f"/api/tasks/changes?ticket={ticket}"),
    )
    assert sorted([first.status, second.status]) == [200, 401]
    opened = OpenStream(first if first.status == 200 else second).start()
    async with live_projector(client):
        task = await create_task(client, auth, title="via a ticket")
        await opened.wait_for(lambda s: len(s.changes) == 1)
    await opened.close()
    assert opened.changes[0].json()["id"] == task["id"]

    again = await client.get(f"/api/tasks/changes?ticket={ticket}")
    assert again.status == 401
    unknown = await client.get(f"/api/tasks/changes?ticket={'x' * 43}")
    assert unknown.status == 401
    token = auth["Authorization"].removeprefix("Bearer ")
    in_url = await client.get(f"/api/tasks/changes?access_token={token}")
    assert in_url.status == 422


async def test_a_ticket_expires_unused(make_client: MakeClient) -> None:
    """A ticket not used within STREAM_TICKET_TTL_SECONDS is refused (401)."""
    client = await make_client(stream_ticket_ttl_seconds=1)
    issued = await client.post("/api/stream-tickets", headers=await bearer(client, "ada"))
    ticket = (await issued.json())["ticket"]
    redis = client.app[SERVICES].redis

    async def gone() -> bool:
        return not await redis.keys("tf:auth:ticket:*")

    await until(gone, 60, "the ticket to expire")
    response = await client.get(f"/api/tasks/changes?ticket={ticket}")
    assert response.status == 401


@pytest.mark.parametrize("copy_max_age", [300.0, 0.0])
async def test_logout_ends_the_stream_within_seconds(
    make_client: MakeClient, copy_max_age: float
) -> None:
    """Logging the stream's token out ends it (`end`, reason `logged-out`) within
    CHANGE_FEED_AUTH_CHECK_SECONDS or so, for a header stream and a ticket stream alike: found
    in the process's copy of the deny list, or (a copy never trusted) by asking Redis."""
    client = await make_client(auth_deny_copy_max_age_seconds=copy_max_age)
    auth = await bearer(client, "ada")
    ticket = (await (await client.post("/api/stream-tickets", headers=auth)).json())["ticket"]
    by_header = await open_stream(client, **auth)
    by_ticket = await open_stream(client, f"/api/tasks/changes?ticket={ticket}")
    other = await open_stream(client, **await bearer(client, "ada"))  # another login of ada's
    await by_ticket.wait_for(lambda s: bool(s.named("ready")))
    logged_out = await client.post("/api/auth/logout", json={}, headers={**SAME_SITE, **auth})
    assert logged_out.status == 204
    started = time.monotonic()
    for stream in (by_header, by_ticket):
        await stream.wait_for(lambda s: bool(s.named("end")), seconds=10)
        await asyncio.wait_for(stream.ended.wait(), 10)
        assert stream.named("end")[0].json()["reason"] == "logged-out"
    assert time.monotonic() - started < 5
    assert not other.ended.is_set()
    await other.close()


async def test_a_stream_ends_when_its_token_expires(make_client: MakeClient) -> None:
    """A stream never outlives its token: at the token's expiry it says `token-expired`."""
    client = await make_client()
    settings = client.app[SERVICES].settings
    issued_at = datetime.now(UTC) - timedelta(seconds=settings.access_token_ttl_seconds - 2)
    await client.app[SERVICES].keys.sealing_key("ada")  # a user the API knows
    token = issue_access_token(settings, "ada", [], issued_at).token
    stream = await open_stream(client, Authorization=f"Bearer {token}")
    await stream.wait_for(lambda s: bool(s.named("end")), seconds=15)
    assert stream.named("end")[0].json() == {"reason": "token-expired", "after": 0}


async def test_heartbeats_and_the_per_process_cap(make_client: MakeClient) -> None:
    """Comment lines come every CHANGE_FEED_HEARTBEAT_SECONDS; beyond CHANGE_FEED_MAX_STREAMS a
    stream request gets 503 with Retry-After, and a closed stream frees its place."""
    client = await make_client(change_feed_max_streams=2)
    first = await open_stream(client, **await bearer(client, "ada"))
    second = await open_stream(client, **await bearer(client, "bob"))
    await first.wait_for(lambda s: len(s.named(":")) >= 2, seconds=10)
    full = await client.get("/api/tasks/changes", headers=await bearer(client, "cy"))
    assert full.status == 503
    assert full.headers["Retry-After"] == "5"
    assert (await full.json())["type"].endswith("too-many-streams")
    await second.close()
    hub = client.app[CHANGE_HUB]

    async def freed() -> bool:
        return hub.open_streams < 2

    await until(freed, 60, "the closed stream to be noticed")
    third = await open_stream(client, **await bearer(client, "cy"))
    await third.close()
    await first.close()


async def test_shutdown_ends_every_stream_with_end(
    aiohttp_client: ClientFactory, settings: Settings, mongo: Any
) -> None:
    """Graceful shutdown: each open stream gets `end` (reason `shutdown`) and closes cleanly."""
    from tests.api_support import wait_ready

    client = await aiohttp_client(create_app(settings.model_copy(update=FAST)))
    await wait_ready(client)
    streams = [await open_stream(client, **await bearer(client, f"u{n}")) for n in range(3)]
    for stream in streams:
        await stream.wait_for(lambda s: bool(s.named("ready")))
    await asyncio.wait_for(client.server.close(), 15)  # the server's shutdown, not the client's
    for stream in streams:
        await asyncio.wait_for(stream.ended.wait(), 10)
        assert [e.json()["reason"] for e in stream.named("end")] == ["shutdown"]


def _slow_reader(port: int, headers: dict[str, str]) -> socket.socket:
    """A client that asks for a stream and then never reads it: a receive buffer of a few kB,
    and the request sent."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    lines = ["GET /api/tasks/changes HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


async def test_a_slow_subscriber_is_cut_off_and_the_others_keep_their_latency(
    make_client: MakeClient,
) -> None:
    """A client that stops reading has its buffer (CHANGE_FEED_BUFFER) overflow once the kernel's
    buffers are full, and is cut off (`too-slow`); meanwhile another client of the same owner
    and a client of another owner get every change, as fast as before it stalled."""
    client = await make_client(change_feed_buffer=32, max_body_bytes=1_000_000)
    ada, bob = await bearer(client, "ada"), await bearer(client, "bob")
    hub = client.app[CHANGE_HUB]
    port = client.server.port
    assert port is not None
    same_owner = await open_stream(client, **ada)
    other_owner = await open_stream(client, **bob)
    for stream in (same_owner, other_owner):
        await stream.wait_for(lambda s: bool(s.named("ready")))
    too_slow = CHANGE_STREAMS_ENDED.labels("too-slow")
    cut_before = too_slow._value.get()

    async def latencies(count: int) -> list[float]:
        """Seconds from each of bob's writes' answer to his stream receiving it."""
        seconds = []
        for n in range(count):
            task = await create_task(client, bob, title=f"bob {n}")
            acknowledged = time.monotonic()
            await other_owner.wait_for(has_position(task["_position"]))
            seconds.append(other_owner.received(task["_position"]) - acknowledged)
        return seconds

    async def slow_stream_open() -> bool:
        return hub.open_streams == 3

    async def cut_off() -> bool:
        return bool(too_slow._value.get() > cut_before)

    async with live_projector(client, every=0.005):
        before = await latencies(10)
        slow = await asyncio.to_thread(_slow_reader, port, ada)
        try:
            await until(slow_stream_open, 60, "the slow stream to open")
            # Large changes fill the kernel's buffers, then the slow client's buffer overflows.
            big = "\N{GRINNING FACE}" * 10_000  # 40 kB of UTF-8
            task = await create_task(client, ada, title="big", description=big)
            for n in range(400):
                await change(client, ada, task, title=f"big {n}")
                if await cut_off():
                    break
            await until(cut_off, 120, "the cut-off")
            during = await latencies(10)
        finally:
            slow.close()
        await same_owner.wait_for(lambda s: len(s.changes) == task["version"], seconds=30)
    await same_owner.close()
    await other_owner.close()
    log = await changes_in_log(client.app[SERVICES].store, "ada")
    assert as_changes(same_owner.changes) == log
    assert hub.open_streams == 0
    # The slow client held nobody up: bob's latency stayed what it was (generous bounds for a
    # busy machine: the point is that it is not the seconds a blocked fan-out would take).
    assert statistics.median(during) < max(0.25, 5 * statistics.median(before))


async def test_a_rebuild_switches_streams_to_the_new_version_without_a_replay(
    make_client: MakeClient,
) -> None:
    """A rebuild fills read-model version 2 (its feeds too) from position zero and switches
    reads to it: open streams follow the new version's feeds from where they were, resending
    nothing old and missing nothing new, without reconnecting."""
    client = await make_client(projector_poll_seconds=0.05, lease_ttl_seconds=2)
    services = client.app[SERVICES]
    auth = await bearer(client, "ada")
    task = await create_task(client, auth, title="before the rebuild")
    for n in range(5):
        await change(client, auth, task, title=f"before {n}")
    stop = asyncio.Event()
    # A projector as `taskflow project` runs one: drivers under leases for every version the
    # deployment maintains (the active one, and the one a rebuild builds).
    projecting = asyncio.create_task(Supervisor(services, "test-projector", stop).run())
    stream = await open_stream(client, "/api/tasks/changes?after=0", **auth)
    await stream.wait_for(lambda s: len(s.changes) == 6)

    async def write_meanwhile() -> None:
        for n in range(20):
            await change(client, auth, task, title=f"during {n}")

    try:
        result, _ = await asyncio.gather(rebuild_read_models(services), write_meanwhile())
        assert (result.old_version, result.new_version) == (1, 2)

        async def followed() -> bool:
            return client.app[CHANGE_HUB].version == 2

        await until(followed, 60, "the hub to follow version 2")
        last = await create_task(client, auth, title="after the switch")
        await stream.wait_for(has_position(last["_position"]))
    finally:
        stop.set()
        await projecting
    await stream.close()
    assert not stream.named("end")
    assert not stream.named("reset")
    assert as_changes(stream.changes) == await changes_in_log(services.store, "ada")
    assert await services.redis.exists(RedisViewKeys(1).feed("ada")) == 0  # v1 was dropped


async def test_a_catch_up_overlapping_live_changes_sends_each_change_once(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream joins the process's reader of its feed before it reads its snapshot, so changes
    that land in between come both ways: each is sent once, in order."""
    client = await make_client()
    ada = await bearer(client, "ada")
    first = await open_stream(client, **ada)  # the process reads ada's feed from now on
    read_snapshot = feed_reads.read_snapshot
    landed: list[int] = []

    async def snapshot_after_a_change(*args: Any, **kwargs: Any) -> Any:
        if not landed:  # once: a change reaches the reader after the join, before the snapshot
            task = await create_task(client, ada, title="in between")
            await first.wait_for(has_position(task["_position"]))
            landed.append(task["_position"])
        return await read_snapshot(*args, **kwargs)

    async with live_projector(client):
        await create_task(client, ada, title="before")
        await first.wait_for(lambda s: len(s.changes) == 1)
        monkeypatch.setattr("taskflow.api.change_feeds.read_snapshot", snapshot_after_a_change)
        second = await open_stream(client, "/api/tasks/changes?after=0", **ada)
        after = await create_task(client, ada, title="after")
        await second.wait_for(has_position(after["_position"]))
    await first.close()
    await second.close()
    assert landed
    assert as_changes(second.changes) == await changes_in_log(client.app[SERVICES].store, "ada")


async def test_batches_applied_without_feeds_move_the_floor_and_resumes_from_before_reset(
    make_client: MakeClient,
) -> None:
    """The feeds are complete only from where every batch wrote them: after batches applied
    without them (an older projector; a Redis that lost its data), the next batch moves the
    origin to its own start, and a resume from before it gets a reset, never a silent gap."""
    client = await make_client()
    services = client.app[SERVICES]
    keys = client.app[CHANGE_HUB].keys
    auth = await bearer(client, "ada")
    first = await create_task(client, auth, title="with feeds")
    await project(client)
    # As if the batches since position 1 had been applied by a projector without feeds.
    await services.redis.set(keys.feed_written, 0)
    later = await create_task(client, auth, title="after the hole")
    await project(client)
    assert int(await services.redis.get(keys.feed_origin) or 0) == first["_position"]

    stale = await open_stream(client, **{**auth, "Last-Event-ID": "0"})
    await stale.wait_for(lambda s: bool(s.named("reset")))
    await stale.close()
    exact = await open_stream(client, **{**auth, "Last-Event-ID": str(first["_position"])})
    await exact.wait_for(lambda s: len(s.changes) == 1)
    await exact.close()
    assert not exact.named("reset")
    assert exact.changes[0].position == later["_position"]
