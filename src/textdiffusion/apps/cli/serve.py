"""``textdiffusion serve``: the live page, sampling and infilling with the denoising streamed
(:mod:`textdiffusion.apps.serve`)."""

from __future__ import annotations

import argparse

from textdiffusion.apps.cli.flags import DEVICE_HELP, PORT, STEPS, command, number
from textdiffusion.config import Range
from textdiffusion.limits import CLIENT_TIMEOUT_S


def add(sub: argparse._SubParsersAction) -> None:
    v = command(sub, "serve", "a local web page to sample and infill interactively, denoising streamed live",
                epilog="example:\n  textdiffusion serve runs/masked runs/ar      # then open http://127.0.0.1:8000")
    v.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="text run directories to offer")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind; 127.0.0.1 is this machine only")
    v.add_argument("--port", type=number(int, PORT), default=8000, help="port; 0 = any free one (printed)")
    v.add_argument("--device", default="auto", help=DEVICE_HELP)
    v.add_argument("--max-steps", type=number(int, STEPS), default=1000, help="largest step count a request may ask")
    v.add_argument("--max-concurrent", type=number(int, Range(1, 1024)), default=4,
                   help="samplings running at once (more wait their turn)")
    v.add_argument("--client-timeout", type=number(float, Range(0.1, 3600)), default=CLIENT_TIMEOUT_S,
                   help="seconds a client may take to send a request, or to read more of a stream, before it is "
                        "disconnected and its sampling stopped")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textdiffusion.extras import require

    require(("starlette", "uvicorn"), "serve", "textdiffusion serve")
    from textdiffusion.apps.serve import serve

    return serve(args.run_dirs, host=args.host, port=args.port, device=args.device, max_steps=args.max_steps,
                 max_concurrent=args.max_concurrent, client_timeout=args.client_timeout)
