"""The operations' contracts, declared beside their routes: the document is built from them
alone (no server needed), and no module reaches into another's private names."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import BaseModel

import taskflow
from taskflow.api.contracts import Operation, Reply, Routes
from taskflow.api.openapi import DOCUMENTED, build_document

PACKAGE = Path(taskflow.__file__).parent


def test_the_document_has_every_declared_operation_once() -> None:
    """Each route module's contracts become its operations, under its tag, ids unique."""
    document = build_document()
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    declared = {
        (op.path, op.method, routes.tag) for routes in DOCUMENTED for op in routes.operations
    }
    assert {(path, method, op["tags"][0]) for path, method, op in operations} == declared
    assert len(operations) == len(declared)
    ids = Counter(op["operationId"] for _, _, op in operations)
    assert [name for name, count in ids.items() if count > 1] == []


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def test_a_route_declared_twice_is_refused() -> None:
    """Two contracts for one method and path cannot both be documented."""
    routes = Routes("twice")
    for _ in range(2):
        routes.route(Operation("get", "/twice", "twice", "Twice", (Reply(200, "OK"),)))(_handler)
    with pytest.raises(ValueError, match="GET /twice is declared twice"):
        build_document((routes,))


class _Query(BaseModel):
    limit: int = 10


def test_a_note_on_no_query_parameter_is_refused() -> None:
    """A note for a parameter the query model lacks is a mistake, not a silent no-op."""
    routes = Routes("notes")
    operation = Operation(
        "get",
        "/notes",
        "notes",
        "Notes",
        (Reply(200, "OK"),),
        query=_Query,
        query_notes={"limit": "at most this many", "no_such_parameter": "?"},
    )
    routes.route(operation)(_handler)
    with pytest.raises(ValueError, match="no_such_parameter"):
        build_document((routes,))


def test_no_module_imports_a_private_name_of_another() -> None:
    """`from taskflow.x import _name` is refused: what modules share has a public name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0 and not (node.module or "").startswith("taskflow"):
                continue
            found += [
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    assert found == []
