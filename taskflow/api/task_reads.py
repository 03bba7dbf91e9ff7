"""Task read endpoints: thin views over the read-side query functions."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from taskflow.api import keys
from taskflow.api.audit_routes import get_task_as_of
from taskflow.api.headers import POSITION_HEADER
from taskflow.api.headers import STALE_HEADER as STALE_HEADER
from taskflow.api.json_io import json_body_response, json_response, query_model
from taskflow.api.principal import GuardedCaller, guarded_caller, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import task_out_json
from taskflow.api.task_writes import valid_task_id
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


class TrashQuery(BaseModel):
    """GET /api/tasks/trash: a page of deleted tasks, most recently changed first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


def setup_task_read_routes(app: web.Application) -> None:
    app.router.add_get("/api/tasks", list_tasks)
    app.router.add_get("/api/tasks/stats", task_stats)
    app.router.add_get("/api/tasks/trash", list_trash)
    app.router.add_get("/api/tasks/tags", list_tags)
    app.router.add_get("/api/tasks/{task_id}", get_task)


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


def _render_page(page: ViewJson) -> bytes:
    items = [task_out_json(view) for view in page["items"]]
    return orjson.dumps({"items": items, "next": page["next"]})


# Bump the name whenever the rendering changes: cached pages of the old one are then not read.
LIST_PAGE = PageRenderer("out1", _render_page)


async def _caller(request: web.Request) -> GuardedCaller:
    """The caller, with the deny-list check left to the read's own Redis round trip.

    A read that waits for a position first (read-your-writes) checks the deny list before it
    waits, as every other endpoint does; its read checks once more, which costs little there.
    """
    caller = await guarded_caller(request)
    if POSITION_HEADER in request.headers:
        await require_user(request)
    return caller


async def list_trash(request: web.Request) -> web.Response:
    """The caller's deleted tasks (what POST /api/tasks/{id}/restore can bring back)."""
    user = await require_user(request)
    trash = query_model(request, TrashQuery, renamed={"next": "cursor"})
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


async def list_tags(request: web.Request) -> web.Response:
    """The tags on the caller's live tasks, each with how many carry it, most used first."""
    user = await require_user(request)
    served = await _reads(request).tags(user.user_id)
    ranked = sorted(served.value.items(), key=lambda pair: (-pair[1], pair[0]))
    body = {"items": [{"tag": tag, "count": count} for tag, count in ranked]}
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_response(body, headers=headers)


async def task_stats(request: web.Request) -> web.Response:
    user = await require_user(request)
    served = await _reads(request).stats(user.user_id, datetime.now(UTC), _position(request))
    stats = served.value
    headers = {"Cache-Control": "private, no-cache", **_stale(served.stale)}
    return json_response({"by_status": stats.by_status, "overdue": stats.overdue}, headers=headers)


def _query(request: web.Request) -> TaskQuery:
    """Query parameters as a typed TaskQuery; unknown or malformed ones are a 422."""
    return query_model(request, TaskQuery, lists=_LIST_PARAMS, renamed={"next": "cursor"})


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
