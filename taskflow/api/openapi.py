"""The OpenAPI 3.1 document, built from the contracts each route module declares beside its
handlers (contracts.py), with the components they share; and an offline docs page."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import html
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, SkipJsonSchema, models_json_schema

import taskflow
from taskflow.api import (
    audit_job_routes,
    audit_routes,
    auth_routes,
    change_feeds,
    console,
    health,
    observability,
    task_reads,
    task_writes,
)
from taskflow.api.auth_routes import REFRESH_COOKIE
from taskflow.api.contracts import (
    JSON,
    PUBLIC,
    SCHEMA_REF,
    Operation,
    Parameter,
    Reply,
    Routes,
    Shape,
    absent,
    pattern,
)
from taskflow.api.headers import POSITION_HEADER, STALE_HEADER
from taskflow.api.middlewares import CORRELATION_ID, REQUEST_ID, SAFE_ID
from taskflow.api.problems import PROBLEM_TYPE_BASE

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
PROBLEM_JSON = "application/problem+json"

ROUTES = Routes("documentation")
# Every route module's contracts, in the order the document presents them. The conformance run
# (tests/test_openapi.py) follows it too: the task reads come before the writes that may delete
# every task the run seeded.
DOCUMENTED: tuple[Routes, ...] = (
    health.ROUTES,
    observability.ROUTES,
    ROUTES,
    auth_routes.ROUTES,
    task_reads.ROUTES,
    task_writes.ROUTES,
    change_feeds.ROUTES,
    audit_routes.ROUTES,
    audit_job_routes.ROUTES,
    console.ROUTES,
)


# -- what every route shares: problem details, headers, security schemes ---------------------------


class FieldError(Shape):
    """One failing field of a request."""

    field: str = Field(description="dotted path of the field, or `body`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(pattern=f"^{PROBLEM_TYPE_BASE}[a-z0-9]+(-[a-z0-9]+)*$")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | SkipJsonSchema[None] = absent("what went wrong, for a person")
    instance: str | SkipJsonSchema[None] = absent("the request path")
    errors: list[FieldError] | SkipJsonSchema[None] = absent("422: each failing field")
    field: str | SkipJsonSchema[None] = absent("422 of a refused command: the field at fault")
    current_version: int | SkipJsonSchema[None] = absent("409, 412: the task's version now")
    checks: dict[str, str] | SkipJsonSchema[None] = absent("503 of /api/ready: each dependency")


_ID = pattern(SAFE_ID.pattern)
HEADERS: dict[str, Any] = {
    "ETag": {"description": "the task's version", "schema": pattern(r'^"[0-9]+"$')},
    "FileETag": {"description": "the file's content hash", "schema": pattern(r'^"[0-9a-f]+"$')},
    "Location": {"description": "the new resource", "schema": {"type": "string"}},
    POSITION_HEADER: {
        "description": "the commit's place in the global log (when the write appended one)",
        "schema": pattern(r"^[0-9]+$"),
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
        "schema": pattern(f"^{REFRESH_COOKIE}="),
    },
    REQUEST_ID: {"description": "this request's id", "required": True, "schema": _ID},
    CORRELATION_ID: {"description": "the correlation id", "required": True, "schema": _ID},
    "WWW-Authenticate": {
        "description": "the Bearer challenge (RFC 6750)",
        "required": True,
        "schema": pattern("^Bearer "),
    },
    "Retry-After": {"description": "seconds", "required": True, "schema": pattern("^[0-9]+$")},
    **{
        name: {"description": "RFC draft rate-limit fields", "schema": pattern("^[0-9]+$")}
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


Tagged = tuple[str, Operation]  # an operation and its route module's tag


def build_document(documented: Iterable[Routes] = DOCUMENTED) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation, schemas from the pydantic models."""
    operations = [(routes.tag, op) for routes in documented for op in routes.operations]
    refs, schemas = _component_schemas([op for _, op in operations])
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "TaskFlow API",
            "version": taskflow.__version__,
            "description": DESCRIPTION,
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": tag} for tag in dict.fromkeys(tag for tag, _ in operations)],
        "security": [{"bearerAuth": []}],
        "paths": _paths(operations, refs, schemas),
        "components": {
            "schemas": schemas,
            "parameters": _parameters(op for _, op in operations),
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


def _component_schemas(operations: list[Operation]) -> tuple[Refs, dict[str, Any]]:
    """Every model's schema under components/schemas: requests as validated, replies as sent."""
    requests: list[type[BaseModel]] = [
        model for op in operations for model in (op.body, op.query) if model is not None
    ]
    replies: list[type[BaseModel]] = [Problem]
    replies += [model for op in operations for model in _reply_models(op)]
    wanted: dict[type[BaseModel], JsonSchemaMode] = {model: "serialization" for model in replies}
    wanted |= {model: "validation" for model in requests}
    mapping, defs = models_json_schema(list(wanted.items()), ref_template=SCHEMA_REF)
    refs = {model: mapping[(model, mode)] for model, mode in wanted.items()}
    return refs, defs.get("$defs", {})


def _reply_models(op: Operation) -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for reply in op.replies:
        if isinstance(reply.body, tuple):
            models.extend(reply.body)
        elif reply.body is not None:
            models.append(reply.body)
        models.extend(reply.payloads)
    return models


def _parameters(operations: Iterable[Operation]) -> dict[str, Any]:
    """Every parameter the operations take, once each: one component per key."""
    found: dict[str, Parameter] = {}
    for op in operations:
        for parameter in op.parameters:
            if found.setdefault(parameter.key, parameter) != parameter:
                raise ValueError(f"two parameters are declared as {parameter.key!r}")
    return {key: parameter.document() for key, parameter in found.items()}


def _paths(operations: list[Tagged], refs: Refs, schemas: dict[str, Any]) -> dict[str, Any]:
    models = dict.fromkeys(op.query for _, op in operations if op.query)  # one may serve several
    queries = {model: _take(refs[model], schemas) for model in models}
    paths: dict[str, Any] = {}
    for tag, op in operations:
        query = _query_parameters(queries[op.query], op) if op.query else []
        item = paths.setdefault(op.path, {})
        if op.method in item:
            raise ValueError(f"{op.method.upper()} {op.path} is declared twice")
        item[op.method] = _operation(tag, op, refs, query)
    return paths


def _take(ref: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A query model's schema, removed from the components: it is documented as parameters."""
    schema: dict[str, Any] = schemas.pop(ref["$ref"].rsplit("/", 1)[1])
    return schema


def _query_parameters(model_schema: dict[str, Any], op: Operation) -> list[dict[str, Any]]:
    """The query model's fields as parameters, named as the view reads them, with their notes."""
    public = {field: name for name, field in op.query_renamed.items()}
    required = set(model_schema.get("required", ()))
    parameters = [
        _query_parameter(public.get(field, field), _untitled(_non_null(schema)), field in required)
        for field, schema in model_schema["properties"].items()
    ]
    unknown = set(op.query_notes) - {parameter["name"] for parameter in parameters}
    if unknown:
        raise ValueError(f"{op.operation_id} has notes for no parameter: {sorted(unknown)}")
    for parameter in parameters:
        if parameter["name"] in op.query_notes:
            parameter["description"] = op.query_notes[parameter["name"]]
    return parameters


def _query_parameter(name: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
    }
    if schema.get("type") == "array":
        parameter |= {"style": "form", "explode": True}
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


def _operation(tag: str, op: Operation, refs: Refs, query: list[dict[str, Any]]) -> dict[str, Any]:
    parameters = [{"$ref": f"#/components/parameters/{p.key}"} for p in op.parameters]
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [tag],
        "summary": op.summary,
        "parameters": parameters + query,
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
    problems = {**op.problems, **({429: ""} if op.rate_limited else {})}
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
        "content": {PROBLEM_JSON: {"schema": {"$ref": SCHEMA_REF.format(model="Problem")}}},
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
    ROUTES.add_to(app)


@ROUTES.route(
    Operation(
        "get",
        OPENAPI_PATH,
        "openapi",
        "This OpenAPI 3.1 document",
        (Reply(200, "The document"),),
        security=PUBLIC,
    )
)
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[OPENAPI].json, content_type=JSON, headers={"Cache-Control": "no-cache"}
    )


@ROUTES.route(
    Operation(
        "get",
        DOCS_PATH,
        "docs",
        "This document as an HTML page (no scripts, works offline)",
        (Reply(200, "The page", media_type="text/html"),),
        security=PUBLIC,
    )
)
async def api_docs(request: web.Request) -> web.Response:
    # Its own CSP: the page's one inline <style> is allowed by hash; no script may run.
    return web.Response(
        text=request.app[OPENAPI].html,
        content_type="text/html",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
    )
