"""`textdiffusion serve`: the real app under uvicorn on a free loopback port, driven over HTTP and in headless
Chromium, and its sampling service on its own. Two tiny runs (masked, ar) are trained once for the module;
every sampling is a few steps."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import uvicorn

from helpers import train_tiny
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.apps.serve import RequestError, SamplingService, Settings, check_request, create_app, load_runs
from textdiffusion.apps.serve.app import _uvicorn_server
from textdiffusion.apps.serve.connections import bound_send_buffer, bounded_protocol

MAX_CONCURRENT = 2
SLOW = {"run": "masked", "sampler": "cached", "steps": 1000, "pace": 20}  # ~20 s unless cancelled


@dataclass
class Server:
    host: str
    port: int
    app: Any
    root: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def status(self) -> dict[str, int]:
        return self.app.state.service.status()

    def wait_for(self, predicate, timeout: float = 10.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while not predicate(status := self.status()):
            assert time.monotonic() < deadline, f"server status stayed {status}"
            time.sleep(0.02)
        return status


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare) -> Path:
    """A directory with two tiny runs, `masked` and `ar`."""
    root = tmp_path_factory.mktemp("serve")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    for method in ("masked", "ar"):
        train_tiny(method, corpus, root / method, steps=30, **{"train.eval_every": 15})
    return root


@pytest.fixture(scope="module")
def server(trained) -> Iterator[Server]:
    yield from _serve(trained, [trained / "masked", trained / "ar"])


def _serve(root: Path, runs: list[Path]) -> Iterator[Server]:
    app = create_app(runs, device="cpu", max_steps=1000, max_concurrent=MAX_CONCURRENT)
    sock = socket.create_server(("127.0.0.1", 0))
    yield from _running(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1), sock, root)


def _running(config: uvicorn.Config, sock: socket.socket, root: Path) -> Iterator[Server]:
    """Serve ``config``'s app on ``sock`` in a thread until the caller is done with it."""
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield Server("127.0.0.1", sock.getsockname()[1], config.app, root)
    srv.should_exit = True
    thread.join(10)


# ---- a tiny HTTP / server-sent-events client -------------------------------------------------------------


class Stream:
    """One request to /api/sample; iterate for (event, data) pairs as they arrive."""

    def __init__(self, server: Server, params: dict[str, Any], post: bool = False,
                 headers: dict[str, str] | None = None):
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        if post:
            self.conn.request("POST", "/api/sample", body=json.dumps(params),
                              headers={"Content-Type": "application/json", **(headers or {})})
        else:
            self.conn.request("GET", "/api/sample?" + urlencode(params), headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def json(self) -> Any:
        return json.loads(self.response.read())

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        event, data = "message", []
        while line := self.response.readline():
            line = line.decode("utf-8").rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                yield event, json.loads("\n".join(data))
                event, data = "message", []

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            return list(self)
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def get_json(server: Server, path: str) -> Any:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def by_kind(events: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event, data in events:
        out.setdefault(event, []).append(data)
    return out


# ---- the API ----------------------------------------------------------------------------------------------


def test_runs_describe_what_the_page_needs(server):
    runs = {r["name"]: r for r in get_json(server, "/api/runs")}
    assert set(runs) == {"masked", "ar"}
    masked, ar = runs["masked"], runs["ar"]
    assert masked["method"] == "masked" and masked["step"] == 30 and masked["parameters"] > 0
    assert masked["samplers"] == ["ancestral", "cached", "confidence", "topk", "left_to_right", "remdm"]
    assert masked["sampler"] == "ancestral"
    assert masked["context"] == masked["max_length"] == 32 and masked["steps"] == 32 and not masked["steps_fixed"]
    assert masked["infill"] and masked["tokenizer"] == "char" and "R" in masked["alphabet"]
    assert ar["steps_fixed"] and not ar["infill"] and ar["prompt"] and ar["max_length"] > ar["context"]
    assert get_json(server, "/api/status")["max_concurrent"] == MAX_CONCURRENT


def test_stream_has_every_frame_and_a_done_event(server):
    params = {"run": "masked", "prompt": "ROMEO:", "length": 24, "sampler": "topk", "steps": 6, "seed": 7}
    stream = Stream(server, params)
    assert stream.status == 200 and stream.response.getheader("content-type").startswith("text/event-stream")
    events = stream.events()
    assert [e for e, _ in events] == ["start"] + ["frame"] * 7 + ["done"]
    kinds = by_kind(events)
    start, frames, done = kinds["start"][0], kinds["frame"], kinds["done"][0]
    assert start["steps"] == 6 and start["length"] == 24 and start["seed"] == 7 and start["fixed"] == list(range(6))
    assert [f["step"] for f in frames] == list(range(7))
    assert frames[0]["text"] == "ROMEO:" + "_" * 18 and frames[0]["masked"] == list(range(6, 24))
    assert frames[-1]["masked"] == [] and sum(f["changed"] for f in frames) == 18
    assert len(done["text"]) == 24 and done["text"].startswith("ROMEO:") and done["text"] == frames[-1]["text"]
    assert done["steps"] == 6 and done["sampler"] == "topk" and done["nfe"] == 6 and done["seconds"] >= 0
    # the seed makes it reproducible, POST or GET
    again = by_kind(Stream(server, params, post=True).events())
    assert again["done"][0]["text"] == done["text"]


def test_infill_keeps_the_known_characters(server):
    template = "ROMEO:\nO ____ art thou"
    kinds = by_kind(Stream(server, {"run": "masked", "infill": template, "steps": 4, "seed": 1}, post=True).events())
    text = kinds["done"][0]["text"]
    assert kinds["start"][0]["mode"] == "infill" and len(text) == len(template)
    assert all(t == c for t, c in zip(text, template, strict=True) if c != "_")
    assert kinds["frame"][0]["masked"] == [9, 10, 11, 12]


def test_left_to_right_writes_one_character_per_frame_whatever_the_steps(server):
    """The masked run's left_to_right sampler takes one step per character left to write; the page's steps
    field does not apply to it."""
    params = {"run": "masked", "prompt": "ROMEO:", "length": 12, "sampler": "left_to_right", "steps": 3, "seed": 2}
    kinds = by_kind(Stream(server, params).events())
    frames, done = kinds["frame"], kinds["done"][0]
    assert kinds["start"][0]["steps"] == 6 and [f["step"] for f in frames] == list(range(7))
    assert [f["masked"][0] for f in frames[:-1]] == list(range(6, 12))  # the leftmost blank is written next
    assert done["sampler"] == "left_to_right" and done["nfe"] == 6 and done["text"].startswith("ROMEO:")


def test_ar_writes_one_character_per_frame(server):
    kinds = by_kind(Stream(server, {"run": "ar", "prompt": "First", "length": 16, "seed": 0}).events())
    frames, done = kinds["frame"], kinds["done"][0]
    assert kinds["start"][0]["steps"] == 11 and [f["step"] for f in frames] == list(range(12))
    assert len(done["text"]) == 16 and done["text"].startswith("First")


@pytest.mark.parametrize("params, words", [
    ({"run": "masked", "prompt": "ROMEO " * 1000}, ["6,000 characters", "at most 32", "shorten"]),
    ({"run": "masked", "prompt": "ROMEO €"}, ["'€'", "U+20AC", "never saw"]),
    ({"run": "masked", "infill": "€ and ¥ __"}, ["'€'", "'¥'"]),
    ({"run": "masked", "steps": 0}, ["steps must be a whole number from 1 to 1000", "got "]),
    ({"run": "masked", "steps": 10**9}, ["steps", "from 1 to 1000", "--max-steps"]),
    ({"run": "masked", "steps": "abc"}, ["steps must be a whole number", "'abc'"]),
    ({"run": "nope"}, ["unknown run 'nope'", "masked, ar"]),
    ({"run": "masked", "sampler": "ddim"}, ["no sampler 'ddim'", "ancestral, cached, confidence, topk, left_to_right"]),
    ({"run": "masked", "prompt": "RO", "infill": "R_"}, ["either a prompt or an infill"]),
    ({"run": "masked", "infill": "ROMEO"}, ["no '_' placeholders"]),
    ({"run": "ar", "infill": "RO__"}, ["can only continue a prompt"]),
    ({"run": "masked", "length": 33}, ["length", "from 1 to 32"]),
    ({"run": "masked", "prompt": "ROMEO", "length": 5}, ["leaves nothing to generate"]),
    ({"run": "masked", "temperature": "-1"}, ["temperature must be a number above 0"]),
    ({"run": "masked", "temperature": "nan"}, ["temperature"]),
    ({"run": "masked", "top_p": 2}, ["top_p must be a number above 0 and at most 1"]),
    ({"run": "masked", "top_k": -3}, ["top_k"]),
    ({"run": "masked", "pace": 60_000}, ["pace", "milliseconds"]),
    ({"run": "masked", "stepz": 5}, ["unknown parameter 'stepz'"]),
])
def test_bad_requests_get_one_clear_sentence(server, params, words):
    for post in (False, True):
        stream = Stream(server, params, post=post)
        try:
            assert stream.status == 400
            error = stream.json()["error"]
        finally:
            stream.close()
        assert all(w in error for w in words), error
        assert "\n" not in error and "Traceback" not in error and len(error) < 300


def test_bad_bodies_and_hosts_are_refused(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("POST", "/api/sample", body="{not json", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 400 and "JSON object" in json.loads(response.read())["error"]
        conn.request("GET", "/api/runs", headers={"Host": "attacker.example"})  # DNS rebinding
        response = conn.getresponse()
        assert response.status == 400
        response.read()
        conn.request("GET", "/nothing/here")
        response = conn.getresponse()
        assert response.status == 404 and "the live page is at /" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_the_icon_is_served_where_browsers_ask(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/favicon.ico")
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        assert response.status == 200 and response.getheader("Content-Type") == "image/svg+xml"
        assert body.lstrip().startswith("<svg") and body.rstrip().endswith("</svg>")
    finally:
        conn.close()


# ---- concurrency and cancellation ---------------------------------------------------------------------------


def test_a_slow_sampling_blocks_nothing_and_stops_when_its_client_leaves(server):
    before = server.wait_for(lambda s: s["active"] == 0)
    slow = Stream(server, SLOW)
    try:
        assert slow.status == 200
        events = iter(slow)
        assert next(events)[0] == "start" and next(events)[0] == "frame"
        # a quick request runs to its end while the slow one is mid-way
        fast = by_kind(Stream(server, {"run": "masked", "prompt": "KING", "steps": 3, "sampler": "topk"}).events())
        assert len(fast["frame"]) == 4 and fast["done"][0]["text"].startswith("KING")
        event, frame = next(events)
        assert event == "frame" and frame["step"] < SLOW["steps"]  # ... and the slow one is still streaming
        assert server.status()["active"] == 1
    finally:
        slow.close()
    # the server notices the closed connection and stops the sampler instead of running it to the end
    after = server.wait_for(lambda s: s["active"] == 0)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"] + 1  # the fast one


def test_requests_beyond_the_limit_get_503(server):
    server.wait_for(lambda s: s["active"] == 0)
    streams = [Stream(server, SLOW) for _ in range(MAX_CONCURRENT)]
    try:
        assert all(s.status == 200 for s in streams)
        extra = Stream(server, {"run": "masked", "steps": 2})
        assert extra.status == 503 and "--max-concurrent 2" in extra.json()["error"]
        extra.close()
    finally:
        for s in streams:
            s.close()
    server.wait_for(lambda s: s["active"] == 0)


# ---- clients that stop reading or never finish a request ------------------------------------------------
TIMEOUT = 1.0  # the client timeout of the bounded server: short, so the tests are fast


@pytest.fixture(scope="module")
def bounded(trained) -> Iterator[Server]:
    """The server as `serve` runs it (its h11 protocol with the request and write deadlines), with a short
    timeout and small buffers so that a client that stops reading is noticed after a few kilobytes."""
    app = create_app([trained / "masked"], device="cpu", max_steps=1000, max_concurrent=MAX_CONCURRENT)
    sock = socket.create_server(("127.0.0.1", 0))
    bound_send_buffer(sock, 4096)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, timeout_keep_alive=TIMEOUT,
                            http=bounded_protocol(TIMEOUT, write_buffer=1024))
    yield from _running(config, sock, trained)


def _raw(server: Server, request: bytes, receive_buffer: int = 0) -> socket.socket:
    """A plain socket that sends ``request`` (whole, half, or nothing) and reads nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:  # set before connecting, so the window the server sees is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((server.host, server.port))
    sock.sendall(request)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (reading and dropping what it sent), None if it did not."""
    tic = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - tic < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - tic
        except TimeoutError:
            continue
        except ConnectionResetError:  # aborted: the server dropped what it had not sent
            return time.monotonic() - tic
    return None


def test_clients_that_stop_reading_lose_their_slots(bounded):
    """Every slot is taken by a stream whose client reads nothing: each is dropped within the timeout of its
    buffers filling, its sampling is stopped, and a new client gets a slot long before the samplings (~20 s
    each) would have ended."""
    before = bounded.wait_for(lambda s: s["active"] == 0)
    query = urlencode(SLOW).encode()
    stalled = [_raw(bounded, b"GET /api/sample?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1024)
               for _ in range(MAX_CONCURRENT)]
    try:
        bounded.wait_for(lambda s: s["active"] == MAX_CONCURRENT)
        tic = time.monotonic()
        while True:
            extra = Stream(bounded, {"run": "masked", "steps": 2, "sampler": "topk"})
            if extra.status == 200:
                break
            assert extra.status == 503
            extra.close()
            assert time.monotonic() - tic < 10, "no slot was freed within 10 s"
            time.sleep(0.1)
        waited = time.monotonic() - tic
        assert by_kind(extra.events())["done"], "the new client's sampling did not finish"
        after = bounded.wait_for(lambda s: s["active"] == 0)
        assert after["cancelled"] == before["cancelled"] + MAX_CONCURRENT
        assert waited < 10
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("request_bytes", [
    b"",  # connected, sent nothing
    b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finished
    b'POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"run": ',  # half a body
])
def test_a_half_sent_request_is_closed_within_the_timeout(bounded, request_bytes):
    sock = _raw(bounded, request_bytes)
    try:
        closed = _closed_within(sock, 10 * TIMEOUT)
        assert closed is not None and closed < 5 * TIMEOUT, f"still open after {10 * TIMEOUT} s"
    finally:
        sock.close()
    assert bounded.status()["active"] == 0  # and the server goes on answering


def test_a_client_that_hangs_up_mid_body_is_one_console_line(bounded, capsys):
    """A client that announces a body and closes before sending it: the server console gets one line that
    says so, no ASGI traceback, and the server goes on answering."""
    capsys.readouterr()
    sock = _raw(bounded, b'POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 90\r\n\r\n{"run": ')
    time.sleep(0.2)
    sock.close()
    deadline, err = time.monotonic() + 10, ""
    while "hung up" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capsys.readouterr().err
    time.sleep(0.3)  # anything printed after the line would be part of a traceback
    err += capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # a client of the test before (closed as it ended) may be logged here too, on a loaded machine
    assert all(" hung up after " in ln and ln.endswith("nothing was answered") for ln in lines), err
    assert sum("hung up after 8 of 90 bytes" in ln for ln in lines) == 1, err
    assert get_json(bounded, "/api/status")["active"] == 0


def test_a_trickled_request_does_not_move_its_deadline(bounded):
    """One byte of headers every 0.3 s: each arrives, none moves the deadline set by the first."""
    sock = _raw(bounded, b"G")
    tic = time.monotonic()
    try:
        for byte in b"ET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
        assert _closed_within(sock, 5 * TIMEOUT) is not None
        assert time.monotonic() - tic < 5 * TIMEOUT + 1
    finally:
        sock.close()


def test_serve_runs_the_bounded_protocol():
    """``serve`` builds its uvicorn server with the deadlines and the same keep-alive bound."""
    app = type("App", (), {})()
    service = type("Service", (), {"stop_all": lambda self, reason: None})()
    server = _uvicorn_server(app, service, client_timeout=3.0)
    assert server.config.http.__name__ == "BoundedH11Protocol" and server.config.timeout_keep_alive == 3.0


# ---- the sampling service on its own: no Starlette, no sockets ---------------------------------------------


def run_job(service: SamplingService, settings: Settings) -> list[tuple[str, dict]]:
    """Every event of one job, read from a plain asyncio loop."""
    async def read() -> list[tuple[str, dict]]:
        job = service.start(settings)
        return [event async for event in job.events()]

    return asyncio.run(read())


def test_service_runs_a_checked_request_to_its_end(trained):
    runs = load_runs([trained / "masked", trained / "ar"], device="cpu")
    service = SamplingService(runs, max_steps=1000, max_concurrent=1)
    params = {"run": "masked", "prompt": "ROMEO:", "length": 20, "sampler": "topk", "steps": 5, "seed": 3}
    settings = check_request(params, runs, max_steps=1000)
    assert settings.steps == 5 and settings.fixed == list(range(6)) and tuple(settings.initial.shape) == (20,)
    try:
        events = run_job(service, settings)
        assert [e for e, _ in events] == ["start"] + ["frame"] * 6 + ["done"]
        frames, done = [d for e, d in events if e == "frame"], events[-1][1]
        assert [f["step"] for f in frames] == list(range(6)) and frames[0]["masked"] == list(range(6, 20))
        assert done["text"] == frames[-1]["text"] and done["text"].startswith("ROMEO:") and len(done["text"]) == 20
        assert service.status() == {"active": 0, "max_concurrent": 1, "completed": 1, "cancelled": 0, "failed": 0}
        again = run_job(service, check_request(params, runs, max_steps=1000))
        assert again[-1] == ("done", {**done, "seconds": again[-1][1]["seconds"]})  # the seed decides the text
    finally:
        service.shutdown()
    # ar's step count is not a choice: one step per generated character, whatever `steps` says
    ar = check_request({"run": "ar", "prompt": "First", "length": 16, "steps": 3}, runs, max_steps=1000)
    assert ar.steps == 11 and ar.req.steps == 0 and 0 <= ar.seed < 2**31


def test_service_stops_a_job_at_once_and_refuses_beyond_its_limit(trained):
    runs = load_runs([trained / "masked"], device="cpu")
    service = SamplingService(runs, max_steps=1000, max_concurrent=1)
    slow = check_request({**SLOW, "pace": 1000, "seed": 1}, runs, max_steps=1000)  # 1000 s unless stopped

    async def read() -> tuple[list[tuple[str, dict]], float]:
        job = service.start(slow)
        with pytest.raises(RequestError) as refused:  # the only slot is taken
            service.start(check_request({"steps": 2}, runs, max_steps=1000))
        assert refused.value.status == 503 and "--max-concurrent 1" in str(refused.value)
        events = []
        async for event, data in job.events():
            events.append((event, data))
            if event == "frame":
                stopped = time.perf_counter()
                job.stop("stopped by the test")
        return events, time.perf_counter() - stopped

    try:
        events, seconds = asyncio.run(read())
    finally:
        service.shutdown()
    # the worker was in its 1 s pace wait after frame 0: the stop wakes it, so no second frame and no wait
    assert [e for e, _ in events] == ["start", "frame", "error"] and events[-1][1] == {"error": "stopped by the test"}
    assert seconds < 0.9
    assert service.status() == {"active": 0, "max_concurrent": 1, "completed": 0, "cancelled": 1, "failed": 0}


# ---- the page in headless Chromium --------------------------------------------------------------------------


def _wait_state(browser, states: tuple[str, ...], timeout: float = 20) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    def state(driver) -> str:
        return driver.find_element("tag name", "body").get_attribute("data-state")

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: state(d) in states)
    return state(browser)


def _fill(browser, element_id: str, value: str) -> None:
    element = browser.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def test_page_streams_a_whole_denoising(server, browser):
    from selenium.webdriver.support.ui import Select

    from browser import ink_fraction

    browser.get(server.url + "/")
    _wait_state(browser, ("idle",))
    Select(browser.find_element("id", "run")).select_by_value("masked")
    assert "masked" in browser.find_element("id", "run-info").text
    _fill(browser, "text", "ROMEO:")
    Select(browser.find_element("id", "sampler")).select_by_value("topk")
    _fill(browser, "steps", "6")
    _fill(browser, "pace", "20")
    browser.find_element("id", "sample").click()
    assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
    player = browser.find_element("id", "player")
    assert player.get_attribute("data-frames") == "7" and player.get_attribute("data-frame") == "6"
    result = browser.find_element("id", "result").get_attribute("textContent")  # .text trims trailing spaces
    assert result.startswith("ROMEO:") and len(result) == 32
    assert "6 steps" in browser.find_element("id", "stats").text
    assert not browser.find_element("id", "message").is_displayed()
    assert ink_fraction(player.screenshot_as_png) > 0.01  # the player, not the page: ink_fraction is slow on 1280x1000


def test_page_takes_no_steps_for_the_left_to_right_sampler_and_shows_the_exact_number(server, browser):
    from selenium.webdriver.support.ui import Select

    runs = {r["name"]: r for r in get_json(server, "/api/runs")}
    assert runs["masked"]["one_per_token"] == ["left_to_right"] and runs["masked"]["exact_sampler"] == "left_to_right"
    browser.get(server.url + "/")
    _wait_state(browser, ("idle",))
    Select(browser.find_element("id", "run")).select_by_value("masked")
    info = browser.find_element("id", "run-info").text
    assert f"exact {runs['masked']['exact_bpc']:.3f} bits/char (of the left_to_right sampler)" in info
    steps = browser.find_element("id", "steps")
    Select(browser.find_element("id", "sampler")).select_by_value("left_to_right")
    assert not steps.is_enabled() and "one character per step" in steps.get_attribute("title")
    _fill(browser, "text", "ROMEO:")
    _fill(browser, "length", "12")
    browser.find_element("id", "sample").click()
    assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
    assert browser.find_element("id", "player").get_attribute("data-frames") == "7"  # one per character, + start
    Select(browser.find_element("id", "sampler")).select_by_value("topk")
    assert steps.is_enabled() and steps.get_attribute("value") == str(runs["masked"]["steps"])


def test_page_fills_blanks_and_stops_on_request(server, browser):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    _wait_state(browser, ("idle",))
    Select(browser.find_element("id", "run")).select_by_value("masked")
    browser.find_element("id", "mode-infill").click()
    assert not browser.find_element("id", "length").is_enabled()  # an infill is as long as its text
    template = "ROMEO:\nO ____ art thou"
    _fill(browser, "text", template)
    Select(browser.find_element("id", "sampler")).select_by_value("topk")  # exactly `steps` steps
    _fill(browser, "steps", "4")
    browser.find_element("id", "sample").click()
    assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
    result = browser.find_element("id", "result").get_attribute("textContent")
    assert len(result) == len(template) and all(r == c for r, c in zip(result, template, strict=True) if c != "_")
    assert browser.find_element("id", "player").get_attribute("data-frames") == "5"

    # Stop aborts the request, and the server stops sampling
    server.wait_for(lambda s: s["active"] == 0)
    before = server.status()["cancelled"]
    browser.find_element("id", "mode-prompt").click()
    _fill(browser, "text", "KING")  # 28 blanks: ancestral sampling over 1000 steps takes ~1000 frames
    Select(browser.find_element("id", "sampler")).select_by_value("ancestral")
    _fill(browser, "steps", "1000")
    _fill(browser, "pace", "20")
    browser.find_element("id", "sample").click()
    player = browser.find_element("id", "player")
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda d: int(player.get_attribute("data-frames") or 0) >= 3)
    browser.find_element("id", "stop").click()
    assert _wait_state(browser, ("stopped",)) == "stopped"
    assert server.wait_for(lambda s: s["active"] == 0)["cancelled"] == before + 1
    # the ar run offers no infill: the page switches back to a prompt
    Select(browser.find_element("id", "run")).select_by_value("ar")
    assert not browser.find_element("id", "mode-infill").is_enabled()
    assert browser.find_element("id", "mode-prompt").is_selected()
    assert not browser.find_element("id", "steps").is_enabled()


def test_page_starts_ready_and_its_player_stops_a_stream(server, browser):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get_log("browser")  # the session's browser: forget earlier pages' messages
    browser.get(server.url + "/")
    _wait_state(browser, ("idle",))
    Select(browser.find_element("id", "run")).select_by_value("masked")
    text = browser.find_element("id", "text")
    # the example is the field's value, not only a placeholder: Sample uses it as it stands
    assert text.get_attribute("value") == "ROMEO:"
    Select(browser.find_element("id", "sampler")).select_by_value("topk")
    _fill(browser, "steps", "4")
    browser.find_element("id", "sample").click()
    assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
    assert browser.find_element("id", "result").get_attribute("textContent").startswith("ROMEO:")
    # infill mode swaps the example for its own, and its length box has room for its note
    browser.find_element("id", "mode-infill").click()
    assert text.get_attribute("value") == "ROMEO:\nO ____ art thou"
    room, needed = browser.execute_script(
        "const e = document.getElementById('length'), s = getComputedStyle(e);"
        "const c = document.createElement('canvas').getContext('2d'); c.font = s.font;"
        "return [e.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight),"
        "        c.measureText(e.placeholder).width];")
    assert browser.find_element("id", "length").get_attribute("placeholder") and room >= needed
    # a text the user wrote stays when the mode changes
    browser.find_element("id", "mode-prompt").click()
    assert text.get_attribute("value") == "ROMEO:"
    _fill(browser, "text", "KING")
    browser.find_element("id", "mode-infill").click()
    browser.find_element("id", "mode-prompt").click()
    assert text.get_attribute("value") == "KING"
    # while frames stream, the player's button stops the sampling; afterwards it plays the frames back
    server.wait_for(lambda s: s["active"] == 0)
    before = server.status()["cancelled"]
    Select(browser.find_element("id", "sampler")).select_by_value("ancestral")
    _fill(browser, "steps", "1000")
    _fill(browser, "pace", "20")
    browser.find_element("id", "sample").click()
    player = browser.find_element("id", "player")
    WebDriverWait(browser, 20, poll_frequency=0.05).until(lambda d: int(player.get_attribute("data-frames") or 0) >= 3)
    button = player.find_element("css selector", "button.td-play")
    assert "stop" in button.text
    button.click()
    assert _wait_state(browser, ("stopped",)) == "stopped"
    assert server.wait_for(lambda s: s["active"] == 0)["cancelled"] == before + 1
    assert "play" in button.text
    # nothing the page asked for failed: the icon included
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.parametrize("field, value, words", [
    ("steps", "100000", "steps must be a whole number from 1 to 1000"),
    ("text", "ROMEO €", "U+20AC"),
])
def test_page_shows_the_servers_message(server, browser, field, value, words):
    from selenium.webdriver.support.ui import Select

    browser.get(server.url + "/")
    _wait_state(browser, ("idle",))
    Select(browser.find_element("id", "run")).select_by_value("masked")
    _fill(browser, "text", "ROMEO")
    _fill(browser, field, value)
    browser.find_element("id", "sample").click()
    assert _wait_state(browser, ("error", "done")) == "error"
    message = browser.find_element("id", "message")
    assert message.is_displayed() and "error" in message.get_attribute("class").split()
    assert words in message.text
    assert browser.find_element("id", "result").text == ""


# ---- startup errors through the CLI -------------------------------------------------------------------------


def test_runs_with_the_same_name_are_told_apart(server, tmp_path):
    twin = tmp_path / "other" / "masked"
    shutil.copytree(server.root / "masked", twin)
    runs = load_runs([server.root / "masked", twin, server.root / "masked" / "."], device="cpu")
    assert list(runs) == ["masked", "other/masked"]  # the same directory twice is served once


def test_serve_refuses_what_it_cannot_serve(server, tmp_path, capsys):
    image = tmp_path / "mnist-run"
    image.mkdir()
    (image / "config.json").write_text(json.dumps({"config": {"method": {"name": "image"}}}))
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        cases = [
            (["serve", "/no/such/run"], "does not exist"),
            (["serve", str(image)], "textdiffusion mnist sample"),
            (["serve", str(server.root / "masked"), "--port", str(taken.getsockname()[1])], "cannot listen"),
        ]
        for argv, words in cases:
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("error:") and words in err and "\n" not in err, err
    finally:
        taken.close()


def test_a_stream_event_writes_nan_as_null():
    from textdiffusion.apps.serve.app import _sse

    event = _sse("frame", {"step": 3, "confidence": float("nan")})
    assert event == 'event: frame\ndata: {"step":3,"confidence":null}\n\n'


def test_an_empty_host_is_refused_before_anything_listens(server, monkeypatch, capsys):
    import textdiffusion.apps.serve.app as serve_app

    monkeypatch.setattr(serve_app, "_uvicorn_server", lambda *a: pytest.fail("serve --host '' started serving"))
    for host in ("", "  "):
        assert main(["serve", str(server.root / "masked"), "--host", host]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --host is empty") and "127.0.0.1" in err and "\n" not in err, err


def _serve_and_ask(monkeypatch, capsys, run: Path, host: str, asked_as: list[str | None]) -> tuple[str, list[int]]:
    """``serve(run, host=host)`` with its uvicorn server run in a thread just long enough to ask ``/api/runs``
    at the printed URL once per Host header in ``asked_as`` (None: the URL's own); what it printed to stderr
    and the statuses."""
    import urllib.error
    import urllib.request

    import textdiffusion.apps.serve.app as serve_app

    statuses: list[int] = []
    printed: list[str] = []

    class Probe:
        def __init__(self, app, service, client_timeout):
            self.app = app

        def run(self, sockets):
            srv = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
            thread = threading.Thread(target=srv.run, kwargs={"sockets": sockets}, daemon=True)
            thread.start()
            while not srv.started:
                assert thread.is_alive()
                time.sleep(0.01)
            out = capsys.readouterr()
            printed.append(out.err)
            url = out.out.split(" at ")[1].split()[0]
            try:
                for name in asked_as:
                    request = urllib.request.Request(url + "api/runs", headers={"Host": name} if name else {})
                    try:
                        with urllib.request.urlopen(request, timeout=10) as response:
                            statuses.append(response.status)
                    except urllib.error.HTTPError as e:
                        statuses.append(e.code)
            finally:
                srv.should_exit = True
                thread.join(10)

    monkeypatch.setattr(serve_app, "_uvicorn_server", Probe)
    assert serve_app.serve([run], host=host, port=0, device="cpu") == 0
    return printed[0], statuses


def test_ipv6_loopback_is_served_at_a_url_that_works(server, monkeypatch, capsys):
    err, statuses = _serve_and_ask(monkeypatch, capsys, server.root / "masked", "::1", [None, "attacker.example"])
    assert statuses == [200, 400] and "warning" not in err  # the printed [::1] URL answers; rebinding does not


def test_a_public_host_is_named_and_keeps_the_host_check(server, monkeypatch, capsys):
    own = socket.gethostname()
    err, statuses = _serve_and_ask(monkeypatch, capsys, server.root / "masked", "0.0.0.0",
                                   [None, own, "attacker.example"])
    assert statuses == [200, 200, 400]
    warned = [ln for ln in err.splitlines() if ln.strip()]
    assert len(warned) == 1 and warned[0].startswith("warning: 0.0.0.0 is every interface"), err
    assert "sample these runs" in warned[0]


def test_an_explicit_host_is_answered_by_its_own_name_only():
    from textdiffusion.apps.serve.app import allowed_host_names

    names = allowed_host_names("10.1.2.3")
    assert "10.1.2.3" in names and "127.0.0.1" in names and "*" not in names and "attacker.example" not in names
    assert {"fe80::1", "[fe80::1]", "[::1]"} <= set(allowed_host_names("fe80::1"))


def test_a_speaker_run_takes_a_label_and_guidance(trained, tmp_path):
    """A run trained with speaker labels offers them (``/api/runs``: ``labels``), and a request may steer toward
    one; a plain run refuses a label, a labelled one an unknown name, in one sentence each."""
    from textdiffusion.apps.serve.served import describe

    speakers = tmp_path / "speakers"
    train_tiny("masked", trained / "c.txt", speakers, steps=4, **{"data.labels": "speaker", "data.label_top": 3})
    runs = load_runs([speakers, trained / "masked"], device="cpu")
    name = describe(runs["speakers"])["labels"][1]
    assert describe(runs["masked"])["labels"] == [] and len(describe(runs["speakers"])["labels"]) == 3
    params = {"run": "speakers", "length": 20, "sampler": "topk", "steps": 5, "seed": 3}
    service = SamplingService(runs, max_steps=1000, max_concurrent=1)
    try:
        guided = check_request({**params, "label": name.lower(), "guidance": "2.5"}, runs, max_steps=1000)
        events = run_job(service, guided)
        assert events[0][1]["label"] == name.lower() and events[0][1]["guidance"] == 2.5
        assert events[-1][0] == "done" and len(events[-1][1]["text"]) == 20
        # guidance 0 is the unconditional model: the same text as no label at all
        plain = run_job(service, check_request(params, runs, max_steps=1000))[-1][1]["text"]
        zero = run_job(service, check_request({**params, "label": name, "guidance": 0}, runs, max_steps=1000))
        assert zero[-1][1]["text"] == plain
    finally:
        service.shutdown()
    for bad, words in (({"run": "speakers", "label": "HAMLET"}, "not one of this run's 3 labels"),
                       ({"run": "speakers", "guidance": 3}, "give a speaker with guidance"),
                       ({"run": "speakers", "label": name, "guidance": 50}, "guidance must be a number from 0"),
                       ({"run": "masked", "label": name}, "trained without labels")):
        with pytest.raises(RequestError, match=words) as e:
            check_request(bad, runs, max_steps=1000)
        assert "\n" not in str(e.value)


def test_a_plain_run_with_a_cached_speaker_classifier_offers_its_speakers(trained, tmp_path):
    """Classifier guidance on the live page: a plain run whose speaker classifier is cached for its checkpoint
    offers the classifier's speakers (rule "classifier"); guidance 0 is the unguided text, and a plain run without
    one offers nobody."""
    import shutil

    from textdiffusion.apps.serve.served import describe
    from textdiffusion.guidance.classifier import ClassifierRecipe, classifier_for

    shutil.copytree(trained / "masked", tmp_path / "steered")
    classifier_for(load(tmp_path / "steered", device="cpu").run, ClassifierRecipe(steps=5, top=3), progress=False)
    runs = load_runs([tmp_path / "steered", trained / "masked"], device="cpu")
    info = describe(runs["steered"])
    assert info["guidance_rule"] == "classifier" and len(info["labels"]) == 3
    assert describe(runs["masked"])["labels"] == [] and describe(runs["masked"])["guidance_rule"] == ""
    params = {"run": "steered", "length": 20, "sampler": "topk", "steps": 5, "seed": 3}
    service = SamplingService(runs, max_steps=1000, max_concurrent=1)
    try:
        steered = run_job(service, check_request({**params, "label": info["labels"][0], "guidance": 5}, runs,
                                                 max_steps=1000))
        assert steered[0][1]["rule"] == "classifier" and steered[-1][0] == "done"
        plain = run_job(service, check_request(params, runs, max_steps=1000))[-1][1]["text"]
        zero = run_job(service, check_request({**params, "label": info["labels"][0], "guidance": 0}, runs,
                                              max_steps=1000))
        assert zero[-1][1]["text"] == plain
    finally:
        service.shutdown()


def test_page_offers_the_speakers_of_labelled_and_classifier_runs_only(trained, tmp_path, browser):
    import shutil

    from selenium.webdriver.support.ui import Select

    from textdiffusion.guidance.classifier import ClassifierRecipe, classifier_for

    speakers = tmp_path / "speakers"
    train_tiny("masked", trained / "c.txt", speakers, steps=4, **{"data.labels": "speaker", "data.label_top": 3})
    shutil.copytree(trained / "masked", tmp_path / "steered")  # a plain run with a cached speaker classifier
    classifier_for(load(tmp_path / "steered", device="cpu").run, ClassifierRecipe(steps=5, top=3), progress=False)
    serving = _serve(trained, [speakers, trained / "masked", tmp_path / "steered"])
    srv = next(serving)
    try:
        browser.get(srv.url + "/")
        _wait_state(browser, ("idle",))
        Select(browser.find_element("id", "run")).select_by_value("masked")
        assert not browser.find_element("id", "speaker").is_displayed()  # a plain run: no speaker menu
        Select(browser.find_element("id", "run")).select_by_value("speakers")
        menu = Select(browser.find_element("id", "speaker"))
        names = [o.text for o in menu.options]
        assert len(names) == 4 and names[0].startswith("anyone")
        assert not browser.find_element("id", "guidance").is_enabled()  # nothing to steer toward yet
        menu.select_by_index(2)
        assert browser.find_element("id", "guidance").is_enabled()
        Select(browser.find_element("id", "sampler")).select_by_value("topk")
        _fill(browser, "steps", "4")
        browser.find_element("id", "sample").click()
        assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
        assert srv.status()["completed"] == 1
        assert browser.find_element("id", "speaker-label").text == "Speaker"
        # the plain run with a classifier: the classifier's speakers, steered by classifier guidance
        Select(browser.find_element("id", "run")).select_by_value("steered")
        assert browser.find_element("id", "speaker-label").text == "Speaker (classifier guidance)"
        menu = Select(browser.find_element("id", "speaker"))
        assert len(menu.options) == 4
        menu.select_by_index(1)
        Select(browser.find_element("id", "sampler")).select_by_value("topk")
        _fill(browser, "steps", "4")
        browser.find_element("id", "sample").click()
        assert _wait_state(browser, ("done", "error")) == "done", browser.find_element("id", "message").text
        assert srv.status()["completed"] == 2
    finally:
        next(serving, None)
