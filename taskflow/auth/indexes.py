"""Indexes of the auth collections (being written)."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase


async def ensure_auth_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    """Create the auth collections' indexes; idempotent."""
