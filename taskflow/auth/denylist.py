"""The Redis deny list of logged-out access tokens; a check Redis cannot answer fails closed."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names

# Upper bound for one deny-list round trip, retries included: past it the request is refused.
CHECK_TIMEOUT_SECONDS = 2.0


class AuthUnavailableError(Exception):
    """The deny list could not be read or written, so no token can be trusted right now."""


async def deny_access_token(redis: Redis, jti: str, expires_at: datetime, now: datetime) -> None:
    """Refuse the token `jti` from now until it expires by itself."""
    remaining = math.ceil((expires_at - now).total_seconds())
    if remaining <= 0:
        return  # already refused by its own expiry
    async with _guard():
        await redis.set(names.denied_jti_key(jti), b"1", ex=remaining)


async def is_access_token_denied(redis: Redis, jti: str) -> bool:
    """Whether `jti` was logged out; AuthUnavailableError (never False) if Redis cannot say."""
    async with _guard():
        return bool(await redis.exists(names.denied_jti_key(jti)))


@asynccontextmanager
async def _guard() -> AsyncIterator[None]:
    """Turn every way Redis can fail, slowness included, into AuthUnavailableError."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            yield
    except (RedisError, OSError) as exc:  # OSError covers TimeoutError and refused connections
        raise AuthUnavailableError("the deny list cannot answer") from exc
