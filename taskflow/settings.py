"""Settings read from the environment, typed and validated once at start-up."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskflow.events.group_insert import DEFAULT_MAX_BATCH

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
ReadModel = Literal["redis", "mongodb"]
READ_MODELS: tuple[ReadModel, ...] = ("redis", "mongodb")


class Settings(BaseSettings):
    """Everything TaskFlow reads from its environment (README: Configuration)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

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
    # API processes sharing HTTP_PORT (taskflow/api/workers.py): one serves on one core, so a
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

    # A position nobody has written after this long is sealed with a gap (DESIGN.md §3).
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
            f"{str(err['loc'][0]).upper() if err['loc'] else '?'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
