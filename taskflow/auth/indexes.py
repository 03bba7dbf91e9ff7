"""Indexes of the auth collections, created at start-up."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from taskflow import names

# The races themselves are decided by the unique `_id` of each collection (docs/concurrency.md): the
# e-mail in email_reservations, the token hash in refresh_tokens_used, the family id in
# refresh_families_revoked. The secondary indexes below serve per-user and per-family look-ups
# on real MongoDB (revoking every session of a user, auditing a family), and creating them also
# creates each collection before racing first inserts could.
_INDEXES: dict[str, list[str]] = {
    names.EMAIL_RESERVATIONS: ["user_id"],
    names.REFRESH_TOKENS: ["user_id", "family_id"],
    names.REFRESH_TOKENS_USED: ["family_id"],
    names.REFRESH_FAMILIES_REVOKED: ["user_id"],
}


async def ensure_auth_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Create the auth collections' indexes; idempotent."""
    for collection, fields in _INDEXES.items():
        for field in fields:
            await db[collection].create_index([(field, ASCENDING)])
