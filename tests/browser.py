"""Headless Debian chromium for the page tests, driven by playwright's Python package pointed at
/usr/bin/chromium (a browser is never downloaded). The flags keep chromium off the network: this
machine's closed network refuses its background connections."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1200, 800)) -> Iterator[object]:
    """A new page of a fresh headless chromium (a temporary profile), closed afterwards even when the
    test fails; skips the test when playwright or Debian's chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}).new_page()
        finally:
            browser.close()
