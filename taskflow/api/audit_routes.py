"""Auditor endpoints: task history, time travel, the global feed and whole streams."""

from __future__ import annotations

import re
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from taskflow.api import keys
from taskflow.api.audit_schemas import CommitPage, TaskHistoryPage
from taskflow.api.contracts import (
    AUDITOR_PROBLEMS,
    TOKEN,
    UNAVAILABLE,
    Operation,
    Reply,
    Routes,
    path_parameter,
    pattern,
)
from taskflow.api.json_io import json_response, query_model
from taskflow.api.middlewares import fields_problem
from taskflow.api.principal import Principal, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import TaskOut
from taskflow.api.task_writes import TASK_ID_PARAMETER, valid_task_id
from taskflow.commands.task import TaskState
from taskflow.events.codec import commit_to_json
from taskflow.events.records import Commit
from taskflow.events.store import EventStore
from taskflow.events.task_values import UtcDatetime
from taskflow.projections.history import FEED_GAPS_MAX, feed_page, task_as_of, task_history

AUDITOR = "auditor"
_STREAM_ID = re.compile(r"^(task|user)-[0-9a-f]{32}$")


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    after_version: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class AsOfQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    as_of: UtcDatetime | None = None  # an instant that exists in UTC, else 422 (not a 500)
    version: Annotated[int, Field(ge=1, le=2**62)] | None = None


class FeedQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    after: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


ROUTES = Routes("audit")
STREAM_ID = path_parameter("stream_id", pattern(_STREAM_ID.pattern), "`task-<id>` or `user-<id>`")
FEED_PAGES = (
    "A page holds up to `limit` commits after `after` and passes over the gaps between them "
    "(positions no commit used), so it is empty only at the head. Read on with "
    "`after=next_after` until `end` is true: the page then reaches the log's settled head "
    "(every position up to `next_after` holds its final commit or gap, and nothing after it "
    "is settled yet). Poll from there for newer commits. A page passes over at most "
    f"{FEED_GAPS_MAX:,} gaps: after a longer run of them, a page may be empty with `end` false."
)


def setup_audit_routes(app: web.Application) -> None:
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        "/api/tasks/{task_id}/history",
        "taskHistory",
        "Who changed the caller's task, when, and how (from the log)",
        (Reply(200, "A page of the history", TaskHistoryPage),),
        {
            **TOKEN,
            404: "no such task (or another user's)",
            422: "a parameter is unknown or invalid, or `after_version` is beyond the task's "
            "last version",
            **UNAVAILABLE,
        },
        parameters=(TASK_ID_PARAMETER,),
        query=HistoryQuery,
        query_notes={
            "after_version": "only events after this version, at most the task's last (422 "
            "beyond it)"
        },
    )
)
async def get_history(request: web.Request) -> web.Response:
    """The owner's view of who changed their task, when, and how (from the log)."""
    user = await require_user(request)
    task_id = valid_task_id(request.match_info["task_id"])
    query = query_model(request, HistoryQuery)
    entries = await task_history(_store(request), task_id)
    if not entries or entries[0].changes.get("owner_id") != user.user_id:
        raise _task_not_found()
    if query.after_version > entries[-1].version:
        raise _beyond("after_version", entries[-1].version)
    page = [e for e in entries if e.version > query.after_version][: query.limit]
    more = bool(page) and page[-1].version < entries[-1].version
    body = {
        "items": [entry.model_dump(mode="json") for entry in page],
        "next": str(page[-1].version) if more else None,
    }
    return json_response(body, headers={"Cache-Control": "private, no-cache"})


async def get_task_as_of(request: web.Request, user: Principal, task_id: str) -> web.Response:
    """A task as it was at `as_of` or at `version`, folded from the log."""
    query = query_model(request, AsOfQuery)
    if query.as_of is not None and query.version is not None:
        # Two answers to one question: neither is silently preferred.
        both = "give `as_of` or `version`, not both"
        raise fields_problem([("as_of", both), ("version", both)])
    state = await task_as_of(_store(request), task_id, moment=query.as_of, version=query.version)
    if state is None or state.owner_id != user.user_id:
        raise _task_not_found()
    if query.version is not None and state.version != query.version:
        # The stream ends below it (the fold stopped at its last version): no such version.
        raise _beyond("version", state.version)
    return _state_response(state, deleted=state.deleted)


@ROUTES.route(
    Operation(
        "get",
        "/api/audit/events",
        "auditEvents",
        "The global event log in order, for auditors",
        (Reply(200, "A page of commits", CommitPage),),
        {**AUDITOR_PROBLEMS, 422: "a parameter is unknown or invalid", **UNAVAILABLE},
        query=FeedQuery,
        query_notes={
            "after": "only commits after this global position (the previous page's `next_after`)"
        },
        description=FEED_PAGES,
    )
)
async def get_feed(request: web.Request) -> web.Response:
    """The global log in order, for auditors: every commit with its metadata."""
    await require_auditor(request)
    query = query_model(request, FeedQuery)
    page = await feed_page(_store(request), query.after, query.limit)
    return _commits_response(page.commits, next_after=page.next_after, end=page.end)


@ROUTES.route(
    Operation(
        "get",
        "/api/audit/streams/{stream_id}",
        "auditStream",
        "Every commit of one stream (task-… or user-…), for auditors",
        (Reply(200, "The stream's commits; `next_after` is null", CommitPage),),
        {**AUDITOR_PROBLEMS, 404: "no such stream", **UNAVAILABLE},
        parameters=(STREAM_ID,),
    )
)
async def get_stream(request: web.Request) -> web.Response:
    await require_auditor(request)
    stream_id = request.match_info["stream_id"]
    if not _STREAM_ID.match(stream_id):
        raise Problem(404, "stream-not-found", "Stream not found", "No such stream.")
    commits = await _store(request).read_stream(stream_id)
    if not commits:
        raise Problem(404, "stream-not-found", "Stream not found", "No such stream.")
    return _commits_response(commits, next_after=None, end=True)


async def require_auditor(request: web.Request) -> Principal:
    """The caller, who must hold the auditor role; 403 otherwise (the feed is no secret)."""
    user = await require_user(request)
    if AUDITOR not in user.roles:
        raise Problem(403, "forbidden", "Forbidden", "This endpoint is for auditors.")
    return user


def audit_commit_json(commit: Commit) -> bytes:
    """A commit as the audit routes show it (the audit change feed too: change_feeds.py)."""
    return commit_to_json(commit)


def _commits_response(commits: list[Commit], next_after: int | None, end: bool) -> web.Response:
    # Commits are already JSON-shaped by the codec; splice them in without re-encoding.
    items = b",".join(audit_commit_json(c) for c in commits)
    after = b"null" if next_after is None else str(next_after).encode()
    ended = b"true" if end else b"false"
    body = b'{"items":[' + items + b'],"next_after":' + after + b',"end":' + ended + b"}"
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "private, no-cache"}
    )


def _state_response(state: TaskState, *, deleted: bool) -> web.Response:
    body: dict[str, Any] = {**TaskOut.of(state).model_dump(mode="json"), "deleted": deleted}
    return json_response(
        body, headers={"ETag": f'"{state.version}"', "Cache-Control": "private, no-cache"}
    )


def _beyond(parameter: str, last: int) -> Problem:
    """A version past the stream's end is an error, not the last version under another name."""
    return fields_problem([(parameter, f"the task's last version is {last}")])


def _task_not_found() -> Problem:
    return Problem(404, "task-not-found", "Task not found", "No such task.")


def _store(request: web.Request) -> EventStore:
    return request.app[keys.SERVICES].store
