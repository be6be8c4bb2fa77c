"""The web page in a real browser (Debian's chromium + chromedriver, driven by selenium): load it, type a
prompt, pick a concept, move its slider, generate, and check that coloured tokens stream in, that a
hovered token's top-5 scores equal the API's for the same request, and that the continuation's reading
so far equals the one computed from the API's rows. In CI (CI=true) a missing browser
fails the test; elsewhere it skips with the reason."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from steerkit.serve.app import create_app
from steerkit.serve.context import ServeContext
from steerkit.serve.engine import EmbeddedEngine

from .server import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser():
    if not (CHROMIUM and DRIVER):
        msg = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": .ci/run must install them")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


@pytest.mark.slow
def test_page_streams_coloured_tokens_whose_scores_match_the_api(serve_lm, serve_vectors, serve_run):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ctx = ServeContext(serve_lm, serve_vectors, serve_run, "tiny-llama", 1)
    with ServerThread(create_app(ctx, EmbeddedEngine(serve_lm))) as s:
        driver = _browser()
        try:
            driver.get(s.url + "/")
            wait = WebDriverWait(driver, 30)
            wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-llama")
            prompt = driver.find_element(By.ID, "prompt")
            prompt.clear()
            prompt.send_keys("She opened the door")
            mt = driver.find_element(By.ID, "maxTokens")
            mt.clear()
            mt.send_keys("12")
            driver.find_element(By.ID, "search").send_keys("cal")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#matches div"))
            driver.find_element(By.CSS_SELECTOR, "#matches div").click()
            slider = driver.find_element(By.CSS_SELECTOR, "#sliders input[type=range]")
            for _ in range(6):
                slider.send_keys(Keys.ARROW_RIGHT)  # 0 -> 3 in steps of 0.5
            assert driver.find_element(By.CSS_SELECTOR, "#sliders .val").text == "3"
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.execute_script("return window.steerkit.done.steered && window.steerkit.done.plain"))
            toks = driver.find_elements(By.CSS_SELECTOR, "#out-steered .tok")
            assert len(toks) == 12 and len(driver.find_elements(By.CSS_SELECTOR, "#out-plain .tok")) == 12
            assert all(t.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "") for t in toks)
            sent = driver.execute_script("return window.steerkit.lastRequest")
            assert sent["steer"] == {"concepts": {"calm": 3}, "layers": [1]}
            ActionChains(driver).move_to_element(toks[4]).perform()
            wait.until(lambda d: d.find_element(By.ID, "tip").is_displayed())
            shown = json.loads(driver.find_element(By.ID, "tip").get_attribute("data-top5"))
            # the same request through the API, not streamed
            body = {k: v for k, v in sent.items() if k != "stream"}
            api = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["readout"]
            row = api["tokens"][4]["scores"]
            want = sorted(zip(api["concepts"], row, strict=True), key=lambda x: -x[1])[:5]
            assert [c for c, _ in shown] == [c for c, _ in want]
            # float32 rounding of two forwards (streamed beside the plain request vs alone): relative
            assert [v for _, v in shown] == pytest.approx([v for _, v in want], rel=1e-5, abs=1e-5)
            # the continuation so far, read as one text: log_softmax of the mean row (the probe is affine), from
            # the API's rows computed here independently (numpy), top 3 as the page shows them
            import numpy as np

            rows = np.array([t["scores"] for t in api["tokens"]], dtype=np.float64)
            mean = rows.mean(0)
            if api["kind"] == "log_prob":
                fin = mean[np.isfinite(mean)]
                mean = mean - (fin.max() + np.log(np.exp(fin - fin.max()).sum()))
            want3 = sorted(zip(api["concepts"], mean.tolist(), strict=True), key=lambda x: -x[1])[:3]
            got3 = json.loads(driver.find_element(By.ID, "sofar-steered").get_attribute("data-top3"))
            assert [c for c, _ in got3] == [c for c, _ in want3]
            assert [v for _, v in got3] == pytest.approx([v for _, v in want3], rel=1e-4, abs=1e-5)
            assert driver.find_element(By.ID, "sofar-steered").text.startswith("continuation so far reads as: ")
            # colour by a chosen concept
            driver.find_element(By.CSS_SELECTOR, "#colorBy option[value=calm]").click()
            assert driver.find_elements(By.CSS_SELECTOR, "#legend span")
        finally:
            driver.quit()
