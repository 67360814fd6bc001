"""Playwright (Python, sync API) driving Debian's Chromium, for the web face's tests.

The sync API runs in a worker thread (``trio.to_thread.run_sync``) while the server runs on the
test's trio loop. :func:`check_page` is what every page must pass: screenshots at 1280x900 and
390x844 (saved under ``SKALD_SCREENSHOT_DIR`` or the test's tmp dir), no sideways scrolling at
390 px, a label for every form field, and nothing the keyboard cannot reach.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # playwright is imported where a test launches the browser
    from playwright.sync_api import Browser, Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}

# Every visible form field and the way it is named: its own <label for>, a wrapping <label>,
# aria-label or aria-labelledby. Returns the fields that have none.
_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
  .filter(el => !(el.labels && el.labels.length))
  .filter(el => !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML.slice(0, 120))"""

# Interactive elements the keyboard cannot reach (taken out of the tab order, or focus refused).
_UNREACHABLE = """() => [...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex]')]
  .filter(el => el.type !== 'hidden' && el.offsetParent !== null && !el.closest('#swagger-ui'))
  .filter(el => el.tabIndex < 0)
  .map(el => el.outerHTML.slice(0, 120))"""


def screenshot_dir(default: Path) -> Path:
    folder = Path(os.environ.get("SKALD_SCREENSHOT_DIR") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian chromium is required at /usr/bin/chromium (CI installs it)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def check_page(page: Page, name: str, folder: Path, report: dict[str, Any]) -> None:
    """Screenshot ``page`` at both sizes and record what a user would notice as wrong in ``report``.

    ``report[name]`` gets ``overflow`` (scrollWidth minus innerWidth at 390 px, must be <= 0),
    ``unlabelled`` and ``unreachable`` (must be empty). The viewport is restored to 1280x900.
    """
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(folder / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    page.screenshot(path=str(folder / f"{name}-390.png"), full_page=True)
    report[name] = {
        "overflow": overflow,
        "unlabelled": page.evaluate(_UNLABELLED),
        "unreachable": page.evaluate(_UNREACHABLE),
    }
    page.set_viewport_size(DESKTOP)


def tab_to(page: Page, selector: str, limit: int = 60) -> None:
    """Press Tab until ``selector`` has the focus (the keyboard alone reaches it), else fail."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} is not reachable with Tab")
