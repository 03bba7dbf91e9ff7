"""Child processes of the HTTP benchmarks: servers on free ports, and the load generator."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from bench.processes import Child, child
from bench.servers import Servers
from taskflow.auth.tokens import issue_access_token

READY_SECONDS = 60.0


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


def bearer(servers: Servers, user_id: str) -> str:
    """An `Authorization` header value the API accepts: a real access token for `user_id`."""
    token = issue_access_token(servers.settings, user_id, [], datetime.now(UTC))
    return f"Bearer {token.token}"


@asynccontextmanager
async def api_server(servers: Servers, database: str) -> AsyncIterator[Server]:
    """`python -m taskflow serve` on `database`, rate limits off, once `/api/ready` says 200."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "MONGODB_DB": database,
        "REDIS_URL": servers.settings.redis_url,
        "HTTP_PORT": str(port),
        "RATE_LIMIT_ENABLED": "false",  # the bench sends far more than one client's allowance
        "LOG_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "taskflow", "serve"]
    async with _serving("api", args, env, port, "/api/ready") as server:
        yield server


@asynccontextmanager
async def raw_server(servers: Servers, database: str) -> AsyncIterator[Server]:
    """`python -m bench.rawserver` (the raw baselines), inserting into `database`."""
    port = free_port()
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "BENCH_DB": database,
        "REDIS_URL": servers.settings.redis_url,
    }
    args = [sys.executable, "-m", "bench.rawserver", str(port)]
    async with _serving("rawserver", args, env, port, "/l0") as server:
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
    """Run `python -m bench.loadgen` against `base` and return its figures; every request must
    succeed. With `server_pid`, the figures include that process's CPU per request."""
    args = [sys.executable, "-m", "bench.loadgen", base, "--method", method]
    if server_pid is not None:
        args += ["--server-pid", str(server_pid)]
    args += ["--concurrency", str(shape.concurrency), "--seconds", str(shape.seconds)]
    args += ["--warmup", str(shape.warmup)]
    args += [arg for path in paths for arg in ("--path", path)]
    args += [arg for header in headers for arg in ("--header", header)]
    if body is not None:
        args += ["--body", orjson.dumps(body).decode()]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"loadgen exited with {process.returncode}: {err.decode()[-2000:]}")
    figures: dict[str, Any] = orjson.loads(out)
    if figures["ok"] != figures["requests"] or figures["errors"] or not figures["requests"]:
        raise RuntimeError(f"loadgen saw failed requests against {base}{paths[0]}: {figures}")
    return figures
