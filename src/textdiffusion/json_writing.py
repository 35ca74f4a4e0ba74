"""The one JSON writer of what a run, a comparison or a page leaves (metrics.jsonl, final.json, eval.json,
comparison.json, the report's embedded data, the live page's events).

A non-finite float (a diverged loss, a metric of nothing) is written as null: Python's default writes bare
``NaN`` or ``Infinity``, which is not JSON, so a browser's ``JSON.parse`` (and every strict reader) refuses the
whole file or page for one value. Readers take null wherever a number was."""

from __future__ import annotations

import json
import math
from typing import Any


def to_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(obj, **kwargs)`` with every NaN and infinity as null. The object is walked only when it holds
    one, so every other output is the standard writer's, byte for byte."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:  # "Out of range float values are not JSON compliant"
        return json.dumps(finite(obj), allow_nan=False, **kwargs)


def finite(obj: Any) -> Any:
    """``obj`` with each non-finite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
