"""Task read endpoints: thin views over the read-side query functions."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
from aiohttp import web

from taskflow.api import keys
from taskflow.api.audit_routes import get_task_as_of
from taskflow.api.headers import POSITION_HEADER
from taskflow.api.headers import STALE_HEADER as STALE_HEADER
from taskflow.api.json_io import json_body_response, json_response, query_model
from taskflow.api.principal import GuardedCaller, guarded_caller, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import task_out_json
from taskflow.api.task_writes import valid_task_id
from taskflow.projections.task_queries import (
    CursorError,
    PageRenderer,
    TaskQuery,
    TaskReads,
    ViewJson,
)

_POSITION = re.compile(r"^[0-9]{1,18}$")
_LIST_PARAMS = {"status", "tags"}  # may repeat, or be comma-separated


def setup_task_read_routes(app: web.Application) -> None:
    app.router.add_get("/api/tasks", list_tasks)
    app.router.add_get("/api/tasks/stats", task_stats)
    app.router.add_get("/api/tasks/{task_id}", get_task)


async def get_task(request: web.Request) -> web.Response:
    if "as_of" in request.query or "version" in request.query:
        user = await require_user(request)
        return await get_task_as_of(request, user, valid_task_id(request.match_info["task_id"]))
    caller = await _caller(request)
    task_id = valid_task_id(request.match_info["task_id"])
    headers = await _read_your_writes(request)
    view = await _reads(request).get_json(caller.user_id, task_id, caller.guard)
    if view is None:
        raise Problem(404, "task-not-found", "Task not found", f"task {task_id!r} does not exist")
    etag = f'"{view["version"]}"'
    headers.update({"ETag": etag, "Cache-Control": "private, no-cache"})
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return json_response(task_out_json(view), headers=headers)


async def list_tasks(request: web.Request) -> web.Response:
    caller = await _caller(request)
    query = _query(request)
    headers = await _read_your_writes(request)
    try:
        body = await _reads(request).list_rendered(
            caller.user_id, query, datetime.now(UTC), caller.guard, LIST_PAGE
        )
    except CursorError as exc:
        raise Problem(400, "invalid-cursor", "Invalid cursor", str(exc)) from None
    headers["Cache-Control"] = "private, no-cache"
    return json_body_response(body, headers=headers)


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


async def task_stats(request: web.Request) -> web.Response:
    user = await require_user(request)
    headers = await _read_your_writes(request)
    stats = await _reads(request).stats(user.user_id, datetime.now(UTC))
    headers["Cache-Control"] = "private, no-cache"
    return json_response({"by_status": stats.by_status, "overdue": stats.overdue}, headers=headers)


def _query(request: web.Request) -> TaskQuery:
    """Query parameters as a typed TaskQuery; unknown or malformed ones are a 422."""
    return query_model(request, TaskQuery, lists=_LIST_PARAMS, renamed={"next": "cursor"})


async def _read_your_writes(request: web.Request) -> dict[str, str]:
    """Wait (bounded) for the position a client's earlier write returned; say if we could not."""
    raw = request.headers.get(POSITION_HEADER)
    if raw is None:
        return {}
    if not _POSITION.match(raw):  # ASCII digits only: str.isdigit() also accepts "²"
        raise Problem(
            400, "invalid-position", "Invalid position", f"{POSITION_HEADER} must be a number."
        )
    settings = request.app[keys.SETTINGS]
    position, reads = int(raw), _reads(request)
    if await reads.projected_position() >= position:
        return {}
    # A position beyond every one the log has handed out cannot be waited for: stale, at once.
    allocated = await request.app[keys.SERVICES].store.positions.allocated()
    if allocated is not None and position > allocated:
        return {STALE_HEADER: "true"}
    reached = await reads.wait_for(position, settings.read_your_writes_timeout_seconds)
    return {} if reached else {STALE_HEADER: "true"}


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _reads(request: web.Request) -> TaskReads:
    return request.app[keys.TASK_READS]
