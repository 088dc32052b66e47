"""A real browser for the status page tests: Debian's headless ``chromium`` driven through
``chromium-driver`` by selenium. Nothing is downloaded: the binaries are the system's
(``scripts/install`` installs them as root with apt-get), and a machine without them fails
the test with the install command rather than skipping it.

``rebind.test`` resolves to 127.0.0.1 inside this browser only, so a test can play a DNS
rebinding attack without touching the machine's resolver.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, TypeVar

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

REBIND_HOST: Final = "rebind.test"
WAIT_S: Final = 15.0
INSTALL_HINT: Final = (
    "the status page tests need Debian's chromium and chromium-driver: run ./scripts/install "
    "as root (it runs `apt-get install chromium chromium-driver`), and selenium in .venv "
    "(`.venv/bin/pip install -e '.[test]'`)"
)

T = TypeVar("T")


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"none of {', '.join(names)} found; {INSTALL_HINT}")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1800) -> Iterator[WebDriver]:
    """A headless chromium session; yields the selenium ``WebDriver``."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed; {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--disable-features=HttpsUpgrades",
        f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    service = Service(_find("chromedriver", "/usr/lib/chromium/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(
    driver: WebDriver, probe: Callable[[WebDriver], T], what: str, timeout_s: float = WAIT_S
) -> T:
    """Until ``probe(driver)`` returns something truthy (the page updates by itself about
    once a second: nothing announces it); fails the test with ``what`` at the deadline."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The page replaces its table rows at every update: an element gone stale is retried.
        wait = WebDriverWait(
            driver, timeout_s, 0.1, ignored_exceptions=[StaleElementReferenceException]
        )
        return wait.until(probe)
    except TimeoutException:
        pytest.fail(f"the status page did not show {what} within {timeout_s} s")
