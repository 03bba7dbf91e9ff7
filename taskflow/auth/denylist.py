"""The deny list of logged-out access tokens: MongoDB its record, Redis the copy every check reads.

A logout is recorded in MongoDB first (`denied_tokens`, insert-only, one document per token id
with the token's expiry), then copied to Redis (`tf:auth:deny:<jti>` with a TTL, and an index
sorted by expiry). Every check asks Redis (`EXISTS`), so a logout takes effect at once
everywhere. Redis can lose its data (a restart without persistence, a flush); a logout must not
come undone then. So Redis's copy is trusted only while `tf:auth:deny:complete` exists: the key
is set by whoever (re)loads the copy from MongoDB, and vanishes with everything else when Redis
loses its data. While it is missing, a check reads MongoDB's record of that token (one `_id`
lookup in a small collection), and every API process's background loop reloads the copy (about
a second after the loss; docs/operations.md).

Each API process also keeps the whole list in memory, copied about once a second from Redis when
the copy there is complete, else from MongoDB. When Redis cannot answer at all, checks use this
copy, so authenticated reads keep being served from MongoDB during a Redis outage while nothing
that needs Redis works: logins, refreshes, logouts and writes fail with 503. A copy is trusted
only for `stale_limit` seconds after its last refresh; a process that never had one, or whose
copy is older, fails closed (503). A logout made during an outage cannot be recorded anyway (it
answers 503), so the copy misses at most the logouts of its last refresh interval, or those
another process recorded while this one could not reach Redis: the documented price of serving
reads (docs/operations.md).

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
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names
from taskflow.auth.tokens import InvalidTokenError
from taskflow.hot_redis import HotRedis, HotScript

log = structlog.get_logger(__name__)

# Upper bound for one deny-list round trip, retries included: past it Redis counts as down.
CHECK_TIMEOUT_SECONDS = 2.0
# After Redis failed, checks go straight to the copy for this long instead of waiting on Redis.
RETRY_AFTER_FAILURE_SECONDS = 1.0
# Expired records are deleted from MongoDB about this often (by every API process: harmless).
PRUNE_EVERY_SECONDS = 60.0
# Tokens written to Redis per pipeline when the copy is reloaded from MongoDB.
RELOAD_CHUNK = 500

Document = dict[str, Any]
# One round trip: 1 denied, 0 not denied, -1 Redis's copy is not known complete.
_CHECK = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 1 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
return -1
"""
_UNCHECKED = -1
_CHECK_SCRIPT = HotScript(_CHECK)


class AuthUnavailableError(Exception):
    """The deny list could not be read or written, so no token can be trusted right now."""


class DenyList:
    """Logged-out access tokens (their `jti`), until each token would have expired anyway."""

    def __init__(
        self,
        redis: Redis,
        record: AsyncCollection[Document],
        *,
        stale_limit: float,
        families: AsyncCollection[Document] | None = None,
        family_window: float = 3600.0,
        refresh_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        hot: HotRedis,
    ) -> None:
        """`record`: the logouts' durable record; `families`: the refresh families' revocations
        (auth/refresh.py), of which those of the last `family_window` seconds (the access
        tokens' lifetime) are copied back to Redis when its copy is reloaded."""
        self._redis = redis
        self._record = record
        self._families = families
        self._family_window = family_window
        self._stale_limit = stale_limit
        self._refresh_every = refresh_every
        self._clock = clock
        self._copy: frozenset[str] = frozenset()
        self._copied_at: float | None = None  # never copied: no copy to fall back on
        self._redis_down_until = 0.0
        self._pruned_at = -math.inf
        # The check, on every authenticated request, is pipelined with the process's other
        # quick Redis calls (hot_redis.py).
        self._hot = hot

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Refuse the token `jti` from now until it expires by itself: MongoDB, then Redis."""
        remaining = math.ceil((expires_at - now).total_seconds())
        if remaining <= 0:
            return  # already refused by its own expiry
        try:
            with contextlib.suppress(DuplicateKeyError):  # a second logout of the same token
                await self._record.insert_one({"_id": jti, "expires_at": expires_at})
        except PyMongoError as exc:
            raise AuthUnavailableError("the deny list cannot be recorded") from exc
        async with _guard(), self._redis.pipeline(transaction=True) as pipe:
            _copy_to(pipe, jti, expires_at, remaining)
            await pipe.execute()
        # This process's copy holds it at once: were Redis lost before the next refresh, the
        # process that logged the token out would otherwise accept it (seen in the outage test).
        self._copy = self._copy | {jti}

    async def is_denied(self, jti: str, family_id: str = "") -> bool:
        """Whether `jti` was logged out, or its refresh family revoked: Redis (or MongoDB while
        Redis's copy is incomplete), else a recent in-process copy, else AuthUnavailableError."""
        if not self.redis_answering():
            return self.denied_by_copy(jti)
        try:
            async with _guard():
                answer = await self._hot.evalsha(
                    _CHECK_SCRIPT, [*_deny_keys(jti, family_id), names.DENY_LIST_COMPLETE], []
                )
        except AuthUnavailableError:
            return self.denied_by_copy(jti, redis_failed=True)
        if answer == _UNCHECKED:
            return await self.denied_in_record(jti, family_id)
        return bool(answer)

    async def denied_in_record(self, jti: str, family_id: str = "") -> bool:
        """Whether MongoDB's records refuse the token: its logout, or its family's revocation
        (for the moments Redis's copy is incomplete); when MongoDB cannot answer either, the
        in-process copy decides (if recent enough)."""
        try:
            if await self._record.find_one({"_id": jti}) is not None:
                return True
            if self._families is None or not family_id:
                return False
            return await self._families.find_one({"_id": family_id}) is not None
        except PyMongoError:
            return self.denied_by_copy(jti)

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
        """Copy the list from Redis (and prune what has expired), or, when Redis's copy is not
        complete (it lost its data), reload both from MongoDB; raises if neither answers."""
        cutoff = now.timestamp()
        async with _guard(), self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(names.DENY_LIST_COMPLETE)
            pipe.zremrangebyscore(names.DENIED_JTI_INDEX, "-inf", cutoff)
            pipe.zrangebyscore(names.DENIED_JTI_INDEX, cutoff, "+inf")
            complete, _, members = await pipe.execute()
        if complete:
            self._copy = frozenset(m.decode() if isinstance(m, bytes) else m for m in members)
        else:
            self._copy = await self.reload(now)
        self._copied_at = self._clock()
        if self._clock() - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = self._clock()
            with contextlib.suppress(PyMongoError):
                await self._record.delete_many({"expires_at": {"$lt": now}})

    async def reload(self, now: datetime) -> frozenset[str]:
        """Copy MongoDB's record of unexpired tokens into Redis, then mark the copy complete.

        Marked only after every token is in Redis: a check meanwhile reads MongoDB. Any number
        of processes may reload at once; each writes the same keys.
        """
        window = math.ceil(self._family_window)
        try:
            records = await self._record.find({"expires_at": {"$gt": now}}).to_list()
            families = (
                []
                if self._families is None
                else await self._families.find(
                    {"revoked_at": {"$gt": now - timedelta(seconds=window)}}, {"_id": 1}
                ).to_list()
            )
        except PyMongoError as exc:
            raise AuthUnavailableError("the deny list's record cannot be read") from exc
        for start in range(0, len(records), RELOAD_CHUNK):
            async with _guard(), self._redis.pipeline(transaction=False) as pipe:
                for doc in records[start : start + RELOAD_CHUNK]:
                    remaining = math.ceil((doc["expires_at"] - now).total_seconds())
                    _copy_to(pipe, doc["_id"], doc["expires_at"], max(remaining, 1))
                await pipe.execute()
        for start in range(0, len(families), RELOAD_CHUNK):
            async with _guard(), self._redis.pipeline(transaction=False) as pipe:
                for doc in families[start : start + RELOAD_CHUNK]:
                    # The family's access tokens expire within the window; its refresh tokens
                    # are checked against MongoDB by refresh.py whatever Redis holds.
                    pipe.set(names.revoked_family_key(str(doc["_id"])), b"1", ex=window)
                await pipe.execute()
        async with _guard():
            await self._redis.set(names.DENY_LIST_COMPLETE, 1)
        log.info("deny_list_reloaded", tokens=len(records), families=len(families))
        return frozenset(str(doc["_id"]) for doc in records)

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


def _copy_to(pipe: Any, jti: str, expires_at: datetime, seconds: int) -> None:
    pipe.set(names.denied_jti_key(jti), b"1", ex=seconds)
    pipe.zadd(names.DENIED_JTI_INDEX, {jti: expires_at.timestamp()})


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

    @property
    def complete_key(self) -> str:
        return names.DENY_LIST_COMPLETE

    async def check_durably(self) -> None:
        """Refuse a logged-out token (or one of a revoked family) by MongoDB's records (Redis's
        copy is being reloaded)."""
        if await self.deny_list.denied_in_record(self.jti, self.family_id):
            raise self.refused()

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
