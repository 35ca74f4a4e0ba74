"""``sample --show``: redraw the batch in place after every sampler step, masked positions visible.

On a terminal the frame is redrawn with ANSI cursor movement; when the stream is not a terminal (a pipe,
a log file, a test) each frame is printed once, compactly, so nothing is lost.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from typing import Any, TextIO

import torch

from textdiffusion.data.tokenizer import Tokenizer

MASK_GLYPH = "░"
NEWLINE_GLYPH = "↵"


class TerminalAnimation:
    def __init__(self, tokenizer: Tokenizer, stream: TextIO | None = None, delay: float = 0.02,
                 max_rows: int = 4):
        self.tok = tokenizer
        self.stream = stream or sys.stderr
        self.delay = delay
        self.max_rows = max_rows
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._lines = 0

    def render(self, state: torch.Tensor, step: int, info: dict[str, Any]) -> list[str]:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 2)
        rows = state[: self.max_rows].cpu()
        masked = int((rows == self.tok.mask_id).sum())
        head = f"step {step:>4}  masked {masked:>5}  nfe {info.get('nfe', 0):>6.1f}"
        if "t" in info:
            head += f"  t={info['t']:.3f}"
        lines = [head]
        for row in rows:
            text = self.tok.decode(row.tolist(), MASK_GLYPH).replace("\n", NEWLINE_GLYPH)
            lines += textwrap.wrap(text, width, drop_whitespace=False, replace_whitespace=False) or [""]
            lines.append("")
        return lines

    def __call__(self, step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        lines = self.render(state, step, info)
        if self.tty:
            if self._lines:
                self.stream.write(f"\x1b[{self._lines}F\x1b[J")
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self._lines = len(lines)
            time.sleep(self.delay)
        else:
            self.stream.write("\n".join(lines) + "\n")
