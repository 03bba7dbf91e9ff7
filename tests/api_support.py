"""Helpers for tests that drive the real app over HTTP: users, tokens, projecting, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient

from taskflow.api.keys import SERVICES
from taskflow.auth.tokens import issue_access_token
from taskflow.bootstrap import open_services, projections
from taskflow.projections.runtime import catch_up
from taskflow.settings import Settings

Client = TestClient[web.Request, web.Application]
# What refresh and logout need besides the cookie or token: a header no other site can send
# without a preflight (the test client sends no Origin), with an application/json body.
SAME_SITE = {"X-Requested-With": "taskflow-tests"}
ClientFactory = Callable[[web.Application], Awaitable[Client]]


async def bearer(
    client: Client, user_id: str | None = None, roles: Sequence[str] = ()
) -> dict[str, str]:
    """Authorization for a (new) user id: a real token, verified by the real middleware. The
    user is made to exist first (its data key), as tokens of unknown users are refused."""
    services = client.app[SERVICES]
    user = user_id or uuid.uuid4().hex
    await services.keys.sealing_key(user)
    token = issue_access_token(services.settings, user, list(roles), datetime.now(UTC))
    return {"Authorization": f"Bearer {token.token}"}


async def existing_user(settings: Settings, user_id: str) -> None:
    """Make `user_id` a user the API knows (its data key), for tokens used against an API that
    runs in another process."""
    async with open_services(settings) as services:
        await services.keys.sealing_key(user_id)


async def wait_ready(client: Client) -> None:
    """Until /api/ready is 200 (the app creates its indexes in the background)."""
    for _ in range(200):
        if (await client.get("/api/ready")).status == 200:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the app never became ready")


async def project(client: Client) -> int:
    """Run every projection up to the log's head, in this process (the real projection code),
    and, on a replica set with secondaries, until every member has applied what it wrote."""
    services = client.app[SERVICES]
    applied = await catch_up(services.store, projections(services))
    await replicated(services.mongo)
    return applied


_MEMBERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


async def replicated(mongo: AsyncMongoClient[dict[str, Any]]) -> None:
    """Until every member of the replica set has applied every write made so far (nothing on a
    one-member set, such as FerretDB's).

    The MongoDB views are read through `secondaryPreferred` (docs/operations.md, "Reads from
    secondaries"): a test that projects and then reads them without a write's position (to
    compare query results, say) would otherwise race the secondaries' replication. A write
    acknowledged by every member comes after all earlier ones in the oplog, so once it is
    acknowledged every member has applied them too.
    """
    members = _MEMBERS.get(mongo)
    if members is None:
        hello = await mongo.admin.command("hello")
        members = _MEMBERS[mongo] = len(hello.get("hosts", []))
    if members > 1:
        await mongo["taskflow_tests"].command(
            "insert", "replicated", documents=[{}], writeConcern={"w": members, "wtimeout": 30_000}
        )


@contextlib.asynccontextmanager
async def live_projector(client: Client, every: float = 0.01) -> AsyncIterator[None]:
    """Keep projecting in the background for the duration of the block."""

    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await project(client)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        # Stop between passes rather than cancelling one mid-read: cancelling a pending PyMongo
        # read on the local server was seen to hang.
        stop.set()
        await task


async def create_task(client: Client, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"title": "a task", **fields}
    response = await client.post("/api/tasks", json=body, headers=auth)
    assert response.status == 201, await response.text()
    task: dict[str, Any] = await response.json()
    task["_position"] = int(response.headers["X-TaskFlow-Position"])
    return task
