"""Personal fields of stored events, and state snapshots, as AES-256-GCM ciphertext.

An event's `personal_fields` (base.py) are taken out of its payload and stored together as one
ciphertext under the data key of the event's subject (the user the data is about), in a
`~sealed` entry that names the subject and the key's version. Everything else stays readable, so
projectors, auditors and the hash chain see types, versions, times and ids without any key. The
chain signs the stored (sealed) form, so verifying it needs no key and still holds once a key is
destroyed (docs/privacy.md).

Opening reverses it. Without the key (the subject was erased) the personal fields are left out
and listed under `~erased`; `codec.decode_event` gives them erased values ("" or ()).
These are pure functions: which key to use is the caller's business (privacy/data_keys.py).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taskflow.events.base import event_class
from taskflow.events.records import StoredEvent

SEALED = "~sealed"
ERASED = "~erased"
NONCE_BYTES = 12
_SNAPSHOT_PREFIX = b"~sealed:"


class SealBrokenError(Exception):
    """A ciphertext does not open with the key that should open it (tampered, or a wrong key)."""


def personal_fields(event_type: str) -> tuple[str, ...]:
    """The fields of `event_type` that hold personal data (none for an unknown type)."""
    try:
        return event_class(event_type).personal_fields
    except KeyError:
        return ()


def is_sealed(stored: StoredEvent) -> bool:
    return SEALED in stored.data


def plaintext_fields(stored: StoredEvent) -> list[str]:
    """Personal fields stored in plain text (events written before sealing existed)."""
    return [name for name in personal_fields(stored.type) if name in stored.data]


def sealed_by(stored: StoredEvent) -> tuple[str, int] | None:
    """The subject and key version that sealed `stored`, or None if nothing is sealed."""
    envelope = stored.data.get(SEALED)
    if not isinstance(envelope, dict):
        return None
    return str(envelope["subject"]), int(envelope["key"])


def erased_subject(stored: StoredEvent) -> str | None:
    """The user whose erasure `stored` records, if it is such an event."""
    try:
        erases = event_class(stored.type).erases_subject
    except KeyError:
        return None
    return str(stored.data["user_id"]) if erases else None


def seal_event(stored: StoredEvent, subject: str, key_version: int, key: AESGCM) -> StoredEvent:
    """`stored` with its personal fields replaced by one ciphertext under `key`."""
    names = plaintext_fields(stored)
    if not names:
        return stored
    plain = {name: stored.data[name] for name in names}
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = key.encrypt(nonce, orjson.dumps(plain), _context(stored.type, subject))
    data = {k: v for k, v in stored.data.items() if k not in plain}
    data[SEALED] = {
        "subject": subject,
        "key": key_version,
        "nonce": _b64(nonce),
        "data": _b64(ciphertext),
    }
    return stored.model_copy(update={"data": data})


def open_event(stored: StoredEvent, key: AESGCM | None) -> StoredEvent:
    """`stored` with its personal fields back in plain text; listed under `~erased` when `key`
    is None (the subject's key is destroyed). SealBrokenError if `key` does not open it."""
    envelope = stored.data.get(SEALED)
    if not isinstance(envelope, dict):
        return stored
    data = {k: v for k, v in stored.data.items() if k != SEALED}
    if key is None:
        data[ERASED] = list(personal_fields(stored.type))
        return stored.model_copy(update={"data": data})
    context = _context(stored.type, str(envelope["subject"]))
    try:
        plain = key.decrypt(_unb64(envelope["nonce"]), _unb64(envelope["data"]), context)
    except (InvalidTag, ValueError, TypeError) as exc:
        raise SealBrokenError(f"a {stored.type} event does not open with its data key") from exc
    data.update(orjson.loads(plain))
    return stored.model_copy(update={"data": data})


def seal_snapshot(snapshot: bytes, subject: str, key_version: int, key: AESGCM) -> bytes:
    """A state snapshot (cached in Redis) encrypted under its subject's data key."""
    nonce = os.urandom(NONCE_BYTES)
    header = {"subject": subject, "key": key_version, "nonce": _b64(nonce)}
    body = key.encrypt(nonce, snapshot, _context("snapshot", subject))
    return _SNAPSHOT_PREFIX + orjson.dumps(header) + b"\n" + body


def snapshot_sealed_by(raw: bytes) -> tuple[str, int] | None:
    """The subject and key version of a sealed snapshot; None for anything else."""
    header = _snapshot_header(raw)
    return None if header is None else (str(header["subject"]), int(header["key"]))


def open_snapshot(raw: bytes, key: AESGCM) -> bytes | None:
    """The snapshot in plain bytes, or None if it does not open (a snapshot is only a cache)."""
    header = _snapshot_header(raw)
    if header is None:
        return None
    body = raw.split(b"\n", 1)[1]
    try:
        return key.decrypt(
            _unb64(header["nonce"]), body, _context("snapshot", str(header["subject"]))
        )
    except (InvalidTag, ValueError, TypeError):
        return None


def _snapshot_header(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(_SNAPSHOT_PREFIX) or b"\n" not in raw:
        return None
    try:
        header = orjson.loads(raw[len(_SNAPSHOT_PREFIX) :].split(b"\n", 1)[0])
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def _context(kind: str, subject: str) -> bytes:
    """Associated data: a ciphertext opens only as the kind of thing, and for the subject, it
    was sealed as (moving it into another event or another user's stream breaks it)."""
    return f"taskflow:{kind}:{subject}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(str(text), validate=True)
