"""Task read endpoints: thin views over the read-side query functions."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from taskflow.api import keys
from taskflow.api.audit_routes import AsOfQuery, get_task_as_of
from taskflow.api.contracts import (
    IF_NONE_MATCH,
    TOKEN,
    UNAVAILABLE,
    Operation,
    Reply,
    Routes,
    header_parameter,
    pattern,
)
from taskflow.api.headers import POSITION_HEADER
from taskflow.api.headers import STALE_HEADER as STALE_HEADER
from taskflow.api.json_io import json_body_response, json_response, query_model
from taskflow.api.principal import GuardedCaller, guarded_caller, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import (
    TagList,
    TaskOut,
    TaskPage,
    TaskSnapshot,
    TaskStats,
    task_out_json,
)
from taskflow.api.task_writes import TASK_ID_PARAMETER, valid_task_id
from taskflow.commands.aggregates import TASK
from taskflow.commands.runner import load
from taskflow.projections.task_queries import (
    MAX_PAGE,
    CursorError,
    PageRenderer,
    TaskQuery,
    TaskReads,
    ViewJson,
)

_POSITION = re.compile(r"^[0-9]{1,18}$")
_LIST_PARAMS = {"status", "tags"}  # may repeat, or be comma-separated
_RENAMED = {"next": "cursor"}  # query parameter -> TaskQuery's field
_NEXT = "the `next` of the previous page, with the same sort and order"

ROUTES = Routes("tasks")
POSITION = header_parameter(
    POSITION_HEADER,
    pattern(_POSITION.pattern),
    "a position an earlier write returned: wait (bounded) until reads reflect it",
)


class TrashQuery(BaseModel):
    """GET /api/tasks/trash: a page of deleted tasks, most recently changed first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


def setup_task_read_routes(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks",
        "listTasks",
        "The caller's tasks: filtered, searched, sorted, a page at a time",
        (Reply(200, "A page", TaskPage, (STALE_HEADER,)),),
        {
            400: "`next` is not a cursor of this sort order, or X-TaskFlow-Position is invalid",
            **TOKEN,
            422: "a parameter is unknown, malformed or (when not a list) repeated",
            **UNAVAILABLE,
        },
        parameters=(POSITION,),
        query=TaskQuery,
        query_notes={
            "status": "repeat it or separate values by commas",
            "tags": "every tag must be on the task; repeat it or separate values by commas",
            "q": "whole words (case-folded) of title, description and tags; all must match "
            "(a `q` with no word in it, such as `.*`, narrows nothing)",
            "overdue": "due in the past and not done (or, false: the opposite)",
            "next": _NEXT,
        },
        query_renamed=_RENAMED,
    )
)
async def list_tasks(request: web.Request) -> web.Response:
    caller = await _caller(request)
    query = _query(request)
    try:
        served = await _reads(request).list_rendered(
            caller.user_id, query, datetime.now(UTC), caller.guard, LIST_PAGE, _position(request)
        )
    except CursorError as exc:
        raise Problem(400, "invalid-cursor", "Invalid cursor", str(exc)) from None
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_body_response(served.value, headers=headers)


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks/{task_id}",
        "getTask",
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
        parameters=(TASK_ID_PARAMETER, IF_NONE_MATCH, POSITION),
        query=AsOfQuery,
        query_notes={
            "as_of": "the task as it was at this moment (with a time zone); not with `version`",
            "version": "the task as it was at this version, at most its last (422 beyond it); "
            "not with `as_of`",
        },
    )
)
async def get_task(request: web.Request) -> web.Response:
    if "as_of" in request.query or "version" in request.query:
        user = await require_user(request)
        return await get_task_as_of(request, user, valid_task_id(request.match_info["task_id"]))
    caller = await _caller(request)
    task_id = valid_task_id(request.match_info["task_id"])
    position = _position(request)
    served = await _reads(request).get_json(caller.user_id, task_id, caller.guard, position)
    view, stale = served.value, served.stale
    if stale and position is not None:
        # The caller wrote at `position` and the read models are behind it (the projector lags,
        # or Redis lost its data): the task's own stream answers instead, never a bare 404. It
        # holds every write up to now, so it is stale only for a position no write was given.
        view = await _from_the_log(request, caller.user_id, task_id)
        allocated = await request.app[keys.SERVICES].store.allocated_position()
        stale = allocated is not None and position > allocated
    if view is None:
        detail = f"task {task_id!r} does not exist"
        raise Problem(404, "task-not-found", "Task not found", detail, headers=_stale(stale))
    etag = f'"{view["version"]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", **_stale(stale)}
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return json_response(task_out_json(view), headers=headers)


# Bump the name whenever the rendering changes: cached pages of the old one are then not read.
LIST_PAGE = PageRenderer("out1", task_out_json)


async def _caller(request: web.Request) -> GuardedCaller:
    """The caller, with the deny-list check left to the read's own Redis round trip.

    A read that waits for a position first (read-your-writes) checks the deny list before it
    waits, as every other endpoint does; its read checks once more, which costs little there.
    """
    caller = await guarded_caller(request)
    if POSITION_HEADER in request.headers:
        await require_user(request)
    return caller


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks/stats",
        "taskStats",
        "Counts of the caller's tasks by status, and overdue",
        (Reply(200, "The counts", TaskStats, (STALE_HEADER,)),),
        {400: "X-TaskFlow-Position is not a number", **TOKEN, **UNAVAILABLE},
        parameters=(POSITION,),
    )
)
async def task_stats(request: web.Request) -> web.Response:
    user = await require_user(request)
    served = await _reads(request).stats(user.user_id, datetime.now(UTC), _position(request))
    stats = served.value
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_response({"by_status": stats.by_status, "overdue": stats.overdue}, headers=headers)


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks/trash",
        "listTrash",
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
        query_notes={"next": _NEXT},
        query_renamed=_RENAMED,
    )
)
async def list_trash(request: web.Request) -> web.Response:
    """The caller's deleted tasks (what POST /api/tasks/{id}/restore can bring back)."""
    user = await require_user(request)
    trash = query_model(request, TrashQuery, renamed=_RENAMED)
    query = TaskQuery(sort="updated", order="desc", limit=trash.limit, cursor=trash.cursor)
    try:
        served = await _reads(request).trash(user.user_id, query, datetime.now(UTC))
    except CursorError as exc:
        raise Problem(400, "invalid-cursor", "Invalid cursor", str(exc)) from None
    page = served.value
    body = {
        "items": [task_out_json(view.model_dump(mode="json")) for view in page.items],
        "next": page.next_cursor,
    }
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_response(body, headers=headers)


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks/tags",
        "listTags",
        "The tags of the caller's live tasks, each with how many carry it",
        (Reply(200, "Most used first", TagList, (STALE_HEADER,)),),
        TOKEN | UNAVAILABLE,
    )
)
async def list_tags(request: web.Request) -> web.Response:
    """The tags on the caller's live tasks, each with how many carry it, most used first."""
    user = await require_user(request)
    served = await _reads(request).tags(user.user_id)
    ranked = sorted(served.value.items(), key=lambda pair: (-pair[1], pair[0]))
    body = {"items": [{"tag": tag, "count": count} for tag, count in ranked]}
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_response(body, headers=headers)


def _query(request: web.Request) -> TaskQuery:
    """Query parameters as a typed TaskQuery; unknown or malformed ones are a 422."""
    return query_model(request, TaskQuery, lists=_LIST_PARAMS, renamed=_RENAMED)


def _position(request: web.Request) -> int | None:
    """The position a client's earlier write returned, for read-your-writes (README)."""
    raw = request.headers.get(POSITION_HEADER)
    if raw is None:
        return None
    if not _POSITION.match(raw):  # ASCII digits only: str.isdigit() also accepts "²"
        raise Problem(
            400, "invalid-position", "Invalid position", f"{POSITION_HEADER} must be a number."
        )
    return int(raw)


def _stale(stale: bool) -> dict[str, str]:
    return {STALE_HEADER: "true"} if stale else {}


async def _from_the_log(request: web.Request, owner: str, task_id: str) -> ViewJson | None:
    """The task as its stream holds it now (the command side's cached state, else the log)."""
    state, _ = await load(request.app[keys.SERVICES].store, TASK, TASK.stream_id(task_id))
    if state is None or state.owner_id != owner or state.deleted:
        return None
    return state.model_dump(mode="json")


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _reads(request: web.Request) -> TaskReads:
    return request.app[keys.TASK_READS]
