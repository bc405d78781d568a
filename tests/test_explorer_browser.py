"""The explorer page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium opens the page served by app.py, enters a prompt, runs two schedules beside Original, and
finds the images and the FLOPs figures; then a bad schedule string shows generate.py's message.

Skipped, with the reason, where gradio, selenium, chromium or chromedriver is missing (.ci/run installs
them). ``EXPLORER_SCREENSHOT=docs/explorer.png`` also saves a screenshot of the page (the README's).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
PROMPT = "a medium red dotted diamond in the centre and a small red dotted ring at the bottom on a plain black background"

pytest.importorskip("gradio", reason="the explorer page needs gradio: pip install -e '.[app]'")
pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[test]'")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("the browser test needs Chromium and its driver: apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url():
    import app
    from explorer import Explorer

    repeats = 5 if os.environ.get("EXPLORER_SCREENSHOT") else 1  # a screenshot's latencies: median of 5
    demo = app.build_page(Explorer.build(latency_repeats=repeats), default_run="")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                theme=app.page_theme())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,2700"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


def _type(driver, css: str, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, css)
    box.clear()
    box.send_keys(text)


def _text(driver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def test_two_schedules_beside_original_show_images_and_flops(page_url, browser):
    browser.get(page_url)
    wait = WebDriverWait(browser, 300)  # a loaded 2-core CI machine: generation is seconds, not minutes
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))
    _type(browser, "#prompt textarea", PROMPT)
    _type(browser, "#seed input", "0")
    browser.find_element(By.XPATH, "//*[@id='named']//label[contains(., 'Tail pattern')]").click()  # FastVAR is on
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    wait.until(lambda d: "FLOPs frac" in _text(d, "#table"))
    table = _text(browser, "#table")
    # the analytic FLOPs fractions of Original, FastVAR and the seed's tail pattern on the embedded model
    assert "Original 1.000" in table and "FastVAR 0.347" in table and "Tail pattern (the seed's) 0.269" in table
    for kind in ("original", "fastvar", "tail"):
        assert "FLOPs" in _text(browser, f"#metrics-{kind}")
        for part in ("final", "strip", "chart"):
            img = browser.find_element(By.CSS_SELECTOR, f"#{part}-{kind} img")
            assert img.get_attribute("src") and browser.execute_script("return arguments[0].naturalWidth", img) > 100
    hidden = "#row-widths, #row-agent, #final-widths, #final-agent"  # columns not asked for are not shown
    assert not any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, hidden))
    shot = os.environ.get("EXPLORER_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)


def test_a_bad_schedule_string_shows_the_clis_message(page_url, browser):
    from embedded.loaders import load_embedded_generator
    from generator.schedules import parse_schedule

    browser.get(page_url)
    wait = WebDriverWait(browser, 300)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))
    _type(browser, "#widths textarea, #widths input", "7:0.5")
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    wait.until(lambda d: "error" in _text(d, "#error"))
    with pytest.raises(ValueError) as e:
        parse_schedule("7:0.5", load_embedded_generator().scale_widths)
    assert _text(browser, "#error") == f"error: {e.value}"
    assert not any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "#final-original img"))
