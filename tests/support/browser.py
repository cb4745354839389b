"""Headless Debian Chromium driven by Playwright (never a downloaded browser), for the tests that look at the
built-in pages as a user does."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: quiet, offline, no GPU, no sandbox (the tests run as root)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
    "--hide-scrollbars",
]


def require_chromium() -> None:
    """Skip the test where Chromium is not installed (only a machine without .ci/system-deps)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (Debian package 'chromium'; .ci/system-deps installs it)")


@contextmanager
def chromium_page(width: int, height: int, timeout_ms: float,
                  console_errors: bool = False) -> Iterator[tuple[Page, list[str]]]:
    """A page in a fresh headless Chromium, and the list its script errors (and, if asked, the console's
    errors) are appended to, for the test to assert empty."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            if console_errors:
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            yield page, errors
        finally:
            browser.close()


def sign_in(page: Page, base_url: str, api_key: str) -> None:
    """Open the built-in UI and sign in with an API key, as a user does; returns once the jobs view shows."""
    page.goto(f"{base_url}/ui")
    page.wait_for_function("() => !document.getElementById('login').hidden")
    page.fill("#api-key", api_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_function("() => !document.getElementById('jobs-view').hidden")
