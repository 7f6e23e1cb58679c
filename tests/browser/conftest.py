"""Fixtures of the browser tests: Debian's Chromium driven by Playwright (async API).

Playwright cannot download its own browsers here, so it launches
``/usr/bin/chromium`` (``dev.py test`` installs it). Without that binary the
browser tests skip with a message saying so; nothing else makes them skip.
"""

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import IN_CI

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Flags that work on this machine's closed network (see the machine notes).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser-test-password-1"
DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium binary; its absence is the one reason to skip a browser test.

    Under CI (``CI=true``) it fails instead, like a missing Redis: ``dev.py test``
    installs chromium there, so a skip would hide that the browser tests never ran.
    """
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: install Debian's chromium (dev.py test does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[object]:
    """One Chromium for the whole run; each test opens its own contexts."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, timeout=60_000
        )
        yield chromium
        await chromium.close()


@pytest.fixture
def users(make_user) -> dict[str, object]:
    """alice, bob and carol with PASSWORD, and the staff user ops."""
    made = {name: make_user(name, password=PASSWORD) for name in ("alice", "bob", "carol")}
    made["ops"] = make_user("ops", staff=True, password=PASSWORD)
    return made


@pytest.fixture
async def open_page(browser) -> AsyncIterator[Callable]:
    """``await open_page(server, username, path)``: a logged-in page in its own context.

    Logs in through the login form (as a person would), then lands on ``path``.
    Dialogs, page errors and console errors are recorded on ``page.dialogs``,
    ``page.errors`` and ``page.console_errors``.
    ``before(context)`` runs first (to route WebSockets, say).
    """
    contexts = []

    async def open_(server, username: str, path: str = "/", before=None):
        context = await browser.new_context(viewport={"width": 1100, "height": 720})
        contexts.append(context)
        if before is not None:
            await before(context)
        page = await context.new_page()
        page.dialogs = []
        page.errors = []
        page.console_errors = []  # CSP violations, failed loads, failed sockets

        async def on_dialog(dialog) -> None:
            page.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda message: message.type == "error"
                and page.console_errors.append(message.text))
        await page.goto(f"{server.url}/accounts/login/?next={path}")
        await page.fill("#id_username", username)
        await page.fill("#id_password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{server.url}{path}")
        return page

    yield open_
    for context in contexts:
        await context.close()
