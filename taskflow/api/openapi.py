"""The OpenAPI 3.1 document of the API, generated from its models, and an offline docs page."""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import hashlib
import html
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints
from pydantic.config import JsonDict
from pydantic.json_schema import (
    JsonSchemaMode,
    JsonSchemaValue,
    SkipJsonSchema,
    models_json_schema,
)

import taskflow
from taskflow.api.audit_job_routes import VERIFICATIONS_PATH

# The views' own patterns (private there) are reused so that the document cannot drift from them.
from taskflow.api.audit_routes import _STREAM_ID, AsOfQuery, FeedQuery, HistoryQuery
from taskflow.api.auth_routes import (
    REFRESH_COOKIE,
    ChangePasswordBody,
    EraseBody,
    LoginBody,
    RegisterBody,
)
from taskflow.api.change_feeds import (
    AUDIT_CHANGES_PATH,
    TASK_CHANGES_PATH,
    TICKETS_PATH,
    ChangesQuery,
)
from taskflow.api.console import ASSETS_PATH, CONTENT_TYPES, asset_names
from taskflow.api.headers import POSITION_HEADER, STALE_HEADER
from taskflow.api.middlewares import CORRELATION_ID, REQUEST_ID
from taskflow.api.problems import PROBLEM_TYPE_BASE
from taskflow.api.task_reads import TrashQuery
from taskflow.api.task_schemas import CreateTaskBody, PatchTaskBody, TaskOut
from taskflow.api.task_writes import _ETAG, _IDEMPOTENCY_KEY, _TASK_ID
from taskflow.commands.task import Status
from taskflow.events.records import Commit
from taskflow.projections.history import FEED_GAPS_MAX
from taskflow.projections.task_queries import TaskQuery

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
REF = "#/components/schemas/{model}"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


# -- response shapes the views build as plain dicts (kept here, so the views stay as they are) ----


def _no_default(schema: JsonSchemaValue) -> None:
    schema.pop("default", None)


def _absent(description: str) -> Any:
    """An optional response field: left out rather than null, so no null and no default."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Health(_Shape):
    """Liveness."""

    status: Literal["ok"]


class Readiness(_Shape):
    """Readiness: every dependency answered."""

    status: Literal["ready"]
    checks: dict[str, str] = Field(description='each dependency ("mongodb", "redis") and "ok"')


class RegisteredUser(_Shape):
    """The public profile of a new account."""

    user_id: str
    email: str
    display_name: str


class Profile(_Shape):
    """The caller's profile."""

    user_id: str
    email: str
    display_name: str
    roles: list[str]


class SameSiteBody(BaseModel):
    """Any JSON object, `{}` will do: refresh and logout need an application/json body, which
    another site cannot send without a CORS preflight."""

    model_config = ConfigDict(extra="allow")


class AccessToken(_Shape):
    """A new access token (RFC 6749 §5.1); the refresh token travels in a cookie."""

    access_token: str = Field(description="a JWT for `Authorization: Bearer`")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="seconds until the access token expires")


class TaskPage(_Shape):
    """One page of the caller's tasks."""

    items: list[TaskOut]
    next: str | None = Field(description="pass as `next` for the following page; null at the end")


class TaskSnapshot(TaskOut):
    """A task as it was at `as_of` or at `version`, folded from the event log."""

    model_config = ConfigDict(extra="forbid")

    deleted: bool


class TaskStats(_Shape):
    """The caller's live tasks counted by status, and how many are overdue."""

    by_status: dict[Status, int]
    overdue: int


class TagCount(_Shape):
    """A tag and how many of the caller's live tasks carry it."""

    tag: str
    count: int = Field(ge=1)


class TagList(_Shape):
    """The caller's tags, most used first (for autocomplete)."""

    items: list[TagCount]


class ProjectionState(_Shape):
    """How far one projection has applied the log, and who holds its lease."""

    name: str
    position: int
    head: int = Field(description="the log's head when it was read")
    lag: int = Field(ge=0, description="positions the projection is behind the head")
    lease_holder: str | None
    lease_expires_at: datetime | None


class ProjectionList(_Shape):
    """Every projection of every read-model version, and the log seal."""

    head: int
    items: list[ProjectionState]


class VerificationProgress(_Shape):
    """How far a verification has got: the log's pass, then the read models."""

    phase: Literal["log", "read-models", "done"]
    position: int
    head: int


class VerificationResult(_Shape):
    """What `taskflow audit verify` reports: each finding as its line, and the counts."""

    ok: bool
    summary: str
    sealed: str = Field(description="how far the seals reach, and what guards the rest")
    findings: list[str] = Field(description="BROKEN, SEAL, MISSING, MISMATCH (and UNSETTLED) lines")
    positions: int
    broken_chains: int
    seal_problems: int
    missing_positions: int
    read_model_mismatches: int
    sealed_to: int


class Verification(_Shape):
    """A verification job: running, or ended with its result."""

    id: str
    state: Literal["running", "passed", "failed", "error", "interrupted", "superseded"] = Field(
        description="`interrupted`: its process stopped (or has not been heard of for 30 s); "
        "`superseded`: paused that long, it gave way to a newer job"
    )
    requested_by: str
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    progress: VerificationProgress
    result: VerificationResult | None
    error: str | None


class VerificationList(_Shape):
    """The latest verifications, newest first."""

    items: list[Verification]


class TaskHistoryEntry(_Shape):
    """One event of a task: who caused it, when, and what it changed."""

    version: int
    type: str = Field(description="the event's stable type name")
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    request_id: str
    correlation_id: str
    changes: dict[str, Any]


class TaskHistoryPage(_Shape):
    """A page of a task's history, oldest first."""

    items: list[TaskHistoryEntry]
    next: str | None = Field(description="pass as `after_version` for the following page")


class CommitPage(_Shape):
    """Commits of the event log, in log order; gaps (unused positions) are passed over.

    Each event's `data` is its payload in the current schema (older schemas are upcast on
    read; no event shows a password hash). Personal fields (e-mail, display name, task title,
    description, tags) are stored encrypted under their user's data key and shown decrypted.
    Once that user is erased they cannot be: they are left out of `data`, and `data["~erased"]`
    lists their names, e.g. `{"task_id": "…", "status": "todo", …, "~erased": ["title",
    "description", "tags"]}`. Types, versions, positions, times, ids and metadata stay.
    """

    items: list[Commit]
    next_after: int | None = Field(
        description="pass as `after` for the following page: the last position this page "
        "accounts for, gaps included (null for a whole stream)"
    )
    end: bool = Field(
        description="true: the page reaches the log's settled head, nothing more is there yet "
        "(poll again later from `next_after`); false: more follows, even after an empty page"
    )


class TaskChange(_Shape):
    """The `data` of a change on GET /api/tasks/changes: one commit's effect on a task."""

    id: str = Field(description="the task's id")
    etag: str = Field(pattern=r'^"[0-9]+"$', description="the task's ETag after the change")
    deleted: bool
    task: TaskOut | None = Field(
        description="as GET /api/tasks/{task_id} shows it; null if deleted"
    )


class StreamReady(_Shape):
    """The `data` of `ready`, the first event of a stream."""

    after: int = Field(description="the stream sends what comes after this position")
    heartbeat_seconds: float = Field(description="a comment line comes at least this often")


class StreamReset(_Shape):
    """The `data` of `reset`: the feed no longer holds everything after the position asked for."""

    after: int = Field(description="reload (lists, tasks): they hold everything up to here")
    reason: Literal["history-exceeded"]


class StreamEnd(_Shape):
    """The `data` of `end`, the last event of a stream the server closes."""

    reason: Literal[
        "shutdown",
        "token-expired",
        "logged-out",
        "auth-unavailable",
        "too-slow",
        "lifetime",
        "resume",
        "unavailable",
    ]
    after: int | None = Field(description="resume after this position (Last-Event-ID)")


def _json_data(description: str, *payloads: str) -> Any:
    """An event's `data` field: JSON text, one of `payloads` (components), as `description`."""
    refs: list[JsonValue] = [{"$ref": REF.format(model=name)} for name in payloads]
    extra: JsonDict = {"contentMediaType": JSON, "contentSchema": {"anyOf": refs}}
    return Field(description=description, json_schema_extra=extra)


_EVENT_ID = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]


class TaskChangeEvent(_Shape):
    """One server-sent event of GET /api/tasks/changes, as EventSource reads it."""

    event: Literal["message", "ready", "reset", "end"] = Field(
        description="`message` (unnamed) for a change"
    )
    id: _EVENT_ID | SkipJsonSchema[None] = _absent("a global position")
    data: str = _json_data(
        "JSON: a TaskChange; `ready`: StreamReady; `reset`: StreamReset; `end`: StreamEnd",
        "TaskChange",
        "StreamReady",
        "StreamReset",
        "StreamEnd",
    )
    retry: int | SkipJsonSchema[None] = _absent("`ready`: milliseconds to wait before reconnecting")


class AuditChangeEvent(_Shape):
    """One server-sent event of GET /api/audit/changes, as EventSource reads it."""

    event: Literal["message", "ready", "reset", "end"] = Field(
        description="`message` (unnamed) for a commit"
    )
    id: _EVENT_ID | SkipJsonSchema[None] = _absent("a global position")
    data: str = _json_data(
        "JSON: a Commit; `ready`: StreamReady; `reset`: StreamReset; `end`: StreamEnd",
        "Commit",
        "StreamReady",
        "StreamReset",
        "StreamEnd",
    )
    retry: int | SkipJsonSchema[None] = _absent("`ready`: milliseconds to wait before reconnecting")


# Schemas event data refer to (contentSchema), which no operation names itself.
EVENT_PAYLOADS: tuple[type[BaseModel], ...] = (
    TaskChange,
    StreamReady,
    StreamReset,
    StreamEnd,
    Commit,
)


class StreamTicket(_Shape):
    """A one-time ticket that opens a change feed (`?ticket=`), for EventSource."""

    ticket: str = Field(description="use once, within `expires_in` seconds")
    expires_in: int = Field(description="seconds the ticket waits for its use")


class FieldError(_Shape):
    """One failing field of a request."""

    field: str = Field(description="dotted path of the field, or `body`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(pattern=f"^{PROBLEM_TYPE_BASE}[a-z0-9]+(-[a-z0-9]+)*$")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | SkipJsonSchema[None] = _absent("what went wrong, for a person")
    instance: str | SkipJsonSchema[None] = _absent("the request path")
    errors: list[FieldError] | SkipJsonSchema[None] = _absent("422: each failing field")
    field: str | SkipJsonSchema[None] = _absent("422 of a refused command: the field at fault")
    current_version: int | SkipJsonSchema[None] = _absent("409, 412: the task's version now")
    checks: dict[str, str] | SkipJsonSchema[None] = _absent("503 of /api/ready: each dependency")


# -- what each operation takes and answers --------------------------------------------------------

Body = type[BaseModel] | tuple[type[BaseModel], ...] | None  # a tuple documents anyOf


@dataclass(frozen=True)
class Reply:
    """A documented success (or 304) response."""

    status: int
    description: str
    body: Body = None
    headers: tuple[str, ...] = ()
    media_type: str = JSON
    media_types: tuple[str, ...] = ()  # several, instead of `media_type` (the console's files)


@dataclass(frozen=True)
class Operation:
    """One route: its method, path, parameters, body, replies and the problems it can answer."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    replies: tuple[Reply, ...]
    # status -> why this route answers it; 429 is added to every rate-limited route
    problems: dict[int, str] = dataclasses.field(default_factory=dict)
    parameters: tuple[str, ...] = ()  # names in components.parameters
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_media_types: tuple[str, ...] = (JSON,)
    example: dict[str, Any] | None = None  # a typical body
    security: tuple[dict[str, list[str]], ...] = ({"bearerAuth": []},)
    rate_limited: bool = True
    description: str = ""


PUBLIC: tuple[dict[str, list[str]], ...] = ({},)
EMAIL, PASSWORD = "ada@example.com", "correct horse battery"  # the examples' account
WRITE_HEADERS = ("ETag", POSITION_HEADER, "Idempotent-Replayed")
BODY_PROBLEMS = {
    400: "the body is not valid JSON",
    413: "the body is larger than MAX_BODY_BYTES",
    415: "the body is not application/json",
}
TOKEN = {401: "no valid access token"}
UNAVAILABLE = {503: "MongoDB or Redis is unavailable, or tokens cannot be checked"}
# docs/reliability.md, "503 on a write": which 503s may follow a stored commit, and what to do.
WRITE_UNAVAILABLE = {
    503: "MongoDB or Redis is unavailable, tokens cannot be checked, or the log could not place "
    "or confirm the write in time. The write may have been committed even so (the log insert "
    "was sent, its answer was lost). Retry after Retry-After with the same Idempotency-Key and "
    "body: a stored write is answered as it was first (Idempotent-Replayed), an unstored one "
    "is applied. Without a key, re-read the task (its history is read from the log) and retry "
    "with If-Match only if the change is not there"
}
REGISTER_UNAVAILABLE = {
    503: "MongoDB or Redis is unavailable. The account may have been created even so: a retry "
    "then answers 409, and logging in works"
}
TARGET_PROBLEMS = {
    400: "If-Match is not an ETag, or Idempotency-Key is malformed",
    **TOKEN,
    404: "no such task (or another user's)",
    412: "If-Match names an older version; ETag gives the current one",
    422: "this Idempotency-Key was used with another request",
    428: "If-Match is missing",
    **WRITE_UNAVAILABLE,
}
AUDITOR = {**TOKEN, 403: "the caller lacks the auditor role"}
EVENT_STREAM = "text/event-stream"
STREAM_PROBLEMS = {
    400: "Last-Event-ID is not a position",
    401: "no valid access token, or the ticket is unknown, used or expired",
    422: "a parameter is unknown or invalid",
    503: "too many open streams on this server (Retry-After), or a backing service is down",
}
STREAM_SECURITY: tuple[dict[str, list[str]], ...] = ({"bearerAuth": []}, {"streamTicket": []})
CHANGE_EVENTS = " ".join(
    (
        "Server-sent events. Every event has an `id:`, a global position: a client resumes with",
        "`Last-Event-ID` (EventSource sends it when it reconnects by itself) or",
        "`?after=<position>`, and gets exactly what came after it, in order, then live events.",
        "Events: `ready` first (its `id` is where the stream starts: the position given, or now),",
        "with a `retry:` hint; then one unnamed event per change (`data` below); `reset` when the",
        "position is older than the kept history (CHANGE_FEED_HISTORY changes per owner; the",
        "auditors' feed reads the log and never resets): reload, then go on from its `id`; `end`",
        "when the server closes the stream (`data.reason`: `shutdown`, `token-expired`,",
        "`logged-out`, `too-slow`, `lifetime`, `resume`, `unavailable`, `auth-unavailable`), with",
        "`data.after` to resume from. A comment line (`: ping`) every",
        "CHANGE_FEED_HEARTBEAT_SECONDS. Authenticate with `Authorization: Bearer` or, for",
        "EventSource, a one-time `ticket` from POST /api/stream-tickets: never put an access",
        "token in a URL.",
    )
)


FEED_PAGES = (
    "A page holds up to `limit` commits after `after` and passes over the gaps between them "
    "(positions no commit used), so it is empty only at the head. Read on with "
    "`after=next_after` until `end` is true: the page then reaches the log's settled head "
    "(every position up to `next_after` holds its final commit or gap, and nothing after it "
    "is settled yet). Poll from there for newer commits. A page passes over at most "
    f"{FEED_GAPS_MAX:,} gaps: after a longer run of them, a page may be empty with `end` false."
)
FILE_ETAG = "ETag=FileETag"  # the console's files: a content hash, not a task's version
SAME_SITE = {
    403: "an Origin that is not allowed, or neither Origin nor X-Requested-With",
    415: "the request is not application/json",
}


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/api/health",
        "health",
        "operations",
        "Liveness (no I/O)",
        (Reply(200, "The process answers", Health),),
        security=PUBLIC,
        rate_limited=False,
    ),
    Operation(
        "get",
        "/api/ready",
        "ready",
        "operations",
        "Readiness: MongoDB primary and Redis pinged, indexes created",
        (Reply(200, "Ready", Readiness),),
        {503: "a dependency did not answer; `checks` names it"},
        security=PUBLIC,
        rate_limited=False,
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        "operations",
        "Prometheus metrics of this process",
        (Reply(200, "Metrics in the Prometheus text format", media_type="text/plain"),),
        security=PUBLIC,
        rate_limited=False,
    ),
    Operation(
        "get",
        OPENAPI_PATH,
        "openapi",
        "documentation",
        "This OpenAPI 3.1 document",
        (Reply(200, "The document"),),
        security=PUBLIC,
    ),
    Operation(
        "get",
        DOCS_PATH,
        "docs",
        "documentation",
        "This document as an HTML page (no scripts, works offline)",
        (Reply(200, "The page", media_type="text/html"),),
        security=PUBLIC,
    ),
    Operation(
        "post",
        "/api/auth/register",
        "register",
        "auth",
        "Create an account",
        (
            Reply(
                201,
                "Registered; Location is the profile",
                RegisteredUser,
                ("ETag", "Location", POSITION_HEADER),
            ),
        ),
        {
            **BODY_PROBLEMS,
            409: "the e-mail address is taken",
            422: "a field is invalid (each is named); a password that is too common, too easy "
            "to guess or the e-mail itself is refused",
            **REGISTER_UNAVAILABLE,
        },
        body=RegisterBody,
        example={"email": EMAIL, "password": PASSWORD, "display_name": "Ada"},
        security=PUBLIC,
    ),
    Operation(
        "post",
        "/api/auth/login",
        "login",
        "auth",
        "Exchange e-mail and password for an access token and a refresh cookie",
        (Reply(200, "Signed in", AccessToken, ("Set-Cookie",)),),
        {
            **BODY_PROBLEMS,
            401: "wrong e-mail or password",
            422: "a field is invalid",
            429: "too many requests from this address, or too many wrong passwords for this "
            "account (Retry-After says how long to wait)",
        }
        | UNAVAILABLE,
        body=LoginBody,
        example={"email": EMAIL, "password": PASSWORD},
        security=PUBLIC,
    ),
    Operation(
        "post",
        "/api/auth/refresh",
        "refresh",
        "auth",
        "Rotate the refresh cookie and get a new access token",
        (
            Reply(
                200,
                "A new access token and the family's next refresh token",
                AccessToken,
                ("Set-Cookie",),
            ),
        ),
        {
            401: "no, an expired, or a reused refresh token (reuse revokes the family)",
            **SAME_SITE,
        }
        | UNAVAILABLE,
        security=({"refreshCookie": []},),
        parameters=("X-Requested-With",),
        body=SameSiteBody,
        example={},
        description=(
            "A refresh token presented twice revokes its whole family, and every access token "
            "issued with it, unless the second time comes within REFRESH_GRACE_SECONDS of the "
            "first (two tabs): then both get the same successor. Needs Content-Type "
            "application/json and an allowed Origin (or X-Requested-With without Origin)."
        ),
    ),
    Operation(
        "post",
        "/api/auth/logout",
        "logout",
        "auth",
        "Deny-list the access token and revoke the refresh family",
        (Reply(204, "Signed out; the refresh cookie is cleared", headers=("Set-Cookie",)),),
        TOKEN | SAME_SITE | UNAVAILABLE,
        security=({"bearerAuth": [], "refreshCookie": []}, {"bearerAuth": []}),
        parameters=("X-Requested-With",),
        body=SameSiteBody,
        example={},
        description=(
            "The family is the access token's own: the bearer token alone ends the session. "
            "Needs Content-Type application/json and an allowed Origin (or X-Requested-With "
            "without Origin)."
        ),
    ),
    Operation(
        "post",
        "/api/auth/password",
        "changePassword",
        "auth",
        "Change the caller's password and sign out every other session",
        (Reply(204, "Changed; this session goes on", headers=(POSITION_HEADER,)),),
        {
            **BODY_PROBLEMS,
            401: "no valid access token, or the current password is wrong",
            412: "another password change landed first",
            422: "a field is invalid; a new password that is too common, too easy to guess or "
            "the e-mail itself is refused",
            429: "too many requests, or too many wrong passwords for this account "
            "(Retry-After says how long to wait)",
            **UNAVAILABLE,
        },
        body=ChangePasswordBody,
        example={"current_password": PASSWORD, "new_password": "a brand new passphrase 42"},
        description=(
            "Every refresh family of the user but the caller's own is revoked: the other "
            "sessions cannot refresh, and their access tokens are refused at once (the deny "
            "list's family check); their change feeds end within CHANGE_FEED_AUTH_CHECK_SECONDS."
        ),
    ),
    Operation(
        "get",
        "/api/auth/me",
        "me",
        "auth",
        "The caller's profile",
        (Reply(200, "The profile", Profile),),
        {401: "no valid access token, or its user does not exist"} | UNAVAILABLE,
    ),
    Operation(
        "delete",
        "/api/auth/me",
        "eraseMe",
        "auth",
        "Erase the caller's account and personal data (needs the password again)",
        (Reply(204, "Erased; the refresh cookie is cleared", headers=("Set-Cookie",)),),
        {
            **BODY_PROBLEMS,
            401: "no valid access token, or a wrong password",
            422: "the password is missing",
            **UNAVAILABLE,
        },
        body=EraseBody,
        example={"password": PASSWORD},
        description=(
            "Crypto-shredding (docs/privacy.md): the account's data key is destroyed, so the "
            "e-mail, name and task texts stored in the event log can never be read again; its "
            "sessions and tokens are refused from now on, its task views lose their texts, and "
            "the e-mail can be registered anew. The log keeps the events (types, versions, "
            "positions, times) and still verifies; auditors see the personal fields as erased "
            '(`data["~erased"]`, see CommitPage).'
        ),
    ),
    Operation(
        "post",
        "/api/tasks",
        "createTask",
        "tasks",
        "Create a task",
        (
            Reply(
                201,
                "Created; Location names the task",
                TaskOut,
                ("Location", *WRITE_HEADERS),
            ),
        ),
        {
            **BODY_PROBLEMS,
            400: "the body is not valid JSON, or Idempotency-Key is malformed",
            **TOKEN,
            409: "a concurrent write to the same task landed first",
            422: "a field is invalid, or the Idempotency-Key was used with another request",
            **WRITE_UNAVAILABLE,
        },
        parameters=("Idempotency-Key", "X-Causation-ID"),
        body=CreateTaskBody,
        example={"title": "Write the report", "tags": ["work"], "due_at": "2030-01-31T17:00:00Z"},
        description="A retry with the same Idempotency-Key and body answers the first result.",
    ),
    Operation(
        "get",
        "/api/tasks",
        "listTasks",
        "tasks",
        "The caller's tasks: filtered, searched, sorted, a page at a time",
        (Reply(200, "A page", TaskPage, (STALE_HEADER,)),),
        {
            400: "`next` is not a cursor of this sort order, or X-TaskFlow-Position is invalid",
            **TOKEN,
            422: "a parameter is unknown, malformed or (when not a list) repeated",
            **UNAVAILABLE,
        },
        parameters=("X-TaskFlow-Position",),
        query=TaskQuery,
    ),
    Operation(
        "get",
        "/api/tasks/{task_id}",
        "getTask",
        "tasks",
        "One task; with `as_of` or `version`, as it was then (from the log)",
        (
            Reply(
                200,
                "The task (a TaskSnapshot with `as_of`/`version`)",
                (TaskOut, TaskSnapshot),
                ("ETag", STALE_HEADER),
            ),
            Reply(304, "If-None-Match holds the current ETag", headers=("ETag",)),
        ),
        {
            400: "X-TaskFlow-Position is not a number",
            **TOKEN,
            404: "no such task (or another user's, or it did not exist then)",
            422: "`as_of` or `version` is invalid, `version` is beyond the task's last version, "
            "both are given (each is named), or other parameters come with them",
            **UNAVAILABLE,
        },
        parameters=("task_id", "If-None-Match", "X-TaskFlow-Position"),
        query=AsOfQuery,
    ),
    Operation(
        "patch",
        "/api/tasks/{task_id}",
        "changeTask",
        "tasks",
        "Change a task (JSON merge patch)",
        (Reply(200, "Changed", TaskOut, WRITE_HEADERS),),
        {
            **TARGET_PROBLEMS,
            400: "malformed JSON, If-Match not an ETag, or Idempotency-Key malformed",
            409: "the task is deleted, or a concurrent change landed first",
            413: BODY_PROBLEMS[413],
            415: "the body is not application/json or application/merge-patch+json",
            422: "a field is invalid (each is named; null for `title`, `status` or `priority` "
            "too), or the Idempotency-Key was used with another request",
        },
        parameters=("task_id", "If-Match", "Idempotency-Key", "X-Causation-ID"),
        body=PatchTaskBody,
        example={"status": "done", "due_at": None},
        body_media_types=("application/merge-patch+json", JSON),
    ),
    Operation(
        "delete",
        "/api/tasks/{task_id}",
        "deleteTask",
        "tasks",
        "Delete a task (it can be restored)",
        (Reply(204, "Deleted", headers=WRITE_HEADERS),),
        {
            **TARGET_PROBLEMS,
            409: "the task is already deleted, or a concurrent change landed first",
            413: BODY_PROBLEMS[413],
        },
        parameters=("task_id", "If-Match", "Idempotency-Key", "X-Causation-ID"),
    ),
    Operation(
        "post",
        "/api/tasks/{task_id}/restore",
        "restoreTask",
        "tasks",
        "Restore a deleted task",
        (Reply(200, "Restored", TaskOut, WRITE_HEADERS),),
        {
            **TARGET_PROBLEMS,
            409: "the task is not deleted, or a concurrent change landed first",
            413: BODY_PROBLEMS[413],
        },
        parameters=("task_id", "If-Match", "Idempotency-Key", "X-Causation-ID"),
    ),
    Operation(
        "get",
        "/api/tasks/stats",
        "taskStats",
        "tasks",
        "Counts of the caller's tasks by status, and overdue",
        (Reply(200, "The counts", TaskStats, (STALE_HEADER,)),),
        {400: "X-TaskFlow-Position is not a number", **TOKEN, **UNAVAILABLE},
        parameters=("X-TaskFlow-Position",),
    ),
    Operation(
        "get",
        "/api/tasks/trash",
        "listTrash",
        "tasks",
        "The caller's deleted tasks, most recently changed first (what restore can bring back)",
        (
            Reply(
                200,
                "A page; each task's version is the one to restore with",
                TaskPage,
                (STALE_HEADER,),
            ),
        ),
        {
            400: "`next` is not a cursor of this list",
            **TOKEN,
            422: "a parameter is unknown or invalid",
            **UNAVAILABLE,
        },
        query=TrashQuery,
    ),
    Operation(
        "get",
        "/api/tasks/tags",
        "listTags",
        "tasks",
        "The tags of the caller's live tasks, each with how many carry it",
        (Reply(200, "Most used first", TagList, (STALE_HEADER,)),),
        TOKEN | UNAVAILABLE,
    ),
    Operation(
        "post",
        TICKETS_PATH,
        "createStreamTicket",
        "changes",
        "A one-time ticket to open a change feed with EventSource (which cannot send headers)",
        (Reply(201, "The ticket", StreamTicket),),
        TOKEN | UNAVAILABLE,
        description="The ticket opens one stream, as the caller, within `expires_in` seconds "
        "(STREAM_TICKET_TTL_SECONDS); the stream still ends when the caller's token expires or "
        "is logged out.",
    ),
    Operation(
        "get",
        TASK_CHANGES_PATH,
        "taskChanges",
        "changes",
        "The caller's task changes, live, resumable by position (server-sent events)",
        (Reply(200, "The stream", TaskChangeEvent, media_type=EVENT_STREAM),),
        STREAM_PROBLEMS,
        parameters=("Last-Event-ID",),
        query=ChangesQuery,
        security=STREAM_SECURITY,
        description=CHANGE_EVENTS
        + ' A change\'s `data`: `{"id": task id, "etag": the task\'s ETag, "deleted": '
        'bool, "task": the task as GET /api/tasks/{task_id} shows it (null when deleted)}`.',
    ),
    Operation(
        "get",
        AUDIT_CHANGES_PATH,
        "auditChanges",
        "changes",
        "Every commit of the log, live, resumable by position (server-sent events), for auditors",
        (Reply(200, "The stream", AuditChangeEvent, media_type=EVENT_STREAM),),
        STREAM_PROBLEMS | {403: AUDITOR[403]},
        parameters=("Last-Event-ID",),
        query=ChangesQuery,
        security=STREAM_SECURITY,
        description=CHANGE_EVENTS
        + " A change's `data`: the commit, as an item of GET /api/audit/events.",
    ),
    Operation(
        "get",
        "/api/tasks/{task_id}/history",
        "taskHistory",
        "audit",
        "Who changed the caller's task, when, and how (from the log)",
        (Reply(200, "A page of the history", TaskHistoryPage),),
        {
            **TOKEN,
            404: "no such task (or another user's)",
            422: "a parameter is unknown or invalid, or `after_version` is beyond the task's "
            "last version",
            **UNAVAILABLE,
        },
        parameters=("task_id",),
        query=HistoryQuery,
    ),
    Operation(
        "get",
        "/api/audit/events",
        "auditEvents",
        "audit",
        "The global event log in order, for auditors",
        (Reply(200, "A page of commits", CommitPage),),
        {**AUDITOR, 422: "a parameter is unknown or invalid", **UNAVAILABLE},
        query=FeedQuery,
        description=FEED_PAGES,
    ),
    Operation(
        "get",
        "/api/audit/projections",
        "auditProjections",
        "audit",
        "Each projection's position, lag and lease holder, for auditors",
        (Reply(200, "The projections", ProjectionList),),
        AUDITOR | UNAVAILABLE,
    ),
    Operation(
        "post",
        VERIFICATIONS_PATH,
        "startVerification",
        "audit",
        "Start `taskflow audit verify` in the background, for auditors",
        (
            Reply(202, "Started; Location names the job", Verification, ("Location",)),
            Reply(
                200,
                "One is running already (in any API process): that one",
                Verification,
                ("Location",),
            ),
        ),
        AUDITOR | UNAVAILABLE,
        description=(
            "One verification runs at a time across every API process (a unique slot decides "
            "it). It reads the whole log once, as the CLI does: the hash chains, the seals, "
            "contiguity, then every task view against the log. Poll the job for its progress "
            "and result."
        ),
    ),
    Operation(
        "get",
        VERIFICATIONS_PATH,
        "listVerifications",
        "audit",
        "The latest verifications, for auditors",
        (Reply(200, "Newest first, at most 10", VerificationList),),
        AUDITOR | UNAVAILABLE,
    ),
    Operation(
        "get",
        VERIFICATIONS_PATH + "/{job_id}",
        "getVerification",
        "audit",
        "One verification: its progress, or its result, for auditors",
        (Reply(200, "The job", Verification),),
        {**AUDITOR, 404: "no such job", **UNAVAILABLE},
        parameters=("job_id",),
    ),
    Operation(
        "get",
        "/",
        "console",
        "console",
        "The web console (a page of static files; no script inline, no CDN)",
        (Reply(200, "The page", media_type="text/html", headers=(FILE_ETAG,)),),
        security=PUBLIC,
        description="Served with its own Content-Security-Policy: scripts, styles and "
        "connections of this origin only.",
    ),
    Operation(
        "get",
        ASSETS_PATH,
        "consoleAsset",
        "console",
        "One of the console's files",
        (
            Reply(
                200,
                "The file",
                media_types=tuple(
                    dict.fromkeys(t for t in CONTENT_TYPES.values() if t != "text/html")
                ),
                headers=(FILE_ETAG,),
            ),
            Reply(304, "If-None-Match holds the current ETag", headers=(FILE_ETAG,)),
        ),
        {404: "no such file"},
        parameters=("asset_name", "If-None-Match"),
        security=PUBLIC,
    ),
    Operation(
        "get",
        "/api/audit/streams/{stream_id}",
        "auditStream",
        "audit",
        "Every commit of one stream (task-… or user-…), for auditors",
        (Reply(200, "The stream's commits; `next_after` is null", CommitPage),),
        {**AUDITOR, 404: "no such stream", **UNAVAILABLE},
        parameters=("stream_id",),
    ),
)

_QUERY_NOTES = {
    "status": "repeat it or separate values by commas",
    "tags": "every tag must be on the task; repeat it or separate values by commas",
    "q": "whole words (case-folded) of title, description and tags; all must match "
    "(a `q` with no word in it, such as `.*`, narrows nothing)",
    "overdue": "due in the past and not done (or, false: the opposite)",
    "next": "the `next` of the previous page, with the same sort and order",
    "as_of": "the task as it was at this moment (with a time zone); not with `version`",
    "version": "the task as it was at this version, at most its last (422 beyond it); "
    "not with `as_of`",
    "after_version": "only events after this version, at most the task's last (422 beyond it)",
    "after": "only commits after this global position (the previous page's `next_after`; the "
    "change feeds: resume after it, Last-Event-ID wins over it)",
    "ticket": "a one-time ticket from POST /api/stream-tickets (EventSource cannot send headers)",
}
_QUERY_NAMES = {"cursor": "next"}  # TaskQuery field -> query parameter


# -- reusable pieces: parameters, headers, problem responses, security schemes --------------------


def _pattern(regex: str) -> dict[str, str]:
    return {"type": "string", "pattern": regex}


def _header_param(name: str, schema: dict[str, Any], why: str, *, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": why,
    }


PARAMETERS: dict[str, Any] = {
    "task_id": {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": _pattern(_TASK_ID.pattern),
        "description": "32 hex digits; anything else is a 404",
    },
    "stream_id": {
        "name": "stream_id",
        "in": "path",
        "required": True,
        "schema": _pattern(_STREAM_ID.pattern),
        "description": "`task-<id>` or `user-<id>`",
    },
    "job_id": {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": _pattern(r"^[0-9a-f]{32}$"),
        "description": "a verification's id",
    },
    "asset_name": {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": asset_names()},
        "description": "a file of the console; anything else is a 404",
    },
    "If-Match": _header_param(
        "If-Match", _pattern(_ETAG.pattern), "the ETag the change is based on", required=True
    ),
    "X-Requested-With": _header_param(
        "X-Requested-With",
        {"type": "string", "minLength": 1},
        "any value; required when the request has no Origin header (a browser sends Origin, "
        "and another site cannot add this header without a CORS preflight)",
    ),
    "If-None-Match": _header_param(
        "If-None-Match", {"type": "string"}, "ETags the client has; a match answers 304"
    ),
    "Idempotency-Key": _header_param(
        "Idempotency-Key",
        _pattern(_IDEMPOTENCY_KEY.pattern),
        "a retry with the same key and request is answered with the first result; the same "
        "request is the method, path and the body's parsed values (whitespace, key order and "
        "equivalent spellings do not matter)",
    ),
    "X-Causation-ID": _header_param(
        "X-Causation-ID",
        _pattern(r"^[A-Za-z0-9._:-]{1,128}$"),
        "the message that caused this request; recorded in the event metadata",
    ),
    "Last-Event-ID": _header_param(
        "Last-Event-ID",
        _pattern(r"^[0-9]{1,18}$"),
        "the last event's id (a position): resume after it",
    ),
    POSITION_HEADER: _header_param(
        POSITION_HEADER,
        _pattern(r"^[0-9]{1,18}$"),
        "a position an earlier write returned: wait (bounded) until reads reflect it",
    ),
}

_ID = _pattern(r"^[A-Za-z0-9._:-]{1,128}$")
HEADERS: dict[str, Any] = {
    "ETag": {"description": "the task's version", "schema": _pattern(r'^"[0-9]+"$')},
    "FileETag": {"description": "the file's content hash", "schema": _pattern(r'^"[0-9a-f]+"$')},
    "Location": {"description": "the new resource", "schema": {"type": "string"}},
    POSITION_HEADER: {
        "description": "the commit's place in the global log (when the write appended one)",
        "schema": _pattern(r"^[0-9]+$"),
    },
    STALE_HEADER: {
        "description": "the read model did not reach X-TaskFlow-Position in time",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Idempotent-Replayed": {
        "description": "the answer to an earlier request with this Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Set-Cookie": {
        "description": f"the refresh token: `{REFRESH_COOKIE}`, HttpOnly, SameSite=Strict",
        "required": True,
        "schema": _pattern(f"^{REFRESH_COOKIE}="),
    },
    REQUEST_ID: {"description": "this request's id", "required": True, "schema": _ID},
    CORRELATION_ID: {"description": "the correlation id", "required": True, "schema": _ID},
    "WWW-Authenticate": {
        "description": "the Bearer challenge (RFC 6750)",
        "required": True,
        "schema": _pattern("^Bearer "),
    },
    "Retry-After": {"description": "seconds", "required": True, "schema": _pattern("^[0-9]+$")},
    **{
        name: {"description": "RFC draft rate-limit fields", "schema": _pattern("^[0-9]+$")}
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
    },
}
ALWAYS_HEADERS = (REQUEST_ID, CORRELATION_ID)

# status -> (components.responses name, description, headers beyond ALWAYS_HEADERS)
PROBLEM_RESPONSES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("BadRequest", "The request is malformed", ()),
    401: ("Unauthorized", "Authentication failed", ("WWW-Authenticate",)),
    403: ("Forbidden", "The caller may not do this", ()),
    404: ("NotFound", "No such resource", ()),
    409: ("Conflict", "The resource's state does not allow this", ()),
    412: ("PreconditionFailed", "If-Match is stale", ("ETag",)),
    413: ("ContentTooLarge", "The body is too large", ()),
    415: ("UnsupportedMediaType", "The body's media type is not accepted", ()),
    422: ("UnprocessableContent", "The request is not valid", ()),
    428: ("PreconditionRequired", "If-Match is required", ()),
    429: (
        "TooManyRequests",
        "Rate limit exceeded (per IP on login and register, per user elsewhere; a login also "
        "per account)",
        ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"),
    ),
    503: ("ServiceUnavailable", "A backing service is unavailable", ("Retry-After",)),
}

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "refreshCookie": {"type": "apiKey", "in": "cookie", "name": REFRESH_COOKIE},
    "streamTicket": {"type": "apiKey", "in": "query", "name": "ticket"},
}

DESCRIPTION = f"""\
An async, event-sourced task backend. Every error is `{PROBLEM_JSON}` (RFC 9457) with a stable
`type` (`{PROBLEM_TYPE_BASE}<kind>`). Every response carries `{REQUEST_ID}` and `{CORRELATION_ID}`
(taken from the request when well-formed). Every write answers with `{POSITION_HEADER}`; send it
back on a read to read your writes (`{STALE_HEADER}: true` if that could not happen in time).
Rate-limited responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
CORS preflight (`OPTIONS`) and `HEAD` of every `GET` are answered as well. A request the HTTP
server cannot parse (a request line or a header over 8190 bytes, malformed HTTP) is refused with
a plain-text 400 before it reaches the API.
"""


# -- building the document ------------------------------------------------------------------------


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation, schemas generated from the pydantic models."""
    refs, schemas = _component_schemas()
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "TaskFlow API",
            "version": taskflow.__version__,
            "description": DESCRIPTION,
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in OPERATIONS)],
        "security": [{"bearerAuth": []}],
        "paths": _paths(refs, schemas),
        "components": {
            "schemas": schemas,
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "responses": {
                name: _problem_response(status)
                for status, (name, _, _) in PROBLEM_RESPONSES.items()
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
    return copy.deepcopy(document)  # shares nothing with the module's constants


Refs = dict[type[BaseModel], dict[str, Any]]


def _component_schemas() -> tuple[Refs, dict[str, Any]]:
    """Every model's schema under components/schemas: requests as validated, replies as sent."""
    requests: list[type[BaseModel]] = [
        model for op in OPERATIONS for model in (op.body, op.query) if model is not None
    ]
    replies: list[type[BaseModel]] = [Problem, *EVENT_PAYLOADS]
    replies += [model for op in OPERATIONS for model in _reply_models(op)]
    wanted: dict[type[BaseModel], JsonSchemaMode] = {model: "serialization" for model in replies}
    wanted |= {model: "validation" for model in requests}
    mapping, defs = models_json_schema(list(wanted.items()), ref_template=REF)
    refs = {model: mapping[(model, mode)] for model, mode in wanted.items()}
    return refs, defs.get("$defs", {})


def _reply_models(op: Operation) -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for reply in op.replies:
        if isinstance(reply.body, tuple):
            models.extend(reply.body)
        elif reply.body is not None:
            models.append(reply.body)
    return models


def _paths(refs: Refs, schemas: dict[str, Any]) -> dict[str, Any]:
    models = dict.fromkeys(op.query for op in OPERATIONS if op.query)  # one may serve several
    queries = {model: _query_parameters(_take(refs[model], schemas)) for model in models}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        query = queries[op.query] if op.query else []
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs, query)
    return paths


def _take(ref: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A query model's schema, removed from the components: it is documented as parameters."""
    schema: dict[str, Any] = schemas.pop(ref["$ref"].rsplit("/", 1)[1])
    return schema


def _query_parameters(model_schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(model_schema.get("required", ()))
    return [
        _query_parameter(
            _QUERY_NAMES.get(name, name), _untitled(_non_null(schema)), name in required
        )
        for name, schema in model_schema["properties"].items()
    ]


def _query_parameter(name: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
    }
    if schema.get("type") == "array":
        parameter |= {"style": "form", "explode": True}
    if name in _QUERY_NOTES:
        parameter["description"] = _QUERY_NOTES[name]
    return parameter


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's name says what the model field's title ("Q", "Cursor") would."""
    return {key: value for key, value in schema.items() if key != "title"}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None = None` as a query parameter is just X, left out when not wanted."""
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k not in {"anyOf", "default"}}
    return {**rest, **branches[0]}


def _operation(op: Operation, refs: Refs, query: list[dict[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
        "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in op.parameters] + query,
        "responses": _responses(op, refs),
        "security": list(op.security),
    }
    if op.description:
        document["description"] = op.description
    if op.body is not None:
        example = {} if op.example is None else {"example": op.example}
        content = {media: {"schema": refs[op.body], **example} for media in op.body_media_types}
        document["requestBody"] = {"required": True, "content": content}
    return document


def _responses(op: Operation, refs: Refs) -> dict[str, Any]:
    responses = {str(reply.status): _reply(reply, refs) for reply in op.replies}
    problems = op.problems | ({429: ""} if op.rate_limited else {})
    for status in sorted(problems):
        ref: dict[str, str] = {"$ref": f"#/components/responses/{PROBLEM_RESPONSES[status][0]}"}
        if problems[status]:
            ref["description"] = problems[status]
        responses[str(status)] = ref
    return responses


def _reply(reply: Reply, refs: Refs) -> dict[str, Any]:
    document: dict[str, Any] = {
        "description": reply.description,
        "headers": _header_refs((*reply.headers, *ALWAYS_HEADERS)),
    }
    if reply.status in {204, 304}:
        return document
    if isinstance(reply.body, tuple):
        schema: dict[str, Any] = {"anyOf": [refs[model] for model in reply.body]}
    elif reply.body is not None:
        schema = refs[reply.body]
    else:
        schema = {"type": "object"} if reply.media_type == JSON else {"type": "string"}
    document["content"] = {
        media_type: {"schema": schema} for media_type in reply.media_types or (reply.media_type,)
    }
    return document


def _problem_response(status: int) -> dict[str, Any]:
    _, description, headers = PROBLEM_RESPONSES[status]
    return {
        "description": description,
        "headers": _header_refs((*headers, *ALWAYS_HEADERS)),
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}},
    }


def _header_refs(names: tuple[str, ...]) -> dict[str, Any]:
    """Each header by its component; `Name=Component` sends Name described by Component."""
    pairs = [name.partition("=")[::2] for name in names]
    return {name: {"$ref": f"#/components/headers/{ref or name}"} for name, ref in pairs}


# -- the HTML page --------------------------------------------------------------------------------

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace}pre{background:#f6f6f6;padding:.6rem;overflow:auto}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;
text-align:left;vertical-align:top}section{border-top:1px solid #ccc;margin-top:1.5rem}
.m{font-weight:bold;text-transform:uppercase}
"""
CSP = (
    "default-src 'none'; frame-ancestors 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    + "'"
)


def render_html(document: dict[str, Any]) -> str:
    """The document as one server-rendered page: every operation, then every schema."""
    e = html.escape
    parts = [
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{e(document['info']['title'])}"
        f"</title><style>{STYLE}</style><h1>{e(document['info']['title'])} "
        f"{e(document['info']['version'])}</h1><p>{e(document['info']['description'])}</p>"
        f'<p>Machine-readable: <a href="{OPENAPI_PATH}">{OPENAPI_PATH}</a></p><ul>'
    ]
    operations = [
        (path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()
    ]
    parts += [
        f'<li><a href="#{e(op["operationId"])}"><span class=m>{method}</span> {e(path)}</a>'
        f" — {e(op['summary'])}</li>"
        for path, method, op in operations
    ]
    parts.append("</ul>")
    parts += [_html_operation(path, method, op, document) for path, method, op in operations]
    parts.append("<h2>Schemas</h2>")
    parts += [
        f'<section id="schema-{e(name)}"><h3>{e(name)}</h3>'
        f"<pre>{e(_pretty(schema))}</pre></section>"
        for name, schema in document["components"]["schemas"].items()
    ]
    return "".join(parts) + "</html>"


def _html_operation(path: str, method: str, op: dict[str, Any], document: dict[str, Any]) -> str:
    e = html.escape
    components = document["components"]
    security = " or ".join(" + ".join(s) or "none" for s in op["security"])
    out = [
        f'<section id="{e(op["operationId"])}"><h2><span class=m>{method}</span> <code>{e(path)}'
        f"</code></h2><p>{e(op['summary'])}. {e(op.get('description', ''))}</p>"
        f"<p>Authentication: {e(security)}</p>"
    ]
    parameters = [_resolve(p, components) for p in op["parameters"]]
    if parameters:
        out.append("<h3>Parameters</h3><table><tr><th>name<th>in<th>required<th>schema<th>")
        out += [
            f"<tr><td><code>{e(p['name'])}</code><td>{e(p['in'])}"
            f"<td>{'yes' if p['required'] else ''}"
            f"<td>{_label(p['schema'])}<td>{e(p.get('description', ''))}"
            for p in parameters
        ]
        out.append("</table>")
    if "requestBody" in op:
        out.append("<h3>Request body</h3><table>")
        out += [
            f"<tr><td><code>{e(media)}</code><td>{_label(c['schema'])}"
            + (f"<td>example:<pre>{e(_pretty(c['example']))}</pre>" if "example" in c else "")
            for media, c in op["requestBody"]["content"].items()
        ]
        out.append("</table>")
    out.append("<h3>Responses</h3><table><tr><th>status<th>description<th>body<th>headers")
    for status, response in op["responses"].items():
        out.append(_html_response(status, response, components))
    out.append("</table></section>")
    return "".join(out)


def _html_response(status: str, response: dict[str, Any], components: dict[str, Any]) -> str:
    e = html.escape
    resolved = _resolve(response, components)
    description = response.get("description") or resolved["description"]
    bodies = ", ".join(
        f"<code>{e(media)}</code> {_label(c['schema'])}"
        for media, c in resolved.get("content", {}).items()
    )
    headers = ", ".join(
        f"<code>{e(h)}</code>" for h in resolved.get("headers", {}) if h not in ALWAYS_HEADERS
    )
    return f"<tr><td>{e(status)}<td>{e(description)}<td>{bodies}<td>{headers}"


def _resolve(item: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in item:
        return item
    _, _, kind, name = item["$ref"].split("/")
    resolved: dict[str, Any] = components[kind][name]
    return resolved


def _label(schema: dict[str, Any]) -> str:
    """A short, linked description of a schema: a name, a type, an enum, a pattern."""
    e = html.escape
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f'<a href="#schema-{e(name)}">{e(name)}</a>'
    if "anyOf" in schema:
        return " | ".join(_label(branch) for branch in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_label(schema.get('items', {}))}"
    facts = [str(schema.get("type", "any"))]
    facts += [
        f"{key} {schema[key]}"
        for key in ("format", "enum", "pattern", "minimum", "maximum", "maxLength", "default")
        if key in schema
    ]
    return e(", ".join(facts))


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# -- serving --------------------------------------------------------------------------------------


class OpenApiDocs:
    """The document and its page, built on first use and kept for the application's life."""

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        return build_document()

    @functools.cached_property
    def json(self) -> bytes:
        return orjson.dumps(self.document)

    @functools.cached_property
    def html(self) -> str:
        return render_html(self.document)


OPENAPI = web.AppKey("openapi", OpenApiDocs)


def setup_openapi_routes(app: web.Application) -> None:
    app[OPENAPI] = OpenApiDocs()
    app.router.add_get(OPENAPI_PATH, openapi_json)
    app.router.add_get(DOCS_PATH, api_docs)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[OPENAPI].json, content_type=JSON, headers={"Cache-Control": "no-cache"}
    )


async def api_docs(request: web.Request) -> web.Response:
    # Its own CSP: the page's one inline <style> is allowed by hash; no script may run.
    return web.Response(
        text=request.app[OPENAPI].html,
        content_type="text/html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
    )
