"""Refresh tokens: opaque, stored only as hashes, rotated on every use within a family.

Races are decided by unique `_id` inserts (docs/concurrency.md), never by conditional updates:
- using a token inserts its hash into `refresh_tokens_used`: the one insert that succeeds wins the
  rotation; a DuplicateKeyError means the token was used before (reuse), which revokes its family,
  unless it comes within the grace window (REFRESH_GRACE_SECONDS) of the first use: two tabs
  refreshing at once then both get the same successor. The successor is kept only for the
  window, in Redis (expiring with it), and only encrypted under a key derived from the presented
  token, so only a holder of that token can read it; only the winner of the insert stores it,
  so nothing can reopen a closed window;
- revoking inserts the family id into `refresh_families_revoked` (a duplicate is already done),
  mirrored into Redis so refusals are cheap; MongoDB stays the authority.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo import ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from taskflow import names

Document = dict[str, Any]
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 128  # token_urlsafe(32) is 43 characters; anything far longer is not ours
# How long a refresh that lost the race waits for the winner to store the shared successor.
SUCCESSOR_WAIT_SECONDS = 1.0


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

    def __init__(
        self,
        db: AsyncDatabase[Document],
        redis: Redis,
        ttl_seconds: int,
        grace_seconds: float = 0.0,
    ) -> None:
        self.tokens = _collection(db, names.REFRESH_TOKENS)
        self.used = _collection(db, names.REFRESH_TOKENS_USED)
        self.revoked = _collection(db, names.REFRESH_FAMILIES_REVOKED)
        self._redis = redis
        self._ttl = ttl_seconds
        self._grace = grace_seconds

    async def issue(
        self, user_id: str, now: datetime, family_id: str | None = None
    ) -> RefreshToken:
        """A new token in `family_id`, or in a new family (a new login) when None."""
        return await self._issue(secrets.token_urlsafe(TOKEN_BYTES), user_id, now, family_id)

    async def _issue(
        self, token: str, user_id: str, now: datetime, family_id: str | None
    ) -> RefreshToken:
        """Store `token` (once: a racer of the grace window may store the same one first)."""
        record = _Record(user_id, family_id or uuid.uuid4().hex, now + timedelta(seconds=self._ttl))
        token_hash = hash_token(token)
        with contextlib.suppress(DuplicateKeyError):
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
        """Retire `presented` and issue the next token of its family; the first use wins, and a
        second use within the grace window gets the same successor (see the module docstring)."""
        token_hash = hash_token(presented)
        record = await self._valid_record(presented, token_hash, now)
        slot = names.refresh_successor_key(token_hash)
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
            successor = await self._successor(slot, presented)
            if successor is None:  # used before, and no window open (or none at all)
                await self.revoke_family(record.family_id, record.user_id, now, reason="reuse")
                raise RefreshTokenReusedError(
                    "refresh token reused; its family is revoked"
                ) from None
            return await self._issue(successor, record.user_id, now, record.family_id)
        successor = secrets.token_urlsafe(TOKEN_BYTES)
        if self._grace > 0:  # only the winner of the insert opens the window
            sealed = _seal_successor(presented, successor)
            await self._redis.set(slot, sealed, ex=max(1, math.ceil(self._grace)))
        return await self._issue(successor, record.user_id, now, record.family_id)

    async def _successor(self, slot: str, presented: str) -> str | None:
        """The successor kept for this token's grace window, if the window is open. The winner
        stores it just after its insert, so a racer that lost waits for it a little."""
        if self._grace <= 0:
            return None
        deadline = time.monotonic() + min(self._grace, SUCCESSOR_WAIT_SECONDS)
        while True:
            sealed = await self._redis.get(slot)
            if sealed is not None:
                return _open_successor(presented, sealed)
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)

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

    async def revoke_families_of_user(
        self, user_id: str, now: datetime, reason: str, *, keep: str = ""
    ) -> int:
        """Revoke every family of `user_id` but `keep` (a password change ends the other
        sessions; their access tokens are refused with them, by the deny list's family check).
        How many were revoked. A look-up by user (indexed on MongoDB, auth/indexes.py), made
        only by such a change."""
        families = {
            str(doc["family_id"])
            async for doc in self.tokens.find({"user_id": user_id}, {"family_id": 1})
        }
        families.discard(keep)
        for family_id in families:
            await self.revoke_family(family_id, user_id, now, reason=reason)
        return len(families)

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


def _successor_key(presented: str) -> AESGCM:
    """A key only a holder of `presented` can derive (the token has 256 random bits)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"taskflow refresh successor")
    return AESGCM(hkdf.derive(presented.encode()))


def _seal_successor(presented: str, successor: str) -> bytes:
    nonce = os.urandom(12)
    return base64.b64encode(
        nonce + _successor_key(presented).encrypt(nonce, successor.encode(), None)
    )


def _open_successor(presented: str, sealed: bytes | str) -> str | None:
    raw = base64.b64decode(sealed)
    try:
        return _successor_key(presented).decrypt(raw[:12], raw[12:], None).decode()
    except (InvalidTag, ValueError):
        return None


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
