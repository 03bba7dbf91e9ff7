"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of the live API (schemathesis)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
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

from taskflow.api.auth_routes import REFRESH_COOKIE
from taskflow.api.openapi import OPENAPI
from taskflow.server import create_app
from taskflow.settings import Settings
from tests.api_support import (
    Client,
    ClientFactory,
    bearer,
    create_task,
    project,
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
JSON = "application/json"
Case = schemathesis.Case[Any]
SKIPPED_METHODS = {"HEAD", "OPTIONS"}  # HEAD mirrors each GET; OPTIONS is the CORS preflight


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> Client:
    # One fuzzer on one address would soon be rate-limited (the limits have tests of their own),
    # and a fuzzed X-TaskFlow-Position would make every read wait out the full timeout. A
    # change feed stays open until its token expires: here it ends after a moment, so that each
    # case gets its whole answer.
    fast = {
        "rate_limit_enabled": False,
        "read_your_writes_timeout_seconds": 0.05,
        "change_feed_max_seconds": 0.1,
    }
    app = create_app(settings.model_copy(update=fast))
    client = await aiohttp_client(app)
    await wait_ready(client)
    return client


async def fetch_document(client: Client) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == JSON
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


async def test_the_merge_patch_allows_null_only_where_it_clears_a_field(client: Client) -> None:
    """PATCH's schema: null for description, due_at and tags (it clears them), never for title,
    status or priority; no field has a default (a field left out stays as it is)."""
    document = await fetch_document(client)
    fields = document["components"]["schemas"]["PatchTaskBody"]["properties"]
    nullable = {name for name, f in fields.items() if {"type": "null"} in f.get("anyOf", [])}
    assert nullable == {"description", "due_at", "tags"}
    assert not [name for name, f in fields.items() if "default" in f]
    assert all("null" in f["description"] for f in fields.values())


@dataclass
class Fuzzer:
    """Sends schemathesis cases to the live app, with real credentials in most of them."""

    base_url: str
    user: dict[str, str]
    auditor: dict[str, str]
    email: str
    tasks: dict[str, int]  # the user's seeded tasks and their current versions
    session: requests.Session = field(default_factory=requests.Session)
    reproducible: bool = True  # the same cases every run (derandomized); a long fuzz is random
    refresh_token: str | None = None  # the latest of the user's rotating refresh tokens
    job_id: str | None = None  # a verification the fuzz started (GET of one needs its id)
    failures: dict[str, str] = field(default_factory=dict)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def run(self, cases: st.SearchStrategy[Case], examples: int) -> None:
        """Send `examples` cases; an operation with nothing to vary may have fewer, or none."""

        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=self.reproducible,
            phases=[Phase.generate],  # failures are collected, not shrunk: the server has state
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=cases,
            credentials=st.sampled_from((True, True, True, False)),
            task=st.none() | st.sampled_from(sorted(self.tasks)),
        )
        def send(case: Case, credentials: bool, task: str | None) -> None:
            self.send(case, credentials, task)

        with contextlib.suppress(Unsatisfiable):  # e.g. negative cases of a parameterless GET
            send()

    def send(self, case: Case, credentials: bool, task: str | None) -> None:
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
        self.statuses[case.operation.label, response.status_code] += 1
        if task is not None:
            self.remember_version(case, task, response)
        if case.operation.path == "/api/auth/refresh":
            self.refresh_token = rotated(response)
        if case.operation.label == "POST /api/audit/verifications" and response.status_code < 300:
            self.job_id = response.json()["id"]
        if refused_by_http_parser(response):
            return
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            titles = ", ".join(sorted({failure.title for failure in group.exceptions}))
            self.failures.setdefault(f"{case.operation.label}: {titles}", str(group))

    def aim_at(self, case: Case, task: str) -> None:
        """Point the case at one of the user's tasks, at its current version when it names one."""
        if "task_id" in case.path_parameters:
            case.path_parameters["task_id"] = task
        if "stream_id" in case.path_parameters:
            case.path_parameters["stream_id"] = f"task-{task}"
        if "job_id" in case.path_parameters and self.job_id is not None:
            case.path_parameters["job_id"] = self.job_id
        if case.headers is not None and "If-Match" in case.headers:
            case.headers["If-Match"] = f'"{self.tasks[task]}"'

    def credentials(self, case: Case) -> tuple[dict[str, str], dict[str, str]]:
        path = case.operation.path
        same_site = {"X-Requested-With": "fuzz"}  # what refresh and logout need besides
        if path == "/api/auth/logout":
            return {**self.fresh_account(), **same_site}, {}  # a logout of `user` ends it
        if path == "/api/auth/me" and case.method == "DELETE":
            return self.fresh_account(), {}  # erasing `user` would end every later case
        if path == "/api/auth/password":
            return self.fresh_account(), {}  # `user`'s password, and its sessions, must stay
        if path == "/api/auth/refresh":
            return same_site, {REFRESH_COOKIE: self.refresh_token or self.login()}
        return (self.auditor if path.startswith("/api/audit/") else self.user), {}

    def fresh_account(self) -> dict[str, str]:
        """A newly registered account's bearer header (its password is PASSWORD)."""
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "password": PASSWORD, "display_name": "Fresh"}
        registered = self.session.post(f"{self.base_url}/api/auth/register", json=body, timeout=30)
        assert registered.status_code == 201, registered.text
        signed_in = self.session.post(
            f"{self.base_url}/api/auth/login",
            json={"email": email, "password": PASSWORD},
            timeout=30,
        )
        assert signed_in.status_code == 200, signed_in.text
        return {"Authorization": f"Bearer {signed_in.json()['access_token']}"}

    def login(self) -> str:
        """A fresh refresh token of the user (each refresh rotates, and reuse revokes)."""
        response = self.session.post(
            f"{self.base_url}/api/auth/login",
            json={"email": self.email, "password": PASSWORD},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token = response.cookies.get(REFRESH_COOKIE)
        assert token is not None
        return token

    def remember_version(self, case: Case, task: str, response: schemathesis.Response) -> None:
        etag = response.headers.get("etag", [""])[0].strip('"')  # names are lower-cased here
        if case.method != "GET" and etag.isdecimal():
            self.tasks[task] = int(etag)


async def fuzzer(client: Client) -> Fuzzer:
    """A registered user with a few tasks (due dates, tags), an auditor, and the live URL."""
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    registered = await client.post(
        "/api/auth/register",
        json={"email": email, "password": PASSWORD, "display_name": "Fuzz"},
    )
    assert registered.status == 201, await registered.text()
    user = await bearer(client, (await registered.json())["user_id"])
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
        auditor=await auditor(client),
        email=email,
        tasks={task["id"]: task["version"] for task in seeded},
    )


async def auditor(client: Client) -> dict[str, str]:
    return await bearer(client, roles=["auditor"])


def rotated(response: schemathesis.Response) -> str | None:
    """The refresh token a successful refresh set; None when it failed (the family may be gone)."""
    cookies = SimpleCookie()
    for header in response.headers.get("set-cookie", []) if response.status_code == 200 else []:
        cookies.load(header)
    morsel = cookies.get(REFRESH_COOKIE)
    return morsel.value if morsel else None


def refused_by_http_parser(response: schemathesis.Response) -> bool:
    """aiohttp's own plain-text 400 for a request it cannot parse (e.g. a URL over 8190 bytes).

    Such a request never reaches the app (no middleware ran: no X-Request-ID), so it is outside
    what the document describes; the document's description says so.
    """
    content_type = response.headers.get("content-type", [""])[0]
    return (
        response.status_code == 400
        and "x-request-id" not in response.headers
        and content_type.startswith("text/plain")
    )


def first_task(target: Fuzzer) -> str:
    return next(iter(target.tasks))


SUCCESS_PATHS: dict[str, Callable[[Fuzzer], str]] = {
    "DELETE /api/tasks/{task_id}": first_task,  # still live: no earlier operation deletes
    "POST /api/tasks/{task_id}/restore": first_task,  # deleted by the case above
}


def body_example(operation: dict[str, Any]) -> tuple[str, Any] | None:
    """The operation's documented request body example and its media type, if it has one."""
    content = operation.get("requestBody", {}).get("content", {})
    examples = [(media, body["example"]) for media, body in content.items() if "example" in body]
    return examples[0] if examples else None


async def fuzz(client: Client, examples: int, *, reproducible: bool = True) -> Fuzzer:
    """Every operation: its body example, then positive and negative cases, against the live app."""
    document = await fetch_document(client)
    schema = schemathesis.openapi.from_dict(document)
    target = await fuzzer(client)
    target.reproducible = reproducible
    loop = asyncio.get_running_loop()

    def run_all() -> None:
        for path, item in document["paths"].items():
            for method, definition in item.items():
                # Read models catch up with earlier writes, so reads find the seeded tasks.
                asyncio.run_coroutine_threadsafe(project(client), loop).result(timeout=60)
                run_operation(schema[path][method], body_example(definition))

    def run_operation(operation: Any, example: tuple[str, Any] | None) -> None:
        if operation.label in SUCCESS_PATHS:
            # Random cases reach these only by luck (a live task for DELETE, then a deleted one
            # for restore, each at its current version), so one known-good case goes first.
            task = SUCCESS_PATHS[operation.label](target)
            case = operation.Case(path_parameters={"task_id": task}, headers={"If-Match": '""'})
            target.send(case, True, task)  # aimed at the task's current version
        if example is not None:
            media_type, body = example
            # The body is fixed, so fewer cases suffice (and register and login hash with argon2).
            cases = operation.as_strategy(body=body, media_type=media_type)
            target.run(cases, max(5, examples // 5))
        for mode in schemathesis.GenerationMode:
            target.run(operation.as_strategy(generation_mode=mode), examples)

    await asyncio.to_thread(run_all)  # the app keeps serving on this loop meanwhile
    target.session.close()
    return target


def never_succeeded(target: Fuzzer) -> set[str]:
    """Operations the fuzz never got past a refusal with: their success path went untested."""
    succeeded = {label for label, status in target.statuses if status < 400}
    return {label for label, _ in target.statuses} - succeeded


def report(target: Fuzzer) -> str:
    return "\n\n".join(f"== {name}\n{detail}" for name, detail in sorted(target.failures.items()))


@pytest.mark.slow(80)
@pytest.mark.timeout(900)  # ~30 s on a quiet machine; 400 s was not enough with two suites running
async def test_live_api_conforms_to_its_document(client: Client) -> None:
    """20 cases per operation and kind: no 5xx; status, media type, headers, body as documented.
    (`make fuzz` runs 500.)"""
    target = await fuzz(client, examples=20)
    assert not target.failures, report(target)
    assert not never_succeeded(target), target.statuses


async def test_responses_random_cases_seldom_reach_are_as_documented(client: Client) -> None:
    """304 (If-None-Match), 413 (a large body) and 415 (not JSON) conform to the document."""
    schema = schemathesis.openapi.from_dict(await fetch_document(client))
    target = await fuzzer(client)
    await project(client)
    task, version = next(iter(target.tasks.items()))
    get, create = schema["/api/tasks/{task_id}"]["GET"], schema["/api/tasks"]["POST"]
    cases = [
        get.Case(path_parameters={"task_id": task}, headers={"If-None-Match": f'"{version}"'}),
        create.Case(body={"title": "big", "description": "x" * 70_000}, media_type=JSON),
        create.Case(body="a task", media_type="text/plain"),
    ]
    for case in cases:
        await asyncio.to_thread(target.send, case, True, None)
    target.session.close()
    assert not target.failures, report(target)
    assert sorted(status for _, status in target.statuses) == [304, 413, 415]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("TASKFLOW_FUZZ") != "1", reason="set TASKFLOW_FUZZ=1")
async def test_live_api_conforms_to_its_document_under_a_long_fuzz(client: Client) -> None:
    """The same checks with 500 random cases per operation and kind (`make fuzz`)."""
    examples = int(os.environ.get("TASKFLOW_FUZZ_EXAMPLES", "500"))
    target = await fuzz(client, examples, reproducible=False)
    assert not target.failures, report(target)
