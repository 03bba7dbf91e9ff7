"""Password hashes, kept out of the event log: one document per credential, insert-only.

A credential is stored under a random id before the event that makes it the user's password
(UserRegistered, UserPasswordChanged) is appended; the event names the id, never the hash. So
the log decides which credential is current (its unique stream version settles two racing
changes), and a credential whose event never landed is simply never named. Erasure deletes a
user's credentials.

Events of schema version 1 carried the hash. Their upcasters name a derived "legacy:" id;
`adopt_legacy` moves such a hash here the first time it is needed (a login, or the rewrite of
the log), read from the stored event, which then no reader ever shows again.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from taskflow import names
from taskflow.events.records import Commit
from taskflow.events.user_events import LEGACY_CREDENTIAL_PREFIX, legacy_credential_id

Document = dict[str, Any]
LEGACY_TYPES = frozenset({"UserRegistered", "UserPasswordChanged"})


class Credentials:
    """The `credentials` collection."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.docs: AsyncCollection[Document] = db.get_collection(
            names.CREDENTIALS,
            write_concern=WriteConcern("majority", j=True),
            read_preference=ReadPreference.PRIMARY,
        )

    async def ensure_indexes(self) -> None:
        await self.docs.create_index([("user_id", ASCENDING)])

    async def add(self, user_id: str, password_hash: str) -> str:
        """Store a new hash for `user_id`; its id, for the event that will name it."""
        credential_id = uuid.uuid4().hex
        await self.docs.insert_one(_document(credential_id, user_id, password_hash))
        return credential_id

    async def hash_of(self, credential_id: str) -> str | None:
        doc = await self.docs.find_one({"_id": credential_id})
        return None if doc is None else str(doc["hash"])

    async def discard(self, credential_id: str) -> None:
        """Remove a credential whose command failed (best effort: it is never named anyway)."""
        with contextlib.suppress(Exception):
            await self.docs.delete_one({"_id": credential_id})

    async def erase(self, user_id: str) -> None:
        await self.docs.delete_many({"user_id": user_id})

    async def adopt_legacy(self, user_id: str, stored: list[Commit]) -> int:
        """File every hash that version-1 events of `stored` (a user stream as stored) carry
        under its legacy id; idempotent. How many such events there were."""
        found = 0
        for commit in stored:
            for event in commit.events:
                password_hash = event.data.get("password_hash")
                if event.type not in LEGACY_TYPES or not isinstance(password_hash, str):
                    continue
                found += 1
                doc = _document(legacy_credential_id(event.data), user_id, password_hash)
                with contextlib.suppress(DuplicateKeyError):
                    await self.docs.insert_one(doc)
        return found


def is_legacy(credential_id: str) -> bool:
    return credential_id.startswith(LEGACY_CREDENTIAL_PREFIX)


def _document(credential_id: str, user_id: str, password_hash: str) -> Document:
    return {
        "_id": credential_id,
        "user_id": user_id,
        "hash": password_hash,
        "created_at": datetime.now(UTC),
    }
