"""Which member serves each kind of read, seen through PyMongo's command monitoring.

The log, leases, checkpoints and auth data are read from the primary; the API's task view reads
(and the checkpoint that vouches for them) carry `secondaryPreferred` with `maxStalenessSeconds`.
Here (FerretDB, a one-member replica set) the tests check the read preference each read carries;
on a replica set with secondaries (the GitHub workflow's three MongoDB 7 members) they also check
the member that served it, and that read-your-writes holds while one secondary's replication is
paused (docs/operations.md, "Reads from secondaries").
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pymongo
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient, monitoring

from taskflow import names
from taskflow.api.headers import POSITION_HEADER, STALE_HEADER
from taskflow.api.keys import SERVICES
from taskflow.bootstrap import projections
from taskflow.projections.lease import Lease
from taskflow.projections.mongo_view_writes import CHECKPOINT_ID, read_checkpoint
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.runtime import catch_up
from taskflow.server import create_app
from taskflow.services import Services
from taskflow.settings import ReadModel, Settings
from tests.api_support import wait_ready
from tests.fault_tools import until

Client = TestClient[web.Request, web.Application]
Address = tuple[str, int | None]  # as PyMongo names a server
# The commands that read and carry a read preference (a getMore follows its cursor's member).
READS = frozenset({"find", "aggregate", "count", "distinct"})
STALENESS = 90
VIEW_READ_PREFERENCE = {"mode": "secondaryPreferred", "maxStalenessSeconds": STALENESS}
PASSWORD = "correct horse battery staple 42"
MONGODB_ONLY: tuple[ReadModel, ...] = ("mongodb",)


@dataclass(frozen=True)
class Read:
    """One read command as the driver sent it."""

    database: str
    collection: str
    filter: dict[str, Any]
    read_preference: dict[str, Any] | None
    read_concern: dict[str, Any]
    session: Any
    member: Address

    @property
    def of_checkpoint(self) -> bool:
        return self.filter == {"_id": CHECKPOINT_ID}

    @property
    def primary_only(self) -> bool:
        """Sent for the primary: no read preference (the driver omits `primary`) or `primary`."""
        return self.read_preference in (None, {"mode": "primary"})


class CommandLog(monitoring.CommandListener):
    """The read commands sent to the databases being watched; every other command is ignored."""

    def __init__(self) -> None:
        self.databases: set[str] = set()
        self.reads: list[Read] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name not in self.databases or event.command_name not in READS:
            return
        command = event.command
        self.reads.append(
            Read(
                database=event.database_name,
                collection=str(command[event.command_name]),
                filter=dict(command.get("filter") or command.get("query") or {}),
                read_preference=command.get("$readPreference"),
                read_concern=dict(command.get("readConcern") or {}),
                session=(command.get("lsid") or {}).get("id"),
                member=event.connection_id,
            )
        )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None

    @contextlib.contextmanager
    def phase(self) -> Iterator[list[Read]]:
        """The reads sent while the block runs."""
        start = len(self.reads)
        found: list[Read] = []
        yield found
        found.extend(self.reads[start:])


# Registered once for the session: a global listener applies to every client created after it,
# the app's included (its client is opened at start-up). It records only watched databases.
COMMANDS = CommandLog()
_registered = False


@dataclass(frozen=True)
class Topology:
    """The deployment's members as the driver sees them."""

    primary: Address
    secondaries: frozenset[Address]


@pytest.fixture
async def commands(settings: Settings) -> AsyncIterator[CommandLog]:
    global _registered
    if not _registered:
        monitoring.register(COMMANDS)
        _registered = True
    COMMANDS.databases = {settings.mongodb_db, settings.views_db_name}
    COMMANDS.reads.clear()
    yield COMMANDS
    COMMANDS.databases = set()
    COMMANDS.reads.clear()


@pytest.fixture
async def topology(mongo: AsyncMongoClient[dict[str, Any]]) -> Topology:
    """The primary and, once the driver has found them all, the secondaries."""
    hello = await mongo.admin.command("hello")
    expected = len(hello.get("hosts", [])) - 1

    async def found() -> Topology | None:
        primary = await mongo.primary
        secondaries = await mongo.secondaries
        if primary is None or len(secondaries) < expected:
            return None
        return Topology(primary, frozenset(secondaries))

    return await until(found, 30, "the driver to discover every member")


@pytest.fixture
def fan_out_settings(settings: Settings) -> Settings:
    """The test settings with the read models' staleness bound the compose stack sets."""
    return settings.model_copy(
        update={"read_max_staleness_seconds": STALENESS, "read_your_writes_timeout_seconds": 1.0}
    )


@pytest.fixture
async def api(
    commands: CommandLog, aiohttp_client: Any, fan_out_settings: Settings, mongo: Any
) -> Client:
    """The real app, created after the command log was registered (so its client reports)."""
    client: Client = await aiohttp_client(create_app(fan_out_settings))
    await wait_ready(client)
    return client


async def _sign_up(api: Client) -> dict[str, str]:
    """Register and log in a new user through the API; the Authorization header."""
    email = f"fan-out-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "display_name": "Fan Out", "password": PASSWORD}
    assert (await api.post("/api/auth/register", json=body)).status == 201
    response = await api.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status == 200, await response.text()
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def _create(api: Client, auth: dict[str, str], title: str) -> tuple[str, int]:
    response = await api.post("/api/tasks", json={"title": title}, headers=auth)
    assert response.status == 201, await response.text()
    return (await response.json())["id"], int(response.headers[POSITION_HEADER])


async def _project_mongodb_views(services: Services) -> None:
    """Apply the log to the MongoDB views only: the Redis views never go live, so the API
    serves every task read from MongoDB (as while Redis is down or being rebuilt)."""
    await catch_up(services.store, projections(services, read_models=MONGODB_ONLY))


def _assert_on_primary(reads: list[Read], topology: Topology) -> None:
    for read in reads:
        assert read.primary_only, read
        assert read.member == topology.primary, read


def _assert_on_secondaries(reads: list[Read], topology: Topology) -> None:
    for read in reads:
        assert read.read_preference == VIEW_READ_PREFERENCE, read
        if topology.secondaries:
            assert read.member in topology.secondaries, read


async def test_log_leases_checkpoints_and_auth_are_read_from_the_primary(
    api: Client, commands: CommandLog, topology: Topology, fan_out_settings: Settings
) -> None:
    """Registration, login, the log, a lease and the projector's checkpoint: primary reads."""
    services = api.app[SERVICES]
    with commands.phase() as auth_reads:
        auth = await _sign_up(api)
    task_id, _ = await _create(api, auth, "routed")
    with commands.phase() as worker_reads:
        assert await services.store.read_stream(f"task-{task_id}")
        lease = Lease(services.db[names.LEASES], "fan_out_probe", "test", ttl=5)
        assert await lease.acquire()
        await _project_mongodb_views(services)
        assert await MongoTaskViews(services.views_db).position() > 0

    assert {r.collection for r in auth_reads} >= {names.EMAIL_RESERVATIONS}
    _assert_on_primary(auth_reads, topology)
    collections = {r.collection for r in worker_reads}
    assert {names.COMMITS, names.LEASES, names.task_views_collection(1)} <= collections
    assert any(r.of_checkpoint for r in worker_reads)
    _assert_on_primary(worker_reads, topology)


async def test_task_view_reads_go_to_secondaries_and_the_rest_to_the_primary(
    api: Client, commands: CommandLog, topology: Topology, fan_out_settings: Settings
) -> None:
    """The API's task reads carry secondaryPreferred with maxStalenessSeconds (served by a
    secondary where there is one); its log and auth reads stay on the primary."""
    auth = await _sign_up(api)
    task_id, position = await _create(api, auth, "fanned out")
    await _project_mongodb_views(api.app[SERVICES])
    at = {POSITION_HEADER: str(position), **auth}

    with commands.phase() as reads:
        one = await api.get(f"/api/tasks/{task_id}", headers=at)
        page = await api.get("/api/tasks", headers=at)
        stats = await api.get("/api/tasks/stats", headers=at)

    assert one.status == 200
    assert (await one.json())["id"] == task_id
    assert [t["id"] for t in (await page.json())["items"]] == [task_id]
    assert (await stats.json())["by_status"]["todo"] == 1
    assert all(STALE_HEADER not in r.headers for r in (one, page, stats))
    views = [r for r in reads if r.database == fan_out_settings.views_db_name]
    assert any(
        r.collection == names.task_views_collection(1) and not r.of_checkpoint for r in views
    )
    _assert_on_secondaries(views, topology)
    _assert_on_primary([r for r in reads if r.database == fan_out_settings.mongodb_db], topology)


async def test_the_checkpoint_that_vouches_for_a_view_read_is_read_first_in_its_session(
    api: Client, commands: CommandLog, topology: Topology
) -> None:
    """A read-your-writes read served by MongoDB reads the checkpoint, then the views, in one
    causally consistent session (on a replica set the view read waits for the checkpoint
    read's cluster time), and decides staleness from that checkpoint, not a later one."""
    auth = await _sign_up(api)
    task_id, position = await _create(api, auth, "vouched for")
    await _project_mongodb_views(api.app[SERVICES])
    views = names.task_views_collection(1)

    for path in (f"/api/tasks/{task_id}", "/api/tasks"):
        with commands.phase() as reads:
            response = await api.get(path, headers={POSITION_HEADER: str(position), **auth})
        assert response.status == 200
        of_views = [r for r in reads if r.collection == views]
        last_view = max(i for i, r in enumerate(of_views) if not r.of_checkpoint)
        vouching = of_views[last_view - 1]
        assert vouching.of_checkpoint, of_views
        assert vouching.session == of_views[last_view].session
        assert not any(r.of_checkpoint for r in of_views[last_view:]), "checkpoint read after"
        if topology.secondaries:
            assert "afterClusterTime" in of_views[last_view].read_concern, of_views[last_view]


async def test_read_your_writes_holds_while_a_secondary_lags(
    api: Client,
    commands: CommandLog,
    topology: Topology,
    fan_out_settings: Settings,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    """With one secondary's replication paused (fsyncLock), a read carrying a write's position
    either shows the write or says it is stale; the single task always comes back."""
    if not topology.secondaries:
        pytest.skip(
            "the deployment has no secondaries (FerretDB, or a one-member replica set): no "
            "member can lag; the GitHub workflow runs this on three MongoDB members"
        )
    lagging = max(topology.secondaries, key=str)
    auth = await _sign_up(api)
    services = api.app[SERVICES]
    async with _replication_paused(lagging):
        task_id, position = await _create(api, auth, "written while a secondary lags")
        await _project_mongodb_views(services)
        async with _direct(lagging) as member:
            with pymongo.timeout(10):
                behind = await read_checkpoint(
                    member[fan_out_settings.views_db_name][names.task_views_collection(1)]
                )
        assert (behind or 0) < position, "the paused secondary already had the write"

        at = {POSITION_HEADER: str(position), **auth}
        fresh = stale = 0
        with commands.phase() as reads:
            for _ in range(8):
                one = await api.get(f"/api/tasks/{task_id}", headers=at)
                assert one.status == 200, await one.text()  # never a 404 for one's own write
                assert (await one.json())["id"] == task_id
                page = await api.get("/api/tasks", headers=at)
                ids = [t["id"] for t in (await page.json())["items"]]
                if page.headers.get(STALE_HEADER) == "true":
                    stale += 1
                else:
                    assert ids == [task_id], "a list without the write was not marked stale"
                    fresh += 1
    view_reads = [r for r in reads if r.collection == names.task_views_collection(1)]
    assert any(r.member == lagging for r in view_reads), "the lagging member was never asked"
    _assert_on_secondaries(view_reads, topology)
    assert fresh + stale == 8


@contextlib.asynccontextmanager
async def _direct(member: Address) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    host, port = member
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        host, port or 27017, directConnection=True, serverSelectionTimeoutMS=10_000
    )
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _replication_paused(member: Address) -> AsyncIterator[None]:
    """Stop `member` applying the oplog (fsyncLock blocks its writes; reads go on), and let it
    catch up again afterwards whatever happened."""
    async with _direct(member) as client:
        await client.admin.command("fsync", lock=True)
        try:
            yield
        finally:
            await client.admin.command("fsyncUnlock")
