"""Task write endpoints: parse, build a command, run its handler, answer with version headers."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from taskflow.api import keys
from taskflow.api.contracts import (
    BODY_PROBLEMS,
    JSON,
    TOKEN,
    Operation,
    Reply,
    Routes,
    header_parameter,
    path_parameter,
    pattern,
)
from taskflow.api.headers import POSITION_HEADER as POSITION_HEADER
from taskflow.api.json_io import json_response, read_model
from taskflow.api.middlewares import SAFE_ID, client_id
from taskflow.api.principal import Principal, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import CreateTaskBody, PatchTaskBody, TaskOut, task_out_json
from taskflow.commands.runner import Context, Outcome
from taskflow.commands.task import ChangeTask, CreateTask, DeleteTask, RestoreTask, TaskState
from taskflow.commands.task_handlers import handle_change_task, handle_create_task
from taskflow.events.store import EventStore

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_ETAG = re.compile(r'^(?:W/)?"(\d{1,18})"$')
_TASK_ID = re.compile(r"[0-9a-f]{32}")

ROUTES = Routes("tasks")
TASK_ID_PARAMETER = path_parameter(
    "task_id", pattern(_TASK_ID.pattern), "32 hex digits; anything else is a 404"
)
IF_MATCH = header_parameter(
    "If-Match", pattern(_ETAG.pattern), "the ETag the change is based on", required=True
)
IDEMPOTENCY_KEY = header_parameter(
    "Idempotency-Key",
    pattern(_IDEMPOTENCY_KEY.pattern),
    "a retry with the same key and request is answered with the first result; the same "
    "request is the method, path and the body's parsed values (whitespace, key order and "
    "equivalent spellings do not matter)",
)
CAUSATION_ID = header_parameter(
    "X-Causation-ID",
    pattern(SAFE_ID.pattern),
    "the message that caused this request; recorded in the event metadata",
)
WRITE_HEADERS = ("ETag", POSITION_HEADER, "Idempotent-Replayed")
# docs/reliability.md, "503 on a write": which 503s may follow a stored commit, and what to do.
WRITE_UNAVAILABLE = {
    503: "MongoDB or Redis is unavailable, tokens cannot be checked, or the log could not place "
    "or confirm the write in time. The write may have been committed even so (the log insert "
    "was sent, its answer was lost). Retry after Retry-After with the same Idempotency-Key and "
    "body: a stored write is answered as it was first (Idempotent-Replayed), an unstored one "
    "is applied. Without a key, re-read the task (its history is read from the log) and retry "
    "with If-Match only if the change is not there"
}
# A change to one task: what its If-Match, Idempotency-Key and the task itself can be refused for.
TARGET_PROBLEMS = {
    400: "If-Match is not an ETag, or Idempotency-Key is malformed",
    **TOKEN,
    404: "no such task (or another user's)",
    412: "If-Match names an older version; ETag gives the current one",
    422: "this Idempotency-Key was used with another request",
    428: "If-Match is missing",
    **WRITE_UNAVAILABLE,
}
TARGET_PARAMETERS = (TASK_ID_PARAMETER, IF_MATCH, IDEMPOTENCY_KEY, CAUSATION_ID)


def setup_task_write_routes(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "post",
        "/api/tasks",
        "createTask",
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
        parameters=(IDEMPOTENCY_KEY, CAUSATION_ID),
        body=CreateTaskBody,
        example={"title": "Write the report", "tags": ["work"], "due_at": "2030-01-31T17:00:00Z"},
        description="A retry with the same Idempotency-Key and body answers the first result.",
    )
)
async def create_task(request: web.Request) -> web.Response:
    user = await require_user(request)
    body = await read_model(request, CreateTaskBody)
    command = CreateTask(task_id=uuid.uuid4().hex, owner_id=user.user_id, **body.model_dump())
    # Defaults included: a field left out and the same field sent with its default are one
    # request (the task they create is the same).
    context = _context(request, user, lambda: body.model_dump(mode="json"))
    outcome = await handle_create_task(_store(request), command, context, _now())
    assert outcome.state is not None
    response = _written(outcome, status=201)
    response.headers["Location"] = f"/api/tasks/{outcome.state.task_id}"
    return response


@ROUTES.route(
    Operation(
        "patch",
        "/api/tasks/{task_id}",
        "changeTask",
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
        parameters=TARGET_PARAMETERS,
        body=PatchTaskBody,
        example={"status": "done", "due_at": None},
        body_media_types=("application/merge-patch+json", JSON),
    )
)
async def change_task(request: web.Request) -> web.Response:
    user, task_id, expected = await _target(request)
    body = await read_model(request, PatchTaskBody)
    command = ChangeTask(task_id=task_id, **body.model_dump(exclude_unset=True))
    # Only the fields sent: in a merge patch, a field left out is not its default.
    context = _context(request, user, lambda: body.model_dump(mode="json", exclude_unset=True))
    outcome = await handle_change_task(_store(request), command, context, _now(), expected)
    return _written(outcome)


@ROUTES.route(
    Operation(
        "delete",
        "/api/tasks/{task_id}",
        "deleteTask",
        "Delete a task (it can be restored)",
        (Reply(204, "Deleted", headers=WRITE_HEADERS),),
        {
            **TARGET_PROBLEMS,
            409: "the task is already deleted, or a concurrent change landed first",
            413: BODY_PROBLEMS[413],
        },
        parameters=TARGET_PARAMETERS,
    )
)
async def delete_task(request: web.Request) -> web.Response:
    return await _lifecycle(request, DeleteTask, status=204)


@ROUTES.route(
    Operation(
        "post",
        "/api/tasks/{task_id}/restore",
        "restoreTask",
        "Restore a deleted task",
        (Reply(200, "Restored", TaskOut, WRITE_HEADERS),),
        {
            **TARGET_PROBLEMS,
            409: "the task is not deleted, or a concurrent change landed first",
            413: BODY_PROBLEMS[413],
        },
        parameters=TARGET_PARAMETERS,
    )
)
async def restore_task(request: web.Request) -> web.Response:
    return await _lifecycle(request, RestoreTask, status=200)


async def _lifecycle(
    request: web.Request, command: type[DeleteTask | RestoreTask], status: int
) -> web.Response:
    user, task_id, expected = await _target(request)
    outcome = await handle_change_task(
        _store(request),
        command(task_id=task_id),
        _context(request, user, lambda: None),
        _now(),
        expected,
    )
    return _written(outcome, status=status)


async def _target(request: web.Request) -> tuple[Principal, str, int]:
    """The caller, the task id from the path, and the version its If-Match pins (required)."""
    user = await require_user(request)
    task_id = valid_task_id(request.match_info["task_id"])
    if_match = request.headers.get("If-Match")
    if if_match is None:
        raise Problem(
            428,
            "precondition-required",
            "If-Match required",
            "Send If-Match with the task's ETag, so that concurrent changes are not lost.",
        )
    match = _ETAG.match(if_match.strip())
    if match is None:
        raise Problem(400, "invalid-if-match", "Invalid If-Match", 'Expected an ETag like "3".')
    return user, task_id, int(match.group(1))


def valid_task_id(task_id: str) -> str:
    """Ids are 32 hex digits; anything else cannot name a task (and never reaches a query)."""
    if not _TASK_ID.fullmatch(task_id):
        raise Problem(404, "task-not-found", "Task not found", "No such task.")
    return task_id


def _context(
    request: web.Request, user: Principal, fields: Callable[[], dict[str, Any] | None]
) -> Context:
    """The command's metadata; `fields`, the body as validated (None: the route reads none),
    asked for only when an Idempotency-Key needs the request's fingerprint."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise Problem(
            400,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            "Use 1 to 255 visible ASCII characters.",
        )
    return Context(
        actor=user.user_id,
        request_id=request[keys.REQUEST_ID],
        correlation_id=request[keys.CORRELATION_ID],
        causation_id=client_id(request, "X-Causation-ID"),
        idempotency_key=key,
        # Only a key is ever compared with it: without one, the commit stores "".
        fingerprint=""
        if key is None
        else request_fingerprint(request.method, request.path, fields()),
    )


def request_fingerprint(method: str, path: str, fields: dict[str, Any] | None) -> str:
    """What an Idempotency-Key's request is: method, path and the parsed, validated body.

    The body as canonical JSON (sorted keys, no whitespace) of its validated values, not its
    bytes: the same command sent again with other spacing, key order or an equivalent spelling
    (a tag's case, a due date's time zone) is the same request and replays; another command
    with the key is refused (422 idempotency-key-reused).
    """
    body = b"" if fields is None else orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _written(outcome: Outcome[TaskState], status: int = 200) -> web.Response:
    headers = {"ETag": f'"{outcome.version}"', "Cache-Control": "no-store"}
    if outcome.position is not None:
        headers[POSITION_HEADER] = str(outcome.position)
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    if status == 204 or outcome.state is None:
        return web.Response(status=status, headers=headers)
    view = outcome.state.model_dump(mode="json")
    return json_response(task_out_json(view), status=status, headers=headers)


def _store(request: web.Request) -> EventStore:
    return request.app[keys.SERVICES].store


def _now() -> datetime:
    return datetime.now(UTC)
