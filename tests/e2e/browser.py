"""A real browser for the end-to-end tests: Debian's Chromium driven by Playwright.

Playwright's Python API launches the Chromium that Debian's ``chromium`` package
installs (``executable_path``); ``playwright install`` and its downloaded browsers
are never used (nothing is downloaded here, and the browser is a system package like
the other real servers the tests start). Without that package the tests skip,
saying so; anything else missing is an error.

Playwright's *async* API, inside an ``asyncio.run`` of its own: its sync API marks
an event loop as running in the thread that uses it for as long as the browser
lives, and Prefect's sync entry points (``Block.save``, the log and event workers'
``drain_all``) then hand back coroutines instead of running. So a test drives the
browser in one ``asyncio.run`` and talks to Prefect outside it.

When something fails while the page is open, the page as it was (a full-page
screenshot, its HTML and its accessibility tree) is saved in the given folder and a
note naming the files is added to the exception, so pytest's report shows it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

CHROMIUM_PACKAGE = "chromium"  # the Debian package; tests/run installs it (.ci/system-packages)
CHROMIUM_BINARY = "/usr/bin/chromium"
# Playwright's wait for an element or an expectation (ms), instead of its 30 s for an
# action and 5 s for an expectation: a busy machine takes several seconds to render
# the UI, and a failure is still reported within a few seconds more.
DEFAULT_TIMEOUT_MS = 15_000


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium.

    A missing browser fails the test instead of skipping it: tests/run installs the
    package, so its absence is a broken set-up, never a reason to pass quietly.
    """
    executable = CHROMIUM_BINARY if Path(CHROMIUM_BINARY).exists() else shutil.which("chromium")
    if executable is None:
        pytest.fail(
            f"Debian's {CHROMIUM_PACKAGE!r} package is not installed ({CHROMIUM_BINARY} "
            f"is missing): run `apt-get install -y {CHROMIUM_PACKAGE}` (tests/run does, as root)"
        )
    return executable


@asynccontextmanager
async def chromium_page(executable: str, evidence_dir: Path) -> AsyncIterator[Page]:
    """A page in a fresh headless Chromium; evidence is saved if the body raises."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(DEFAULT_TIMEOUT_MS)
            expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
            page = await context.new_page()
            try:
                yield page
            except Exception as exc:
                exc.add_note(await save_evidence(page, evidence_dir))
                raise
        finally:
            await browser.close()


async def save_evidence(page: Page, folder: Path) -> str:
    """Save what the page shows; returns a note saying where, with its accessibility tree."""
    lines = ["", "browser evidence:", f"  url: {page.url}"]
    screenshot, html = folder / "failure.png", folder / "failure.html"
    try:
        await page.screenshot(path=screenshot, full_page=True)
        lines.append(f"  screenshot: {screenshot}")
    except Exception as exc:  # the page may be gone: say so and save the rest
        lines.append(f"  screenshot failed: {exc}")
    try:
        html.write_text(await page.content())
        lines.append(f"  HTML: {html}")
        dialogs = page.get_by_role("dialog")
        in_dialog = await dialogs.count() > 0
        where = dialogs.last if in_dialog else page.locator("body")
        tree = await where.aria_snapshot(timeout=2_000)
        what = "the open dialog's" if in_dialog else "the page's"
        lines += [f"  {what} accessibility tree (last 4,000 characters):", tree[-4_000:]]
    except Exception as exc:
        lines.append(f"  HTML / accessibility tree failed: {exc}")
    return "\n".join(lines)
