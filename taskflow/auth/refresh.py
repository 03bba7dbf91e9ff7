"""Refresh tokens: opaque, stored only as hashes, rotated on every use within a family.

Races are decided by unique `_id` inserts (DESIGN.md §3), never by conditional updates:
- using a token inserts its hash into `refresh_tokens_used`: the one insert that succeeds wins the
  rotation; a DuplicateKeyError means the token was used before (reuse), which revokes its family;
- revoking inserts the family id into `refresh_families_revoked` (a duplicate is already done),
  mirrored into Redis so refusals are cheap; MongoDB stays the authority.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pymongo import ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names

Document = dict[str, Any]
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128  # token_urlsafe(32) is 43 characters; anything far longer is not ours


class InvalidRefreshTokenError(Exception):
    """The refresh token is unknown, expired, already used, or its family is revoked."""


class RefreshTokenReusedError(InvalidRefreshTokenError):
    """A retired refresh token came back (stolen, or replayed): its whole family is now revoked."""


@dataclass(frozen=True)
class RefreshToken:
    """A freshly issued token: the opaque value goes to the client, only its hash is stored."""

    token: str
    user_id: str
    family_id: str
    expires_at: datetime


@dataclass(frozen=True)
class _Record:
    """What the server keeps about one token, under the token's hash."""

    user_id: str
    family_id: str
    expires_at: datetime


def hash_token(token: str) -> str:
    """The stored form of a token: a token has 256 random bits, so a plain SHA-256 suffices."""
    return hashlib.sha256(token.encode()).hexdigest()


class RefreshTokens:
    """Issue, rotate and revoke refresh tokens on MongoDB (authority) and Redis (fast path)."""

    def __init__(self, db: AsyncDatabase[Document], redis: Redis, ttl_seconds: int) -> None:
        self.tokens = _collection(db, names.REFRESH_TOKENS)
        self.used = _collection(db, names.REFRESH_TOKENS_USED)
        self.revoked = _collection(db, names.REFRESH_FAMILIES_REVOKED)
        self._redis = redis
        self._ttl = ttl_seconds

    async def issue(
        self, user_id: str, now: datetime, family_id: str | None = None
    ) -> RefreshToken:
        """A new token in `family_id`, or in a new family (a new login) when None."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        record = _Record(user_id, family_id or uuid.uuid4().hex, now + timedelta(seconds=self._ttl))
        token_hash = hash_token(token)
        await self.tokens.insert_one(
            {
                "_id": token_hash,
                "user_id": record.user_id,
                "family_id": record.family_id,
                "issued_at": now,
                "expires_at": record.expires_at,
            }
        )
        await self._cache(token_hash, record, now)
        return RefreshToken(token, record.user_id, record.family_id, record.expires_at)

    async def rotate(self, presented: str, now: datetime) -> RefreshToken:
        """Retire `presented` and issue the next token of its family; the first use wins."""
        token_hash = hash_token(presented)
        record = await self._valid_record(presented, token_hash, now)
        try:
            await self.used.insert_one(
                {
                    "_id": token_hash,
                    "family_id": record.family_id,
                    "user_id": record.user_id,
                    "used_at": now,
                }
            )
        except DuplicateKeyError:
            await self.revoke_family(record.family_id, record.user_id, now, reason="reuse")
            raise RefreshTokenReusedError("refresh token reused; its family is revoked") from None
        return await self.issue(record.user_id, now, family_id=record.family_id)

    async def revoke_family_of(self, presented: str, now: datetime, reason: str) -> None:
        """Revoke the family `presented` belongs to, if it is one of ours (logout)."""
        record = await self._record(hash_token(presented)) if _plausible(presented) else None
        if record is not None:
            await self.revoke_family(record.family_id, record.user_id, now, reason=reason)

    async def revoke_family(self, family_id: str, user_id: str, now: datetime, reason: str) -> None:
        """Refuse every token of the family from now on; revoking twice is harmless."""
        with contextlib.suppress(DuplicateKeyError):  # already revoked: the first one stands
            await self.revoked.insert_one(
                {"_id": family_id, "user_id": user_id, "reason": reason, "revoked_at": now}
            )
        await self._mirror_revocation(family_id)

    async def is_revoked(self, family_id: str) -> bool:
        """Whether the family is revoked: Redis answers yes fast, MongoDB has the last word."""
        if await self._redis.exists(names.revoked_family_key(family_id)):
            return True
        if await self.revoked.find_one({"_id": family_id}) is None:
            return False
        await self._mirror_revocation(family_id)  # Redis had forgotten it
        return True

    async def _valid_record(self, presented: str, token_hash: str, now: datetime) -> _Record:
        record = await self._record(token_hash) if _plausible(presented) else None
        if record is None or now >= record.expires_at or await self.is_revoked(record.family_id):
            raise InvalidRefreshTokenError("invalid or expired refresh token")
        return record

    async def _record(self, token_hash: str) -> _Record | None:
        """The token's record: cached in Redis at issue, read from MongoDB if Redis forgot it."""
        cached = await self._redis.get(names.refresh_token_key(token_hash))
        if cached is not None:
            data = orjson.loads(cached)
            return _Record(data["u"], data["f"], datetime.fromtimestamp(data["e"] / 1000, UTC))
        doc = await self.tokens.find_one({"_id": token_hash})
        if doc is None:
            return None
        return _Record(doc["user_id"], doc["family_id"], _utc(doc["expires_at"]))

    async def _cache(self, token_hash: str, record: _Record, now: datetime) -> None:
        ttl = max(1, int((record.expires_at - now).total_seconds()))
        value = {"u": record.user_id, "f": record.family_id, "e": _millis(record.expires_at)}
        await self._redis.set(names.refresh_token_key(token_hash), orjson.dumps(value), ex=ttl)

    async def _mirror_revocation(self, family_id: str) -> None:
        # A family's newest token expires at most one TTL after its revocation.
        await self._redis.set(names.revoked_family_key(family_id), b"1", ex=self._ttl)


def _collection(db: AsyncDatabase[Document], name: str) -> AsyncCollection[Document]:
    return db.get_collection(
        name,
        write_concern=WriteConcern("majority", j=True),
        read_preference=ReadPreference.PRIMARY,
    )


def _plausible(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH


def _utc(moment: datetime) -> datetime:
    """BSON dates are UTC; a client opened without tz_aware hands them back naive."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
