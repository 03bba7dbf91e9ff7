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
from taskflow.projections.redis_keys import RedisViewKeys

STOP_GRACE_SECONDS = 10.0
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


@asynccontextmanager
async def projector(servers: Servers, database: str) -> AsyncIterator[Child]:
    """`python -m taskflow project` on `database`, once it holds the Redis views' lease."""
    env = {
        **os.environ,
        "MONGODB_URI": servers.settings.mongodb_uri,
        "MONGODB_DB": database,
        "REDIS_URL": servers.settings.redis_url,
        "LOG_LEVEL": "WARNING",
        "METRICS_PORT": "0",  # no metrics listener: a fixed port would clash with other runs
    }
    fence = RedisViewKeys(1).fence  # set when a worker takes the lease (fencing older terms)

    async def leased() -> bool:
        return bool(await servers.redis.exists(fence))

    async with child("projector", [sys.executable, "-m", "taskflow", "project"], env) as proc:
        await proc.wait_until(leased, seconds=30)
        yield proc


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
