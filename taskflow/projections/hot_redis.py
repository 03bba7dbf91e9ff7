"""A few Redis connections for the API's guarded reads, used below redis-py's client layers.

A command through redis-py's asyncio client passes its blocking pool (a condition, and a timer
for the wait), its retry wrapper, the observability hooks, and, with a socket timeout, a timer
around the read and `asyncio.wait_for` around the write, which on Python 3.11 is a task per
command. A guarded read already runs under one bound for the whole read, pool wait included
(`ReadGuard.timeout`, `asyncio.timeout` in `TaskReads`), so these connections carry none of
their own: one timer bounds the read, as before, and the per-command ones go
(docs/benchmarks.md, "The guarded read's Redis calls").

What stays redis-py's: the connection (connect, `AUTH`/`SELECT` from the URL, the RESP parser,
hiredis when installed) and its error handling: a connection that fails or is cancelled mid-
command disconnects itself, and is connected afresh when next used. Callers must bound every
call (`asyncio.timeout`): nothing here waits on a clock of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# As many as the API's client pool (bootstrap.redis_client): a bound on the connections, and a
# wait (bounded by the caller) when all are busy.
DEFAULT_SIZE = 64


class HotScript:
    """A Lua script sent by `EVALSHA`, loaded on `NOSCRIPT` (as redis-py's `AsyncScript`)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class HotRedis:
    """Unbounded-by-themselves Redis calls on a small LIFO of connections (see the module)."""

    def __init__(self, url: str, size: int = DEFAULT_SIZE) -> None:
        # Only for its URL parsing and connection class: no connection is taken from it.
        template = ConnectionPool.from_url(url, socket_timeout=None)
        self._kwargs = {**template.connection_kwargs, "socket_timeout": None}
        self._kwargs.pop("health_check_interval", None)
        self._connection_class = template.connection_class
        self._free: list[AbstractConnection] = []
        self._all: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def execute(self, *args: Any) -> Any:
        """One command's reply (raised as an exception when Redis answers with an error)."""
        async with self._slots:
            conn = self._free.pop() if self._free else self._new()
            try:
                return await self._round_trip(conn, args)
            finally:
                self._free.append(conn)

    async def evalsha(self, script: HotScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply; the script is loaded first when Redis does not know it."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _round_trip(self, conn: AbstractConnection, args: Sequence[Any]) -> Any:
        # A connection Redis closed while it was idle (a restart, a client timeout) fails on
        # its first use; redis-py has disconnected it then, and one retry connects afresh (as
        # the client's own retry would). Anything else is the caller's to handle.
        for attempt in (1, 2):
            try:
                await conn.send_packed_command(conn.pack_command(*args), check_health=False)
                return await conn.read_response()
            except RedisConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _new(self) -> AbstractConnection:
        conn = self._connection_class(**self._kwargs)
        self._all.append(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.disconnect()
        self._all.clear()
        self._free.clear()
