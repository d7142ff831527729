"""A real headless Chromium for the pages' tests: Debian's chromium + chromium-driver driven by selenium.

Skips, saying why, where the browser is absent (.ci/run installs it). Screenshots of the pages go to
``$LESIONSYNTH_SCREENSHOTS`` when set (docs/images/ holds the committed ones: see ``save_screenshot``).
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "browser-test-token-0123456789"


def chrome(width: int = 1400, height: int = 1000):
    """A headless Chromium (root-safe flags from ../shared/STACK.md); skip when it is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def wait_until(predicate, timeout: float = 120.0, what: str = "the page", driver=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    logs = ""
    if driver is not None:
        status = driver.execute_script("return (document.getElementById('status')||{}).textContent")
        logs = f"; status: {status!r}; console: {driver.get_log('browser')}"
    raise AssertionError(f"timed out waiting for {what}{logs}")


def data_url_bytes(url: str) -> bytes:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return base64.b64decode(url.split(",", 1)[1])


def save_screenshot(driver, name: str) -> None:
    """docs/images/<name>.png is made with LESIONSYNTH_SCREENSHOTS=docs/images pytest tests/test_pages_*.py."""
    folder = os.environ.get("LESIONSYNTH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))
