"""examples/feathers-chat in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) with a page
on each of two instances, each instance with its own syncar on Redis. A message sent in one page appears in the
other, also after the second instance's syncar restarts, and one sent while it is down arrives once it is back.

`SYNCAR_CHAT_SCREENSHOT=docs/feathers-chat.png` keeps the screenshot of the two pages there (the README's).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, ViewportSize, async_playwright, expect

from tests.brokers import BrokerServer, require_binary
from tests.examples.chat import TIMEOUT, ChatServer
from tests.utils import SpawnedDaemon

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(240)]

#: Headless as root, and nothing that reaches beyond this machine (no updates, sync, QUIC).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 560, "height": 480}
#: Playwright's waits (its expect() does not follow the context's default timeout), in milliseconds.
WAIT_MS = TIMEOUT * 1000


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    chromium = require_binary("chromium")
    async with async_playwright() as playwright:
        # Playwright's own browser builds cannot be downloaded here: it drives the system's Chromium.
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            await context.close()


async def open_chat(browser: BrowserContext, server: ChatServer, errors: list[str]) -> Page:
    """The chat page of `server`, connected; its uncaught errors are added to `errors`."""
    page = await browser.new_page()
    page.on("pageerror", lambda error: errors.append(f"{server.url}: {error}"))
    await page.goto(server.url)
    await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    return page


async def say(page: Page, name: str, text: str) -> None:
    await page.fill("#name", name)
    await page.fill("#text", text)
    await page.click("button")


async def shown_once(page: Page, text: str) -> None:
    await expect(page.locator("#messages .text", has_text=text)).to_have_count(1, timeout=WAIT_MS)


async def screenshot(browser: BrowserContext, pages: dict[str, Page], path: Path) -> None:
    """The pages side by side, each under its caption, as one PNG."""
    figures = "".join(
        [
            f'<figure><figcaption>{caption}</figcaption><img src="data:image/png;base64,'
            f'{base64.b64encode(await page.screenshot()).decode()}"></figure>'
            for caption, page in pages.items()
        ]
    )
    sheet = await browser.new_page()
    await sheet.set_viewport_size({"width": len(pages) * (VIEWPORT["width"] + 10) + 8, "height": 100})
    await sheet.set_content(
        "<style>body{margin:0;display:flex;gap:8px;padding:8px;background:#d5d9e0;font:13px sans-serif}"
        "figure{margin:0}img{display:block;border:1px solid #8890a0}figcaption{padding:2px 0 4px}</style>" + figures
    )
    path.write_bytes(await sheet.screenshot(full_page=True))
    await sheet.close()


async def test_two_pages_on_two_instances(
    redis_server: BrokerServer, sock_dir: Path, browser: BrowserContext, tmp_path: Path
) -> None:
    key = ("--backend", redis_server.uri, "--key", f"chat-{sock_dir.name}")
    daemons: dict[str, SpawnedDaemon] = {}
    servers: list[ChatServer] = []
    try:
        for name in "ab":  # started inside the try: a daemon that fails to start stops those before it
            daemons[name] = await SpawnedDaemon(sock_dir / f"{name}.sock", *key, name=name).ready()
        for name in "ab":
            servers.append(await ChatServer.run(daemons[name].socket, f"server-{name}"))
        errors: list[str] = []
        page_a, page_b = [await open_chat(browser, server, errors) for server in servers]

        await say(page_a, "ann", "hello from a")
        await shown_once(page_b, "hello from a")
        await say(page_b, "bob", "hello from b")
        await shown_once(page_a, "hello from b")

        # Instance b's syncar restarts. Meanwhile a message sent on b shows at once on b (its own instance) and
        # is held by the plugin until syncar is back; then it reaches a.
        assert await daemons["b"].stop() == 0
        await say(page_b, "bob", "sent while syncar b was away")
        await shown_once(page_b, "sent while syncar b was away")
        daemons["b"] = await SpawnedDaemon(daemons["b"].socket, *key, name="b-restarted").ready()
        await servers[1].wait_line(r"ready: connected to syncar", count=2)
        await shown_once(page_a, "sent while syncar b was away")

        await say(page_a, "ann", "after the restart")
        await shown_once(page_b, "after the restart")
        for page in (page_a, page_b):
            await expect(page.locator("#messages li")).to_have_count(4, timeout=WAIT_MS)
        assert not errors, errors

        shot = tmp_path / "feathers-chat.png"
        await screenshot(
            browser,
            {
                f"instance {name} (syncar {name}): {page.url}": page
                for name, page in zip("ab", (page_a, page_b), strict=True)
            },
            shot,
        )
        if target := os.environ.get("SYNCAR_CHAT_SCREENSHOT"):
            Path(target).write_bytes(shot.read_bytes())
    finally:
        for server in servers:
            assert await server.stop() == 0, server.output()
        for daemon in daemons.values():
            await daemon.stop()
