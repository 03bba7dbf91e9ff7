"""What the console's browser tests share: a running deployment (`taskflow serve` and `taskflow
project` children on the real servers), Debian's Chromium driven by Playwright, and the steps
a person takes (sign up, add a task, find its row), plus the accessibility check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Response,
    expect,
    sync_playwright,
)
from pymongo import MongoClient
from redis import Redis

from taskflow.settings import Settings
from tests.fault_tools import TaskflowProcess, free_port, taskflow_env
from tests.service_urls import service_url, worker_redis_url

# Debian's package (scripts/services.sh install-tools): Playwright cannot download its own here.
CHROMIUM = os.environ.get("TASKFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"
# The longest a condition is waited for: a loaded 2-core machine can be slow, never wrong.
WAIT_MS = 60_000
SCREENSHOTS = "TASKFLOW_SCREENSHOTS"  # a directory: the tests' screenshots are kept there
expect.set_options(timeout=WAIT_MS)


@dataclass
class Deployment:
    """The API and a projector, as separate processes, on the test servers."""

    base_url: str
    settings: Settings
    screenshots: Path
    env: dict[str, str]

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One API call from outside the browser (standard library only)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - a loopback URL of our own
            self.url(path), data=data, method=method, headers=headers or {}
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def taskflow(self, *args: str) -> str:
        """A `taskflow` command, as an operator runs it against this deployment; its output."""
        done = subprocess.run(
            [sys.executable, "-m", "taskflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def until_listed(self, auth: dict[str, str], count: int) -> None:
        """Until the caller's list holds `count` tasks (the projector has applied them)."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            status, page = self.request("GET", "/api/tasks?limit=100", headers=auth)
            if status == 200 and len(page["items"]) >= count:
                return
            assert time.monotonic() < deadline, f"the list never held {count} tasks"
            time.sleep(0.05)

    def token(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        status, body = self.request(
            "POST", "/api/auth/login", {"email": email, "password": password}
        )
        assert status == 200, body
        return {"Authorization": f"Bearer {body['access_token']}"}


@pytest.fixture(scope="module", name="deployment")
def deployment_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """`taskflow serve` and `taskflow project` on a database of the module's own."""
    mongodb_uri, redis_url = service_url("MONGODB_URI"), worker_redis_url()
    settings = Settings(
        taskflow_env="development",
        mongodb_uri=mongodb_uri,
        redis_url=redis_url,
        mongodb_db=f"t_{uuid.uuid4().hex[:16]}",
        cookie_secure=False,  # plain http on loopback
        rate_limit_auth="10000/minute",
        rate_limit_api="100000/minute",
        gap_timeout_seconds=0.3,
        log_json=False,
    )
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()  # the deployment owns its Redis database, as every test's does
    port = free_port()
    env = taskflow_env(settings, TASKFLOW_ENV="development", COOKIE_SECURE="false")
    logs = tmp_path_factory.mktemp("console-processes")
    api = TaskflowProcess("serve", env, logs, port=port)
    projector = TaskflowProcess("project", env, logs)
    api.start()
    projector.start()
    chosen = os.environ.get(SCREENSHOTS)
    screenshots = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(api.base_url, settings, screenshots, env)
    try:
        _wait_ready(deployment, api)
        yield deployment
    finally:
        for child in (api, projector):
            _stop(child)
        mongo: MongoClient[dict[str, Any]]
        with MongoClient(mongodb_uri) as mongo:
            mongo.drop_database(settings.mongodb_db)
            mongo.drop_database(settings.views_db_name)
        with Redis.from_url(redis_url) as redis:
            redis.flushdb()


def _wait_ready(deployment: Deployment, api: TaskflowProcess) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert api.process is not None
        assert api.process.poll() is None, f"taskflow serve exited: see {api.log_dir}"
        try:
            if deployment.request("GET", "/api/ready")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the API never became ready"
        time.sleep(0.1)


def _stop(child: TaskflowProcess) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it takes too long."""
    if child.process is None or child.process.poll() is not None:
        return
    child.process.send_signal(signal.SIGTERM)
    try:
        child.process.wait(timeout=15)
    except Exception:
        child.kill9()


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """One Chromium for the whole module (each test opens contexts of its own)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: `scripts/services.sh install-tools` installs it")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Pages:
    """Opens browser contexts (each a person with a cookie jar of their own) and checks, at
    the end, that no page had a script error or anything refused by its CSP."""

    browser: Browser
    deployment: Deployment
    contexts: list[BrowserContext] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The API's answers to writes and its errors, printed at teardown: a failing test's report
    # shows them (captured output), since a toast saying what went wrong is gone by then.
    answers: list[str] = field(default_factory=list)

    def __call__(self, width: int = 1280, height: int = 860) -> Page:
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            locale="en-GB",
            timezone_id="UTC",
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        # The console runs under its CSP: anything it refuses would be a defect of the page.
        page.on(
            "console",
            lambda message: (
                self.errors.append(message.text)
                if "Content Security Policy" in message.text
                else None
            ),
        )
        page.on("response", self._note)
        page.goto(self.deployment.url())
        return page

    def _note(self, response: Response) -> None:
        if response.request.method != "GET" or response.status >= 400:
            stamp = time.strftime("%H:%M:%S")
            self.answers.append(
                f"{stamp} {response.request.method} {response.url} {response.status}"
            )


@pytest.fixture(name="pages")
def pages_fixture(browser: Browser, deployment: Deployment) -> Iterator[Pages]:
    opened = Pages(browser, deployment)
    yield opened
    print("API answers to writes, and errors:", *opened.answers, sep="\n  ")
    for context in opened.contexts:
        context.close()
    assert not opened.errors, opened.errors


# -- what a person does ---------------------------------------------------------------------


def new_email(name: str) -> str:
    return f"{name.lower().replace(' ', '.')}.{uuid.uuid4().hex[:8]}@example.com"


def sign_up(page: Page, name: str = "Ada Lovelace") -> str:
    """Register through the console (which then signs in); the e-mail used."""
    email = new_email(name)
    page.get_by_role("link", name="Create one").click()
    page.get_by_label("Display name").fill(name)
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    return email


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()


def add_task(
    page: Page,
    title: str,
    *,
    description: str = "",
    priority: str = "",
    due: str = "",
    tags: str = "",
) -> Locator:
    """Fill in the new-task form and add it; its row, once listed."""
    form = page.get_by_role("form", name="New task")
    form.get_by_label("Title").fill(title)
    if description or priority or due or tags:
        details = form.locator("details")
        if details.get_attribute("open") is None:
            form.get_by_text("More details").click()
        if description:
            form.get_by_label("Description").fill(description)
        if priority:
            form.get_by_label("Priority").select_option(label=priority)
        if due:
            form.get_by_label("Due").fill(due)
        if tags:
            form.get_by_label("Tags").fill(tags)
    form.get_by_role("button", name="Add task").click()
    row = task_row(page, title)
    expect(row).to_be_visible()
    return row


def task_row(page: Page, title: str) -> Locator:
    return page.locator("li.task").filter(has=page.get_by_role("heading", name=title, exact=True))


def listed_titles(page: Page) -> Locator:
    return page.locator("ul.tasks li.task h3")


def check_accessibility(page: Page, what: str) -> None:
    """axe-core finds no serious or critical violation on the page as it stands."""
    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert not bad, f"{what}: {bad}"


def screenshot(page: Page, deployment: Deployment, name: str, *, full_page: bool = True) -> None:
    """The page (or what the window shows of it), without the passing notices (they would
    cover what it shows)."""
    page.evaluate("document.getElementById('toasts').replaceChildren()")  # not subject to CSP
    page.screenshot(path=deployment.screenshots / f"{name}.png", full_page=full_page)


Step = Callable[[], None]
