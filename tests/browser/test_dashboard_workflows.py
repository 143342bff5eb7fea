"""The dashboard's workflow and batch pages in a real headless Chromium (the fixtures of
test_dashboard.py): a diamond workflow's graph whose nodes change state live, cancelled from the
page after a confirmation; a step's job page with its workflow, dependencies and dependents; a
batch's counts and callbacks. Screenshots go to `$DASHBOARD_ARTIFACTS` like the other tests'."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, expect
from test_dashboard import _no_csp_violation, _open, _shot, browser, client, served  # noqa: F401 (fixtures)

from supervisor import Callback, Step, SyncClient, dag
from tests.conftest import DaemonProcess


def _node(page: Page, step: str) -> Locator:
    return page.locator(f'a.node[data-step="{step}"]')


def test_a_diamond_workflows_graph_changes_live_and_is_cancelled_from_the_page(
        browser: Browser, served: Callable[[], tuple[DaemonProcess, str]],  # noqa: F811
        client: SyncClient, tmp_path: Path) -> None:  # noqa: F811
    _, url = served()
    go = tmp_path / "go"
    # Given a diamond whose first step holds until `go` exists and whose last one holds for good
    ref = client.workflow(dag({
        "start": Step("ui.hold", {"gate": str(go)}),
        "left": Step("ui.work", {}, after=["start"]),
        "right": Step("ui.other", {}, after=["start"]),
        "last": Step("ui.hold", {"gate": str(tmp_path / "never")}, after=["left", "right"]),
    }), name="diamond")
    page = _open(browser, url)
    page.get_by_role("link", name="Workflows").click()
    row = page.locator(f'tr[data-workflow="{ref.id}"]')
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("diamond")
    _shot(page, "workflows")
    row.get_by_role("link", name=ref.id).click()
    expect(page.get_by_role("heading", name=f"Workflow {ref.id}")).to_be_visible()
    expect(_node(page, "start")).to_have_attribute("data-state", "active")
    for waiting in ("left", "right", "last"):
        expect(_node(page, waiting)).to_have_attribute("data-state", "waiting")
    assert _node(page, "last").get_attribute("href") == f"#/job/{ref.jobs['last']}"
    page.evaluate("window.__same_page = true")  # gone if anything reloads the page
    _shot(page, "workflow-running")

    # When the first step's gate opens, the nodes follow by themselves: the sides run, the last one starts
    go.touch()
    for done in ("start", "left", "right"):
        expect(_node(page, done)).to_have_attribute("data-state", "completed")
    expect(_node(page, "last")).to_have_attribute("data-state", "active")
    assert page.evaluate("window.__same_page"), "the page reloaded"
    _shot(page, "workflow")

    # Cancel asks first ("Keep it running" changes nothing), then cancels the running step and the workflow
    page.get_by_role("button", name="Cancel workflow…").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("1 unfinished job")
    expect(page.get_by_role("button", name="Keep it running")).to_be_focused()  # the harmless answer
    page.keyboard.press("Enter")
    expect(page.get_by_role("alertdialog")).to_have_count(0)
    expect(_node(page, "last")).to_have_attribute("data-state", "active")
    page.get_by_role("button", name="Cancel workflow…").click()
    page.get_by_role("button", name="Yes, cancel the workflow").click()
    expect(_node(page, "last")).to_have_attribute("data-state", "cancelled")
    expect(page.locator("[data-workflow-state]")).to_have_attribute("data-workflow-state", "cancelled")
    expect(page.get_by_role("button", name="Cancel workflow…")).to_have_count(0)
    _shot(page, "workflow-cancelled")

    # A node opens its job: the page links back to the workflow and shows what it waits on and what waits on it
    _node(page, "left").click()
    expect(page.get_by_role("heading", name=f"Job {ref.jobs['left']}")).to_be_visible()
    links = page.locator('section[aria-labelledby="links-h"]')
    expect(links.get_by_role("link", name=ref.id)).to_be_visible()
    expect(links.locator(f'.deps [data-link-job="{ref.jobs["start"]}"]')).to_contain_text("completed")
    expect(links.locator(f'.dependents [data-link-job="{ref.jobs["last"]}"]')).to_contain_text("cancelled")
    _shot(page, "job-in-workflow")


def test_a_batchs_page_shows_its_counts_and_which_callbacks_fired(
        browser: Browser, served: Callable[[], tuple[DaemonProcess, str]],  # noqa: F811
        client: SyncClient) -> None:  # noqa: F811
    _, url = served()
    # Given a batch of three jobs, one of which fails, closed: on_complete fires, on_success does not
    bid = client.batch(on_complete=Callback("ui.other", {"note": "all settled"}), on_success="ui.other",
                       description="three")
    member = client.enqueue("ui.work", {}, batch=bid)
    client.enqueue("ui.work", {}, batch=bid)
    client.enqueue("ui.fail", {"message": "no"}, batch=bid)
    page = _open(browser, url)
    page.goto(f"{url}/ui/#/job/{member.id}")
    page.locator('section[aria-labelledby="links-h"]').get_by_role("link", name=bid).click()
    expect(page.get_by_role("heading", name=f"Batch {bid}")).to_be_visible()
    expect(page.locator('[data-batch="total"]')).to_have_text("3")
    expect(page.locator('[data-callback="on_complete"] [data-fired]')).to_have_attribute("data-fired", "null")
    # When it is closed, its counts and callbacks follow live
    client.close_batch(bid)
    expect(page.locator('[data-batch="completed"]')).to_have_text("2")
    expect(page.locator('[data-batch="failed"]')).to_have_text("1")
    expect(page.locator('[data-batch="pending"]')).to_have_text("0")
    expect(page.locator('[data-callback="on_complete"] [data-fired]')).to_have_attribute("data-fired", "true")
    expect(page.locator('[data-callback="on_success"] [data-fired]')).to_have_attribute("data-fired", "false")
    expect(page.locator("[data-batch-state]")).to_have_attribute("data-batch-state", "done")
    _shot(page, "batch")
