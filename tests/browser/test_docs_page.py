"""The admin API's /docs page in a real headless Chromium (Debian's, driven by Playwright).

The page asks for the token once per tab, sends it with the schema request, renders every
route, loads nothing from outside the API (its assets ship in the package), and asks again
after a wrong token.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Dialog, Response, async_playwright

from supervisor.operators.api.app import create_app
from supervisor.operators.api.server import bind_socket, serve

TOKEN = "docs-token"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a headless Chromium as root on a machine without a network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _schema(response: Response) -> bool:
    return response.url.endswith("/openapi.json")


@pytest.fixture
async def api_url(redis_url: str) -> AsyncIterator[str]:
    app = create_app(redis_url, TOKEN)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop, sock=sock, started=started))
    await asyncio.wait_for(started.wait(), 10)
    yield f"http://127.0.0.1:{port}"
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_docs_page_asks_for_the_token_once_and_renders_every_route(api_url: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            asked: list[str] = []
            requested: list[str] = []
            answer = {"token": TOKEN}

            async def on_dialog(dialog: Dialog) -> None:
                asked.append(dialog.message)
                await dialog.accept(answer["token"])

            page.on("dialog", on_dialog)
            page.on("request", lambda req: requested.append(req.url))
            async with page.expect_response(_schema) as schema:
                await page.goto(f"{api_url}/docs")
            assert (await schema.value).status == 200
            trigger = page.get_by_text("/types/{name}/trigger", exact=True)
            await trigger.wait_for(timeout=20_000)
            assert await page.get_by_text("/jobs/{job_id}/replay", exact=True).is_visible()
            assert len(asked) == 1 and "token" in asked[0].lower()
            # Every byte came from the API itself: no CDN.
            assert requested and all(url.startswith(api_url) for url in requested), requested

            # Same tab: the token is kept, nothing is asked again.
            await page.reload()
            await trigger.wait_for(timeout=20_000)
            assert len(asked) == 1

            # A new tab with a wrong token: the schema is refused, and the next load asks again.
            fresh = await browser.new_page()
            fresh.on("dialog", on_dialog)
            answer["token"] = "wrong"
            async with fresh.expect_response(_schema) as refused:
                await fresh.goto(f"{api_url}/docs")
            assert (await refused.value).status == 401
            await fresh.get_by_text("Failed to load API definition").wait_for(timeout=20_000)
            answer["token"] = TOKEN
            async with fresh.expect_response(_schema) as again:
                await fresh.reload()
            assert (await again.value).status == 200
            await fresh.get_by_text("/types/{name}/trigger", exact=True).wait_for(timeout=20_000)
            assert len(asked) == 3
        finally:
            await browser.close()
