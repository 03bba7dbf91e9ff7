#!/usr/bin/env python3
"""End-to-end smoke of a running TaskFlow, over HTTP(S) as a client sees it.

Registers a new user, logs in, creates a task, reads it back with the write's position
(read-your-writes), finds it in the list, reads its history, and then runs the audit verify
command given after `--` (it must exit 0). Standard library only, so it runs anywhere Python
3.11 does, without the project installed:

    python3 scripts/smoke.py --base-url http://127.0.0.1:8080 -- .venv/bin/taskflow audit verify
    python3 scripts/smoke.py --base-url https://localhost:8443 --cacert deploy/tls/tls.crt \\
        --expect-hsts -- docker compose exec -T projector taskflow audit verify

(the first against `make dev`, with its MONGODB_URI and REDIS_URL in the environment for the
audit command; the second against the compose stack with TLS, as the GitHub workflow runs it).
Exits 1 naming the step that failed.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

POSITION = "X-TaskFlow-Position"
STALE = "X-TaskFlow-Stale"


class SmokeError(Exception):
    """A step did not get the answer it needed."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Client:
    base_url: str
    context: ssl.SSLContext | None
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (the base URL is the operator's)
            self.base_url.rstrip("/") + path,
            data=data,
            method=method,
            headers={
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
                **self.headers,
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.timeout, context=self.context
            ) as response:
                return _answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return _answer(error.code, error.headers, error.read())


def _answer(status: int, headers: Any, raw: bytes) -> Answer:
    lowered = {k.lower(): v for k, v in headers.items()}
    body: Any = None
    if raw and "json" in lowered.get("content-type", ""):
        body = json.loads(raw)
    return Answer(status, lowered, body)


def expect(answer: Answer, status: int, step: str) -> Answer:
    if answer.status != status:
        raise SmokeError(f"{step}: expected {status}, got {answer.status}: {answer.body}")
    return answer


def until_ready(client: Client, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.call("GET", "/api/ready").status == 200:
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise SmokeError(f"ready: /api/ready did not answer 200 within {seconds:.0f} s")
        time.sleep(0.5)


def smoke(client: Client, *, expect_hsts: bool, list_seconds: float) -> None:
    """The steps, each printed as it passes."""
    email = f"smoke-{uuid.uuid4().hex[:12]}@example.com"
    password = f"smoke {uuid.uuid4().hex}"
    health = client.call("GET", "/api/health")
    expect(health, 200, "health")
    if expect_hsts and "max-age=" not in health.headers.get("strict-transport-security", ""):
        raise SmokeError("hsts: no Strict-Transport-Security on an HTTPS response")
    step("health" + (" (HSTS)" if expect_hsts else ""))

    body = {"email": email, "display_name": "Smoke Test", "password": password}
    expect(client.call("POST", "/api/auth/register", body), 201, "register")
    step(f"register {email}")
    login = expect(
        client.call("POST", "/api/auth/login", {"email": email, "password": password}), 200, "login"
    )
    client.headers["Authorization"] = f"Bearer {login.body['access_token']}"
    step("login")

    title = f"smoke task {uuid.uuid4().hex[:8]}"
    created = expect(client.call("POST", "/api/tasks", {"title": title}), 201, "create")
    task_id, position = created.body["id"], created.headers[POSITION.lower()]
    step(f"create {task_id} at position {position}")

    at = {POSITION: position}
    read = expect(client.call("GET", f"/api/tasks/{task_id}", headers=at), 200, "read your write")
    if read.body["title"] != title:
        raise SmokeError(f"read your write: got {read.body['title']!r}, wrote {title!r}")
    step(
        "read your write"
        + (" (from the log: the views lagged)" if STALE.lower() in read.headers else "")
    )

    deadline = time.monotonic() + list_seconds
    while True:
        page = expect(client.call("GET", "/api/tasks?limit=100", headers=at), 200, "list")
        if task_id in [item["id"] for item in page.body["items"]]:
            break
        if page.headers.get(STALE.lower()) != "true":
            raise SmokeError("list: the new task is missing and the page does not say stale")
        if time.monotonic() > deadline:
            raise SmokeError(f"list: still stale after {list_seconds:.0f} s")
        time.sleep(0.2)
    step("list")

    history = expect(client.call("GET", f"/api/tasks/{task_id}/history"), 200, "history")
    if not history.body["items"] or history.body["items"][0]["version"] != 1:
        raise SmokeError(f"history: unexpected {history.body}")
    step("history")


def step(text: str) -> None:
    print(f"ok  {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    audit: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, audit = args[:split], args[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--cacert", help="trust this certificate (PEM) for HTTPS")
    parser.add_argument("--expect-hsts", action="store_true", help="require HSTS on HTTPS")
    parser.add_argument("--ready-seconds", type=float, default=120.0)
    parser.add_argument("--list-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    options = parser.parse_args(args)
    context = ssl.create_default_context(cafile=options.cacert) if options.cacert else None
    client = Client(options.base_url, context, options.timeout)
    try:
        until_ready(client, options.ready_seconds)
        step("ready")
        smoke(client, expect_hsts=options.expect_hsts, list_seconds=options.list_seconds)
        if audit:
            # The operator's own command line (argv after `--`), run without a shell.
            done = subprocess.run(audit, check=False)  # noqa: S603
            if done.returncode != 0:
                raise SmokeError(f"audit verify: `{' '.join(audit)}` exited {done.returncode}")
            step("audit verify")
    except (SmokeError, OSError, KeyError, ValueError) as exc:
        print(f"FAILED {exc!r}" if not isinstance(exc, SmokeError) else f"FAILED {exc}")
        return 1
    print("smoke passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
