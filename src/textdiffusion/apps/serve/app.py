"""The Starlette app (routes, the server-sent-events response, host checking) and ``serve``, which runs it
under uvicorn. The routes are thin: :mod:`.requests` checks a request, :mod:`.jobs` runs it."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from textdiffusion.config import ConfigError
from textdiffusion.json_reading import JSONProblem, parse_json
from textdiffusion.json_writing import to_json
from textdiffusion.limits import CLIENT_TIMEOUT_S
from textdiffusion.viz import web_asset

from .connections import bound_send_buffer
from .jobs import Job, SamplingService
from .requests import RequestError, check_request
from .served import load_runs

MAX_BODY = 64 * 1024  # the longest text any run accepts is far shorter
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::")  # every interface, IPv4 and IPv6
PAGE = "live.html"
ICON = "favicon.svg"  # at /favicon.ico, where browsers (and the page's <link rel=icon>) ask for it
STATIC = {"td.css": "text/css", "player.js": "text/javascript", "live.js": "text/javascript"}
# the page needs nothing but itself: no CDN, no inline script
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


def create_app(run_dirs: Sequence[str | Path], device: str = "auto", max_steps: int = 1000,
               max_concurrent: int = 4, max_chars: int | None = None,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Starlette:
    """The ASGI app serving ``run_dirs``, every run loaded now (errors are the CLI's one-line errors).

    ``max_chars`` caps input texts in characters (default: what fits in each run's context).
    ``allowed_hosts`` are the Host headers answered (default: loopback names only, which stops another web
    site from reaching this server through DNS rebinding; ``serve`` passes :func:`allowed_host_names`); None
    answers any."""
    if max_steps < 1 or max_concurrent < 1:
        raise ConfigError("--max-steps and --max-concurrent must be >= 1")
    service = SamplingService(load_runs(run_dirs, device, max_steps, max_chars), max_steps, max_concurrent)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(_url_forms(allowed_hosts)))] \
        if allowed_hosts else []
    routes = [Route("/", _index), Route("/static/{name}", _asset), Route("/api/runs", _api_runs),
              Route("/api/status", _api_status), Route("/api/sample", _api_sample, methods=["GET", "POST"]),
              Route("/favicon.ico", _favicon)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error},
                    lifespan=_lifespan)
    app.state.service = service
    app.state.files = {name: web_asset(name) for name in (PAGE, ICON, *STATIC)}  # read once: the page never changes
    return app


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.service.shutdown()


def _service(request: Request) -> SamplingService:
    return request.app.state.service


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ----------------------------------------------------------------------------------------------------------
# routes


async def _index(request: Request) -> Response:
    return Response(request.app.state.files[PAGE], media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP})


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return _error(f"no such file /static/{name}", 404)
    return Response(request.app.state.files[name], media_type=f"{STATIC[name]}; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})


async def _favicon(request: Request) -> Response:
    return Response(request.app.state.files[ICON], media_type="image/svg+xml",
                    headers={"Cache-Control": "max-age=86400"})


async def _api_runs(request: Request) -> JSONResponse:
    return JSONResponse([served.info for served in _service(request).runs.values()])


async def _api_status(request: Request) -> JSONResponse:
    return JSONResponse(_service(request).status())


async def _api_sample(request: Request) -> Response:
    service = _service(request)
    try:
        params = await _read_params(request)
        job = service.start(check_request(params, service.runs, service.max_steps))
    except RequestError as e:
        return _error(str(e), e.status)
    return _EventStream(job)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(f"no such page {request.url.path}; the live page is at /", 404)
    if exc.status_code == 405:
        return _error(f"{request.method} is not accepted at {request.url.path}", 405)
    return _error(str(exc.detail), exc.status_code)


async def _read_params(request: Request) -> Mapping[str, Any]:
    """The query string of a GET, or the JSON object of a POST (at most ``MAX_BODY`` bytes)."""
    if request.method == "GET":
        return request.query_params
    too_big = RequestError(f"the request body is over {MAX_BODY // 1024} KiB; send a shorter text", status=413)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise too_big
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise too_big
    except ClientDisconnect:  # gone mid-body (or dropped by the request deadline): nobody reads an answer
        _log_hang_up(request, len(body), declared)
        raise RequestError("the client disconnected before its request was whole", status=400) from None
    try:
        params = parse_json(body or b"{}")
    except JSONProblem:
        params = None
    if not isinstance(params, dict):
        raise RequestError('the request body must be a JSON object such as {"run": "NAME", "prompt": "ROMEO:"}')
    return params


def _log_hang_up(request: Request, received: int, declared: str | None) -> None:
    """One console line for a client gone mid-request: the operator sees that it happened, and nothing more is
    worth knowing (no answer can reach it)."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    print(f"{client} hung up after {received} of {declared or 'an unknown number of'} bytes of its request body; "
          "nothing was answered", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# the event stream


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {to_json(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _sse_events(job: Job) -> AsyncIterator[str]:
    async for event, data in job.events():
        yield _sse(event, data)


class _EventStream(StreamingResponse):
    """A streaming response that stops its sampling however the response ends (done, client gone, server
    shutting down): the one place where every way out passes."""

    def __init__(self, job: Job):
        super().__init__(_sse_events(job), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.stop()


# ----------------------------------------------------------------------------------------------------------
# uvicorn


def _listen(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port is a one-line error before anything is printed (and port 0 works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:  # the CLI checks it too
        raise ConfigError(f"--port must be a whole number from 0 to 65535 (0 = any free port), got {port!r}")
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host") \
            from None


def serve(run_dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_steps: int = 1000, max_concurrent: int = 4, max_chars: int | None = None,
          client_timeout: float = CLIENT_TIMEOUT_S) -> int:
    """Load the runs, serve the page until Ctrl+C; 0 on a clean stop. ``client_timeout``: seconds a client may
    take to send a whole request or to accept more of a stream before it is disconnected (its sampling
    stopped); see :mod:`.connections`."""
    host = bind_host(host)
    app = create_app(run_dirs, device=device, max_steps=max_steps, max_concurrent=max_concurrent,
                     max_chars=max_chars, allowed_hosts=allowed_host_names(host))
    sock = _listen(host, port)
    bound_send_buffer(sock)
    service: SamplingService = app.state.service
    shown = f"[{host}]" if ":" in host else host
    bound_port = sock.getsockname()[1]
    print(f"serving {len(service.runs)} run(s) ({', '.join(service.runs)}) at "
          f"http://{shown}:{bound_port}/ (Ctrl+C to stop)", flush=True)
    if not is_loopback(host):
        print(f"warning: {exposure(host, bound_port)}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down cleanly, then re-raises the signal
        _uvicorn_server(app, service, client_timeout).run(sockets=[sock])
    print("stopped", file=sys.stderr)
    return 0


def bind_host(host: str) -> str:
    """``host`` as the socket takes it (an IPv6 address without the brackets a URL puts around it). An empty
    one is refused: the socket would read it as every interface, so an unset ``$HOST`` in a script would
    publish the page."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise ConfigError("--host is empty, which would listen on every interface; give 127.0.0.1 (this machine "
                          "only), or 0.0.0.0 to publish the page on purpose")
    return bare


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def exposure(host: str, port: int) -> str:
    """What a server bound to the non-loopback ``host`` exposes, and to whom, in one sentence."""
    if host in WILDCARD_HOSTS:
        return (f"{host} is every interface: anyone on any network this machine is on can reach port {port} and "
                "sample these runs on its CPU/GPU (requests addressed to another name than this machine's are "
                "refused)")
    return (f"{host} is reachable from other machines: anyone who can reach it can use port {port} to sample "
            f"these runs on this machine's CPU/GPU (requests addressed to another name than {host} are refused)")


def allowed_host_names(host: str) -> tuple[str, ...]:
    """The Host headers a server bound to ``host`` answers: the loopback names, ``host`` itself and, for a
    wildcard bind, this machine's own names and addresses. Any other name is refused, which stops a web site
    from reaching the server through DNS rebinding whatever interface it listens on."""
    names = [*LOOPBACK_HOSTS, host]
    if host in WILDCARD_HOSTS:
        names += _own_names()
    return _url_forms(names)


def _url_forms(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` with each IPv6 address also in brackets, as a URL (and so the Host header) writes it."""
    forms = (form for name in names for form in ((name, f"[{name}]") if ":" in name else (name,)))
    return tuple(dict.fromkeys(forms))


def _own_names() -> list[str]:
    """This machine's host names and the addresses they resolve to (none when the resolver has no answer)."""
    names = [socket.gethostname(), socket.getfqdn()]
    with contextlib.suppress(OSError):
        names += [str(info[4][0]) for info in socket.getaddrinfo(names[0], None)]
    return [n.lower() for n in names if n]


def _uvicorn_server(app: Starlette, service: SamplingService, client_timeout: float = CLIENT_TIMEOUT_S) -> Any:
    """A uvicorn server that ends the open streams as soon as it is asked to stop, and disconnects a client
    that takes ``client_timeout`` seconds to send a request or to read more of a stream."""
    import uvicorn  # on use, as the app alone needs only Starlette

    from .connections import bounded_protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn waits for open responses before it shuts down: end the streams now (each gets an
            # error event and closes) instead of waiting for the grace period and cancelling them
            service.stop_all("the server is shutting down")
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                                 http=bounded_protocol(client_timeout), timeout_keep_alive=client_timeout))
