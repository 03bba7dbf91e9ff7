"""A minimal server-sent events reader for tests: the parsing rules of the HTML standard's
EventSource (event, id, data and retry fields; comment lines), over an aiohttp response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

COMMENT = ":"  # the `event` of a comment line (a heartbeat)


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" for an unnamed event, COMMENT for a comment line
    id: str | None
    data: str
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def position(self) -> int:
        assert self.id is not None, self
        return int(self.id)


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream response, comments included, until it ends."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or fields:
                retry = fields.get("retry")
                yield SseEvent(
                    fields.get("event", "message"),
                    fields.get("id"),
                    "\n".join(data),
                    int(retry) if retry else None,
                )
            fields, data = {}, []
            continue
        if line.startswith(":"):
            yield SseEvent(COMMENT, None, line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
