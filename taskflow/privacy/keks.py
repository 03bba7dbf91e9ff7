"""Key-encryption keys (KEKs): they wrap the per-user data keys and never leave configuration."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taskflow.settings import Settings

NONCE_BYTES = 12
# What a KEK's check value encrypts: opening it proves a configured KEK is the one in use.
CHECK_PLAINTEXT = b"taskflow key-encryption key check"


class KekError(Exception):
    """The configured KEKs cannot read this deployment's data keys (a missing or wrong KEK)."""


class KeyEncryptionKeys:
    """The KEKs of DATA_KEKS by id; the active one (DATA_KEK_ACTIVE) wraps new data keys."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise KekError(f"DATA_KEK_ACTIVE {active!r} is not one of DATA_KEKS")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = active

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyEncryptionKeys:
        keys = {
            kid: base64.b64decode(secret.get_secret_value())
            for kid, secret in settings.data_keks.items()
        }
        return cls(keys, settings.data_kek_active)

    def __contains__(self, kid: object) -> bool:
        return kid in self._ciphers

    def wrap(self, data_key: bytes, context: str) -> tuple[str, bytes]:
        """`data_key` encrypted under the active KEK, bound to `context` (its owner and version)."""
        return self.active, self._seal(self.active, data_key, context)

    def rewrap(self, kid: str, wrapped: bytes, context: str) -> bytes:
        """A data key wrapped by `kid`, wrapped by the active KEK instead."""
        return self._seal(self.active, self.unwrap(kid, wrapped, context), context)

    def unwrap(self, kid: str, wrapped: bytes, context: str) -> bytes:
        if kid not in self._ciphers:
            raise KekError(f"DATA_KEKS has no key {kid!r}, which wraps data keys in use")
        try:
            return self._ciphers[kid].decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context.encode()
            )
        except InvalidTag:
            raise KekError(
                f"DATA_KEKS: key {kid!r} is not the key that wrapped these data keys"
            ) from None

    def check_value(self, kid: str) -> bytes:
        """A value that only this KEK opens, stored so that a later start can test its KEK."""
        return self._seal(kid, CHECK_PLAINTEXT, f"check:{kid}")

    def passes_check(self, kid: str, value: bytes) -> bool:
        try:
            return self.unwrap(kid, value, f"check:{kid}") == CHECK_PLAINTEXT
        except KekError:
            return False

    def _seal(self, kid: str, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._ciphers[kid].encrypt(nonce, plaintext, context.encode())
