"""``textdiffusion serve RUN_DIR...``: a local web page to sample from text runs and watch the denoising live.

A Starlette app run by uvicorn, bound to 127.0.0.1 unless ``--host`` says otherwise; every run is loaded once
at startup. Its HTTP API (endpoints, parameters, events, errors, concurrency and cancellation) is described
in ``docs/compare-and-serve.md``, section "HTTP API".

The layers, each usable without the ones above it:

* :mod:`.served`: the runs and the limits a request is checked against, all taken from each run's method;
* :mod:`.requests`: parameters -> :class:`Settings` (types and ranges, then the method's own ``prepare``);
* :mod:`.jobs`: :class:`SamplingService` runs settings in worker threads, with events and cancellation;
* :mod:`.app`: the routes, the server-sent-events response, and :func:`serve`.
"""

from textdiffusion.apps.serve.app import create_app, serve
from textdiffusion.apps.serve.jobs import Job, SamplingService
from textdiffusion.apps.serve.requests import RequestError, Settings, check_request
from textdiffusion.apps.serve.served import ServedRun, load_runs

__all__ = ["Job", "RequestError", "SamplingService", "ServedRun", "Settings", "check_request", "create_app",
           "load_runs", "serve"]
