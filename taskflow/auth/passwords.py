"""Password policy and argon2id hashing, run off the event loop (it is CPU- and memory-heavy).

The policy follows NIST SP 800-63B: a minimum length, no composition rules, and a check against
passwords known to be common or easily guessed, done by zxcvbn (its lists of common passwords,
names and words, keyboard patterns, repeats and sequences): a password it scores below 2 (fewer
than about 10^6 guesses) is refused. A password that is, or contains, the account's e-mail
address is refused too.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import StringConstraints
from zxcvbn import zxcvbn

from taskflow.settings import (
    DEFAULT_PASSWORD_MEMORY_KIB,
    DEFAULT_PASSWORD_PARALLELISM,
    DEFAULT_PASSWORD_TIME_COST,
    Settings,
)

PASSWORD_MIN = 8
PASSWORD_MAX = 128  # bounds the work an attacker can make one hash cost

Password = Annotated[str, StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
"""A new password: 8 to 128 characters, kept exactly as typed (no trimming)."""

# zxcvbn's score 0-4; below this a password is too guessable (score 2: about 10^6 guesses).
MIN_SCORE = 2
# zxcvbn's cost grows with the length; beyond this many characters the rest adds nothing to the
# verdict (a longer password that passes here is long enough).
SCORED_LENGTH = 64


class WeakPasswordError(ValueError):
    """The password breaks the policy (the message says how, for the person choosing it)."""


async def check_new_password(password: str, *, email: str, display_name: str = "") -> None:
    """WeakPasswordError unless `password` may be chosen for the account of `email`."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise WeakPasswordError(f"must have {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    folded, address = password.strip().casefold(), email.casefold()
    local = address.partition("@")[0]
    if address and (address in folded or folded == local):
        raise WeakPasswordError("must not be the e-mail address")
    inputs = [value for value in (address, local, display_name.casefold()) if value]
    score = await asyncio.to_thread(_score, password[:SCORED_LENGTH], inputs)
    if score < MIN_SCORE:
        raise WeakPasswordError("is too common or too easy to guess; try a longer passphrase")


def _score(password: str, inputs: list[str]) -> int:
    return int(zxcvbn(password, user_inputs=inputs)["score"])


class PasswordHashing:
    """argon2id at the deployment's cost (PASSWORD_HASH_*), off the event loop.

    A stored hash names the parameters it was made with, so hashes made at another cost still
    verify: changing the cost affects new passwords only.
    """

    def __init__(
        self,
        time_cost: int = DEFAULT_PASSWORD_TIME_COST,
        memory_kib: int = DEFAULT_PASSWORD_MEMORY_KIB,
        parallelism: int = DEFAULT_PASSWORD_PARALLELISM,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHashing:
        return cls(
            settings.password_hash_time_cost,
            settings.password_hash_memory_kib,
            settings.password_hash_parallelism,
        )

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash of `password`."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether `password` matches `password_hash`; False for a malformed hash too."""
        return await asyncio.to_thread(_verify, self._hasher, password_hash, password)

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of one real verification, so an unknown account answers as slowly."""
        if self._dummy_hash is None:  # one hash per process, made with the current parameters
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy_hash, password)


def _verify(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
