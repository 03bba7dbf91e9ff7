"""Every MongoDB collection name and Redis key prefix, defined once."""

from __future__ import annotations

# MongoDB collections written through the primary (the log and everything that decides a race).
COMMITS = "event_commits"
EMAIL_RESERVATIONS = "email_reservations"
REFRESH_TOKENS = "refresh_tokens"
LEASES = "projection_leases"
CHECKPOINTS = "projection_checkpoints"
# One document per block of global positions, inserted before any position of the block is used.
POSITION_BLOCKS = "position_blocks"
# Seals of the whole log (insert-only, `_id` = the position sealed) and the sealer's checkpoint.
LOG_SEALS = "log_seals"
LOG_SEAL_CHECKPOINT = "log_seal_checkpoint"
# Personal data (docs/privacy.md): data keys wrapped by a KEK (insert-only; erasure deletes a
# user's), one check value per KEK, one tombstone per erased user, password hashes, and the
# journal of rewritten legacy commits.
DATA_KEYS = "data_keys"
KEK_CHECKS = "key_encryption_keys"
ERASED_SUBJECTS = "erased_subjects"
CREDENTIALS = "credentials"
LOG_REWRITES = "log_rewrites"
# `taskflow audit verify` run by the API (audit_jobs.py): one document per job, and the slots
# whose unique `_id` lets one job run at a time.
AUDIT_VERIFICATIONS = "audit_verifications"
AUDIT_VERIFICATION_SLOTS = "audit_verification_slots"

# Redis keys. One prefix so a shared Redis can host several deployments side by side.
PREFIX = "tf:"
POSITION_COUNTER = PREFIX + "log:position"
# The highest position whose block is reserved in MongoDB; absent until seeded since Redis started.
POSITION_RESERVED = PREFIX + "log:position:reserved"
SETTLED_HEAD = PREFIX + "log:settled"
WAKE_CHANNEL = PREFIX + "log:wake"
# An erased user's id, published so every process drops its cached data key at once.
KEYS_ERASED_CHANNEL = PREFIX + "keys:erased"


def commit_hint_key(position: int) -> str:
    """A committed document handed to projectors by position (a hint; MongoDB is the authority)."""
    return f"{PREFIX}log:at:{position}"


def stream_head_key(stream_id: str) -> str:
    """The cached head of one stream: version, hash and an optional state snapshot."""
    return f"{PREFIX}head:{stream_id}"


def idempotency_key(actor: str, key: str) -> str:
    """The cached outcome of a command sent with an Idempotency-Key."""
    return f"{PREFIX}idem:{actor}:{key}"


# Read models in Redis live under a version prefix, so a rebuild can fill the next version while
# the active one serves (docs/design.md, Projections); `READ_MODEL_ACTIVE` names the version
# reads use.
READ_MODEL_ACTIVE = PREFIX + "rm:active"


def read_model_prefix(version: int) -> str:
    return f"{PREFIX}rm:{version}:"


# Insert-only record of every switch of reads to a new read-model version (the views database):
# the durable source of the active version when Redis lost `READ_MODEL_ACTIVE`.
READ_MODEL_SWITCHES = "read_model_switches"


# MongoDB read-model collections, also versioned by suffix.
def task_views_collection(version: int) -> str:
    return f"task_views_v{version}"


# Auth (taskflow/auth): collections whose unique `_id` inserts decide the refresh-token races.
REFRESH_TOKENS_USED = "refresh_tokens_used"
REFRESH_FAMILIES_REVOKED = "refresh_families_revoked"


# Every denied jti, scored by its token's expiry: what each API process copies (auth/denylist.py).
DENIED_JTI_INDEX = f"{PREFIX}auth:denied"
# Present while Redis holds every denied token recorded in MongoDB (gone when Redis loses data).
DENY_LIST_COMPLETE = f"{PREFIX}auth:deny-complete"
# MongoDB: the durable record of logged-out access tokens, `{_id: jti, expires_at}`.
DENIED_TOKENS = "denied_tokens"


def denied_jti_key(jti: str) -> str:
    """A logged-out access token's id, kept until the token would have expired anyway."""
    return f"{PREFIX}auth:deny:{jti}"


def refresh_token_key(token_hash: str) -> str:
    """A refresh token's record (user, family, expiry), cached by its hash."""
    return f"{PREFIX}auth:rt:{token_hash}"


def login_throttle_key(account: str) -> str:
    """One account's failed password attempts in a row (auth/throttle.py); `account` is the
    e-mail's keyed hash or a user id, never an address."""
    return f"{PREFIX}auth:throttle:{account}"


def refresh_successor_key(token_hash: str) -> str:
    """The successor of a refresh token, encrypted, kept for its grace window only."""
    return f"{PREFIX}auth:succ:{token_hash}"


def revoked_family_key(family_id: str) -> str:
    """The Redis mirror of a refresh-token family's revocation (MongoDB is the authority)."""
    return f"{PREFIX}auth:rfam:{family_id}"


def email_user_key(email_digest: str) -> str:
    """The user id registered under an e-mail address, by the address's keyed hash (a cache of
    the reservation; the address itself never names a key)."""
    return f"{PREFIX}auth:email:{email_digest}"


READ_MODEL_NEXT = PREFIX + "rm:next"


def stream_ticket_key(ticket_hash: str) -> str:
    """A one-time ticket that opens a change feed (for EventSource), by the ticket's hash."""
    return f"{PREFIX}auth:ticket:{ticket_hash}"
