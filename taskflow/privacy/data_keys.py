"""Per-user data keys: stored wrapped in MongoDB, cached unwrapped in each process, destroyed on
erasure (crypto-shredding, docs/privacy.md).

Storage (every race decided by a unique insert, docs/concurrency.md):
- `data_keys`: one document per wrapping of a key, `_id` "<user>:v<version>" for the first
  wrapping (its insert decides which of two racing creators' keys is the user's) and
  "<user>:v<version>:<kek>" for a re-wrapping by a KEK rotation. Insert-only; the one delete is
  erasure's (and a rotation's removal of wrappings by a retired KEK).
- `erased_subjects`: a tombstone per erased user, inserted before the keys are deleted, so no
  process can create a new key for an erased user (a creator checks it after inserting).
- `key_encryption_keys`: a check value per KEK in use, so a process started with a missing or
  wrong KEK stops at once instead of failing on the first read.

Cache: each process keeps up to `cache_size` users' unwrapped keys (and whether a user is
erased), so neither the write path nor the projector reads MongoDB per event. An entry lives
`cache_seconds` at most. An erasure reaches other processes three ways: the eraser publishes the
user id on `tf:keys:erased` (`listen` drops the entry at once, and a reconnected subscriber
clears its cache, for it may have missed one); a reader of the log that opens the UserErased
event marks the user erased before it opens anything after it; and an entry missed by both
expires with its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import ASCENDING, ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskflow import names
from taskflow.privacy.keks import KekError, KeyEncryptionKeys
from taskflow.text import as_text

log = structlog.get_logger(__name__)
Document = dict[str, Any]

KEY_VERSION = 1  # one data key per user for now; the version is in every envelope regardless
CACHE_SIZE = 50_000  # about 0.3 kB each
CACHE_SECONDS = 60.0


class SubjectErasedError(Exception):
    """The user is erased: nothing personal can be written for them any more."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"user {subject!r} is erased")
        self.subject = subject


class Standing(Enum):
    """What this process knows of a user id (for refusing tokens of unknown or erased users)."""

    LIVE = "live"  # has a data key, or was found in the log
    ERASED = "erased"
    UNKNOWN = "unknown"  # no data key: a user registered before keys existed, or nobody
    ABSENT = "absent"  # looked up in the log too, and not there


@dataclass(frozen=True)
class _Entry:
    expires: float  # monotonic; math.inf for an erased user (erasure is final)
    erased: bool
    version: int = 0
    key: AESGCM | None = None  # None when the key is not loaded (or the user has none)
    standing: Standing = Standing.LIVE


class DataKeys:
    """The data keys of every user, and the KEKs that wrap them; see the module docstring."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        redis: Redis,
        keks: KeyEncryptionKeys,
        *,
        cache_size: int = CACHE_SIZE,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = _collection(db, names.DATA_KEYS)
        self.erased = _collection(db, names.ERASED_SUBJECTS)
        self.checks = _collection(db, names.KEK_CHECKS)
        self._redis = redis
        self.keks = keks
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._cache_seconds = cache_seconds
        self._clock = clock

    async def ensure_indexes(self) -> None:
        await self.keys.create_index([("user_id", ASCENDING)])
        await self.keys.create_index([("kek_id", ASCENDING)])
        await self.erased.create_index([("erased_at", ASCENDING)])

    # -- the KEKs -------------------------------------------------------------------------------

    async def check_keks(self) -> None:
        """KekError unless every KEK in use is configured and genuine; records the active one.

        Run at every start, so that a missing or wrong KEK stops the process with a message
        naming the setting instead of failing on the first encrypted read.
        """
        recorded = {str(doc["_id"]): doc async for doc in self.checks.find({})}
        for kid, doc in recorded.items():
            if kid not in self.keks:
                raise KekError(
                    f"DATA_KEKS has no key {kid!r}, which wraps data keys of this deployment "
                    "(a KEK is dropped only after `taskflow keys rotate`, docs/privacy.md)"
                )
            if not self.keks.passes_check(kid, bytes(doc["check"])):
                raise KekError(
                    f"DATA_KEKS: key {kid!r} is not the key this deployment's data keys were "
                    "wrapped with"
                )
        active = self.keks.active
        if active not in recorded:
            try:
                await self.checks.insert_one(
                    {"_id": active, "check": self.keks.check_value(active), "at": _now()}
                )
            except DuplicateKeyError:  # another process recorded it first: test that one
                await self.check_keks()

    # -- getting keys ---------------------------------------------------------------------------

    async def sealing_key(self, subject: str) -> tuple[int, AESGCM]:
        """The key to encrypt `subject`'s data with, made on first use; SubjectErasedError if
        the user is erased."""
        entry = self._cached(subject)
        if entry is not None and entry.erased:
            raise SubjectErasedError(subject)
        if entry is not None and entry.key is not None:
            return entry.version, entry.key
        loaded = await self._load(subject) or await self._create(subject)
        if loaded is None:
            raise SubjectErasedError(subject)
        return loaded

    async def opening_key(self, subject: str, version: int) -> AESGCM | None:
        """The key that opens `subject`'s data, or None when it is destroyed (erased)."""
        entry = self._cached(subject)
        if entry is not None and (entry.erased or (entry.key and entry.version == version)):
            return entry.key
        loaded = await self._load(subject)
        if loaded is None or loaded[0] != version:
            return None
        return loaded[1]

    async def is_erased(self, subject: str) -> bool:
        """Whether `subject` was erased (cached; an unknown user is not erased)."""
        return await self.standing(subject) is Standing.ERASED

    async def standing(self, subject: str) -> Standing:
        """Whether `subject` is a live, erased or unknown user: cached, so an authenticated
        request usually asks nothing of MongoDB (at most one read per user a minute)."""
        entry = self._cached(subject)
        if entry is not None:
            return Standing.ERASED if entry.erased else entry.standing
        try:
            if await self.erased.find_one({"_id": subject}) is not None:
                self.mark_erased(subject)
                return Standing.ERASED
            known = await self.keys.find_one({"user_id": subject}, {"_id": 1}) is not None
        except PyMongoError as exc:
            # Reads are served from Redis while MongoDB is down (docs/design.md, Reads): a user
            # checked before stays cached, an erasure arrives by its announcement; the rest go on.
            log.warning("user_check_unavailable", error=repr(exc))
            return Standing.LIVE
        standing = Standing.LIVE if known else Standing.UNKNOWN
        self._remember(subject, self._entry(standing))
        return standing

    def settle(self, subject: str, *, exists: bool) -> None:
        """Record what the log says of an UNKNOWN user (found: LIVE; not found: ABSENT)."""
        self._remember(subject, self._entry(Standing.LIVE if exists else Standing.ABSENT))

    def _entry(self, standing: Standing) -> _Entry:
        return _Entry(self._clock() + self._cache_seconds, erased=False, standing=standing)

    def mark_erased(self, subject: str) -> None:
        """Forget `subject`'s key in this process for good (it was erased)."""
        self._remember(subject, _Entry(float("inf"), erased=True))

    def forget_all(self) -> None:
        """Drop every cached key (they are read again on use); erased users stay erased."""
        for subject in [s for s, e in self._cache.items() if not e.erased]:
            del self._cache[subject]

    # -- erasure --------------------------------------------------------------------------------

    async def destroy(self, subject: str) -> None:
        """Erase `subject`'s key: tombstone first, then delete every wrapping, then tell every
        process. Destroying twice is harmless."""
        with contextlib.suppress(DuplicateKeyError):  # erased before, or a resumed erasure
            await self.erased.insert_one({"_id": subject, "erased_at": _now()})
        self.mark_erased(subject)
        await self.keys.delete_many({"user_id": subject})
        try:
            await self._redis.publish(names.KEYS_ERASED_CHANNEL, subject)
        except RedisError as exc:  # the other processes' entries expire within CACHE_SECONDS
            log.warning("key_erasure_not_published", error=repr(exc))

    async def listen(self) -> None:
        """Drop erased users' keys as erasures are announced (a background task)."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(names.KEYS_ERASED_CHANNEL)
                    # Announcements made while not subscribed are lost: forget what may be stale.
                    self.forget_all()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.mark_erased(as_text(message["data"]))
            except RedisError as exc:
                log.warning("key_erasure_channel_lost", error=repr(exc))
                await asyncio.sleep(1)

    # -- rotation -------------------------------------------------------------------------------

    async def rotate(self, progress: Callable[[int], None] = lambda done: None) -> int:
        """Re-wrap every data key under the active KEK and drop the wrappings by any other KEK;
        then forget the check values of KEKs that wrap nothing. Resumable; returns how many
        keys were re-wrapped."""
        active = self.keks.active
        done = 0
        for doc in await self.keys.find({"kek_id": {"$ne": active}}).to_list():
            subject, version = str(doc["user_id"]), int(doc["version"])
            context = _context(subject, version)
            wrapped = self.keks.rewrap(str(doc["kek_id"]), bytes(doc["wrapped"]), context)
            with contextlib.suppress(DuplicateKeyError):  # re-wrapped by an interrupted run
                await self.keys.insert_one(_key_document(subject, version, active, wrapped, True))
            if await self.erased.find_one({"_id": subject}) is not None:
                await self.keys.delete_many({"user_id": subject})  # erased meanwhile
            await self.keys.delete_one({"_id": doc["_id"]})
            done += 1
            progress(done)
        async for check in self.checks.find({"_id": {"$ne": active}}):
            if await self.keys.find_one({"kek_id": check["_id"]}) is None:
                await self.checks.delete_one({"_id": check["_id"]})
        self.forget_all()
        return done

    # -- internals ------------------------------------------------------------------------------

    async def _load(self, subject: str) -> tuple[int, AESGCM] | None:
        """The stored key, unwrapped and cached; None when there is none (never made, or
        destroyed)."""
        docs = [doc async for doc in self.keys.find({"user_id": subject})]
        usable = [doc for doc in docs if doc["kek_id"] in self.keks]
        if not usable:
            if docs:  # check_keks at start makes this rare: a KEK dropped while running
                raise KekError(f"DATA_KEKS has no key {docs[0]['kek_id']!r}, which wraps data keys")
            return None
        doc = max(usable, key=lambda d: (d["version"], d["kek_id"] == self.keks.active))
        version = int(doc["version"])
        raw = self.keks.unwrap(
            str(doc["kek_id"]), bytes(doc["wrapped"]), _context(subject, version)
        )
        key = AESGCM(raw)
        self._remember(subject, _Entry(self._clock() + self._cache_seconds, False, version, key))
        return version, key

    async def _create(self, subject: str) -> tuple[int, AESGCM] | None:
        """A new key for `subject`, unless it is erased (None) or another process made one."""
        if await self.erased.find_one({"_id": subject}) is not None:
            self.mark_erased(subject)
            return None
        raw = AESGCM.generate_key(bit_length=256)
        kid, wrapped = self.keks.wrap(raw, _context(subject, KEY_VERSION))
        try:
            await self.keys.insert_one(_key_document(subject, KEY_VERSION, kid, wrapped, False))
        except DuplicateKeyError:
            return await self._load(subject)  # the racing creator's key is the user's
        # An erasure that began while the key was being made has deleted only what it saw.
        if await self.erased.find_one({"_id": subject}) is not None:
            await self.keys.delete_many({"user_id": subject})
            self.mark_erased(subject)
            return None
        key = AESGCM(raw)
        self._remember(
            subject, _Entry(self._clock() + self._cache_seconds, False, KEY_VERSION, key)
        )
        return KEY_VERSION, key

    def _cached(self, subject: str) -> _Entry | None:
        entry = self._cache.get(subject)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._cache[subject]
            return None
        self._cache.move_to_end(subject)
        return entry

    def _remember(self, subject: str, entry: _Entry) -> None:
        self._cache[subject] = entry
        self._cache.move_to_end(subject)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _key_document(
    subject: str, version: int, kid: str, wrapped: bytes, rewrapped: bool
) -> Document:
    suffix = f":{kid}" if rewrapped else ""
    return {
        "_id": f"{subject}:v{version}{suffix}",
        "user_id": subject,
        "version": version,
        "kek_id": kid,
        "wrapped": wrapped,
        "created_at": _now(),
    }


def _context(subject: str, version: int) -> str:
    return f"data-key:{subject}:v{version}"


def _collection(db: AsyncDatabase[Document], name: str) -> AsyncCollection[Document]:
    return db.get_collection(
        name,
        write_concern=WriteConcern("majority", j=True),
        read_preference=ReadPreference.PRIMARY,
    )


def _now() -> datetime:
    return datetime.now(UTC)
