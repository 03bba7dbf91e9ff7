"""Child processes of the HTTP benchmarks: servers on free ports, and the load generator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.processes import Child, child
from bench.servers import Servers
from bench.stats import Trial
from taskflow.auth.tokens import issue_access_token
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys

READY_SECONDS = 60.0
# After the arbiter has forked its workers, for each to build its app and accept: a worker
# still booting when wrk connects leaves all the connections to the others.
WORKER_BOOT_SECONDS = 2.0
# wrk's own default, 2 s, counts a slow answer as an error; FerretDB's single writer now and
# then holds an insert up for more than that (once in a run of 3,000, p99 975 ms). Slow is not
# failed: such a request counts in the latencies, and only a hung server fails the run.
TIMEOUT_SECONDS = 30
# What wrk counts as a failed request: a non-2xx/3xx answer, or a socket error of any kind.
FAILURES = ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
WRK_SCRIPT = Path(__file__).with_name("wrk_load.lua")


@dataclass(frozen=True)
class Server:
    """A server process listening on `base` (http://127.0.0.1:port)."""

    base: str
    process: Child


@dataclass(frozen=True)
class LoadShape:
    """How the load generator drives a server: connections, measured and warm-up seconds."""

    concurrency: int
    seconds: float
    warmup: float


def free_port() -> int:
    """A port nobody listens on right now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def new_user(servers: Servers, database: str) -> str:
    """A user the API in `database` knows as live: its data key made, as registering does
    (a token of a user the API does not know is refused, docs/privacy.md)."""
    user_id = uuid.uuid4().hex
    db = servers.services.mongo.get_database(database)
    keys = DataKeys(db, servers.redis, KeyEncryptionKeys.from_settings(servers.settings))
    await keys.sealing_key(user_id)
    return user_id


def bearer(servers: Servers, user_id: str) -> str:
    """An `Authorization` header value the API accepts: a real access token for `user_id`."""
    token = issue_access_token(servers.settings, user_id, [], datetime.now(UTC))
    return f"Bearer {token.token}"


@asynccontextmanager
async def api_server(servers: Servers, database: str, workers: int = 1) -> AsyncIterator[Server]:
    """`python -m taskflow serve` on `database`, rate limits off, once `/api/ready` says 200;
    with `workers` > 1 that many worker processes (API_WORKERS), each of them booted."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "MONGODB_DB": database,
        "REDIS_URL": servers.settings.redis_url,
        "HTTP_PORT": str(port),
        "RATE_LIMIT_ENABLED": "false",  # the bench sends far more than one client's allowance
        "LOG_LEVEL": "WARNING",
        "API_WORKERS": str(workers),
    }
    args = [sys.executable, "-m", "taskflow", "serve"]
    async with _serving("api", args, env, port, "/api/ready") as server:
        await _booted(server, workers)
        yield server


@asynccontextmanager
async def raw_server(servers: Servers, database: str, processes: int = 1) -> AsyncIterator[Server]:
    """`python -m bench.rawserver` (the raw baselines), inserting into `database`; `processes`
    of them on one port, each listening."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "BENCH_DB": database,
        "REDIS_URL": servers.settings.redis_url,
    }
    args = [sys.executable, "-m", "bench.rawserver", str(port)]
    if processes > 1:  # under gunicorn, as the API's workers (API_WORKERS) are
        args = [sys.executable, "-m", "gunicorn", "bench.rawserver:create_app()"]
        args += ["--workers", str(processes), "--worker-class", "aiohttp.GunicornUVLoopWebWorker"]
        args += ["--bind", f"127.0.0.1:{port}", "--no-control-socket", "--log-level", "warning"]
    async with _serving("rawserver", args, env, port, "/l0") as server:
        await _booted(server, processes)
        yield server


@asynccontextmanager
async def _serving(
    name: str, args: list[str], env: dict[str, str], port: int, probe: str
) -> AsyncIterator[Server]:
    base = f"http://127.0.0.1:{port}"
    async with child(name, args, env) as proc, aiohttp.ClientSession(base) as session:

        async def ready() -> bool:
            try:
                async with session.get(probe) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await proc.wait_until(ready, READY_SECONDS)
        yield Server(base, proc)


async def load(
    base: str,
    paths: Sequence[str],
    shape: LoadShape,
    *,
    method: str = "GET",
    body: Any = None,
    headers: Sequence[str] = (),
    server_pid: int | None = None,
) -> dict[str, Any]:
    """A closed-loop load on `base` from wrk, and its figures; every request must succeed.

    wrk (Debian's package, scripts/bench.sh installs it) is a process of its own, written in C:
    it leaves the cores to the servers, where the asyncio client it replaced took most of a
    core. One thread keeps `shape.concurrency` connections busy, each sending its next request
    when its last is answered, first for `shape.warmup` seconds (discarded), then for
    `shape.seconds` (whole seconds: wrk takes no fractions). With `server_pid`, the figures
    include the CPU that process and its children (the API's workers) used per request in the
    measured window (µs, /proc: user + system), which the machine's other load moves far less
    than the rate.
    """
    with tempfile.TemporaryDirectory(prefix="taskflow-wrk-") as scratch:
        env = {
            **os.environ,
            "WRK_PATHS": _lines(Path(scratch, "paths"), paths),
            "WRK_HEADERS": _lines(Path(scratch, "headers"), headers),
        }
        env["WRK_METHOD"] = method
        if body is not None:
            env["WRK_BODY"] = orjson.dumps(body).decode()
        await _wrk(base, shape.concurrency, shape.warmup, env)
        pids = _with_children(server_pid) if server_pid is not None else []
        cpu_before = cpu_seconds(pids)
        figures = await _wrk(base, shape.concurrency, shape.seconds, env)
        cpu = cpu_seconds(pids) - cpu_before
    requests, seconds = figures["requests"], figures["duration_us"] / 1e6
    if not requests or any(figures[kind] for kind in FAILURES):
        raise RuntimeError(f"wrk saw failed requests against {base}{paths[0]}: {figures}")
    result: dict[str, Any] = {
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "p50": figures["p50_us"] / 1000,
        "p99": figures["p99_us"] / 1000,
    }
    if pids:
        result["server_cpu_us"] = cpu / requests * 1e6
    return result


def trial_figures(variant: str, result: dict[str, Any]) -> Trial:
    """A measurement under its variant's names: the rate, and for an HTTP load its p50 and p99
    (ms) and the server's CPU per request (µs)."""
    figures = {variant: result["rate"]}
    if "p50" in result:
        figures[f"{variant}_p50_ms"] = result["p50"]
        figures[f"{variant}_p99_ms"] = result["p99"]
        figures[f"{variant}_cpu_us"] = result["server_cpu_us"]
    return figures


async def _booted(server: Server, workers: int) -> None:
    """Until a multi-process server has forked its `workers`, and a moment for each to accept."""
    if workers == 1:
        return

    async def forked() -> bool:
        return len(_with_children(server.process.process.pid)) > workers

    await server.process.wait_until(forked, READY_SECONDS)
    await asyncio.sleep(WORKER_BOOT_SECONDS)


def _lines(path: Path, lines: Sequence[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


async def _wrk(base: str, connections: int, seconds: float, env: dict[str, str]) -> dict[str, Any]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    args += ["--timeout", f"{TIMEOUT_SECONDS}s", "-s", str(WRK_SCRIPT)]
    process = await asyncio.create_subprocess_exec(
        *args, base, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}: {(out + err).decode()[-2000:]}")
    # wrk prints its own summary first; the script's JSON line is the last.
    figures: dict[str, Any] = orjson.loads(out.decode().strip().splitlines()[-1])
    return figures


def _with_children(pid: int) -> list[int]:
    """`pid` and its child processes (a multi-worker API's arbiter and its workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(grandchild for child in children for grandchild in _with_children(int(child)))]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time these processes used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces: count fields after its closing ')'.
            fields = stat.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
