"""Every MongoDB collection name and Redis key prefix, defined once."""

from __future__ import annotations

# MongoDB collections written through the primary (the log and everything that decides a race).
COMMITS = "event_commits"
EMAIL_RESERVATIONS = "email_reservations"
REFRESH_TOKENS = "refresh_tokens"
LEASES = "projection_leases"
CHECKPOINTS = "projection_checkpoints"

# Redis keys. One prefix so a shared Redis can host several deployments side by side.
PREFIX = "tf:"
POSITION_COUNTER = PREFIX + "log:position"
POSITION_SEEDED = PREFIX + "log:position:seeded"
SETTLED_HEAD = PREFIX + "log:settled"
WAKE_CHANNEL = PREFIX + "log:wake"


def commit_hint_key(position: int) -> str:
    """A committed document handed to projectors by position (a hint; MongoDB is the authority)."""
    return f"{PREFIX}log:at:{position}"


def stream_head_key(stream_id: str) -> str:
    """The cached head of one stream: version, hash and an optional state snapshot."""
    return f"{PREFIX}head:{stream_id}"


def idempotency_key(actor: str, key: str) -> str:
    """The cached outcome of a command sent with an Idempotency-Key."""
    return f"{PREFIX}idem:{actor}:{key}"
