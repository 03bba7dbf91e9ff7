"""Group 9: a peer event store, the `eventsourcing` library on PostgreSQL, appending group 1's
workload beside TaskFlow's `MongoEventStore.append`, at 1 and N writers.

What a user choosing a Python event store would pick: `eventsourcing`'s `Application` and
`Aggregate`, its PostgreSQL recorder (psycopg 3 with its C extension, a connection pool), on a
PostgreSQL of Debian's packages with its default durability (`scripts/services.sh start-peer`).
The workload is group 1's: each writer appends one-event commits to a stream of its own,
versions 1, 2, 3, ... one after the other; each event carries what TaskFlow's commit carries
about a rename (the title, the actor, the request and correlation ids). `eventsourcing` is
synchronous, so its N writers are N threads, each holding a pooled connection.

Besides events/s, each side's CPU per event: the client's (this process, `time.process_time`,
which counts every thread) and the servers' (FerretDB and Redis for TaskFlow; the PostgreSQL
server's processes for the peer), read from /proc around the timed appends.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from bench.appends import append_stream
from bench.harness import Group
from bench.http_processes import cpu_seconds
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate

PEER_URL = "PEER_POSTGRES_URL"
CONNECT_SECONDS = 30.0
TITLE = "Review the quarterly budget"


class PeerTask(Aggregate):
    """The peer's task aggregate: created, then renamed; the metadata rides on each event."""

    @event("Created")
    def __init__(self, title: str, actor: str, request_id: str, correlation_id: str) -> None:
        self.title = title

    @event("Renamed")
    def rename(self, title: str, actor: str, request_id: str, correlation_id: str) -> None:
        self.title = title


class PeerTasks(Application):
    """An `eventsourcing` application holding the peer's tasks (no snapshots)."""


def peer_label() -> str:
    return (
        f"`eventsourcing` {version('eventsourcing')} `Application.save` on PostgreSQL "
        f"(psycopg {version('psycopg')}), same workload"
    )


def comparisons(sizes: Sizes) -> list[Comparison]:
    made: list[Comparison] = []
    for writers in (1, sizes.writers):
        load = f"{writers} writer{'s, each on its own stream' if writers > 1 else ''}"
        made += [
            Comparison(
                f"events appended, one event per commit, {load}",
                "events/s",
                f"taskflow:{writers}",
                f"peer:{writers}",
                peer_label(),
            ),
            Comparison(
                f"client CPU per event (the appending process, every thread), {load}",
                "µs",
                f"taskflow_client_us:{writers}",
                f"peer_client_us:{writers}",
                "the peer's client, same process, same load",
            ),
            Comparison(
                f"server CPU per event (TaskFlow: FerretDB + Redis; peer: PostgreSQL), {load}",
                "µs",
                f"taskflow_server_us:{writers}",
                f"peer_server_us:{writers}",
                "PostgreSQL's processes (postmaster, backends, WAL writer ...)",
            ),
        ]
    return made


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    url = os.environ.get(PEER_URL)
    if not url:
        raise RuntimeError(f"{PEER_URL} is not set (scripts/bench.sh starts the peer's server)")
    figures: Trial = {}
    for writers, count in ((1, sizes.serial_appends), (sizes.writers, sizes.appends_per_writer)):
        for variant in alternate(["taskflow", "peer"], repetition):
            if variant == "taskflow":
                rate, client, server = await _taskflow(servers, writers, count)
            else:
                rate, client, server = await _peer(url, writers, count)
            figures[f"{variant}:{writers}"] = rate
            figures[f"{variant}_client_us:{writers}"] = client
            figures[f"{variant}_server_us:{writers}"] = server
    return figures


Measured = tuple[float, float, float]  # events/s, client CPU µs per event, server CPU µs per event


async def _taskflow(servers: Servers, writers: int, count: int) -> Measured:
    """Group 1's TaskFlow side: `append` through the process's store, on a fresh database."""
    server_pids = [
        pid
        for port in (_port(servers.settings.mongodb_uri), _port(servers.settings.redis_url))
        for pid in listening_pids(port)
    ]
    async with servers.fresh_store() as store:
        streams = [f"bench-{uuid.uuid4().hex}" for _ in range(writers)]
        work = asyncio.gather(*(append_stream(store, s, count) for s in streams))
        return await _measure(lambda: work, writers * count, server_pids)


async def _peer(url: str, writers: int, count: int) -> Measured:
    """The same workload through `eventsourcing` on a fresh PostgreSQL database, N threads."""
    with _fresh_database(url) as dbname:
        app = PeerTasks(env=_peer_env(url, dbname, writers))
        try:
            _open_pool(app, writers)
            server_pids = listening_pids(_port(url))
            with ThreadPoolExecutor(writers, thread_name_prefix="peer") as threads:
                # Every thread started before the clock does, as the coroutines of the other side.
                await asyncio.gather(*(_in(threads, time.sleep, 0) for _ in range(writers)))

                def work() -> Awaitable[Any]:
                    return asyncio.gather(
                        *(_in(threads, _peer_writer, app, count) for _ in range(writers))
                    )

                return await _measure(work, writers * count, server_pids)
        finally:
            app.close()


def _in(threads: ThreadPoolExecutor, call: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(threads, call, *args)


def _peer_writer(app: PeerTasks, count: int) -> None:
    """One stream of `count` one-event commits: created (version 1), then renamed."""
    meta = {"actor": uuid.uuid4().hex, "correlation_id": "bench"}
    task = PeerTask(title=TITLE, request_id=uuid.uuid4().hex, **meta)
    app.save(task)
    for _ in range(count - 1):
        task.rename(title=TITLE, request_id=uuid.uuid4().hex, **meta)
        app.save(task)


async def _measure(
    start: Callable[[], Awaitable[Any]], events: int, server_pids: Sequence[int]
) -> Measured:
    client_before, server_before = time.process_time(), cpu_seconds(server_pids)
    began = time.perf_counter()
    await start()
    seconds = time.perf_counter() - began
    # /proc counts in clock ticks: a figure below one tick reads as one (never as zero).
    tick = 1 / os.sysconf("SC_CLK_TCK")
    client = max(time.process_time() - client_before, tick)
    server = max(cpu_seconds(server_pids) - server_before, tick)
    return events / seconds, client / events * 1e6, server / events * 1e6


def _peer_env(url: str, dbname: str, pool: int) -> dict[str, str]:
    parts = urlsplit(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "trust",  # the local cluster trusts loopback
        "POSTGRES_POOL_SIZE": str(pool),  # a connection per writer thread, as a user would size it
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    }


def _open_pool(app: PeerTasks, size: int) -> None:
    """Every pooled connection opened before the clock starts (TaskFlow's are open too)."""
    datastore = app.recorder.datastore  # type: ignore[attr-defined]
    datastore.pool.open(wait=True, timeout=CONNECT_SECONDS)
    barrier = threading.Barrier(size)

    def hold() -> None:
        with datastore.get_connection():
            barrier.wait(CONNECT_SECONDS)

    threads = [threading.Thread(target=hold) for _ in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextmanager
def _fresh_database(url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_SECONDS)) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a name of hex digits only
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_SECONDS)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _port(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise RuntimeError(f"{url!r} names no port: the server's CPU cannot be found")
    return port


def listening_pids(port: int) -> list[int]:
    """The process listening on 127.0.0.1:`port` (found through /proc) and its children (a
    PostgreSQL server's backends); empty when it is not on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            return _with_children(int(proc.name))
    return []


def _with_children(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(grand for child in children for grand in _with_children(int(child)))]


GROUP = Group("9. Peer event store", comparisons, trial)
