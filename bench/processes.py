"""Child processes of the latency benchmark: started, awaited until ready, and stopped by id."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import IO

from bench.servers import Servers
from taskflow import names
from taskflow.projections.mongo_views import NAME as MONGO_VIEWS
from taskflow.projections.redis_views import NAME as REDIS_VIEWS
from taskflow.settings import READ_MODELS, ReadModel

STOP_GRACE_SECONDS = 10.0
# One projector process per read model, as `make dev` and the compose file run them;
# BENCH_SPLIT_PROJECTORS=0 runs both read models in one process.
SPLIT_PROJECTORS = os.environ.get("BENCH_SPLIT_PROJECTORS", "1") != "0"
ECHO_CHANNEL = "bench:echo"


class ChildFailedError(Exception):
    """A child process exited, or never became ready, while the benchmark needed it."""


class Child:
    """A running child process and the file its output goes to."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, output: IO[bytes]) -> None:
        self.name = name
        self.process = process
        self.output = output

    def failure(self, what: str) -> ChildFailedError:
        self.output.seek(0)
        tail = self.output.read()[-2000:].decode(errors="replace")
        return ChildFailedError(f"{self.name} {what}; its output ends with:\n{tail}")

    async def wait_until(self, ready: Callable[[], Awaitable[bool]], seconds: float) -> None:
        """Until `ready()` holds; fails at once if the process exits, or after `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                while not await ready():
                    if self.process.returncode is not None:
                        raise self.failure(f"exited with {self.process.returncode}")
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise self.failure(f"was not ready within {seconds:.0f} s") from None


@asynccontextmanager
async def child(name: str, args: list[str], env: Mapping[str, str]) -> AsyncIterator[Child]:
    """Run `args`; on exit stop it with SIGTERM, then SIGKILL after a grace period."""
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *args, env=dict(env), stdout=output, stderr=output
        )
        try:
            yield Child(name, process, output)
        finally:
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()


# The lease each read model's projection takes (the read model version 1's).
_LEASES: dict[ReadModel, str] = {"redis": f"{REDIS_VIEWS}_v1", "mongodb": f"{MONGO_VIEWS}_v1"}


@asynccontextmanager
async def projector(
    servers: Servers, database: str, read_models: tuple[ReadModel, ...] = READ_MODELS
) -> AsyncIterator[Child]:
    """`python -m taskflow project` on `database` for `read_models` (PROJECTOR_READ_MODELS),
    once it holds the lease of each."""
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "MONGODB_DB": database,
        "REDIS_URL": servers.settings.redis_url,
        "LOG_LEVEL": "WARNING",
        "METRICS_PORT": "0",  # no metrics listener: a fixed port would clash with other runs
        "PROJECTOR_READ_MODELS": ",".join(read_models),
    }
    leases = servers.services.mongo[database][names.LEASES]
    wanted = {_LEASES[model] for model in read_models}

    async def leased() -> bool:
        return set(await leases.distinct("name")) >= wanted

    async with child("projector", [sys.executable, "-m", "taskflow", "project"], env) as proc:
        await proc.wait_until(leased, seconds=30)
        yield proc


@asynccontextmanager
async def projectors(
    servers: Servers, database: str, *, split: bool = SPLIT_PROJECTORS
) -> AsyncIterator[None]:
    """Both read models maintained: by one projector process per model (the default), or by one
    for both."""
    if not split:
        async with projector(servers, database):
            yield
        return
    async with projector(servers, database, ("redis",)), projector(servers, database, ("mongodb",)):
        yield


@asynccontextmanager
async def echo(servers: Servers) -> AsyncIterator[Child]:
    """`python -m bench.echo` (the raw baseline's subscriber), once it listens."""
    args = [sys.executable, "-m", "bench.echo", servers.settings.redis_url, ECHO_CHANNEL]

    async def subscribed() -> bool:
        counts = await servers.redis.pubsub_numsub(ECHO_CHANNEL)
        return bool(counts and int(counts[0][1]) > 0)

    async with child("echo", args, os.environ) as proc:
        await proc.wait_until(subscribed, seconds=30)
        yield proc
