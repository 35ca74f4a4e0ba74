"""The one JSON parser for what the package reads back: run files, checkpoint metadata, config files, requests.

Why one: these files come from anywhere (a shared run, an edited config, a page's request), and Python's
``json`` fails on them in more ways than ``JSONDecodeError``: an array nested ten thousand levels deep raises
``RecursionError`` while decoding, one nested a few hundred levels parses but then overflows the stack of the
first recursive reader (``deepcopy``, ``json.dumps``, a config walk), and an integer of more than 4,300 digits
is a ``ValueError``. :func:`parse_json` turns every one of them into :class:`JSONProblem`, whose message
completes "FILE is ...", so each caller keeps its own one-line error and fix. Nothing the package writes is
nested more than a handful of levels, so :data:`MAX_DEPTH` refuses only what no run or request holds.
"""

from __future__ import annotations

import json
from typing import Any

#: the deepest nesting read: config.json is about five levels deep, a BPE tokenizer's merges four
MAX_DEPTH = 100


class JSONProblem(ValueError):
    """Why a text is not JSON the package reads, worded to follow "FILE is": "not valid JSON (...)" or
    "nested more than 100 levels deep"."""


def parse_json(text: str | bytes) -> Any:
    """The value ``text`` holds, or :class:`JSONProblem` saying why there is none."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONProblem(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise JSONProblem(f"nested more than {MAX_DEPTH} levels deep, which no textdiffusion file is") from None
    except UnicodeDecodeError:
        raise JSONProblem("not UTF-8 text") from None
    except ValueError:  # an integer of more digits than Python converts to a number (4,300)
        raise JSONProblem("not valid JSON this package reads (a number of thousands of digits)") from None
    if _deeper_than(value, MAX_DEPTH):
        raise JSONProblem(f"nested more than {MAX_DEPTH} levels deep, which no textdiffusion file is")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers in ``value`` nest more than ``limit`` levels, found without recursion (recursion is
    what the limit protects)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
