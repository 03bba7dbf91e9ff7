"""A process's quick Redis calls, pipelined on one connection of their own, each bounded.

A command through redis-py's asyncio client passes its pool, its retry wrapper, its
observability hooks and asyncio's streams, and holds a connection for the whole round trip, so
16 calls in flight take 16 connections and 16 socket writes. Here a command is packed by
hiredis, queued on one connection and written with every other command queued in the same turn
of the event loop (one `send` for all of them); the replies come back in order, parsed by
hiredis, each handed to the future of the command that asked (docs/benchmarks.md, "The guarded
read's Redis calls"). Redis runs the commands of one connection in order, as it would have
from several. Its callers: the API's guarded reads, the deny-list check of every authenticated
request, every append's position, cached head, idempotent outcome and announce (`Services.
hot`), and the projectors' passes (the log reader's tail and settle scripts, the Redis views'
checkpoint, reads and guarded batch script). Only quick commands belong here: a blocking one
would hold up every caller behind it (the longest here reads 256 hints).

Every call is bounded: a command not answered within `timeout` fails with TimeoutError and
closes the connection (with every command still on it: a Redis that does not answer in time
is taken as down, as the general client's socket timeout takes it), and the next call connects
afresh. One timer per connection does it, not one per call. Connecting (with the URL's TLS,
`AUTH` and `SELECT`, as redis-py reads the URL) is bounded by the same timeout. A caller that
gives up (a cancelled request) leaves its reply to be read and dropped: the connection stays
in step. Replies are hiredis's: bytes, integers and lists, without redis-py's per-command
conversions (a `SET` answers b"OK", not True).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

_NOSCRIPT = "NOSCRIPT"


class HotScript:
    """A Lua script sent by `EVALSHA`, loaded on `NOSCRIPT` (as redis-py's `AsyncScript`)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class HotRedis:
    """Bounded Redis calls, pipelined on one connection (see the module)."""

    def __init__(self, url: str, timeout: float) -> None:
        # redis-py reads the URL (host, port or socket path, TLS, user, password, database);
        # no connection of its pool is used.
        template = ConnectionPool.from_url(url)
        self._kwargs = template.connection_kwargs
        self._connection_class = template.connection_class
        self._timeout = timeout
        self._live: _Pipe | None = None
        self._opening: asyncio.Future[_Pipe] | None = None
        self._writes = 0  # of the connections replaced

    async def execute(self, *args: Any) -> Any:
        """One command's reply (raised as an exception when Redis answers with an error).

        A connection Redis closed (a restart, its client timeout) fails the commands on it;
        each is sent once more on a new connection, as redis-py's client retries. The guarded
        reads' commands are reads, or cache writes that may be made twice.
        """
        packed = _packed(*args)
        pipe = self._live
        if pipe is None or pipe.closed:  # the common case needs no await: `_connect` is slower
            pipe = await self._connect()
        try:
            return await pipe.call(packed)
        except RedisConnectionError:
            return await (await self._connect()).call(packed)

    async def evalsha(self, script: HotScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply; the script is loaded first when Redis does not know it."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def execute_all(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies to `commands`, queued together in order (so they leave in one write);
        an error reply is returned in its command's place, not raised. When Redis had closed
        the connection they are all sent once more on a new one, as `execute` sends one
        (callers give commands that may run twice)."""
        packed = [_packed(*command) for command in commands]
        replies = await self._call_all(packed)
        if any(isinstance(reply, RedisConnectionError) for reply in replies):
            replies = await self._call_all(packed)
        return replies

    async def _call_all(self, packed: list[bytes]) -> list[Any]:
        pipe = await self._connect()
        futures = [pipe.call(one) for one in packed]  # no await between: all on one connection
        return list(await asyncio.gather(*futures, return_exceptions=True))

    @property
    def writes(self) -> int:
        """Socket writes so far, on every connection (tests: how much the callers shared)."""
        return self._writes + (self._live.writes if self._live is not None else 0)

    async def _connect(self) -> _Pipe:
        """The live connection, or the one being opened: callers that come while it opens wait
        for the same attempt, so a Redis that cannot be reached costs each of them one timeout,
        not one each in turn."""
        if self._live is not None and not self._live.closed:
            return self._live
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_in_time())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    async def _open_in_time(self) -> _Pipe:
        """A new connection, or TimeoutError, or RedisConnectionError when the socket cannot be
        opened (refused, unreachable): every failure of Redis is a RedisError or a timeout to
        callers, as with redis-py's client (the API answers both 503)."""
        async with asyncio.timeout(self._timeout):
            try:
                return await self._open()
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc

    def _opened(self, attempt: asyncio.Future[_Pipe]) -> None:
        self._opening = None
        if not attempt.cancelled() and attempt.exception() is None:
            if self._live is not None:
                self._writes += self._live.writes
            self._live = attempt.result()

    async def _open(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        kwargs = self._kwargs
        pipe = _Pipe(self._timeout)
        if self._connection_class is UnixDomainSocketConnection:
            await loop.create_unix_connection(lambda: pipe, kwargs["path"])
        else:
            ssl = None
            if issubclass(self._connection_class, SSLConnection):
                ssl = self._connection_class(**kwargs).ssl_context.get()
            host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
            await loop.create_connection(lambda: pipe, host, port, ssl=ssl)
        try:
            password, username = kwargs.get("password"), kwargs.get("username")
            if password is not None:
                auth = ("AUTH", username, password) if username else ("AUTH", password)
                await pipe.call(_packed(*auth))
            if kwargs.get("db"):
                await pipe.call(_packed("SELECT", kwargs["db"]))
        except BaseException:
            pipe.close()
            raise
        return pipe

    async def aclose(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        if self._live is not None:
            self._live.close()
            self._live = None


class _Pipe(asyncio.Protocol):
    """One connection: commands written in batches, replies handed out in order."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._failure: Exception | None = None
        self.closed = False
        self.writes = 0

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """The future of the reply to one packed command, queued for this turn's write."""
        if self.closed:
            raise RedisConnectionError("the connection to Redis is closed")
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((future, deadline))
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        if self._transport is not None and self._outgoing:
            self._transport.writelines(self._outgoing)
            self.writes += 1
        self._outgoing = []

    def _check_deadline(self) -> None:
        """Fail the connection when its oldest command is past its deadline; else look again
        at the oldest one's (commands are answered in order, so it is the first to pass)."""
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self._failure = TimeoutError("Redis did not answer in time")
            self.close()
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = self._waiting.popleft()
                if future.done():  # its caller gave up: the reply is read and dropped
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply nobody asked for
            self._failure = RedisConnectionError(f"Redis protocol error: {exc!r}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        failure = self._failure or RedisConnectionError(f"Redis closed the connection: {exc!r}")
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(failure)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close at once; every command still waiting fails (connection_lost)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self.connection_lost(None)


def _packed(*args: Any) -> bytes:
    """A command as RESP, packed by hiredis (its stub types the tuple as of one item)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith(_NOSCRIPT) else reply
