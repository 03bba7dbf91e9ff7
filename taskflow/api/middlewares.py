"""Middlewares: request ids into the log context, and every error into problem+json."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from taskflow.api import keys
from taskflow.api.problems import Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger(__name__)

REQUEST_ID = "X-Request-ID"
CORRELATION_ID = "X-Correlation-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Exceptions from layers below the API map to problems here, and only here (STYLE.md habit 4).
ProblemMapper = Callable[[Exception], Problem | None]
_mappers: list[ProblemMapper] = []


def register_problem_mapper(mapper: ProblemMapper) -> ProblemMapper:
    """Teach the error middleware to turn a kind of exception into a problem."""
    _mappers.append(mapper)
    return mapper


def client_id(request: web.Request, header: str) -> str | None:
    value = request.headers.get(header)
    return value if value and _SAFE_ID.match(value) else None


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request a request id and a correlation id, echoed back and logged on each line."""
    request_id = client_id(request, REQUEST_ID) or uuid.uuid4().hex
    correlation_id = client_id(request, CORRELATION_ID) or request_id
    request[keys.REQUEST_ID] = request_id
    request[keys.CORRELATION_ID] = correlation_id
    structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id)
    try:
        response = await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "correlation_id")
    response.headers[REQUEST_ID] = request_id
    response.headers[CORRELATION_ID] = correlation_id
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as application/problem+json; tracebacks stay in the log."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response(request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(exc).response(request.path)
    except ValidationError as exc:
        return validation_problem(exc).response(request.path)
    except Exception as exc:
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


def validation_problem(exc: ValidationError) -> Problem:
    """A 422 naming each failing field (never echoing the rejected input)."""
    errors = [
        {"field": ".".join(str(part) for part in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
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
