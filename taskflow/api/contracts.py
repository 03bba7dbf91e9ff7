"""Each operation's contract, declared beside its handler: the route is added from it, and the
OpenAPI document (openapi.py) is built from every route module's contracts."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaValue

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
SCHEMA_REF = "#/components/schemas/{model}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
Security = tuple[dict[str, list[str]], ...]  # alternatives, each a set of schemes
Body = type[BaseModel] | tuple[type[BaseModel], ...] | None  # a tuple documents anyOf

BEARER: Security = ({"bearerAuth": []},)
PUBLIC: Security = ({},)


class Shape(BaseModel):
    """A response body a view builds as plain JSON, described for the document."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_default(schema: JsonSchemaValue) -> None:
    schema.pop("default", None)


def absent(description: str) -> Any:
    """An optional response field: left out rather than null, so no null and no default."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


def pattern(regex: str) -> dict[str, Any]:
    """A string parameter's or header's schema: `regex`, the one the view checks it with."""
    return {"type": "string", "pattern": regex}


@dataclass(frozen=True)
class Parameter:
    """A path or header parameter, documented once under components.parameters as `key`."""

    key: str
    name: str
    location: Literal["path", "header"]
    schema: Mapping[str, Any]
    description: str
    required: bool

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "required": self.required,
            "schema": dict(self.schema),
            "description": self.description,
        }


def path_parameter(
    name: str, schema: Mapping[str, Any], description: str, *, key: str | None = None
) -> Parameter:
    return Parameter(key or name, name, "path", schema, description, required=True)


def header_parameter(
    name: str, schema: Mapping[str, Any], description: str, *, required: bool = False
) -> Parameter:
    return Parameter(name, name, "header", schema, description, required)


@dataclass(frozen=True)
class Reply:
    """A documented success (or 304) response."""

    status: int
    description: str
    body: Body = None
    # Names in components.headers; `Name=Component` sends Name described by Component.
    headers: tuple[str, ...] = ()
    media_type: str = JSON
    media_types: tuple[str, ...] = ()  # several, instead of `media_type` (the console's files)
    # Schemas the body refers to but names in no field (an event's `data`: contentSchema).
    payloads: tuple[type[BaseModel], ...] = ()


@dataclass(frozen=True)
class Operation:
    """One route: its method, path, parameters, body, replies and the problems it can answer."""

    method: Literal["get", "post", "patch", "delete"]
    path: str
    operation_id: str
    summary: str
    replies: tuple[Reply, ...]
    # status -> why this route answers it; 429 is added to every rate-limited route
    problems: Mapping[int, str] = dataclasses.field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    query: type[BaseModel] | None = None
    query_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # by parameter
    # Query parameter -> the model's field, as the view passes it to query_model (`next`).
    query_renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: type[BaseModel] | None = None
    body_media_types: tuple[str, ...] = (JSON,)
    example: dict[str, Any] | None = None  # a typical body
    security: Security = BEARER
    rate_limited: bool = True
    description: str = ""


class Routes:
    """One route module's operations, each declared on its handler; `tag` groups them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._handlers: list[tuple[Operation, Handler]] = []

    def route(self, operation: Operation) -> Callable[[H], H]:
        """Declare the decorated handler as `operation`'s: add_to() routes it there."""

        def declare(handler: H) -> H:
            self._handlers.append((operation, handler))
            return handler

        return declare

    @property
    def operations(self) -> tuple[Operation, ...]:
        return tuple(operation for operation, _ in self._handlers)

    def add_to(self, app: web.Application) -> None:
        """Route every declared operation, in the order declared (aiohttp tries them so)."""
        for operation, handler in self._handlers:
            if operation.method == "get":
                app.router.add_get(operation.path, handler)  # and HEAD
            else:
                app.router.add_route(operation.method.upper(), operation.path, handler)


# Problems several route modules answer alike.
BODY_PROBLEMS = {
    400: "the body is not valid JSON",
    413: "the body is larger than MAX_BODY_BYTES",
    415: "the body is not application/json",
}
TOKEN = {401: "no valid access token"}
UNAVAILABLE = {503: "MongoDB or Redis is unavailable, or tokens cannot be checked"}
AUDITOR_PROBLEMS = {**TOKEN, 403: "the caller lacks the auditor role"}

IF_NONE_MATCH = header_parameter(
    "If-None-Match", {"type": "string"}, "ETags the client has; a match answers 304"
)
