"""Reading request bodies and query strings into typed models; writing orjson responses."""

from __future__ import annotations

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
    if not isinstance(data, dict):
        raise Problem(422, "validation-error", "The request is not valid", "Send a JSON object.")
    return model.model_validate(data)


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
