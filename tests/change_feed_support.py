"""Helpers for the change-feed tests: a stream read in the background, and what the log holds
for an owner (the sequence a feed must deliver)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from taskflow.events.codec import decode_events
from taskflow.events.store import EventStore
from taskflow.events.task_events import TaskCreated
from tests.sse_client import SseEvent, events

Change = tuple[int, str, int]  # (position, task id, the task's version after it)


@dataclass
class OpenStream:
    """A change-feed response read into `events` by a task of its own, until it ends."""

    response: aiohttp.ClientResponse
    events: list[SseEvent] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # monotonic, per event
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def start(self) -> OpenStream:
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for event in events(self.response):
                self.events.append(event)
                self.received_at.append(time.monotonic())
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.ended.set()

    @property
    def changes(self) -> list[SseEvent]:
        return [event for event in self.events if event.event == "message"]

    def named(self, name: str) -> list[SseEvent]:
        return [event for event in self.events if event.event == name]

    async def wait_for(self, check: Callable[[OpenStream], bool], seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the last events: {self._tail()}")
            if self.ended.is_set() and not check(self):
                raise AssertionError(f"the stream ended first; its last events: {self._tail()}")
            await asyncio.sleep(0.01)

    def received(self, position: int) -> float:
        """When the event with id `position` arrived (monotonic)."""
        at = next(n for n, event in enumerate(self.events) if event.id == str(position))
        return self.received_at[at]

    def _tail(self) -> list[tuple[str, str | None, str]]:
        return [(event.event, event.id, event.data[:80]) for event in self.events[-5:]]

    async def close(self) -> None:
        """Hang up (abruptly, as a closed tab does)."""
        self.response.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def as_changes(received: list[SseEvent]) -> list[Change]:
    """(position, task id, version) of each change event."""
    out = []
    for event in received:
        data = event.json()
        out.append((event.position, data["id"], int(data["etag"].strip('"'))))
    return out


async def changes_in_log(store: EventStore, owner: str) -> list[Change]:
    """Every commit of `owner`'s tasks in the log, in log order: what their feed must send."""
    owners: dict[str, str] = {}
    found: list[Change] = []
    async for commit in store.read_all(0):
        if commit.is_gap or not commit.stream_id.startswith("task-"):
            continue
        task_id = commit.stream_id.removeprefix("task-")
        if commit.first_version == 1:
            created = decode_events(commit)[0]
            assert isinstance(created, TaskCreated)
            owners[task_id] = created.owner_id
        if owners.get(task_id) == owner:
            found.append((commit.position, task_id, commit.last_version))
    return found
