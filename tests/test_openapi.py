"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of the live API (schemathesis)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from taskflow.api.app import create_app
from taskflow.api.auth_routes import REFRESH_COOKIE
from taskflow.api.keys import SERVICES
from taskflow.api.openapi import OPENAPI
from taskflow.auth.tokens import issue_access_token
from taskflow.settings import Settings
from tests.api_support import (
    Client,
    ClientFactory,
    bearer,
    create_task,
    live_projector,
    wait_ready,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
PASSWORD = "correct horse battery"
SKIPPED_METHODS = {"HEAD", "OPTIONS"}  # HEAD mirrors each GET; OPTIONS is the CORS preflight


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    # One fuzzer on one address would soon be rate-limited (the limits have tests of their own),
    # and a fuzzed X-TaskFlow-Position would make every read wait out the full timeout.
    fast = {"rate_limit_enabled": False, "read_your_writes_timeout_seconds": 0.05}
    app = create_app(settings.model_copy(update=fast))
    client = await aiohttp_client(app)
    await wait_ready(client)
    return client


async def fetch_document(client: Client) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = await response.json()
    return document


async def test_document_validates_as_openapi_3_1(client: Client) -> None:
    """GET /api/openapi.json serves the app's cached document, a valid OpenAPI 3.1 document."""
    document = await fetch_document(client)
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    assert await (await client.get("/api/openapi.json")).read() == client.app[OPENAPI].json


async def test_every_route_is_documented_and_nothing_else(client: Client) -> None:
    """Every (path, method) the router serves is an operation of the document, and vice versa."""
    document = await fetch_document(client)
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in client.app.router.routes()
        if route.resource is not None and route.method not in SKIPPED_METHODS
    }
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == operations


async def test_docs_page_lists_every_operation_and_runs_no_script(client: Client) -> None:
    """GET /api/docs is server-rendered HTML naming every operation, with no script allowed."""
    document = await fetch_document(client)
    response = await client.get("/api/docs")
    page = await response.text()
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "<script" not in page.lower()
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    for item in document["paths"].values():
        for operation in item.values():
            assert f'id="{operation["operationId"]}"' in page


@dataclass
class Fuzzer:
    """Sends schemathesis cases to the live app, with real credentials in half the cases."""

    base_url: str
    user: dict[str, str]
    auditor: dict[str, str]
    stranger: Callable[[], dict[str, str]]  # a new user's token: logout must not end `user`'s
    email: str
    tasks: dict[str, int]  # the user's seeded tasks and their current versions
    session: requests.Session = field(default_factory=requests.Session)
    failures: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def run(self, operation: Any, mode: schemathesis.GenerationMode, examples: int) -> None:
        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=examples <= 50,  # the default budget is reproducible; the fuzz is not
            phases=[Phase.generate],  # failures are collected, not shrunk: the server has state
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            credentials=st.booleans(),
            task=st.none() | st.sampled_from(sorted(self.tasks)),
        )
        def send(case: schemathesis.Case, credentials: bool, task: str | None) -> None:
            self.send(case, credentials, task)

        try:
            send()
        except Unsatisfiable:  # an operation without parameters or body has no negative case
            if mode is not schemathesis.GenerationMode.NEGATIVE:
                raise

    def send(self, case: schemathesis.Case, credentials: bool, task: str | None) -> None:
        if task is not None:
            self.aim_at(case, task)
        headers, cookies = self.credentials(case) if credentials else ({}, {})
        response = case.call(
            base_url=self.base_url,
            session=self.session,
            headers=headers,
            cookies=cookies,
            timeout=30,
        )
        self.session.cookies.clear()  # a login's refresh cookie must not leak into later cases
        self.sent += 1
        print("STATUS", case.operation.label, response.status_code, credentials, response.request.headers.get("Authorization", "")[:20], response.text[:150] if response.status_code in (401, 422) else "", flush=True)
        if task is not None:
            self.remember_version(case, task, response)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                self.failures.setdefault(f"{case.operation.label}: {failure.title}", str(group))

    def aim_at(self, case: schemathesis.Case, task: str) -> None:
        """Point the case at one of the user's tasks, at its current version when it names one."""
        if "task_id" in case.path_parameters:
            case.path_parameters["task_id"] = task
        if "stream_id" in case.path_parameters:
            case.path_parameters["stream_id"] = f"task-{task}"
        if case.headers is not None and "If-Match" in case.headers:
            case.headers["If-Match"] = f'"{self.tasks[task]}"'

    def credentials(self, case: schemathesis.Case) -> tuple[dict[str, str], dict[str, str]]:
        path = case.operation.path
        if path == "/api/auth/logout":
            return self.stranger(), {}
        if path == "/api/auth/refresh":
            return {}, {REFRESH_COOKIE: self.login()}
        return (self.auditor if path.startswith("/api/audit/") else self.user), {}

    def login(self) -> str:
        """A fresh refresh token of the user (each refresh rotates, and reuse revokes)."""
        response = self.session.post(
            f"{self.base_url}/api/auth/login",
            json={"email": self.email, "password": PASSWORD},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token: str = response.cookies[REFRESH_COOKIE]
        return token

    def remember_version(self, case: schemathesis.Case, task: str, response: Any) -> None:
        etag = response.headers.get("ETag", "")
        if case.method != "GET" and etag.strip('"').isdecimal():
            self.tasks[task] = int(etag.strip('"'))


async def fuzzer(client: Client) -> Fuzzer:
    """A registered user with a few tasks (due dates, tags), an auditor, and the live URL."""
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    registered = await client.post(
        "/api/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "Fuzz"},
    )
    assert registered.status == 201, await registered.text()
    user = bearer(client, (await registered.json())["user_id"])
    seeded = [
        await create_task(client, user, title="write the report", tags=["work"]),
        await create_task(client, user, title="pay rent", due_at="2000-01-01T00:00:00Z"),
        await create_task(
            client, user, title="plan", priority="high", due_at="2100-01-01T00:00:00Z"
        ),
    ]
    return Fuzzer(
        base_url=str(client.make_url("")).rstrip("/"),
        user=user,
        auditor=auditor(client),
        stranger=lambda: bearer(client),
        email=email,
        tasks={task["id"]: task["version"] for task in seeded},
    )


def auditor(client: Client) -> dict[str, str]:
    settings = client.app[SERVICES].settings
    token = issue_access_token(settings, uuid.uuid4().hex, ["auditor"], datetime.now(UTC))
    return {"Authorization": f"Bearer {token.token}"}


async def fuzz(client: Client, examples: int) -> Fuzzer:
    """Every operation, positive then negative cases, `examples` of each, against the live app."""
    document = await fetch_document(client)
    schema = schemathesis.openapi.from_dict(document)
    target = await fuzzer(client)

    def run_all() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                import time; t0 = time.monotonic(); n0 = target.sent
                target.run(operation, mode, examples)
                print("TIMING", operation.label, mode, target.sent - n0, round(time.monotonic() - t0, 2), flush=True)

    async def dump() -> None:
        await asyncio.sleep(90)
        import sys
        for t in asyncio.all_tasks():
            print("TASK", t, file=sys.stderr)
            t.print_stack(file=sys.stderr)
    dumper = asyncio.create_task(dump())
    async with live_projector(client):
        await asyncio.to_thread(run_all)  # the app keeps serving on this loop meanwhile
        print("FUZZ DONE", flush=True)
    print("PROJECTOR DONE", flush=True)
    dumper.cancel()
    target.session.close()
    return target


def report(target: Fuzzer) -> str:
    return "\n\n".join(f"== {name}\n{detail}" for name, detail in sorted(target.failures.items()))


async def test_live_api_conforms_to_its_document(client: Client) -> None:
    """25 cases per operation and mode: no 5xx, every status, media type, header, body documented."""
    target = await fuzz(client, examples=25)
    assert target.sent > 0
    assert not target.failures, report(target)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("TASKFLOW_FUZZ") != "1", reason="set TASKFLOW_FUZZ=1")
async def test_live_api_conforms_to_its_document_under_a_long_fuzz(client: Client) -> None:
    """The same checks with 500 random cases per operation and mode (`make fuzz`)."""
    target = await fuzz(client, examples=int(os.environ.get("TASKFLOW_FUZZ_EXAMPLES", "500")))
    assert not target.failures, report(target)
