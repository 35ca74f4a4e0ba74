"""Regenerate the screenshots in docs/images of the comparison report and the live sampling page.

    python docs/screenshots.py --report report/report.html --serve runs/masked runs/ar
    python docs/screenshots.py --frontier report/report.html    # a report written with compare --temperatures

Needs Debian's chromium + chromium-driver and selenium (the dev extra). The report is opened from file://;
the live page is started with ``textdiffusion serve`` on a free local port, given a prompt and sampled.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium.webdriver.support.ui import Select, WebDriverWait

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from browser import start_chromium  # noqa: E402  (the tests' headless Chromium settings)


def shoot_report(driver, report: Path, out: Path, height: int) -> None:
    driver.set_window_size(1280, height)
    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    time.sleep(0.5)
    driver.save_screenshot(str(out / "compare-report.png"))
    # a run card mid-animation: the masked run's trajectory half-way through
    card = driver.execute_script("""
        const slots = Array.from(document.querySelectorAll('.td-player-slot'));
        const i = slots.findIndex(s => s.closest('.run-card').dataset.method === 'masked');
        if (i < 0) return null;
        const p = TD.players[i]; p.pause(); p.show(Math.floor(p.frames.length * 0.45));
        const card = slots[i].closest('.run-card'); card.scrollIntoView(); return card;""")
    if card is not None:
        time.sleep(0.3)
        card.screenshot(str(out / "compare-denoising.png"))


def shoot_frontier(driver, report: Path, out: Path) -> None:
    """The frontier chart of a report written with ``compare --temperatures``."""
    driver.set_window_size(1280, 1100)
    driver.get(report.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    fig = driver.find_element("id", "plot-frontier")
    driver.execute_script("arguments[0].scrollIntoView()", fig)
    time.sleep(0.3)
    fig.screenshot(str(out / "compare-frontier.png"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot_live(driver, runs: list[str], out: Path, prompt: str, steps: int, pace: int) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "textdiffusion", "serve", *runs, "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/api/status", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        driver.set_window_size(1280, 1100)
        driver.get(url + "/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                        == "idle")
        driver.find_element("id", "text").send_keys(prompt)
        for field, value in (("steps", steps), ("pace", pace), ("seed", 1)):
            box = driver.find_element("id", field)
            box.clear()
            box.send_keys(str(value))
        Select(driver.find_element("id", "sampler")).select_by_visible_text("confidence")
        driver.find_element("id", "sample").click()
        # mid-stream: half the steps arrived, the rest still masked
        WebDriverWait(driver, 120).until(
            lambda d: int(d.find_element("id", "player").get_attribute("data-frame") or 0) >= steps // 2)
        driver.save_screenshot(str(out / "live-page.png"))
        WebDriverWait(driver, 120).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                         == "done")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, help="a report.html written by textdiffusion compare")
    ap.add_argument("--frontier", type=Path, help="a report.html written with compare --temperatures: its frontier")
    ap.add_argument("--serve", nargs="+", default=[], help="run directories for the live page")
    ap.add_argument("--prompt", default="ROMEO:\n")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--pace", type=int, default=150)
    ap.add_argument("--height", type=int, default=1800)
    ap.add_argument("--out", type=Path, default=HERE / "images")
    args = ap.parse_args()
    driver = start_chromium()
    try:
        if args.report:
            shoot_report(driver, args.report, args.out, args.height)
        if args.frontier:
            shoot_frontier(driver, args.frontier, args.out)
        if args.serve:
            shoot_live(driver, args.serve, args.out, args.prompt, args.steps, args.pace)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
