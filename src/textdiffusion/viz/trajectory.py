"""Recording every intermediate state of a sampler as JSON, for later visualisation.

File format (``textdiffusion sample --trajectory FILE``)::

    {"format": "textdiffusion-trajectory/1", "method": ..., "sampler": ..., "n": N, "length": L,
     "mask_char": "_", "fixed": [[positions the user gave], ...],
     "frames": [{"step": 0, "t": 1.0, "nfe": 0, "texts": [...], "masked": [[positions], ...],
                 "changed": [count per sample]}, ...]}

``texts`` shows still-masked positions as ``mask_char``; ``masked`` lists them exactly (the corpus may
contain ``mask_char`` itself), and ``changed`` counts positions that differ from the previous frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from textdiffusion.checkpoint import write_json
from textdiffusion.data.tokenizer import Tokenizer


class TrajectoryRecorder:
    def __init__(self, tokenizer: Tokenizer, mask_char: str = "_"):
        self.tok, self.mask_char = tokenizer, mask_char
        self.frames: list[dict[str, Any]] = []
        self._prev: torch.Tensor | None = None

    def __call__(self, step: int, state: torch.Tensor, info: dict[str, Any]) -> None:
        state = state.cpu()
        masked = state == self.tok.mask_id
        changed = (state != self._prev).sum(1).tolist() if self._prev is not None else [0] * state.shape[0]
        self._prev = state
        self.frames.append({
            "step": step, **{k: v for k, v in info.items() if isinstance(v, (int, float, str))},
            "texts": [self.tok.decode(row.tolist(), self.mask_char) for row in state],
            "masked": [row.nonzero().flatten().tolist() for row in masked],
            "changed": changed,
        })

    def to_dict(self, **meta: Any) -> dict[str, Any]:
        return {"format": "textdiffusion-trajectory/1", "mask_char": self.mask_char, **meta, "frames": self.frames}

    def write(self, path: Path, **meta: Any) -> None:
        write_json(Path(path), self.to_dict(**meta))
