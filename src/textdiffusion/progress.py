"""The one progress bar: tqdm on stderr, redrawn a few times a second on a terminal and rarely into a log.

A bar redrawn every 0.1 s (tqdm's default) writes thousands of lines into a log file or a CI transcript; on
a terminal the redraws overwrite each other. So: four redraws a second on a terminal, one every 15 s
otherwise, and the final state always.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

TERMINAL_INTERVAL_S = 0.25
LOG_INTERVAL_S = 15.0


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar with the package's defaults (stderr, throttled off a terminal); ``kwargs`` override them."""
    stream = kwargs.get("file") or sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    interval = TERMINAL_INTERVAL_S if terminal else LOG_INTERVAL_S
    # maxinterval: tqdm's monitor thread forces a redraw once that long has passed without one (default 10 s),
    # which into a log added a redraw beside the throttled ones; past twice the interval it only acts when the
    # loop itself slowed down
    options = {"file": stream, "dynamic_ncols": True, "mininterval": interval,
               "maxinterval": max(2 * interval, 10.0)}
    return tqdm(**{**options, **kwargs})
