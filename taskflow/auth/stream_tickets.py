"""One-time stream tickets: how a browser's EventSource, which cannot send headers, opens a
change feed without an access token in its URL.

A caller with a valid access token asks for a ticket; the ticket names the caller (and the
token it was asked with, so that a logout of that token still ends the stream) and lives in
Redis for a few seconds, stored under its hash. Using it deletes it in the same command
(GETDEL), so of any number of requests presenting one ticket exactly one gets it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from taskflow import names

TICKET_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # 32 random bytes, base64url without padding


class TicketGrant(BaseModel):
    """Who a ticket lets in, and until when their token is valid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    roles: tuple[str, ...]
    jti: str
    expires_at: datetime


class StreamTickets:
    """Issues and redeems tickets in Redis."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds

    async def issue(self, grant: TicketGrant) -> str:
        ticket = secrets.token_urlsafe(32)
        key = names.stream_ticket_key(_digest(ticket))
        await self._redis.set(key, grant.model_dump_json(), ex=self.ttl_seconds)
        return ticket

    async def redeem(self, ticket: str) -> TicketGrant | None:
        """The ticket's grant, once: None when unknown, expired or used already."""
        raw = await self._redis.getdel(names.stream_ticket_key(_digest(ticket)))
        return TicketGrant.model_validate_json(raw) if raw else None


def _digest(ticket: str) -> str:
    # Only the hash is stored: whoever reads Redis cannot use a ticket that is still waiting.
    return hashlib.sha256(ticket.encode()).hexdigest()
