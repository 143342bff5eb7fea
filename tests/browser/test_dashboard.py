"""The dashboard at /ui/ in a real headless Chromium (Debian's, driven by Playwright), against a
real daemon subprocess that serves the admin API and runs the jobs.

Each test saves a screenshot of the pages it visits into `$DASHBOARD_ARTIFACTS` (default
`tests/artifacts/dashboard/`, git-ignored). Waits are Playwright's own (a condition with a
deadline), never sleeps.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright
from test_docs_page import CHROMIUM, CHROMIUM_ARGS

from supervisor import SyncClient
from tests.conftest import HANDLERS, DaemonProcess, wait_until

TOKEN = "dashboard-token"
ARTIFACTS = Path(os.environ.get("DASHBOARD_ARTIFACTS") or Path(__file__).parents[1] / "artifacts" / "dashboard")
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
CSP_REPORTS: list[str] = []  # what the browser refused under the page's Content-Security-Policy


@pytest.fixture(autouse=True)
def _no_csp_violation() -> Iterator[None]:
    CSP_REPORTS.clear()
    yield
    assert CSP_REPORTS == [], "the strict CSP blocked part of the page"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=15_000)  # a deadline, not a pace: the suite shares two cores
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(daemon: Callable[..., DaemonProcess], jobs_dir: Path) -> Callable[[], tuple[DaemonProcess, str]]:
    """Start (or start again, on the same port) a daemon that runs the dashboard's handlers and serves the API."""
    (jobs_dir / "dashboard.py").write_text((HANDLERS / "dashboard.py").read_text())
    port = _free_port()
    env = {"JOB_SUPERVISOR_API_ENABLED": "true", "JOB_SUPERVISOR_API_PORT": str(port),
           "JOB_SUPERVISOR_API_TOKEN": TOKEN, "JOB_SUPERVISOR_PRESENCE_INTERVAL": "1"}

    def start() -> tuple[DaemonProcess, str]:
        d = daemon(env=env)
        wait_until(lambda: d.events("api.listening"), 10, what="api.listening")
        return d, f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
def client(redis_url: str) -> Iterator[SyncClient]:
    c = SyncClient(redis_url)
    yield c
    c.close()


def _open(browser: Browser, url: str, *, width: int = 1280, height: int = 900) -> Page:
    """A fresh tab (its own sessionStorage) logged in with the token through the login form."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.on("pageerror", lambda e: print("page error:", e))  # shown with a failure's output
    page.on("console", lambda m: CSP_REPORTS.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{url}/ui/")
    page.get_by_label("API token").fill("wrong")
    page.get_by_role("button", name="Open the dashboard").click()
    expect(page.get_by_role("alert")).to_contain_text("token")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Open the dashboard").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".live")).to_have_attribute("data-state", "live")
    return page


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _count(page: Page, type_name: str, column: str) -> Any:
    return page.locator(f'tr[data-type="{type_name}"] td[data-count="{column}"]')


def test_login_live_counts_and_a_failed_jobs_stack_trace_shown_as_text(
        browser: Browser, served: Callable[[], tuple[DaemonProcess, str]], client: SyncClient) -> None:
    _, url = served()
    page = _open(browser, url)
    page.evaluate("window.__same_page = true")  # gone if anything reloads the page
    requested: list[Request] = []
    page.on("request", lambda r: requested.append(r))  # noqa: PLW0108 (Playwright cannot wrap a builtin method)

    # Given the overview, when jobs run, then their type's counts change on the page by themselves.
    expect(_count(page, "ui.work", "completed")).to_have_text("0")
    client.enqueue_many([("ui.work", {"seconds": 0.05}) for _ in range(30)])
    expect(_count(page, "ui.work", "completed")).to_have_text("30", timeout=20_000)
    assert page.evaluate("window.__same_page"), "the page reloaded"
    assert all("token" not in r.url.lower() and TOKEN not in r.url for r in requested)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in requested if "/ui/" not in r.url)
    expect(page.locator('[data-hour="completed"]')).to_have_text("30", timeout=10_000)  # the history's plots

    # A job that failed with HTML and script in its error: the dead-letter list, then its page.
    ref = client.enqueue("ui.fail", {"message": XSS, "note": XSS})
    expect(page.locator(".failures li", has_text=ref.id)).to_contain_text("dead")  # live, on the overview
    expect(_count(page, "ui.fail", "dead")).to_have_text("1")
    _shot(page, "overview")
    page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f'tr[data-job="{ref.id}"]')
    expect(row).to_contain_text("<script>window.__xss = 1</script>")
    _shot(page, "dead-letters")
    row.get_by_role("link", name=ref.id).click()
    expect(page.get_by_role("heading", name=f"Job {ref.id}")).to_contain_text("dead")
    trace = page.locator(".traceback").first
    expect(trace).to_contain_text("in _charge")
    expect(trace).to_contain_text("ValueError")
    expect(page.locator(".payload")).to_contain_text('"note": "<script>')
    expect(page.locator(".job-error")).to_contain_text(f"ValueError: {XSS}")
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script").count() == 0
    expect(page.get_by_role("button", name="Replay")).to_be_visible()
    _shot(page, "job")

    # Every other page renders, and the search finds the job by its request id.
    request_id = client.get(ref.id).context["request_id"]
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_role("searchbox").fill(request_id)
    page.get_by_role("button", name="Search").click()
    expect(page.locator(f'tr[data-job="{ref.id}"]')).to_contain_text("request_id")
    _shot(page, "jobs-search")
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("tr[data-job]")).to_have_count(31)
    _shot(page, "jobs")
    page.get_by_role("link", name="Workers").click()
    expect(page.locator("article[data-instance^='d0:']")).to_contain_text("alive")
    _shot(page, "workers")
    page.get_by_role("link", name="Schedules").click()
    nightly = page.locator("tr", has_text="ui.nightly")
    expect(nightly).to_contain_text("0 3 * * *")
    expect(nightly.locator("time")).to_have_count(4)  # the last fire (never) and the next three
    nightly.get_by_role("button", name="Pause type ui.nightly").click()
    expect(nightly).to_contain_text("paused")
    _shot(page, "schedules")
    assert page.evaluate("window.__same_page"), "the page reloaded"


def test_keys_page_shows_who_holds_and_who_waits(browser: Browser, served: Callable[[], tuple[DaemonProcess, str]],
                                                 client: SyncClient, tmp_path: Path) -> None:
    _, url = served()
    gate = tmp_path / "gate"
    refs = [client.enqueue("ui.keyed", {"tenant": "acme", "gate": str(gate)}) for _ in range(3)]
    wait_until(lambda: client.get(refs[0].id).state.value == "active", 10, what="the first job holds the key")
    page = _open(browser, url)
    page.get_by_role("link", name="Workers").click()  # the holder runs: in flight, with its age
    expect(page.locator("article[data-instance^='d0:']")).to_contain_text(f"{refs[0].id} ui.keyed, attempt 1, running")
    _shot(page, "workers-in-flight")
    page.get_by_role("link", name="Keys").click()
    page.locator("select[name=type]").select_option("ui.keyed")
    page.get_by_role("textbox", name="Key").fill("acme")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("heading", name="Holders (1)")).to_be_visible()
    expect(page.locator("#holders-h + ul")).to_contain_text(refs[0].id)
    expect(page.get_by_role("heading", name="Waiting (2)")).to_be_visible()
    expect(page.locator("#waiters-h + ol li")).to_have_text([refs[1].id, refs[2].id])
    _shot(page, "keys")
    gate.touch()  # every job runs in turn; the page follows without a reload
    expect(page.get_by_role("heading", name="Waiting (0)")).to_be_visible(timeout=15_000)
    expect(page.get_by_role("heading", name="Holders (0)")).to_be_visible(timeout=15_000)


def test_phone_width_and_keyboard(browser: Browser, served: Callable[[], tuple[DaemonProcess, str]],
                                  client: SyncClient) -> None:
    _, url = served()
    client.enqueue("ui.work", {})
    page = _open(browser, url, width=390, height=844)
    expect(page.locator('tr[data-type="ui.work"]')).to_be_visible()
    # Nothing wider than the phone but the tables, which scroll inside their own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shot(page, "overview-phone")
    # Keyboard: the skip link comes first, then the navigation; Enter follows a link.
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Jobs")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()


def test_live_progress_and_a_lost_connection_resumed_from_the_last_event(
        browser: Browser, served: Callable[[], tuple[DaemonProcess, str]], client: SyncClient,
        tmp_path: Path) -> None:
    d, url = served()
    page = _open(browser, url)
    gate, gate2 = tmp_path / "gate", tmp_path / "gate2"
    ref = client.enqueue("ui.gated", {"gate": str(gate), "gate2": str(gate2)})
    page.goto(f"{url}/ui/#/job/{ref.id}")
    progress = page.locator("[data-progress]")
    expect(progress).to_have_attribute("data-progress", "30", timeout=15_000)
    _shot(page, "job-progress")
    gate.touch()
    expect(progress).to_have_attribute("data-progress", "90", timeout=15_000)
    gate2.touch()
    expect(page.get_by_role("heading", name=f"Job {ref.id}")).to_contain_text("completed", timeout=15_000)

    # The daemon (and its API) stops: the page says so; it comes back: the stream resumes
    # from the last event id it saw, and the page catches up without a reload.
    streams: list[Request] = []
    page.on("request", lambda r: streams.append(r) if r.url.endswith("/events") else None)
    assert d.stop() == 0
    banner = page.locator(".live")
    expect(banner).to_have_attribute("data-state", "lost", timeout=15_000)
    expect(banner).to_contain_text("Connection lost")
    later = client.enqueue("ui.work", {}, allow_unknown=True)
    served()
    expect(banner).to_have_attribute("data-state", "live", timeout=20_000)
    assert streams and streams[-1].headers.get("last-event-id"), "the reconnect did not resume"
    client.wait(later.id, timeout=20)
    page.get_by_role("link", name="Overview").click()
    expect(_count(page, "ui.work", "completed")).to_have_text("1", timeout=15_000)


def test_pause_keeps_jobs_pending_and_bulk_replay_of_dead_jobs_by_filter(
        browser: Browser, served: Callable[[], tuple[DaemonProcess, str]], client: SyncClient) -> None:
    _, url = served()
    page = _open(browser, url)

    # Given ui.work paused from the overview, its jobs stay pending while another type's run.
    row = page.locator('tr[data-type="ui.work"]')
    row.get_by_role("button", name="Pause ui.work").click()
    expect(row.locator("[data-status]")).to_have_text("paused")
    paused = client.enqueue_many([("ui.work", {}) for _ in range(5)])
    others = client.enqueue_many([("ui.other", {}) for _ in range(5)])
    for ref in others:
        client.wait(ref.id, timeout=20)
    expect(_count(page, "ui.other", "completed")).to_have_text("5")
    expect(_count(page, "ui.work", "pending")).to_have_text("5")
    assert {client.get(ref.id).state.value for ref in paused} == {"pending"}
    _shot(page, "overview-paused")
    # When resumed, they run.
    row.get_by_role("button", name="Resume ui.work").click()
    expect(_count(page, "ui.work", "completed")).to_have_text("5", timeout=20_000)

    # Dead jobs of ui.fail (each fails its first attempt only): replayed by filter, they complete.
    dead = client.enqueue_many([("ui.fail", {"fail_attempts": 1}) for _ in range(6)])
    for ref in dead:
        client.wait(ref.id, timeout=20)
    page.get_by_role("link", name="Dead letters").click()
    page.locator("select[name=type]").select_option("ui.fail")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tr[data-job]")).to_have_count(6)
    page.get_by_text("Bulk action on this filter").click()
    page.get_by_role("button", name="Count matching jobs").click()
    expect(page.locator(".bulk-count")).to_contain_text("6 job(s) match")
    _shot(page, "dead-letters-bulk")
    assert {client.get(ref.id).state.value for ref in dead} == {"dead"}, "a dry run changed something"
    page.get_by_role("button", name="Replay 6 job(s)").click()
    expect(page.locator(".bulk-result")).to_contain_text("replay: 6 done")
    for ref in dead:
        assert client.wait(ref.id, timeout=20).state.value == "completed"
    expect(page.locator("tr[data-job]")).to_have_count(0)
