"""Redis commands of concurrent callers sent together, in one pipeline: auto-pipelining.

Every command sent alone through redis-py's asyncio client pays the client's layers once: the
blocking pool's wait for a connection, the retry wrapper, `asyncio.wait_for` around the write
(a task per command on Python 3.11), a timer around the read, a system call each way. A create
made three such calls (the deny-list check, the position, the announce), and they were about
a fifth of the API's CPU under write load (docs/benchmarks.md, "Appends and HTTP writes").

Here a command that arrives while no batch is in flight leaves on the next turn of the event
loop, with whatever other callers queued in that turn; commands that arrive while a batch is in
flight wait for it, then leave together as the next one. At low load nothing waits more than a
loop turn; under load the client's costs are paid once per batch instead of once per command
(the same natural batching as the log's group commit, events/group_insert.py).

Each command keeps its own reply and its own error: a batch is a non-transactional pipeline
(`raise_on_error=False`), so an error reply fails only the command that got it. A batch that
fails as a whole (Redis unreachable, a timeout of the client's socket) fails every command in
it with that error, as each would have failed alone; the client's retry of a lost connection
applies to the batch. Only quick, non-blocking commands belong here: one slow command holds up
every caller batched with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

# Commands in one pipeline at most: a bound on one batch's packing and on its reply's size.
MAX_BATCH = 256

Command = Sequence[Any]
_Waiting = tuple[Sequence[Command], asyncio.Future[list[Any]]]


class AutoPipeline:
    """Sends its callers' commands to `redis` in shared pipelines (see the module)."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one command")
        self._redis = redis
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._sender: asyncio.Task[None] | None = None
        # How much the callers shared (for tests and probes): pipelines and commands sent.
        self.batches = 0
        self.commands = 0

    async def execute(self, *args: Any) -> Any:
        """One command's reply, parsed as redis-py's client parses it; an error reply raised."""
        (reply,) = await self.execute_many([args])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to `commands`, sent one after the other in one batch (never split over
        two); an error reply is returned in its command's place, not raised."""
        if not commands:
            return []
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, done))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_while_waiting())
        # A caller cancelled before its batch leaves is dropped from it; one cancelled after
        # that has its commands run or not, as with a cancelled call of the client.
        return await done

    async def evalsha(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply; the script is loaded first when Redis does not know it (a
        restart, `SCRIPT FLUSH`), as `AsyncScript.__call__` does."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            await self._redis.script_load(script.script)
            return await self.execute(*command)

    async def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._next_batch()
                live = [(commands, done) for commands, done in batch if not done.done()]
                if live:
                    await self._send(live)
        finally:
            self._sender = None
            # Only reached with callers still waiting if this task itself was cancelled (the
            # event loop shutting down): they must not wait for ever.
            for _, done in self._waiting:
                done.cancel()
            self._waiting.clear()

    def _next_batch(self) -> list[_Waiting]:
        """The callers that arrived first, up to `max_batch` commands (at least one caller)."""
        count, size = 0, 0
        for commands, _ in self._waiting:
            if count and size + len(commands) > self._max_batch:
                break
            count, size = count + 1, size + len(commands)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    async def _send(self, batch: list[_Waiting]) -> None:
        self.batches += 1
        pipe = self._redis.pipeline(transaction=False)
        for commands, _ in batch:
            self.commands += len(commands)
            for command in commands:
                pipe.execute_command(*command)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # the batch as a whole failed: so did each command in it
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        start = 0
        for commands, done in batch:
            if not done.done():
                done.set_result(list(replies[start : start + len(commands)]))
            start += len(commands)
