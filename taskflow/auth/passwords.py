"""Password policy and argon2id hashing, run off the event loop (it is CPU- and memory-heavy)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import StringConstraints

PASSWORD_MIN = 8
PASSWORD_MAX = 128  # bounds the work an attacker can make one hash cost

Password = Annotated[str, StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
"""A new password: 8 to 128 characters, kept exactly as typed (no trimming)."""

# argon2-cffi's defaults are argon2id with RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
_dummy_hash: str | None = None


async def hash_password(password: str) -> str:
    """The encoded argon2id hash of `password`."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; False for a malformed hash too."""
    return await asyncio.to_thread(_verify, password_hash, password)


async def verify_dummy(password: str) -> None:
    """Spend the time of one real verification, so an unknown account answers as slowly."""
    global _dummy_hash  # one hash per process, made with the current parameters
    if _dummy_hash is None:
        _dummy_hash = await hash_password(secrets.token_urlsafe(16))
    await verify_password(_dummy_hash, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
