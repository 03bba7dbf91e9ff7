"""Settings read from the environment, typed and validated once at start-up."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# The most commits one `insert_many` of the log carries (LOG_INSERT_BATCH, events/group_insert.py).
# Batches reach it only when that many appends of one process wait at once; it bounds one
# insert's size and time.
DEFAULT_MAX_BATCH = 100

# argon2id's cost for new password hashes (taskflow/auth/passwords.py). The defaults are
# argon2-cffi's: RFC 9106's low-memory profile (t=3, m=64 MiB, p=4), about 0.2 s of CPU a hash
# here. The floor outside development is OWASP's weakest recommended setting (t=2, m=19 MiB,
# p=1); in development the tests run the same code at a cost of about a millisecond.
DEFAULT_PASSWORD_TIME_COST = 3
DEFAULT_PASSWORD_MEMORY_KIB = 64 * 1024
DEFAULT_PASSWORD_PARALLELISM = 4
MIN_PASSWORD_TIME_COST = 2
MIN_PASSWORD_MEMORY_KIB = 19 * 1024

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ReadModel = Literal["redis", "mongodb"]
READ_MODELS: tuple[ReadModel, ...] = ("redis", "mongodb")


class Settings(BaseSettings):
    """Everything TaskFlow reads from its environment (README: Configuration).

    Every secret can also come from a file named by `<NAME>_FILE` (Docker and Kubernetes
    secrets). Outside TASKFLOW_ENV=development no secret may be a built-in or example value.
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # "development" (set by `make dev` and the tests) is the only environment in which the
    # built-in keys are accepted; anything else is treated as production.
    taskflow_env: str = "production"

    mongodb_uri: str = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
    mongodb_db: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,48}$")] = "taskflow"
    # The MongoDB read models (task views and their checkpoints) live in a database of their
    # own, "<MONGODB_DB>_views" unless set. On FerretDB's SQLite backend each database is a
    # file with one writer at a time: sharing the log's file, a pass of view writes held the
    # log's inserts back for up to 1.5 s (docs/benchmarks.md, "The read models' own database").
    mongodb_views_db: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-]{1,63})?$")] = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # API processes sharing HTTP_PORT (taskflow/server_workers.py): one serves on one core, so a
    # host with more cores runs more. 1 runs a single process without a process manager.
    api_workers: Annotated[int, Field(ge=1, le=64)] = 1
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    # A projector takes the first free port of METRICS_PORT .. METRICS_PORT + this - 1, so
    # several projectors on one host need no per-process setting (each logs the port it took).
    metrics_port_attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    # How long Redis keeps a stream's cached head (version, hash, state) after its last command;
    # 0 keeps it for good. Losing one costs a read of the stream: on FerretDB, of the whole log.
    stream_head_ttl_seconds: Annotated[int, Field(ge=0)] = 0
    # Group commit: the commits one process appends while an insert of the log is in flight
    # go out together in the next, up to this many (taskflow/events/group_insert.py). A lone
    # commit never waits; under load a batch costs about what one insert costs, and one batch
    # at a time also spares FerretDB on SQLite its concurrent writers' backoff sleeps
    # (docs/benchmarks.md, "Group commit"). 0: every append inserts on its own, concurrently.
    log_insert_batch: Annotated[int, Field(ge=0, le=1000)] = DEFAULT_MAX_BATCH
    log_level: LogLevel = "INFO"
    log_json: bool = True

    # Access tokens are signed with the active key; every listed key is accepted (rotation).
    jwt_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=lambda: {"dev": SecretStr("dev-only-jwt-secret-change-me-0123456789")}
    )
    jwt_active_kid: str = "dev"
    jwt_issuer: str = "taskflow"
    jwt_audience: str = "taskflow-api"
    access_token_ttl_seconds: Annotated[int, Field(ge=30, le=3600)] = 900
    # Per-account login throttling (taskflow/auth/throttle.py): this many failures in a row are
    # free, then each further one doubles a wait (from one second) up to the cap.
    login_free_failures: Annotated[int, Field(ge=1, le=100)] = 5
    login_backoff_cap_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # argon2id's cost for new password hashes (see DEFAULT_PASSWORD_TIME_COST above).
    password_hash_time_cost: Annotated[int, Field(ge=1, le=20)] = DEFAULT_PASSWORD_TIME_COST
    password_hash_memory_kib: Annotated[int, Field(ge=8, le=4 * 1024 * 1024)] = (
        DEFAULT_PASSWORD_MEMORY_KIB
    )
    password_hash_parallelism: Annotated[int, Field(ge=1, le=16)] = DEFAULT_PASSWORD_PARALLELISM
    # Two refreshes of one token within this many seconds get the same successor (two tabs);
    # a token presented again later revokes its family. 0: every second use revokes.
    refresh_grace_seconds: Annotated[float, Field(ge=0, le=60)] = 5.0
    # While Redis is down, an API process checks tokens against its copy of the deny list for
    # this long after the copy's last refresh, then fails closed (503). 0: fail closed at once.
    auth_deny_copy_max_age_seconds: Annotated[float, Field(ge=0, le=3600)] = 300.0
    refresh_token_ttl_seconds: Annotated[int, Field(ge=300)] = 30 * 24 * 3600
    cookie_secure: bool = True

    # Keys the per-stream hash chain; lives only in configuration, never in the database.
    event_log_hmac_key: SecretStr = SecretStr("dev-only-event-log-key-change-me")
    # Key-encryption keys (KEKs): each wraps the per-user data keys that encrypt personal data
    # in the log (docs/privacy.md). Several by id so that one can be rotated out; the active one
    # wraps new data keys. Each is 32 bytes, base64 ("kid:base64,kid2:base64").
    data_keks: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=lambda: {"dev": SecretStr(DEV_KEK)}
    )
    data_kek_active: str = "dev"
    # Keys the hash of a normalised e-mail address that reserves it and finds it at login, so
    # the address itself is never a database key (docs/privacy.md).
    email_hash_key: SecretStr = SecretStr("dev-only-email-hash-key-change-me-0123")

    # A position nobody has written after this long is sealed with a gap (docs/event-log.md).
    gap_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    lease_ttl_seconds: Annotated[float, Field(ge=0.5, le=300)] = 10.0
    projector_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    # The read models a `taskflow project` process maintains ("redis,mongodb"). One process per
    # model keeps the MongoDB views' writes off the event loop that applies the Redis views,
    # which reads are served from (docs/operations.md); each model's lease still decides who
    # applies it, so any mix of processes is safe.
    projector_read_models: Annotated[tuple[ReadModel, ...], NoDecode, Field(min_length=1)] = (
        READ_MODELS
    )
    read_max_staleness_seconds: Annotated[int, Field(ge=90)] | None = None
    read_your_writes_timeout_seconds: Annotated[float, Field(ge=0, le=30)] = 2.0
    mongodb_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 5_000
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    ready_timeout_seconds: Annotated[float, Field(gt=0, le=10)] = 1.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 64 * 1024

    # Rate limits, in the `limits` notation ("10/minute", "600 per 1 minute").
    rate_limit_enabled: bool = True
    rate_limit_auth: str = "20/minute"
    rate_limit_api: str = "1200/minute"
    # Behind a reverse proxy that appends the client's address to X-Forwarded-For (nginx).
    trust_forwarded_for: bool = False

    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    sentry_dsn: SecretStr | None = None

    # -- the live change feeds (docs/change-feed.md) --
    # Each owner's last changes kept in Redis for resuming (at least this many; Redis trims in
    # whole nodes of 100, so up to 100 more). A resume from before the oldest kept gets `reset`.
    change_feed_history: Annotated[int, Field(ge=1, le=100_000)] = 200
    # Open streams one API process serves; beyond it a stream request gets 503 and Retry-After.
    change_feed_max_streams: Annotated[int, Field(ge=1, le=1_000_000)] = 5_000
    # Changes waiting to be written to one connection; a client this far behind is cut off and
    # told to resume (it never holds the others, or the projector, back).
    change_feed_buffer: Annotated[int, Field(ge=1, le=100_000)] = 256
    change_feed_heartbeat_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    # The `retry:` hint: how long a browser waits before reconnecting.
    change_feed_retry_ms: Annotated[int, Field(ge=0, le=600_000)] = 2_000
    # How often each open stream's token is checked against the deny list (logout ends it).
    change_feed_auth_check_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    # The longest one stream stays open (0: until its token expires); the client reconnects.
    change_feed_max_seconds: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    # How long a stream ticket (for EventSource, which cannot send headers) may wait for its use.
    stream_ticket_ttl_seconds: Annotated[int, Field(ge=1, le=300)] = 30

    @property
    def views_db_name(self) -> str:
        """The database of the MongoDB read models."""
        return self.mongodb_views_db or views_database_for(self.mongodb_db)

    @field_validator("jwt_keys", mode="before")
    @classmethod
    def _parse_jwt_keys(cls, raw: object) -> object:
        """Accept `kid:secret,kid2:secret2` from the environment."""
        if not isinstance(raw, str):
            return raw
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            kid, sep, secret = item.partition(":")
            if not sep or not kid or len(secret) < 32:
                raise ValueError("expected kid:secret pairs, each secret at least 32 characters")
            keys[kid] = secret
        if not keys:
            raise ValueError("at least one kid:secret pair is required")
        return keys

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`<NAME>_FILE` beside the environment (setting both is an error)."""
        return (init_settings, SecretFiles(settings_cls), env_settings, dotenv_settings)

    @model_validator(mode="after")
    def _no_published_secrets(self) -> Settings:
        """Outside development, refuse every secret that is built in or an example's."""
        if self.taskflow_env == DEVELOPMENT:
            return self
        published = [name for name in SECRET_SETTINGS if _is_published(getattr(self, name))]
        if published:
            raise ValueError(
                "; ".join(
                    f"{name.upper()} holds a built-in or example key, refused outside "
                    f"TASKFLOW_ENV={DEVELOPMENT}: make one with `{KEY_COMMANDS[name]}`"
                    + (" and give it as kid:key" if name in KID_PAIRS else "")
                    for name in published
                )
            )
        return self

    @model_validator(mode="after")
    def _password_hash_cost_floor(self) -> Settings:
        """Outside development, refuse a password hash cost below the floor."""
        if self.taskflow_env == DEVELOPMENT:
            return self
        if self.password_hash_time_cost < MIN_PASSWORD_TIME_COST:
            raise ValueError(
                f"PASSWORD_HASH_TIME_COST must be at least {MIN_PASSWORD_TIME_COST} outside "
                f"TASKFLOW_ENV={DEVELOPMENT}"
            )
        if self.password_hash_memory_kib < MIN_PASSWORD_MEMORY_KIB:
            raise ValueError(
                f"PASSWORD_HASH_MEMORY_KIB must be at least {MIN_PASSWORD_MEMORY_KIB} (19 MiB) "
                f"outside TASKFLOW_ENV={DEVELOPMENT}"
            )
        return self

    @field_validator("data_keks", mode="before")
    @classmethod
    def _parse_keks(cls, raw: object) -> object:
        """Accept `kid:base64,kid2:base64` from the environment; every key 32 bytes."""
        if isinstance(raw, str):
            pairs = [part.strip().partition(":") for part in raw.split(",") if part.strip()]
            if not pairs or any(not sep or not kid for kid, sep, _ in pairs):
                raise ValueError("expected kid:base64 pairs, e.g. k1:" + KEK_EXAMPLE)
            raw = {kid: secret for kid, _, secret in pairs}
        if isinstance(raw, dict):
            for kid, secret in raw.items():
                value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
                if not _is_kek(str(value)):
                    raise ValueError(
                        f"key {kid!r} is not 32 bytes in base64; make one with: "
                        "python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32))"
                        ".decode())'"
                    )
        return raw

    @field_validator("data_kek_active")
    @classmethod
    def _active_kek_known(cls, kid: str, info: object) -> str:
        data = getattr(info, "data", {})
        if "data_keks" in data and kid not in data["data_keks"]:
            raise ValueError(f"{kid!r} is not one of DATA_KEKS")
        return kid

    @field_validator("rate_limit_auth", "rate_limit_api")
    @classmethod
    def _parse_limit(cls, value: str) -> str:
        from limits import parse

        parse(value)  # raises ValueError naming the problem
        return value

    @field_validator("cors_origins", "projector_read_models", mode="before")
    @classmethod
    def _comma_separated(cls, raw: object) -> object:
        if isinstance(raw, str):
            return tuple(filter(None, (o.strip() for o in raw.split(","))))
        return raw

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        # Credentials (the refresh cookie) are always allowed here: "*" would hand them to any
        # site, `null` (sandboxed frames, files) included. Name each origin.
        if any(origin in {"*", "null"} for origin in origins):
            raise ValueError("'*' and 'null' are refused: list each allowed origin")
        return origins

    @field_validator("jwt_active_kid")
    @classmethod
    def _active_kid_known(cls, kid: str, info: object) -> str:
        data = getattr(info, "data", {})
        if "jwt_keys" in data and kid not in data["jwt_keys"]:
            raise ValueError(f"JWT_ACTIVE_KID {kid!r} is not one of JWT_KEYS")
        return kid


# The development KEK: 32 published bytes, for `make dev` and the tests only.
DEV_KEK = "ZGV2LW9ubHkta2VrLW5ldmVyLWluLXByb2R1Y3Rpb24="
KEK_EXAMPLE = "<32 random bytes in base64>"
DEVELOPMENT = "development"

# The secret settings: each may come from `<NAME>_FILE`, and the keys among them may not be
# built-in or example values outside development (the command that makes a good one).
SECRET_FILES = (
    "mongodb_uri",
    "redis_url",
    "jwt_keys",
    "event_log_hmac_key",
    "data_keks",
    "email_hash_key",
    "sentry_dsn",
)
_RANDOM_TEXT = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
_RANDOM_KEK = "python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'"
KEY_COMMANDS = {
    "jwt_keys": _RANDOM_TEXT,
    "event_log_hmac_key": _RANDOM_TEXT,
    "data_keks": _RANDOM_KEK,
    "email_hash_key": _RANDOM_TEXT,
}
SECRET_SETTINGS = tuple(KEY_COMMANDS)
KID_PAIRS = frozenset({"jwt_keys", "data_keks"})
# Markers of the values shipped in this repository (settings.py, deploy/taskflow.env.example).
_PUBLISHED_MARKERS = ("dev-only", "change-me", "changeme", "replace-me", "example")


def _is_published(value: object) -> bool:
    """Whether a secret (or any secret of a kid:secret mapping) is a shipped value."""
    if isinstance(value, dict):
        return any(_is_published(v) for v in value.values())
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return text == DEV_KEK or any(marker in text.lower() for marker in _PUBLISHED_MARKERS)


class SecretFiles(PydanticBaseSettingsSource):
    """Secret settings read from the file that `<NAME>_FILE` names (trailing newline dropped)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_FILES:
            variable = name.upper()
            path = os.environ.get(f"{variable}_FILE")
            if path is None:
                continue
            if variable in os.environ:
                raise SettingsError(f"{variable} and {variable}_FILE are both set: keep one")
            try:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(f"{variable}_FILE: cannot read {path!r} ({exc})") from None
        return values


def _is_kek(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except ValueError:
        return False


class SettingsError(Exception):
    """The environment does not describe a valid configuration."""


def views_database_for(log_database: str) -> str:
    """The read models' database when MONGODB_VIEWS_DB is not set."""
    return f"{log_database}_views"


def load_settings() -> Settings:
    """Read settings, turning pydantic's error into one naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            (f"{str(err['loc'][0]).upper()}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
