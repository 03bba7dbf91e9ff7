"""The deny list of logged-out access tokens: Redis is its authority, each API process a mirror.

Every check asks Redis (`EXISTS`), so a logout takes effect at once everywhere. Each API process
also copies the whole list (an index sorted by expiry) about once a second. When Redis cannot
answer, the check uses that copy, so authenticated reads keep being served from MongoDB during
a Redis outage (DESIGN.md §6) while nothing that needs Redis works: logins, refreshes, logouts
and writes fail with 503. A copy is trusted only for `stale_limit` seconds after its last
refresh; a process that never had one, or whose copy is older, fails closed (503). A logout
made during an outage cannot be recorded anyway (it answers 503), so the copy misses at most
the logouts of its last refresh interval, or those another process recorded while this one
could not reach Redis: the documented price of serving reads (docs/operations.md).

A read can carry the check in its own Redis round trip (`DenyGuard`, taskflow.projections.
task_queries.ReadGuard): the same `EXISTS`, answered by Redis in the same script as the read,
so a logout is just as immediate and the read costs one round trip instead of two.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names
from taskflow.auth.tokens import InvalidTokenError

log = structlog.get_logger(__name__)

# Upper bound for one deny-list round trip, retries included: past it Redis counts as down.
CHECK_TIMEOUT_SECONDS = 2.0
# After Redis failed, checks go straight to the copy for this long instead of waiting on Redis.
RETRY_AFTER_FAILURE_SECONDS = 1.0


class AuthUnavailableError(Exception):
    """The deny list could not be read or written, so no token can be trusted right now."""


class DenyList:
    """Logged-out access tokens (their `jti`), until each token would have expired anyway."""

    def __init__(
        self,
        redis: Redis,
        *,
        stale_limit: float,
        refresh_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._stale_limit = stale_limit
        self._refresh_every = refresh_every
        self._clock = clock
        self._copy: frozenset[str] = frozenset()
        self._copied_at: float | None = None  # never copied: no copy to fall back on
        self._redis_down_until = 0.0

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Refuse the token `jti` from now until it expires by itself."""
        remaining = math.ceil((expires_at - now).total_seconds())
        if remaining <= 0:
            return  # already refused by its own expiry
        async with _guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(names.denied_jti_key(jti), b"1", ex=remaining)
            pipe.zadd(names.DENIED_JTI_INDEX, {jti: expires_at.timestamp()})
            await pipe.execute()
        # This process's copy holds it at once: were Redis lost before the next refresh, the
        # process that logged the token out would otherwise accept it (seen in the outage test).
        self._copy = self._copy | {jti}

    async def is_denied(self, jti: str, family_id: str = "") -> bool:
        """Whether `jti` was logged out, or its refresh family revoked (the family's mirror in
        Redis, auth/refresh.py): Redis, else a recent copy, else AuthUnavailableError."""
        if not self.redis_answering():
            return self.denied_by_copy(jti)
        try:
            async with _guard():
                return bool(await self._redis.exists(*_deny_keys(jti, family_id)))
        except AuthUnavailableError:
            return self.denied_by_copy(jti, redis_failed=True)

    def guard(self, jti: str, family_id: str = "") -> DenyGuard:
        """The check of `jti` (and its family), for a read to make in its own Redis round trip."""
        return DenyGuard(self, jti, family_id)

    def redis_answering(self) -> bool:
        """False for a while after Redis failed: checks then go straight to the copy."""
        return self._clock() >= self._redis_down_until

    def denied_by_copy(self, jti: str, *, redis_failed: bool = False) -> bool:
        """Whether the copy holds `jti`; AuthUnavailableError when it is too old to trust.

        `redis_failed`: the caller just saw Redis fail, so later checks skip it for a while.
        """
        if redis_failed:
            self._redis_down_until = self._clock() + RETRY_AFTER_FAILURE_SECONDS
        if not self._copy_usable():
            raise AuthUnavailableError("the deny list cannot answer")
        if redis_failed:
            log.warning("deny_list_from_copy", age_seconds=self._copy_age())
        return jti in self._copy

    async def refresh(self, now: datetime) -> None:
        """Copy the list from Redis (and prune what has expired); raises if Redis cannot."""
        cutoff = now.timestamp()
        async with _guard(), self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(names.DENIED_JTI_INDEX, "-inf", cutoff)
            pipe.zrangebyscore(names.DENIED_JTI_INDEX, cutoff, "+inf")
            _, members = await pipe.execute()
        self._copy = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
        self._copied_at = self._clock()

    async def keep_copy(self, now: Callable[[], datetime]) -> None:
        """Refresh the copy forever (a background task of the API process)."""
        while True:
            with contextlib.suppress(AuthUnavailableError):
                await self.refresh(now())
            await asyncio.sleep(self._refresh_every)

    def _copy_age(self) -> float | None:
        return None if self._copied_at is None else self._clock() - self._copied_at

    def _copy_usable(self) -> bool:
        age = self._copy_age()
        return age is not None and age <= self._stale_limit


@dataclass(frozen=True)
class DenyGuard:
    """One token's deny-list check riding on a read's Redis round trip (a `ReadGuard`).

    The read runs `EXISTS key` in the same Lua script as its own commands and refuses when the
    key exists; when Redis cannot answer (or failed less than a second ago) the check falls
    back to the copy exactly as `DenyList.is_denied` does.
    """

    deny_list: DenyList
    jti: str
    family_id: str = ""
    timeout: float = CHECK_TIMEOUT_SECONDS

    @property
    def keys(self) -> tuple[str, str]:
        """The keys whose existence refuses the read: the token's deny entry, its family's
        revocation."""
        return _deny_keys(self.jti, self.family_id)

    def redis_answering(self) -> bool:
        return self.deny_list.redis_answering()

    def check_without_redis(self, *, redis_failed: bool) -> None:
        """Refuse a logged-out token from the copy; AuthUnavailableError when it is too old."""
        if self.deny_list.denied_by_copy(self.jti, redis_failed=redis_failed):
            raise self.refused()

    def refused(self) -> InvalidTokenError:
        return InvalidTokenError("logged out")


def _deny_keys(jti: str, family_id: str) -> tuple[str, str]:
    # A token without a family (issued before families were in tokens) names a key that never
    # exists, so every check has the same shape.
    return names.denied_jti_key(jti), names.revoked_family_key(family_id or "-")


@asynccontextmanager
async def _guard() -> AsyncIterator[None]:
    """Turn every way Redis can fail, slowness included, into AuthUnavailableError."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            yield
    except (RedisError, OSError) as exc:  # OSError covers TimeoutError and refused connections
        raise AuthUnavailableError("the deny list cannot answer") from exc
