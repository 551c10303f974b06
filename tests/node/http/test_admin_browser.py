"""The admin pages in a real headless browser (Debian's chromium and chromedriver).

The node's app is served by uvicorn on a free loopback port, over the database of the
``world`` fixture: one analysed study with real SR and GSPS objects, one dead job. The
browser logs in, reads the dashboard, checks the study page's previews loaded and show the
AI boxes, and clicks Retry on the failures page. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from testsupport import free_port, require_tool

from spinexr.node.db.states import JobState
from spinexr.node.http.admin.dashboard import DEMO_WARNING
from spinexr.node.http.app import create_app
from spinexr.node.outputs.boxes import CLASS_COLOURS
from spinexr.pipeline.classes import LesionClass

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"


@pytest.fixture
def served(world) -> Iterator[str]:
    """Serve the world's node app with uvicorn on loopback; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(world.stack.settings, world.stack.ingest),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Headless chromium driven by chromedriver; Selenium Manager never downloads."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1800",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def colour_pixels(png: bytes, colour: tuple[int, int, int], tolerance: int = 60) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    return int((np.abs(rgb - np.asarray(colour)).sum(axis=2) < tolerance).sum())


def wait_until(predicate, what: str, timeout: float = 15) -> None:
    """Poll ``predicate``; an element replaced by a page load while it was read is "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except StaleElementReferenceException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.1)


def test_admin_pages_in_a_headless_browser(world, served: str, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    ARTIFACTS.mkdir(exist_ok=True)

    # Login: any admin page leads to the form; the token leads back.
    driver.get(f"{served}/admin/")
    assert driver.current_url.startswith(f"{served}/admin/login")
    driver.find_element(By.ID, "token").send_keys(world.token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_until(lambda: driver.find_element(By.TAG_NAME, "h1").text == "Dashboard", "dashboard")
    assert driver.current_url == f"{served}/admin/"
    banner = driver.find_element(By.CSS_SELECTOR, ".banner.demo")
    assert banner.text == DEMO_WARNING
    warnings = driver.find_element(By.CSS_SELECTOR, "ul.warnings").text
    assert "1 job(s) dead after their last attempt" in warnings
    # The session cookie is invisible to scripts (HttpOnly).
    assert driver.execute_script("return document.cookie") == ""
    driver.save_screenshot(str(ARTIFACTS / "admin-dashboard.png"))

    # Study page: every preview loaded, the AI boxes drawn in their class colours.
    driver.get(f"{served}/admin/studies/{world.analysed_uid}")
    images = driver.find_elements(By.CSS_SELECTOR, "figure.image img")
    assert len(images) == 2
    for img in images:
        driver.execute_script("arguments[0].scrollIntoView()", img)
        wait_until(
            lambda img=img: driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", img
            ),
            "preview loaded",
        )
        assert driver.execute_script("return arguments[0].naturalWidth", img) > 0
        assert "AI finding box(es) drawn" in img.get_attribute("alt")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.execute_script("arguments[0].scrollIntoView()", images[0])
    shot = driver.get_screenshot_as_png()
    (ARTIFACTS / "admin-study.png").write_bytes(shot)
    # Only the pixels of the first preview on the screenshot count (the findings table's
    # colour swatches would match too).
    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left, r.top, r.right, r.bottom].map(Math.round)",
        images[0],
    )
    region = Image.open(io.BytesIO(shot)).crop(tuple(rect))
    buf = io.BytesIO()
    region.save(buf, format="PNG")
    for lesion in (LesionClass.OSTEOPHYTES, LesionClass.DISC_SPACE_NARROWING):
        assert colour_pixels(buf.getvalue(), CLASS_COLOURS[lesion]) > 100, lesion

    # Failures page: Retry the dead job; the flash message says so and the DB agrees.
    driver.get(f"{served}/admin/failures")
    row = driver.find_element(By.ID, f"failed-job-{world.failed_job}")
    assert "is missing from the spool" in row.text
    driver.save_screenshot(str(ARTIFACTS / "admin-failures.png"))
    row.find_element(By.TAG_NAME, "button").click()
    wait_until(lambda: driver.find_elements(By.ID, "flash"), "flash message")
    flash = driver.find_element(By.ID, "flash").text
    assert flash == f"job {world.failed_job}: analysis queued again (now queued)"
    assert driver.current_url == f"{served}/admin/failures"
    assert not driver.find_elements(By.ID, f"failed-job-{world.failed_job}")
    assert world.job(world.failed_job).state is JobState.QUEUED
    driver.save_screenshot(str(ARTIFACTS / "admin-failures-retried.png"))
