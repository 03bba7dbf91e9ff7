"""The edge middleware: request ids into the log context, every error into problem+json,
metrics and the headers every response carries."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web
from multidict import CIMultiDict
from pydantic import ValidationError
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from taskflow.api import keys
from taskflow.api.cors import add_vary_origin
from taskflow.api.observability import (
    SECURITY_HEADERS,
    SERVER,
    add_security_headers,
    observe_request,
)
from taskflow.api.problems import Problem
from taskflow.api.request_ids import new_request_id
from taskflow.logs import bind_request_ids, unbind_request_ids

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger(__name__)

REQUEST_ID = "X-Request-ID"
CORRELATION_ID = "X-Correlation-ID"
# nginx's status for a request whose client closed the connection first: the metrics count
# such requests apart from the server's own failures (5xx).
CLIENT_CLOSED = 499
SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Exceptions from layers below the API map to problems here, and only here: views stay thin
# (docs/design.md, Errors).
ProblemMapper = Callable[[Exception], Problem | None]
_mappers: list[ProblemMapper] = []


def register_problem_mapper(mapper: ProblemMapper) -> ProblemMapper:
    """Teach the error middleware to turn a kind of exception into a problem."""
    _mappers.append(mapper)
    return mapper


def client_id(request: web.Request, header: str) -> str | None:
    value = request.headers.get(header)
    return value if value and SAFE_ID.match(value) else None


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every response gets, in one middleware (each layer was a coroutine of its own):

    a request id and a correlation id (echoed back, on every log line), every failure as
    application/problem+json, the Prometheus duration and status by route template, the
    security headers and `Vary: Origin`. Rate limiting, when on, is the next middleware in.
    """
    started = time.perf_counter()
    request_id = client_id(request, REQUEST_ID) or new_request_id()
    correlation_id = client_id(request, CORRELATION_ID) or request_id
    request[keys.REQUEST_ID] = request_id
    request[keys.CORRELATION_ID] = correlation_id
    bound = bind_request_ids(request_id, correlation_id)
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as exc:
            response = problem_response(request, exc)
        status = response.status
        headers = response.headers
        add_edge_headers(headers)
        headers.extend(((REQUEST_ID, request_id), (CORRELATION_ID, correlation_id)))
        return response
    except web.HTTPException as exc:  # a redirect, re-raised by problem_response
        status = exc.status
        raise
    except asyncio.CancelledError:  # the client left and the server cancels its handlers
        status = CLIENT_CLOSED
        raise
    finally:
        observe_request(request, status, time.perf_counter() - started)
        unbind_request_ids(bound)


# What every response carries, the security headers, `Server` and `Vary: Origin`, as one block:
# a response whose handler set none of them (every one but the docs pages') gets it in one
# `extend`, a copy in C, instead of eight header operations.
_EVERY_RESPONSE = CIMultiDict({**SECURITY_HEADERS, "Server": SERVER, "Vary": "Origin"})


def add_edge_headers(headers: CIMultiDict[str]) -> None:
    """The security headers, `Server` and `Vary: Origin`; a handler's own choice (a CSP, a
    `Vary`) is kept, as `add_security_headers` and `add_vary_origin` keep it."""
    if _EVERY_RESPONSE.keys().isdisjoint(headers.keys()):
        headers.extend(_EVERY_RESPONSE)
    else:
        add_vary_origin(headers)
        add_security_headers(headers)


def problem_response(request: web.Request, exc: Exception) -> web.Response:
    """Every failure as application/problem+json; tracebacks stay in the log.

    An HTTPException below 400 (a redirect) is not a failure: it is raised again.
    """
    if isinstance(exc, Problem):
        return exc.response(request.path)
    if isinstance(exc, ConnectionResetError) and _client_gone(request):
        # The client hung up mid-request (a load tool stopping, a closed tab): nobody will read
        # an answer, and it is not the server's error, so no traceback at ERROR level.
        log.info("client_disconnected", error=str(exc))
        return Problem(CLIENT_CLOSED, "client-closed-request", "Client closed request").response(
            request.path
        )
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _from_http(exc).response(request.path)
    if isinstance(exc, ValidationError):
        return validation_problem(exc).response(request.path)
    for mapper in _mappers:
        mapped = mapper(exc)
        if mapped is not None:
            return mapped.response(request.path)
    if isinstance(exc, PyMongoError | RedisError | TimeoutError):
        log.warning("dependency_unavailable", error=repr(exc))
        return Problem(
            503,
            "service-unavailable",
            "A backing service is unavailable",
            "Try again shortly.",
            headers={"Retry-After": "1"},
        ).response(request.path)
    log.exception("unhandled_error")
    return Problem(500, "internal-error", "Internal server error").response(request.path)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def validation_problem(exc: ValidationError) -> Problem:
    """A 422 naming each failing field (never echoing the rejected input)."""
    return fields_problem(
        (".".join(str(part) for part in err["loc"]) or "body", err["msg"])
        for err in exc.errors(include_url=False, include_input=False)
    )


def fields_problem(failures: Iterable[tuple[str, str]]) -> Problem:
    """A 422 naming each failing field, from (field, message) pairs."""
    errors = [{"field": field, "message": message} for field, message in failures]
    fields = ", ".join(error["field"] for error in errors)
    return Problem(
        422, "validation-error", "The request is not valid", f"Invalid: {fields}", errors=errors
    )


def _from_http(exc: web.HTTPException) -> Problem:
    slugs = {
        404: "not-found",
        405: "method-not-allowed",
        413: "payload-too-large",
        415: "unsupported-media-type",
    }
    slug = slugs.get(exc.status, f"http-{exc.status}")
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
    headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
    return Problem(exc.status, slug, exc.reason, detail, headers=headers)
