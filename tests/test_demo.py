"""``dit-deploy demo``: the page in a real headless browser (Debian's Chromium through
Selenium; nothing downloaded at run time). Upload an image, type expressions, wait for the
overlays, compare each mask with the Predictor's; a bad upload shows the API's one-line
error. The test writes a screenshot to ``runs/tests/demo.png`` for a person to look at."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dit_deploy.mask_codec import decode_rle
from dit_deploy.runtime import Predictor
from tests.conftest import skip_or_require

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "dit_deploy" / "assets" / "samples"
SCREENSHOT = ROOT / "runs" / "tests" / "demo.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tiny_export, tmp_path_factory):
    """The demo on 127.0.0.1 over the tiny export, in its own process group."""
    pytest.importorskip("aiohttp")
    port = _free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dit_deploy.cli", "demo", str(tiny_export), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=2) as r:
                assert json.loads(r.read())["export"] == str(tiny_export)
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)
    yield url
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        skip_or_require("DIT_REQUIRE_BROWSER", "no chromium / chromedriver (Debian: apt-get "
                        "install chromium chromium-driver; scripts/install.sh does)")  # fmt: skip
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1100"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    chrome = webdriver.Chrome(options=options, service=service)
    yield chrome
    chrome.quit()


def _wait(browser, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, seconds).until(condition)


def test_upload_type_and_see_the_predictors_masks(demo, browser, tiny_export):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    texts = ["the cup", "the table on the left"]
    browser.get(demo)
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#precision option")) > 0)
    browser.find_element(By.ID, "image").send_keys(str(SAMPLES / "coffee.jpg"))
    browser.find_element(By.ID, "texts").send_keys("\n".join(texts))
    Select(browser.find_element(By.ID, "precision")).select_by_value("fp32")
    browser.find_element(By.ID, "run").click()
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "img.overlay")) == 2)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    want = Predictor(tiny_export).predict_batch([(SAMPLES / "coffee.jpg", t) for t in texts])
    for k, (text, ref) in enumerate(zip(texts, want, strict=True)):
        img = browser.find_element(By.ID, f"overlay-{k}")
        assert img.get_attribute("alt") == text
        assert np.array_equal(decode_rle(img.get_attribute("data-rle")), ref.mask)
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 600
    assert "ms" in browser.find_element(By.ID, "latency").text
    assert SCREENSHOT.stat().st_size > 10_000


def test_a_bad_upload_shows_the_one_line_error(demo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    browser.get(demo)
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#precision option")) > 0)
    browser.find_element(By.ID, "image").send_keys(str(bad))
    browser.find_element(By.ID, "texts").send_keys("the cup")
    browser.find_element(By.ID, "run").click()
    error = _wait(browser, lambda b: b.find_element(By.ID, "error").text or None)
    assert "is not an image file Pillow can read" in error and "\n" not in error
    assert not browser.find_elements(By.CSS_SELECTOR, "img.overlay")


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/api/segment", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    """(name, value, filename or None) parts as multipart/form-data."""
    out = b""
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_the_api_answers_every_malformed_request_with_400_and_keeps_serving(demo):
    """A generic HTTP client's mistakes: each a 400 with a one-line reason, never a 500."""
    form = "multipart/form-data; boundary=XyZ"
    image = (SAMPLES / "coffee.jpg").read_bytes()
    cases = [
        (b"--XyZ", "multipart/form-data", "not a readable form"),  # no boundary
        (b"--other\r\n\r\nx\r\n--other--\r\n", form, "not a readable form"),
        (b"texts=a", "application/x-www-form-urlencoded; charset=foo-bar", "not a readable form"),
        (b"sample=coffee.jpg&texts=%ff%fe", "application/x-www-form-urlencoded",
         "not valid UTF-8"),
        (_multipart([("sample", b"coffee.jpg", None), ("texts", b"the \xff\xfe cup", None)]),
         form, "not a readable form"),
        (_multipart([("sample", b"coffee.jpg", None), ("texts", b"the cup", "t.txt")]),
         form, "texts must be a text field"),
        (_multipart([("image", b"abc", None), ("texts", b"the cup", None)]),
         form, "image must be an uploaded file"),
        (_multipart([("image", image, "c.jpg"),
                     ("texts", "\n".join(f"cup {i}" for i in range(17)).encode(), None)]),
         form, "17 expressions in one request, more than 16"),
    ]  # fmt: skip
    for body, content_type, reason in cases:
        status, reply = _post(demo, body, content_type)
        assert status == 400 and reason in reply["error"], (reason, status, reply)
    status, reply = _post(demo, _multipart([("image", image, "c.jpg"),
                                            ("texts", b"the cup", None)]), form)  # fmt: skip
    assert status == 200 and reply["results"][0]["text"] == "the cup"
