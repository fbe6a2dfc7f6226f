"""Debian's chromium, headless, driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
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


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless chromium; fails (never skips) when scripts/install-chromium.sh was not run."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240  (one stat before a browser starts)
        pytest.fail("no /usr/bin/chromium: run scripts/install-chromium.sh (part of scripts/bootstrap.sh --for-tests)")
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(page: Page, base_url: str, token: str, name: str = "browser") -> None:
    """Sign in through the login form, as an operator would."""
    await page.goto(f"{base_url}/login?next=/schedules")
    await page.fill("input[name=token]", token)
    await page.fill("input[name=name]", name)
    await page.click("button[type=submit]")
    await page.wait_for_selector(f"text=signed in as {name}")
