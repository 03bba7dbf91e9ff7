"""The web console end to end in a real Chromium (Playwright, Debian's browser), against the
API and a projector running as separate processes on the real servers: what a person does,
each page checked by axe-core, and the screenshots the README shows.

One browser for the module; each test opens contexts of its own (a context is one person's
browser: its own cookie jar, so two contexts are two devices). Every wait is for a condition.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import APIResponse, Page, Route, expect

from tests.browser_support import (  # noqa: F401 - the *_fixture imports register fixtures
    PASSWORD,
    Deployment,
    Pages,
    add_task,
    browser_fixture,
    check_accessibility,
    deployment_fixture,
    listed_titles,
    log_in,
    pages_fixture,
    screenshot,
    sign_up,
    task_row,
)

pytestmark = pytest.mark.timeout(180)
NEW_PASSWORD = "a brand new passphrase 42"


def local_input(moment: datetime) -> str:
    """A datetime-local value (the contexts run in UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M")


def test_a_session_survives_a_reload_and_ends_with_logout(
    pages: Pages, deployment: Deployment
) -> None:
    """Register, then a reload keeps the session (the refresh cookie; the access token lives
    in memory only, never in storage); logout ends it for good; logging in again works."""
    page = pages()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    check_accessibility(page, "login")
    screenshot(page, deployment, "login")
    page.get_by_role("link", name="Create one").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    check_accessibility(page, "register")
    page.get_by_role("link", name="Log in").click()
    email = sign_up(page, "Ada Lovelace")
    expect(page.locator("#who")).to_have_text("Ada Lovelace")
    page.reload()
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    expect(page.locator("#who")).to_have_text("Ada Lovelace")
    stored = page.evaluate("JSON.stringify([localStorage, sessionStorage, document.cookie])")
    assert "eyJ" not in stored  # no JWT anywhere a script could read it back
    assert page.evaluate("document.cookie") == ""  # the refresh cookie is httpOnly
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    log_in(page, email)
    expect(page.locator("#who")).to_have_text("Ada Lovelace")


def test_tasks_are_created_edited_searched_filtered_deleted_undone_and_restored(
    pages: Pages, deployment: Deployment
) -> None:
    """The task list: create with details, edit inline, search as you type ("rep" finds
    "report"), each filter and the sort, delete with undo, and restore from the trash."""
    page = pages()
    sign_up(page, "Katherine Johnson")
    now = datetime.now()
    add_task(
        page,
        "Write the quarterly report",
        description="Figures from finance, charts from the team.",
        priority="High",
        tags="work, reports",
        due=local_input(now + timedelta(days=3)),
    )
    add_task(page, "Pay the rent", tags="home", due=local_input(now - timedelta(days=1)))
    add_task(page, "Plan the team offsite", tags="work", priority="Low")
    form = page.get_by_role("form", name="New task")
    form.get_by_text("More details").click()
    form.get_by_label("Tags").press_sequentially("home, wo")  # autocomplete: the tag being typed
    suggestions = page.locator(f"#{form.get_by_label('Tags').get_attribute('list')} option")
    expect(suggestions).to_have_count(1)
    expect(suggestions).to_have_attribute("value", "home, work")
    expect(suggestions).to_have_attribute("label", "work (2)")  # once the counts caught up
    form.get_by_label("Tags").fill("")
    stats = page.get_by_role("list", name="Summary")
    expect(stats).to_contain_text("3 To do")
    expect(stats).to_contain_text("1 Overdue")
    expect(listed_titles(page)).to_have_text(
        ["Plan the team offsite", "Pay the rent", "Write the quarterly report"]
    )

    rent = task_row(page, "Pay the rent")
    rent.get_by_role("button", name="Edit Pay the rent").click()
    editor = page.get_by_role("form", name="Edit Pay the rent")
    editor.get_by_label("Title").fill("Pay the rent for March")
    editor.get_by_label("Status").select_option(label="In progress")
    editor.get_by_role("button", name="Save").click()
    renamed = task_row(page, "Pay the rent for March")
    expect(renamed).to_contain_text("In progress")
    expect(stats).to_contain_text("1 In progress")
    check_accessibility(page, "tasks")
    screenshot(page, deployment, "tasks")

    search = page.get_by_label("Search", exact=True)
    search.press_sequentially("rep", delay=40)  # as a person types
    expect(listed_titles(page)).to_have_text(["Write the quarterly report"])
    search.fill("")
    search.dispatch_event("input")
    expect(listed_titles(page)).to_have_count(3)

    filters = page.get_by_role("search", name="Filter tasks")
    filters.get_by_label("Status").select_option(label="In progress")
    expect(listed_titles(page)).to_have_text(["Pay the rent for March"])
    filters.get_by_label("Status").select_option(label="Any status")
    filters.get_by_label("Priority").select_option(label="High")
    expect(listed_titles(page)).to_have_text(["Write the quarterly report"])
    filters.get_by_label("Priority").select_option(label="Any priority")
    filters.get_by_label("Tag").fill("work")
    filters.get_by_label("Tag").press("Enter")
    expect(listed_titles(page)).to_have_text(
        ["Plan the team offsite", "Write the quarterly report"]
    )
    filters.get_by_label("Tag").fill("")
    filters.get_by_label("Tag").press("Enter")
    filters.get_by_label("Due", exact=True).select_option(label="Overdue")
    expect(listed_titles(page)).to_have_text(["Pay the rent for March"])
    filters.get_by_label("Due", exact=True).select_option(label="Any due date")
    filters.get_by_label("Sort by").select_option(label="Priority")
    expect(listed_titles(page)).to_have_text(
        ["Write the quarterly report", "Pay the rent for March", "Plan the team offsite"]
    )
    filters.get_by_label("Order").select_option(label="Ascending")
    expect(listed_titles(page)).to_have_text(
        ["Plan the team offsite", "Pay the rent for March", "Write the quarterly report"]
    )

    report = task_row(page, "Write the quarterly report")
    report.get_by_role("button", name="Delete Write the quarterly report").click()
    expect(report).to_have_count(0)
    expect(stats).to_contain_text("1 To do")
    page.get_by_role("button", name="Undo").click()
    expect(task_row(page, "Write the quarterly report")).to_be_visible()

    task_row(page, "Plan the team offsite").get_by_role(
        "button", name=re.compile("^Delete")
    ).click()
    expect(task_row(page, "Plan the team offsite")).to_have_count(0)
    page.get_by_role("link", name="Trash").click()
    expect(page.get_by_role("heading", name="Trash")).to_be_visible()
    deleted = task_row(page, "Plan the team offsite")
    expect(deleted).to_be_visible()
    check_accessibility(page, "trash")
    screenshot(page, deployment, "trash")
    deleted.get_by_role("button", name="Restore Plan the team offsite").click()
    expect(deleted).to_have_count(0)
    expect(page.get_by_text("The trash is empty.")).to_be_visible()
    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(task_row(page, "Plan the team offsite")).to_be_visible()


def test_the_list_scrolls_on_by_cursor(pages: Pages, deployment: Deployment) -> None:
    """Endless scroll: reaching the end of a page of 20 loads the next one by its cursor."""
    page = pages()
    email = sign_up(page, "Alan Turing")
    auth = deployment.token(email)
    for n in range(25):
        status, _ = deployment.request("POST", "/api/tasks", {"title": f"Task {n:02d}"}, auth)
        assert status == 201
    deployment.until_listed(auth, 25)  # the read model has them all: the reload shows them
    page.reload()
    expect(listed_titles(page).first).to_have_text("Task 24")
    expect(listed_titles(page)).to_have_count(20)
    page.get_by_role("button", name="Load more").scroll_into_view_if_needed()
    expect(listed_titles(page)).to_have_count(25)
    expect(listed_titles(page).last).to_have_text("Task 00")
    expect(page.get_by_text("That is every task.")).to_be_visible()


def test_two_browsers_see_each_others_changes_live_and_a_conflict_offers_a_retry(
    pages: Pages, deployment: Deployment
) -> None:
    """Another context's change appears without a reload (the change feed); a save on an
    older version shows the newer one and applies the changes on top of it when asked."""
    mine, theirs = pages(), pages()
    email = sign_up(mine, "Grace Hopper")
    log_in(theirs, email)
    expect(theirs.locator("#live")).to_have_text("live")
    add_task(mine, "Draft the budget")
    expect(task_row(theirs, "Draft the budget")).to_be_visible()  # no reload: live

    row = task_row(theirs, "Draft the budget")
    row.get_by_role("button", name="Edit Draft the budget").click()
    editor = theirs.get_by_role("form", name="Edit Draft the budget")
    editor.get_by_label("Title").fill("Draft the 2027 budget")
    editor.get_by_role("button", name="Save").click()
    expect(task_row(mine, "Draft the 2027 budget")).to_be_visible()  # live again

    task_row(mine, "Draft the 2027 budget").get_by_role("button", name=re.compile("^Edit")).click()
    my_editor = mine.get_by_role("form", name="Edit Draft the 2027 budget")
    task_row(theirs, "Draft the 2027 budget").get_by_role(
        "button", name=re.compile("^Edit")
    ).click()
    their_editor = theirs.get_by_role("form", name="Edit Draft the 2027 budget")
    their_editor.get_by_label("Priority").select_option(label="Urgent")
    their_editor.get_by_role("button", name="Save").click()
    expect(task_row(theirs, "Draft the 2027 budget")).to_contain_text("Urgent priority")
    expect(my_editor).to_contain_text("changed elsewhere")  # told while still editing
    my_editor.get_by_label("Description").fill("Numbers from finance by Friday.")
    my_editor.get_by_role("button", name="Save").click()
    conflict = mine.get_by_role("group", name="Conflict")
    expect(conflict).to_contain_text("Someone saved version 3")
    changes = conflict.get_by_role("table", name="What each side changed")
    expect(changes.get_by_role("row", name=re.compile("^Priority"))).to_contain_text("Urgent")
    expect(changes.get_by_role("row", name=re.compile("^Description"))).to_contain_text(
        "Numbers from finance by Friday."
    )
    check_accessibility(mine, "conflict")
    screenshot(mine, deployment, "conflict")
    conflict.get_by_role("button", name="Apply my changes to their version").click()
    merged = task_row(mine, "Draft the 2027 budget")
    expect(merged).to_contain_text("Numbers from finance by Friday.")
    expect(merged).to_contain_text("Urgent priority")
    expect(task_row(theirs, "Draft the 2027 budget")).to_contain_text("Numbers from finance")


def test_an_open_editor_survives_a_change_arriving_from_elsewhere(
    pages: Pages, deployment: Deployment
) -> None:
    """A task created elsewhere reloads the list (the change feed); the row being edited keeps
    its form, what was typed and the focus, and saves."""
    page = pages()
    email = sign_up(page, "Barbara Liskov")
    row = add_task(page, "Review the design")
    row.get_by_role("button", name="Edit Review the design").click()
    editor = page.get_by_role("form", name="Edit Review the design")
    title = editor.get_by_label("Title")
    title.fill("Review the design doc")
    status, _ = deployment.request(
        "POST", "/api/tasks", {"title": "Arrived from elsewhere"}, deployment.token(email)
    )
    assert status == 201
    expect(task_row(page, "Arrived from elsewhere")).to_be_visible()  # the list was reloaded
    expect(title).to_have_value("Review the design doc")
    expect(title).to_be_focused()
    editor.get_by_role("button", name="Save").click()
    expect(task_row(page, "Review the design doc")).to_be_visible()


def test_a_list_read_before_a_delete_does_not_bring_the_task_back(
    pages: Pages, deployment: Deployment
) -> None:
    """A reload's page read before a delete and answered after it still lists the deleted
    task (a slow answer on a loaded machine): the list does not show it again.

    The live feed is kept away, so it cannot take the task away again afterwards (it did, when
    its delete arrived after the page; on a loaded machine it arrived before, and the deleted
    task stayed on the list)."""
    page = pages()
    page.route(re.compile(r"/api/tasks/changes"), lambda route: route.abort())
    sign_up(page, "Frances Allen")
    add_task(page, "Keep this one")
    doomed = add_task(page, "Delete this one")
    held: list[tuple[Route, APIResponse]] = []

    def read_now_answer_later(route: Route) -> None:
        if held:
            route.continue_()  # only the first reload's page is held
        else:
            held.append((route, route.fetch()))

    page.route(re.compile(r"/api/tasks\?"), read_now_answer_later)
    tasks = page.get_by_role("list", name="Tasks")
    filters = page.get_by_role("search", name="Filter tasks")
    filters.get_by_label("Order").select_option(label="Ascending")  # a reload: its page is held
    expect(tasks).to_have_attribute("aria-busy", "true")
    doomed.get_by_role("button", name="Delete Delete this one").click()
    expect(doomed).to_have_count(0)
    ((route, response),) = held
    route.fulfill(response=response)
    expect(tasks).not_to_have_attribute("aria-busy", "true")  # the held page has been shown
    expect(listed_titles(page)).to_have_text(["Keep this one"])


def test_a_tasks_history_and_time_travel(pages: Pages, deployment: Deployment) -> None:
    """The timeline lists who changed what; the slider and an instant show the task then."""
    page = pages()
    sign_up(page, "Hedy Lamarr")
    row = add_task(page, "Book the venue", tags="event")
    row.get_by_role("button", name="Edit Book the venue").click()
    editor = page.get_by_role("form", name="Edit Book the venue")
    editor.get_by_label("Title").fill("Book the venue for May")
    editor.get_by_role("button", name="Save").click()
    done = task_row(page, "Book the venue for May").get_by_role("checkbox")
    done.check()
    expect(task_row(page, "Book the venue for May")).to_contain_text("Done")
    task_row(page, "Book the venue for May").get_by_role(
        "link", name=re.compile("^History")
    ).click()
    expect(page.get_by_role("heading", name="History of “Book the venue for May”")).to_be_visible()
    timeline = page.get_by_role("list", name="Events, oldest first")
    expect(timeline.locator("li.event")).to_have_count(3)
    expect(timeline.locator("li.event").first).to_contain_text("Created by you")
    expect(timeline).to_contain_text("Renamed by you")
    expect(timeline).to_contain_text("title → Book the venue for May".replace("title", "Title"))
    snapshot = page.locator(".snapshot-box")
    expect(snapshot).to_contain_text("As it was at version 3")
    slider = page.get_by_label("Version")
    slider.focus()
    slider.press("Home")  # the keyboard moves the slider to the first version
    expect(snapshot).to_contain_text("As it was at version 1")
    expect(snapshot).to_contain_text("Book the venue")
    expect(snapshot.locator(".differs")).to_have_count(2)  # title and status differ from now
    check_accessibility(page, "history")
    screenshot(page, deployment, "history")
    page.get_by_label("As of").fill(
        (datetime.now() + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    )
    page.get_by_role("button", name="Show", exact=True).click()
    expect(snapshot).to_contain_text("As it was on")
    expect(snapshot).to_contain_text("Book the venue for May")
    page.get_by_label("As of").fill("2001-01-01T00:00:00")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(snapshot).to_contain_text("did not exist yet")


def test_an_auditor_reads_the_feed_a_stream_the_projections_and_runs_a_verification(
    pages: Pages, deployment: Deployment
) -> None:
    """Auditors page through the global feed (filtered by type and stream), open a stream,
    see the projections, and run `audit verify` in the background until it passes."""
    page = pages()
    email = sign_up(page, "Margaret Hamilton")
    add_task(page, "Review the access logs")
    assert "granted" in deployment.taskflow("users", "grant-role", email, "auditor")
    page.reload()  # the refresh reads the new role into the access token
    page.get_by_role("link", name="Audit").click()
    feed = page.get_by_role("table", name="Commits of the event log, in log order")
    expect(feed.locator("tbody tr").first).to_be_visible()
    expect(feed).to_contain_text("UserRoleGranted")
    page.get_by_label("Event type").select_option("TaskCreated")
    expect(feed.locator("tbody tr").first).to_contain_text("TaskCreated")
    for events in feed.locator("tbody tr td:nth-child(4)").all_inner_texts():
        assert "TaskCreated" in events
    check_accessibility(page, "audit feed")
    screenshot(page, deployment, "audit-feed", full_page=False)
    feed.locator("tbody tr a").first.click()
    expect(page.get_by_role("heading", name=re.compile("^Stream task-"))).to_be_visible()
    expect(page.locator(".event-detail").first).to_contain_text("TaskCreated")
    check_accessibility(page, "audit stream")
    page.get_by_role("navigation", name="Audit").get_by_role("link", name="Projections").click()
    projections = page.get_by_role("table", name=re.compile("^Each projection"))
    expect(projections).to_contain_text("task_views_redis_v1")
    expect(projections).to_contain_text("log_seal")
    check_accessibility(page, "projections")
    page.get_by_role("link", name="Verification").click()
    page.get_by_role("button", name="Run verification").click()
    expect(page.locator(".job")).to_contain_text("Passed", timeout=60_000)
    expect(page.locator(".job")).to_contain_text("audit verify: OK")
    check_accessibility(page, "verification")
    screenshot(page, deployment, "audit-verify")


def test_a_password_change_signs_the_other_browser_out_and_an_account_can_be_erased(
    pages: Pages, deployment: Deployment
) -> None:
    """Changing the password ends every other session (its next load asks for a login);
    erasing the account ends them all."""
    mine, other = pages(), pages()
    email = sign_up(mine, "Barbara Liskov")
    log_in(other, email)
    mine.get_by_role("link", name="Account").click()
    expect(mine.get_by_role("heading", name="Account", exact=True)).to_be_visible()
    check_accessibility(mine, "account")
    screenshot(mine, deployment, "account")
    mine.get_by_label("Current password").fill(PASSWORD)
    mine.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    mine.get_by_label("New password again").fill(NEW_PASSWORD)
    mine.get_by_role("button", name="Change password").click()
    expect(mine.get_by_text("Every other session was signed out.")).to_be_visible()
    other.reload()
    expect(other.get_by_role("heading", name="Log in")).to_be_visible()
    log_in(other, email, NEW_PASSWORD)
    mine.reload()  # this browser's own session went on
    expect(mine.get_by_role("heading", name="Account", exact=True)).to_be_visible()
    mine.get_by_role("form", name="Erase account").get_by_label("Password").fill(NEW_PASSWORD)
    mine.get_by_label("I understand that this cannot be undone").check()
    mine.get_by_role("button", name="Erase my account").click()
    expect(mine.get_by_text("Your account was erased.")).to_be_visible()
    other.reload()
    expect(other.get_by_role("heading", name="Log in")).to_be_visible()
    status, _ = deployment.request(
        "POST", "/api/auth/login", {"email": email, "password": NEW_PASSWORD}
    )
    assert status == 401


def test_an_expired_token_is_refreshed_silently_once(pages: Pages) -> None:
    """A request refused for its token refreshes the session and is sent again, once: the
    person sees nothing of it."""
    page = pages()
    sign_up(page, "Frances Allen")
    refreshes: list[str] = []
    page.on(
        "request",
        lambda r: refreshes.append(r.url) if r.url.endswith("/api/auth/refresh") else None,
    )
    refused: list[str] = []

    def expire_once(route: Route) -> None:
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        problem = {
            "type": "urn:taskflow:problem:invalid-token",
            "title": "Authentication required",
            "status": 401,
        }
        route.fulfill(status=401, content_type="application/problem+json", body=json.dumps(problem))

    page.route("**/api/tasks/stats", expire_once)
    page.get_by_role("link", name="Trash").click()
    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(page.get_by_role("list", name="Summary")).to_contain_text("0 To do")
    assert len(refused) == 1
    assert len(refreshes) == 1  # the one refresh the refused request asked for
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()


def test_the_console_works_by_keyboard_alone_and_at_a_phones_width(
    pages: Pages, deployment: Deployment
) -> None:
    """Tab reaches every control with a visible focus ring; a task is added and edited with
    the keyboard only; at 390 px nothing scrolls sideways."""
    page = pages(width=390, height=844)
    sign_up(page, "Radia Perlman")
    page.get_by_label("Title").first.focus()
    page.keyboard.type("Water the plants")
    page.keyboard.press("Enter")
    row = task_row(page, "Water the plants")
    expect(row).to_be_visible()
    tab_to(page, "Edit Water the plants")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    expect(page.get_by_role("form", name="Edit Water the plants")).to_be_visible()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("Water the plants twice")
    page.keyboard.press("Enter")
    expect(task_row(page, "Water the plants twice")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    check_accessibility(page, "tasks at a phone's width")
    screenshot(page, deployment, "phone")


def tab_to(page: Page, name: str, presses: int = 80) -> None:
    """Press Tab until the control named `name` has the focus (AssertionError if never)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        label = page.evaluate(
            "document.activeElement.getAttribute('aria-label')"
            " || document.activeElement.textContent"
        )
        if label == name:
            return
    raise AssertionError(f"Tab never reached {name!r}")
