"""Recording every intermediate state of a sampler as JSON, for later visualisation.

File format (``textdiffusion sample --trajectory FILE``)::

    {"format": "textdiffusion-trajectory/1", "method": ..., "sampler": ..., "n": N, "length": L,
     "mask_char": "_", "fixed": [[positions the user gave], ...],
     "frames": [{"step": 0, "t": 1.0, "nfe": 0, "texts": [...], "masked": [[positions], ...],
                 "changed": [count per sample]}, ...]}

``texts`` shows still-masked positions as ``mask_char``; ``masked`` lists them exactly as character
positions of that text (the corpus may contain ``mask_char`` itself), and ``changed`` counts token
positions that differ from the previous frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from textdiffusion.checkpoint import write_json
from textdiffusion.data.tokenizer import Tokenizer

# a private-use character stands in for the mask while decoding: with multi-character tokenizers (BPE,
# WordPiece) token positions are not character positions, so masked positions are found in the text itself
MASK_SENTINEL = "\ue000"


def decode_masked(tok: Tokenizer, ids: list[int], mask_char: str = "_") -> tuple[str, list[int]]:
    """The decoded text with masks shown as ``mask_char``, and the character positions of those masks."""
    if tok.kind == "char":  # one character per token: positions agree, and the corpus may hold mask_char
        return tok.decode(ids, mask_char), [i for i, t in enumerate(ids) if t == tok.mask_id]
    raw = tok.decode(ids, MASK_SENTINEL)
    return raw.replace(MASK_SENTINEL, mask_char), [i for i, c in enumerate(raw) if c == MASK_SENTINEL]


class TrajectoryRecorder:
    """An ``on_step`` callback. With ``keep_states`` it also keeps the raw ids of every step, so that
    :meth:`thinned` can later pick a few hundred frames out of a 1000-step sampler for a web page while
    still counting the changes between the frames it keeps."""

    def __init__(self, tokenizer: Tokenizer, mask_char: str = "_", keep_states: bool = False):
        self.tok, self.mask_char = tokenizer, mask_char
        self.frames: list[dict[str, Any]] = []
        self.states: list[torch.Tensor] | None = [] if keep_states else None
        self._prev: torch.Tensor | None = None

    def _frame(self, step: int, state: torch.Tensor, prev: torch.Tensor | None,
               info: dict[str, Any]) -> dict[str, Any]:
        changed = (state != prev).sum(1).tolist() if prev is not None else [0] * state.shape[0]
        decoded = [decode_masked(self.tok, row.tolist(), self.mask_char) for row in state]
        return {
            "step": step, **{k: v for k, v in info.items() if isinstance(v, (int, float, str))},
            "texts": [text for text, _ in decoded],
            "masked": [masked for _, masked in decoded],
            "changed": changed,
        }

    def __call__(self, step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        state = state.cpu()
        self.frames.append(self._frame(step, state, self._prev, info))
        self._prev = state
        if self.states is not None:
            self.states.append(state)

    def thinned(self, max_frames: int) -> list[dict[str, Any]]:
        """At most ``max_frames`` frames, evenly spread and always with the first and the last; ``changed``
        then counts the positions that differ from the previous *kept* frame."""
        if len(self.frames) <= max_frames:
            return self.frames
        if self.states is None:
            raise ValueError("thinning needs TrajectoryRecorder(keep_states=True)")
        keep = np.unique(np.linspace(0, len(self.frames) - 1, max(2, max_frames)).round().astype(int)).tolist()
        out, prev = [], None
        for i in keep:
            frame = self.frames[i]
            out.append({k: v for k, v in frame.items() if k not in ("texts", "masked", "changed")}
                       | self._frame(frame["step"], self.states[i], prev, {}))
            prev = self.states[i]
        return out

    def to_dict(self, **meta: Any) -> dict[str, Any]:
        return {"format": "textdiffusion-trajectory/1", "mask_char": self.mask_char, **meta, "frames": self.frames}

    def write(self, path: Path, **meta: Any) -> None:
        write_json(Path(path), self.to_dict(**meta), through_links=True)
