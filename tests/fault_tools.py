"""Fault injection for tests: private servers to stop and restart, a misbehaving TCP proxy,
and `taskflow serve` processes to kill -9.

Nothing here replaces MongoDB or Redis: the private servers are the real `redis-server` and
FerretDB binaries, started on free loopback ports with their data under pytest's `tmp_path`,
so stopping one never disturbs the shared test servers. Tests that need a binary that is not
installed (CI runs against a real MongoDB, where FerretDB is not built) are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from taskflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_VERSION = os.environ.get("FERRETDB_VERSION", "v1.24.2")
T = TypeVar("T")


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def until(
    check: Callable[[], Awaitable[T | None]], seconds: float, what: str, every: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` if too late."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(every)


# -- private servers ----------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    """Debian's `redis-server`, if installed."""
    return shutil.which("redis-server")


def ferretdb_binary() -> str | None:
    """The FerretDB binary `scripts/services.sh` builds (or `FERRETDB_BIN`), if present."""
    explicit = os.environ.get("FERRETDB_BIN")
    state = Path(os.environ.get("TASKFLOW_STATE_DIR", ROOT / ".state"))
    built = state / "bin" / f"ferretdb-{FERRETDB_VERSION}-idindex"  # services.sh's name for it
    candidate = Path(explicit) if explicit else built
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


@dataclass
class PrivateServer:
    """One server process owned by a test: started, killed and restarted on the same port."""

    name: str
    argv: list[str]
    port: int
    url: str
    log: Path
    ready: Callable[[], Awaitable[bool]]
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self, seconds: float = 30.0) -> None:
        """Start (again, on the same port and data) and wait until it answers."""
        assert self.process is None or self.process.returncode is not None, "already running"
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(*self.argv, stdout=out, stderr=out)
        self.starts += 1
        await until(self._up, seconds, f"{self.name} to answer on port {self.port}")

    async def _up(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"{self.name} exited: see {self.log}")
        return await self.ready()

    async def kill(self) -> None:
        """Stop it abruptly (SIGKILL), as a crash or a pulled plug would."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), 30)


async def _redis_pings(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        async with asyncio.timeout(1):
            return (await reader.readline()).startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _http_ok(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http,
            http.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def private_redis_server(data_dir: Path) -> PrivateServer:
    """A `redis-server` without persistence: a restart comes back empty, as after data loss."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed: cannot stop and restart a private Redis")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--databases", "4"]
    url = f"redis://127.0.0.1:{port}/0"
    return PrivateServer(
        "redis", argv, port, url, data_dir / "redis.log", lambda: _redis_pings(port)
    )


def private_ferretdb_server(data_dir: Path) -> PrivateServer:
    """FerretDB on SQLite under `data_dir`, started the way scripts/services.sh starts it."""
    binary = ferretdb_binary()
    if binary is None:
        pytest.skip(
            "FerretDB is not built here (run scripts/services.sh install, or set FERRETDB_BIN); "
            "stopping the MongoDB-protocol server needs a private one"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port, debug = free_port(), free_port()
    argv = [
        binary,
        "--handler=sqlite",
        f"--sqlite-url=file:{data_dir}/",
        f"--listen-addr=127.0.0.1:{port}",
        f"--debug-addr=127.0.0.1:{debug}",
        f"--state-dir={data_dir}",
        "--telemetry=disable",
        "--repl-set-name=rs0",
        "--log-level=warn",
    ]
    readyz = f"http://127.0.0.1:{debug}/debug/readyz"
    url = f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"
    return PrivateServer(
        "ferretdb", argv, port, url, data_dir / "ferretdb.log", lambda: _http_ok(readyz)
    )


@pytest.fixture(name="private_redis")
async def private_redis_fixture(tmp_path: Path) -> AsyncIterator[PrivateServer]:
    """A running private Redis this test may kill and restart; killed at the end."""
    server = private_redis_server(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture(name="private_ferretdb")
async def private_ferretdb_fixture(tmp_path: Path) -> AsyncIterator[PrivateServer]:
    """A running private FerretDB this test may kill and restart; killed at the end."""
    server = private_ferretdb_server(tmp_path / "ferretdb")
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


# -- a TCP proxy that misbehaves on request -----------------------------------------------------


@dataclass(eq=False)  # kept in a set by identity
class _Link:
    index: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), not a polite FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """A loopback proxy to one server that can delay, stall and reset the traffic it carries.

    - `latency`: seconds added before each chunk is forwarded, in both directions;
    - `reset_chance`: the chance that forwarding a chunk instead resets both sides (RST);
    - `stalled`: while set, data is held back (a server that accepts but never answers).
    """

    def __init__(self, target_host: str, target_port: int, *, seed: int = 1) -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.reset_chance = 0.0
        self.resets = 0
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._rng = random.Random(seed)
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.last_active: dict[int, float] = {}  # connection number -> when it last carried data

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    def heal(self) -> None:
        """Back to a transparent proxy."""
        self.latency, self.reset_chance, self.stalled = 0.0, 0.0, False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def reset_all(self) -> None:
        """Reset every connection open right now."""
        for link in list(self._links):
            self._reset(link)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._reset(link)
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def activity_on_first_connection(self) -> Callable[[], Awaitable[bool]]:
        """A check: the first connection made through the proxy has carried data since now.

        A MongoDB driver opens its monitoring connection first and uses it only for heartbeats.
        """
        since = time.monotonic()

        async def check() -> bool:
            return self.last_active.get(0, 0.0) > since

        return check

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self.connections, writer)
        self._links.add(link)
        self.connections += 1
        try:
            up_reader, link.upstream = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(link)
            return
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, link.upstream)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._close(link)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        try:
            while chunk := await source.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)  # the injected fault, not a wait for one
                await self._flowing.wait()
                if self.reset_chance and self._rng.random() < self.reset_chance:
                    self.resets += 1
                    self._reset(link)
                    return
                sink.write(chunk)
                await sink.drain()
                self.last_active[link.index] = time.monotonic()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._close(link)

    def _reset(self, link: _Link) -> None:
        for writer in (link.client, link.upstream):
            if writer is not None:
                _abort_with_reset(writer)
        self._links.discard(link)

    def _close(self, link: _Link) -> None:
        for writer in (link.client, link.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()
        self._links.discard(link)


@contextlib.asynccontextmanager
async def proxy_to(host: str, port: int, *, seed: int = 1) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(host, port, seed=seed).start()
    try:
        yield proxy
    finally:
        await proxy.close()


# -- `taskflow serve` / `taskflow project` processes --------------------------------------------


def taskflow_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `python -m taskflow` child use `settings`' servers and keys."""
    return {
        **os.environ,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DB": settings.mongodb_db,
        "REDIS_URL": settings.redis_url,
        "EVENT_LOG_HMAC_KEY": settings.event_log_hmac_key.get_secret_value(),
        "JWT_KEYS": ",".join(f"{k}:{v.get_secret_value()}" for k, v in settings.jwt_keys.items()),
        "JWT_ACTIVE_KID": settings.jwt_active_kid,
        "GAP_TIMEOUT_SECONDS": str(settings.gap_timeout_seconds),
        "RATE_LIMIT_AUTH": settings.rate_limit_auth,
        "RATE_LIMIT_API": settings.rate_limit_api,
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@dataclass
class TaskflowProcess:
    """A `python -m taskflow <command>` child; `kill9()` and `start()` again as often as needed."""

    command: str
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = {**self.env, "HTTP_PORT": str(self.port)} if self.port else self.env
        log = self.log_dir / f"{self.command}-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taskflow", self.command], env=env, stdout=out, stderr=out
            )
        self.starts += 1

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    async def ready(self, http: aiohttp.ClientSession, seconds: float = 60.0) -> None:
        """Until GET /api/ready answers 200 (the API has its indexes)."""

        async def answered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"taskflow {self.command} exited: see {self.log_dir}")
            try:
                async with http.get(f"{self.base_url}/api/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(answered, seconds, f"taskflow {self.command} on port {self.port} to be ready")


@pytest.fixture(name="taskflow_processes")
def taskflow_processes_fixture() -> Iterator[list[TaskflowProcess]]:
    """Children a test starts; any still running are killed when it ends."""
    started: list[TaskflowProcess] = []
    yield started
    for child in started:
        child.kill9()
