"""Small conversions shared across layers."""

from __future__ import annotations


def as_text(raw: bytes | str) -> str:
    """A Redis reply as text (clients may be configured to decode or not)."""
    return raw.decode() if isinstance(raw, bytes) else raw
