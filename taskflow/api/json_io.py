"""Reading request bodies into typed models and writing orjson responses."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from taskflow.api.problems import Problem

M = TypeVar("M", bound=BaseModel)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


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
