"""The live change feeds over server-sent events: the caller's task changes, every commit for
auditors, and the one-time tickets a browser's EventSource opens them with.

A stream starts from a consistent snapshot of its feed (feed_reads.py): what the client missed
after its position (`Last-Event-ID`, else `?after=`), or one `reset` when the owner's feed no
longer holds all of it; then it follows the process's hub (feed_hub.py). The auditors' feed
reads the commits from the log itself (as GET /api/audit/events does), up to where the read
model got, so it resumes from any position. Each event's `id:` is a global position, and the
stream never sends a position twice or out of order. The format is in docs/change-feed.md and
the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated

import orjson
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from multidict import CIMultiDict
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from redis.exceptions import RedisError

from taskflow.api import keys
from taskflow.api.audit_routes import AUDITOR, audit_commit_json
from taskflow.api.contracts import (
    AUDITOR_PROBLEMS,
    BEARER,
    EVENT_STREAM,
    TOKEN,
    UNAVAILABLE,
    Operation,
    Reply,
    Routes,
    Security,
    header_parameter,
    pattern,
)
from taskflow.api.cors import add_vary_origin
from taskflow.api.feed_schemas import (
    AUDIT_CHANGE_DATA,
    TASK_CHANGE_DATA,
    AuditChangeEvent,
    StreamTicket,
    TaskChangeEvent,
)
from taskflow.api.json_io import json_response, query_model
from taskflow.api.middlewares import CORRELATION_ID, REQUEST_ID
from taskflow.api.observability import add_security_headers
from taskflow.api.principal import Principal, require_user
from taskflow.api.problems import Problem
from taskflow.api.task_schemas import task_out_json
from taskflow.auth.denylist import AuthUnavailableError, DenyList
from taskflow.auth.stream_tickets import TICKET_PATTERN, TicketGrant
from taskflow.auth.tokens import InvalidTokenError
from taskflow.events.records import Commit
from taskflow.metrics import CHANGE_EVENTS, CHANGE_STREAMS, CHANGE_STREAMS_ENDED
from taskflow.projections.feed_hub import ChangeHub, StreamsFullError, Subscriber
from taskflow.projections.feed_reads import (
    AUDIT_FEED,
    FeedEntry,
    FeedRef,
    FeedSnapshot,
    read_snapshot,
)

log = structlog.get_logger(__name__)

TICKETS_PATH = "/api/stream-tickets"
TASK_CHANGES_PATH = "/api/tasks/changes"
AUDIT_CHANGES_PATH = "/api/audit/changes"
# A write to a client that takes longer ends its stream (aiohttp-sse aborts the connection).
SEND_TIMEOUT_SECONDS = 10.0
END_TIMEOUT_SECONDS = 2.0  # the closing `end` event's own bound
SNAPSHOT_PAGE = 500  # entries read per snapshot while catching up
LOG_PAGE = 500  # positions of the log the auditors' feed reads at a time
FULL_RETRY_AFTER_SECONDS = 5
_POSITION = re.compile(r"^[0-9]{1,18}$")


class ChangesQuery(BaseModel):
    """GET /api/tasks/changes and /api/audit/changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: Annotated[int, Field(ge=0, le=10**18 - 1)] | None = None
    ticket: Annotated[str, StringConstraints(pattern=TICKET_PATTERN)] | None = None


ROUTES = Routes("changes")
LAST_EVENT_ID = header_parameter(
    "Last-Event-ID", pattern(_POSITION.pattern), "the last event's id (a position): resume after it"
)
STREAM_PROBLEMS = {
    400: "Last-Event-ID is not a position",
    401: "no valid access token, or the ticket is unknown, used or expired",
    422: "a parameter is unknown or invalid",
    503: "too many open streams on this server (Retry-After), or a backing service is down",
}
STREAM_SECURITY: Security = (*BEARER, {"streamTicket": []})
STREAM_QUERY_NOTES = {
    "after": "resume after this global position (Last-Event-ID wins over it)",
    "ticket": "a one-time ticket from POST /api/stream-tickets (EventSource cannot send headers)",
}
FEED_FORMAT = " ".join(
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


def setup_change_feed_routes(app: web.Application) -> None:
    """Register the feeds before GET /api/tasks/{task_id}, whose pattern would match first."""
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "post",
        TICKETS_PATH,
        "createStreamTicket",
        "A one-time ticket to open a change feed with EventSource (which cannot send headers)",
        (Reply(201, "The ticket", StreamTicket),),
        TOKEN | UNAVAILABLE,
        description="The ticket opens one stream, as the caller, within `expires_in` seconds "
        "(STREAM_TICKET_TTL_SECONDS); the stream still ends when the caller's token expires or "
        "is logged out.",
    )
)
async def create_stream_ticket(request: web.Request) -> web.Response:
    """A one-time ticket that opens a change feed as the caller (for EventSource)."""
    user = await require_user(request)
    tickets = request.app[keys.STREAM_TICKETS]
    grant = TicketGrant(
        user_id=user.user_id, roles=user.roles, jti=user.jti, expires_at=user.expires_at
    )
    ticket = await tickets.issue(grant)
    return json_response(
        {"ticket": ticket, "expires_in": tickets.ttl_seconds},
        status=201,
        headers={"Cache-Control": "no-store"},
    )


@ROUTES.route(
    Operation(
        "get",
        TASK_CHANGES_PATH,
        "taskChanges",
        "The caller's task changes, live, resumable by position (server-sent events)",
        (
            Reply(
                200,
                "The stream",
                TaskChangeEvent,
                media_type=EVENT_STREAM,
                payloads=TASK_CHANGE_DATA,
            ),
        ),
        STREAM_PROBLEMS,
        parameters=(LAST_EVENT_ID,),
        query=ChangesQuery,
        query_notes=STREAM_QUERY_NOTES,
        security=STREAM_SECURITY,
        description=FEED_FORMAT
        + ' A change\'s `data`: `{"id": task id, "etag": the task\'s ETag, "deleted": '
        'bool, "task": the task as GET /api/tasks/{task_id} shows it (null when deleted)}`.',
    )
)
async def task_changes(request: web.Request) -> web.StreamResponse:
    """The caller's task changes, live, resumable by position."""
    query = query_model(request, ChangesQuery)
    after = _resume_position(request, query)
    caller = await _stream_caller(request, query)
    return await _serve(request, caller, FeedRef(caller.user_id), after)


@ROUTES.route(
    Operation(
        "get",
        AUDIT_CHANGES_PATH,
        "auditChanges",
        "Every commit of the log, live, resumable by position (server-sent events), for auditors",
        (
            Reply(
                200,
                "The stream",
                AuditChangeEvent,
                media_type=EVENT_STREAM,
                payloads=AUDIT_CHANGE_DATA,
            ),
        ),
        STREAM_PROBLEMS | {403: AUDITOR_PROBLEMS[403]},
        parameters=(LAST_EVENT_ID,),
        query=ChangesQuery,
        query_notes=STREAM_QUERY_NOTES,
        security=STREAM_SECURITY,
        description=FEED_FORMAT
        + " A change's `data`: the commit, as an item of GET /api/audit/events.",
    )
)
async def audit_changes(request: web.Request) -> web.StreamResponse:
    """Every commit of the log, live, for auditors."""
    query = query_model(request, ChangesQuery)
    after = _resume_position(request, query)
    caller = await _stream_caller(request, query)
    if AUDITOR not in caller.roles:
        raise Problem(403, "forbidden", "Forbidden", "This endpoint is for auditors.")
    return await _serve(request, caller, AUDIT_FEED, after)


def render_task_change(entry: FeedEntry) -> str:
    """An owner feed event's data: the task as GET /api/tasks/{id} shows it, and its ETag."""
    view = orjson.loads(entry.payload)
    deleted = bool(view["deleted"])
    change = {
        "id": view["task_id"],
        "etag": f'"{view["version"]}"',
        "deleted": deleted,
        "task": None if deleted else task_out_json(view),
    }
    return orjson.dumps(change).decode()


def render_commit(commit: Commit) -> str:
    """An audit feed event's data: the commit as GET /api/audit/events shows it."""
    return audit_commit_json(commit).decode()


def _resume_position(request: web.Request, query: ChangesQuery) -> int | None:
    """Where the client resumes: `Last-Event-ID` (sent by a reconnecting EventSource, so newer
    than the URL's `after`), else `after`, else nowhere (the stream starts now)."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return query.after
    if not _POSITION.match(raw):
        raise Problem(
            400,
            "invalid-last-event-id",
            "Invalid Last-Event-ID",
            "Last-Event-ID must be a position this feed sent.",
        )
    return int(raw)


async def _stream_caller(request: web.Request, query: ChangesQuery) -> Principal:
    """The bearer token's caller; without one, the caller a one-time `ticket` names."""
    if query.ticket is None or "Authorization" in request.headers:
        return await require_user(request)
    grant = await request.app[keys.STREAM_TICKETS].redeem(query.ticket)
    if grant is None or grant.expires_at <= datetime.now(UTC):
        raise InvalidTokenError("unknown, used or expired ticket")
    if await request.app[keys.DENY_LIST].is_denied(grant.jti):
        raise InvalidTokenError("logged out")
    return Principal(grant.user_id, grant.roles, grant.jti, grant.expires_at)


async def _serve(
    request: web.Request, caller: Principal, feed: FeedRef, after: int | None
) -> web.StreamResponse:
    hub = request.app[keys.CHANGE_HUB]
    try:
        subscriber = hub.join(feed, caller.jti)
    except StreamsFullError:
        raise Problem(
            503,
            "too-many-streams",
            "Too many open streams",
            "This server holds as many streams as it may; try again shortly.",
            headers={"Retry-After": str(FULL_RETRY_AFTER_SECONDS)},
        ) from None
    CHANGE_STREAMS.inc()
    try:
        return await _Stream(request, hub, subscriber, caller).serve(after)
    finally:
        hub.leave(subscriber)
        CHANGE_STREAMS.dec()


class _Stream:
    """One open stream: catch up from a snapshot, then follow the hub until it must end."""

    def __init__(
        self,
        request: web.Request,
        hub: ChangeHub,
        subscriber: Subscriber,
        caller: Principal,
    ) -> None:
        self.request = request
        self.hub = hub
        self.subscriber = subscriber
        self.audit = subscriber.feed.owner is None
        self.label = "audit" if self.audit else "tasks"
        self.settings = request.app[keys.SETTINGS]
        self.deadline, self.deadline_reason = self._deadline(caller)
        self.sending = False  # a write to the client is in progress
        self.end_reason: str | None = None
        subscriber.on_overflow = self._overflowed
        self.response = EventSourceResponse(
            headers=_edge_headers(request),
            ping_interval=self.settings.change_feed_heartbeat_seconds,
            send_timeout=SEND_TIMEOUT_SECONDS,
        )

    async def serve(self, after: int | None) -> web.StreamResponse:
        # Read before the response starts, so that a failure is still a problem+json answer.
        entries = SNAPSHOT_PAGE if after is not None and not self.audit else 0
        snapshot = await self._snapshot(after or 0, entries)
        start = snapshot.checkpoint if after is None else after
        await self.response.prepare(self.request)
        try:
            ready = {
                "after": start,
                "heartbeat_seconds": self.settings.change_feed_heartbeat_seconds,
            }
            await self.response.send(
                orjson.dumps(ready).decode(),
                id=str(start),
                event="ready",
                retry=self.settings.change_feed_retry_ms,
            )
            if self.audit:
                last = await self._send_log(start, snapshot.checkpoint)
                self.hub.start(self.subscriber, snapshot.checkpoint)  # batches after it
            else:
                last = await self._catch_up(snapshot, start)
                self.hub.start(self.subscriber, last)
            await self._follow(last)
        except TimeoutError:
            # A write outlasted SEND_TIMEOUT_SECONDS: aiohttp-sse aborted the connection.
            self._ended("too-slow")
        except ConnectionResetError:
            pass  # the client left, or was cut off (`_overflowed`)
        except (RedisError, OSError) as exc:
            log.warning("change_stream_failed", error=repr(exc))
            await self._end("unavailable", None)
        finally:
            if self.subscriber.overflowed:
                self._ended("too-slow")  # cut off while a write to it was blocked
            self.response.stop_streaming()
            await self.response.wait()
        return self.response

    async def _snapshot(self, after: int, limit: int) -> FeedSnapshot:
        """The feed's snapshot in the hub's read-model version (read again if it switched)."""
        while True:
            version = self.hub.version
            keys_ = self.hub.keys
            snapshot = await read_snapshot(
                self.hub.redis, keys_, self.subscriber.feed, after, limit
            )
            if self.hub.version == version:
                return snapshot

    async def _catch_up(self, snapshot: FeedSnapshot, last: int) -> int:
        """Send what the client missed after `last`, page by page; a reset when the feed no
        longer holds all of it. The position sent last."""
        while True:
            if not snapshot.covers(last):
                return await self._reset(snapshot.checkpoint, last)
            last = await self._send(snapshot.entries, last)
            if not snapshot.more:
                return last
            snapshot = await self._snapshot(last, SNAPSHOT_PAGE)

    async def _reset(self, checkpoint: int, last: int) -> int:
        """Tell the client to reload: the read model holds everything up to `checkpoint`, and
        the stream goes on with what comes after it."""
        position = max(checkpoint, last)
        data = {"after": position, "reason": "history-exceeded"}
        await self.response.send(orjson.dumps(data).decode(), id=str(position), event="reset")
        return position

    async def _follow(self, last: int) -> None:
        subscriber = self.subscriber
        loop = asyncio.get_running_loop()
        while True:
            if subscriber.ended is not None:
                await self._end(subscriber.ended, last)
                return
            if subscriber.overflowed:
                await self._end("too-slow", last)
                return
            entries = subscriber.take()
            if entries and self.audit:  # batches applied: read their commits from the log
                last = await self._send_log(last, max(entry.position for entry in entries))
                continue
            if entries:
                last = await self._send(entries, last)
                continue
            left = self.deadline - loop.time()
            if left <= 0:
                await self._end(self.deadline_reason, last)
                return
            if self._client_gone():
                return
            # Wake at least once a heartbeat, to notice a client that hung up.
            await subscriber.wait(min(left, self.settings.change_feed_heartbeat_seconds))

    async def _send(self, entries: list[FeedEntry], last: int) -> int:
        sent = 0
        for entry in entries:
            if entry.position <= last:
                continue  # sent already: the snapshot and the hub overlap
            if entry.rendered is None:
                entry.rendered = render_task_change(entry)
            await self._event(entry.rendered, entry.position)
            last = entry.position
            sent += 1
        if sent:
            CHANGE_EVENTS.labels(self.label).inc(sent)
        return last

    async def _send_log(self, last: int, upto: int) -> int:
        """The auditors' feed: every commit of the log after `last` up to `upto` (which the
        read model has applied), read as GET /api/audit/events reads it, a page at a time.
        The position sent last (gaps included: nobody commits them later)."""
        store = self.request.app[keys.SERVICES].store
        while last < upto:
            read = last
            async for commit in store.read_all(last, min(upto - last, LOG_PAGE)):
                if not commit.is_gap:
                    await self._event(render_commit(commit), commit.position)
                    CHANGE_EVENTS.labels(self.label).inc()
                read = commit.position
            if read == last:
                break  # nothing readable yet: the next batch's entry tries again
            last = read
        return last

    async def _event(self, data: str, position: int) -> None:
        self.sending = True
        try:
            await self.response.send(data, id=str(position))
        finally:
            self.sending = False

    async def _end(self, reason: str, last: int | None) -> None:
        """Say why the stream ends, and where to resume; a client that cannot take even that
        in time is disconnected."""
        self._ended(reason)
        data = orjson.dumps({"reason": reason, "after": last}).decode()
        try:
            async with asyncio.timeout(END_TIMEOUT_SECONDS):
                await self.response.send(data, id=None if last is None else str(last), event="end")
        except (ConnectionResetError, TimeoutError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    def _ended(self, reason: str) -> None:
        """Count the stream's end by the server, once."""
        if self.end_reason is None:
            self.end_reason = reason
            CHANGE_STREAMS_ENDED.labels(reason).inc()

    def _overflowed(self) -> None:
        """The hub could not buffer more for this client. If a write to it is blocked, its
        connection is cut now (the client then resumes from the last event it got); otherwise
        the stream's loop says `end` (`too-slow`) on its next turn."""
        transport = self.request.transport
        if self.sending and transport is not None:
            transport.abort()

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def _deadline(self, caller: Principal) -> tuple[float, str]:
        """When the stream must end (loop time), and why: its token expires, or it has been
        open CHANGE_FEED_MAX_SECONDS."""
        loop = asyncio.get_running_loop()
        left = (caller.expires_at - datetime.now(UTC)).total_seconds()
        limit = self.settings.change_feed_max_seconds
        if limit and limit < left:
            return loop.time() + limit, "lifetime"
        return loop.time() + left, "token-expired"


def _edge_headers(request: web.Request) -> CIMultiDict[str]:
    """What the edge middleware adds to every response, added before the stream starts (the
    middleware sees a streamed response only after it was sent)."""
    headers: CIMultiDict[str] = CIMultiDict()
    add_security_headers(headers)
    add_vary_origin(headers)
    headers[REQUEST_ID] = request[keys.REQUEST_ID]
    headers[CORRELATION_ID] = request[keys.CORRELATION_ID]
    return headers


async def end_streams(app: web.Application) -> None:
    """Graceful shutdown (on_shutdown): every stream says `end` and closes."""
    app[keys.CHANGE_HUB].end_all("shutdown")


async def watch_logouts(hub: ChangeHub, deny_list: DenyList, every: float) -> None:
    """End the streams whose token was logged out, checking each open token every `every`
    seconds (a background task of the API process).

    Each check asks the process's copy of the deny list first, which the API refreshes from
    Redis every second: a Redis round trip per open stream and check cost 8 % of a core with
    1,000 idle streams (docs/benchmarks.md, group 8), the copy costs nothing. When the copy
    cannot be trusted, Redis is asked (`is_denied`); when that cannot answer either, the
    streams end: their tokens cannot be trusted (DenyList's fail-closed rule).
    """
    while True:
        await asyncio.sleep(every)
        by_token: defaultdict[str, list[Subscriber]] = defaultdict(list)
        for subscriber in hub.subscribers():
            by_token[subscriber.jti].append(subscriber)
        for jti, subscribers in by_token.items():
            reason = await _refused(deny_list, jti)
            if reason is not None:
                for subscriber in subscribers:
                    subscriber.end(reason)


async def _refused(deny_list: DenyList, jti: str) -> str | None:
    """Why a stream of token `jti` must end now, if it must."""
    try:
        denied = deny_list.denied_by_copy(jti)
    except AuthUnavailableError:
        try:
            denied = await deny_list.is_denied(jti)
        except AuthUnavailableError:
            return "auth-unavailable"
    return "logged-out" if denied else None
