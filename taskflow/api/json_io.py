"""Reading request bodies and query strings into typed models; writing orjson responses."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from taskflow.api.middlewares import validation_problem
from taskflow.api.problems import Problem

M = TypeVar("M", bound=BaseModel)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return json_body_response(orjson.dumps(data), status=status, headers=headers)


def json_body_response(
    body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response whose JSON body is already serialised (a cached page, say)."""
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


async def read_model(request: web.Request, model: type[M]) -> M:
    """The body parsed as `model`: 415 unless JSON, 400 if malformed, 422 naming bad fields."""
    if request.content_type not in {"application/json", "application/merge-patch+json"}:
        raise Problem(
            415, "unsupported-media-type", "Unsupported media type", "Send application/json."
        )
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(
            400, "malformed-json", "Malformed JSON", "The body is not valid JSON."
        ) from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise Problem(400, "malformed-json", "Malformed JSON", "The body is nested too deeply.")
    _refuse_duplicate_keys(raw)
    if not isinstance(data, dict):
        raise Problem(422, "validation-error", "The request is not valid", "Send a JSON object.")
    return model.model_validate(data)


# No request body needs more than a few levels; the duplicate-key parser below recurses per
# level, so anything deeper is refused before it (orjson itself stops at 1,024).
MAX_JSON_DEPTH = 32


def _depth(data: Any) -> int:
    """How deeply arrays and objects nest in `data` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                children = value.values() if isinstance(value, dict) else value
                stack.extend((child, level + 1) for child in children)
    return deepest


def _refuse_duplicate_keys(raw: bytes) -> None:
    """400 when an object names a key twice: parsers disagree on which one counts (orjson
    keeps the last), so such a body means different things to different readers."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            repeated = next(key for key in keys if keys.count(key) > 1)
            raise Problem(
                400,
                "duplicate-json-key",
                "Malformed JSON",
                f"The key {repeated[:64]!r} appears more than once in one object.",
            )
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)  # valid JSON, and shallow: checked before


def query_model(
    request: web.Request,
    model: type[M],
    *,
    lists: Collection[str] = (),
    renamed: Mapping[str, str] | None = None,
) -> M:
    """The query string parsed as `model`: 422 naming each bad, unknown or repeated parameter.

    Parameters named in `lists` may repeat or hold comma-separated values; any other given twice
    is refused rather than silently taking one of them. `renamed` maps a public parameter name
    to the model's field (`next` -> `cursor`).
    """
    raw: dict[str, Any] = {}
    for name in set(request.query.keys()):
        values = request.query.getall(name)
        if name in lists:
            raw[name] = [part for value in values for part in value.split(",") if part]
        elif len(values) > 1:
            raise Problem(
                422,
                "validation-error",
                "The request is not valid",
                f"Invalid: {name} (given more than once)",
            )
        else:
            raw[(renamed or {}).get(name, name)] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_problem(exc) from None
