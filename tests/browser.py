"""Headless Chromium for the page tests (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

The flags keep Chromium off the network (this machine has none, and the report must not need one) and
make it start in about a second. Where Chromium is missing the browser tests skip, except under CI
(``TEXTDIFFUSION_REQUIRE_BROWSER=1``, set by ``.ci/run``), where a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars")


def find_chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium():
    found = find_chromium()
    if found is None:
        msg = "Chromium and chromedriver not found (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("TEXTDIFFUSION_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.binary_location = found[0]
    return webdriver.Chrome(options=opts, service=Service(found[1]))


def ink_fraction(png: bytes) -> float:
    """Share of pixels that differ from the screenshot's most common colour (the page background)."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(np.int32)
    packed = (img[:, 0] << 16) | (img[:, 1] << 8) | img[:, 2]  # one int per colour: bincount, not a sort
    bg = int(np.bincount(packed).argmax())
    background = np.array([bg >> 16, (bg >> 8) & 255, bg & 255])
    return float((np.abs(img - background).sum(1) > 30).mean())
