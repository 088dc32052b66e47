"""The status page in a real browser (headless chromium through selenium, see
``tests/support/browser.py``): a job's progress bar moving and then the job in the history
against a real supervisor and local studio; pause and resume from the page, with the next
offer rejected ``paused``; the page read-only without the secret; a foreign ``Host``
refused. One browser serves the whole module; each test opens its own supervisor.

Set ``STATUS_PAGE_SCREENSHOT=docs/status-page.png`` to save the picture the operator guide
shows, taken while a job runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from protocol import studio
from protocol.tasks import ChatMessage, ImageTask, LlmTask, ModelCliDefaults, ModelSource
from supervisor.ops.control import socket_path
from supervisor.ops.web.actions import secret_path
from tests.supervisor.studio.test_session import llm_task, offer
from tests.support.browser import REBIND_HOST, chromium, wait_for
from tests.support.contract_harness import (
    Processes,
    StudioProcess,
    start_supervisor,
    write_worker_config,
)
from tests.support.studio_peer import running_peer
from tests.support.supervisor_harness import RunningSupervisor, running_supervisor

pytestmark = pytest.mark.browser

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
LISTENING = r"metrics listening on (\S+)"
PAUSED_TEXT = "paused: new offers are rejected until `supervisor resume`"
RESUMED_TEXT = "resumed: accepting new offers again"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        driver.set_page_load_timeout(15)
        yield driver


# The page re-renders its tables every second, so an element found now may be replaced
# before it is read: every read happens inside the page, in one script call.


def text_of(driver: WebDriver, css: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css
    )


def texts_of(driver: WebDriver, css: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map((e) => e.innerText);",
        css,
    )


def count_of(driver: WebDriver, css: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length;", css))


def bar_step(driver: WebDriver) -> int | None:
    return driver.execute_script(
        "const bar = document.querySelector('#jobs .job progress.bar');"
        "return bar ? Number(bar.dataset.step) : null;"
    )


def post_status(driver: WebDriver, path: str) -> Any:
    """What the page's own origin gets for a POST without the secret, asked by the page."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST'}).then((r) => done(r.status));",
        path,
    )


def test_progress_then_history_and_read_only_without_the_secret(
    processes: Processes, studio: StudioProcess, tmp_path: Path, browser: WebDriver
) -> None:
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url)
    sup = start_supervisor(processes, config, "--metrics", "127.0.0.1:0", "--faults", "slow-job=3")
    _, listening = sup.proc.log.wait_for(LISTENING)
    sup.wait_welcomed()
    browser.get(listening.group(1) + "/")
    wait_for(browser, lambda d: text_of(d, "#overall") == "idle", "the worker idle")
    assert text_of(browser, "#lanes tbody tr[data-lane=main] td:nth-child(3)") == "welcomed"

    # Without the secret: no action buttons at all, the offer to unlock, a refusing API.
    assert browser.find_elements(By.CSS_SELECTOR, "#pause, #resume, #threshold-set") == []
    assert browser.find_element(By.ID, "unlock").is_displayed()
    assert post_status(browser, "/api/actions/pause") == 403
    assert "claiming:           on" in sup.status()  # the refused POST changed nothing

    quick = studio.client.submit_job("synthetic", LlmTask([ChatMessage("user", "hi")]), SYNTHETIC)
    wait_for(browser, lambda d: text_of(d, f'#history tr[data-job-id="{quick.id}"]'), "job 1")
    prompt = "a lighthouse in a storm, oil on canvas, " * 8
    slow = studio.client.submit_job("synthetic-slow", ImageTask(prompt=prompt), SYNTHETIC)
    first = wait_for(browser, lambda d: (s := bar_step(d)) and s > 0 and s, "a progress bar")
    wait_for(browser, lambda d: (s := bar_step(d)) and s > first, "the progress bar moving")
    assert text_of(browser, "#overall") == "busy"
    job = f'#jobs .job[data-job-id="{slow.id}"]'
    assert text_of(browser, f"{job} .prompt") == prompt[:200] + "…"
    assert "generating" in (text_of(browser, f"{job} .phase") or "")
    if shot := os.environ.get("STATUS_PAGE_SCREENSHOT"):
        browser.save_screenshot(shot)

    row = f'#history tr[data-job-id="{slow.id}"]'
    wait_for(browser, lambda d: text_of(d, row), "the slow job in the history")
    cells = texts_of(browser, f"{row} td")
    assert cells[1:6] == [slow.id, "image", "synthetic-slow", "synthetic-default-0", "done"]
    assert cells[6].endswith(" s") and float(cells[6].split()[0]) >= 3.0
    assert count_of(browser, "#jobs .job") == 0
    assert count_of(browser, "#history tbody tr") == 2
    assert count_of(browser, "#chart-jobs rect") >= 1  # a bar this minute
    wait_for(browser, lambda d: "json result sent" in (text_of(d, "#logs") or ""), "the log")


def unlock_with(driver: WebDriver, url: str, secret: str) -> None:
    driver.get(url + "/")
    wait_for(driver, lambda d: d.find_element(By.ID, "unlock").is_displayed(), "unlock")
    driver.find_element(By.ID, "unlock").click()
    driver.find_element(By.ID, "secret-input").send_keys(secret)
    driver.find_element(By.ID, "secret-submit").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "pause"), "the action buttons")


def click_for_message(driver: WebDriver, button: str, starts: str) -> str:
    driver.find_element(By.ID, button).click()
    return wait_for(
        driver,
        lambda d: (t := text_of(d, "#action-message")) and t.startswith(starts) and t,
        f"the answer to {button}",
    )


async def in_browser(fn: Any, *args: Any) -> Any:
    """Selenium blocks: it runs on a thread so the in-process supervisor keeps serving."""
    return await anyio.to_thread.run_sync(fn, *args)


def page_url(run: RunningSupervisor) -> str:
    assert run.sup.metrics is not None
    return run.sup.metrics.url


@pytest.mark.anyio
async def test_pause_from_the_page_rejects_the_next_offer(
    tmp_path: Path, browser: WebDriver
) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        secret = secret_path(socket_path(run.config_path)).read_text().strip()
        await in_browser(unlock_with, browser, page_url(run), secret)
        # A wrong secret never got this far; the right one is kept for the tab, not in a URL.
        assert secret not in browser.current_url

        assert await in_browser(click_for_message, browser, "pause", "paused") == PAUSED_TEXT
        await conn.send(offer("job-paused", llm_task()))
        assert (await conn.expect(studio.Reject)).code == "paused"
        await in_browser(
            wait_for,
            browser,
            lambda d: text_of(d, "#lanes tbody tr[data-lane=main] td:nth-child(4)") == "paused",
            "the lane paused",
        )

        assert await in_browser(click_for_message, browser, "resume", "resumed") == RESUMED_TEXT
        await conn.send(offer("job-after", llm_task()))
        await conn.expect(studio.Accept)


@pytest.mark.anyio
async def test_a_foreign_host_is_refused(tmp_path: Path, browser: WebDriver) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
    ):
        await peer.next_connection()
        port = page_url(run).rsplit(":", 1)[1]

        def visit_rebound() -> str:
            # The name resolves to 127.0.0.1, as a rebound attacker's name would.
            browser.get(f"http://{REBIND_HOST}:{port}/")
            return str(browser.find_element(By.TAG_NAME, "body").text)

        body = await in_browser(visit_rebound)
        assert body.startswith(f"refused: Host `{REBIND_HOST}:{port}` is not the address")
        assert await in_browser(post_status, browser, "/api/actions/pause") == 403
        assert run.sup.lanes[0].state.paused is False
