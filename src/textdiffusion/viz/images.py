"""Pictures of image diffusion: sample grids, denoising strips and an animated GIF of the reverse process.

Plain Pillow (a core dependency): a grid is a numpy mosaic, upscaled with
nearest-neighbour so 28x28 digits stay crisp. Every writer goes through the checkpoint module's atomic
write (temp file + rename), like the rest of a run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from textdiffusion.data.images import to_pixels
from textdiffusion.files import atomic_write


def _as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """float [-1, 1] (N, 1, H, W) or uint8 (N, H, W) -> uint8 numpy (N, H, W)."""
    if isinstance(images, torch.Tensor):
        images = to_pixels(images) if images.is_floating_point() else images
        images = images.cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 4:
        arr = arr[:, 0]
    return arr.astype(np.uint8)


def mosaic(images: torch.Tensor | np.ndarray, nrow: int, pad: int = 2, background: int = 40) -> np.ndarray:
    """Tile (N, H, W) images row-major into one uint8 array, ``nrow`` images per row."""
    arr = _as_uint8(images)
    n, h, w = arr.shape
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), background, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    return out


def _to_image(arr: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(arr, mode="L")
    return img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST) if scale > 1 else img


def _save_atomic(path: Path, save: Any, through_links: bool) -> Path:
    atomic_write(Path(path), save, through_links=through_links)
    return Path(path)


def save_grid(images: torch.Tensor | np.ndarray, path: Path, nrow: int = 8, scale: int = 3,
              row_labels: Sequence[str] | None = None, through_links: bool = False) -> Path:
    """A PNG grid of samples; ``row_labels`` writes a caption at the left of each row (e.g. the digit).
    ``through_links``: a symbolic link at ``path`` is written through (a name the user chose), not replaced."""
    arr = mosaic(images, nrow)
    img = _to_image(arr, scale)
    if row_labels:
        h = _as_uint8(images).shape[1]
        margin = 14 * scale // 2 + 8
        canvas = Image.new("L", (img.width + margin, img.height), 40)
        canvas.paste(img, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(row_labels):
            draw.text((4, (2 + r * (h + 2) + h // 2) * scale - 6), str(text), fill=230)
        img = canvas
    return _save_atomic(path, lambda tmp: img.save(tmp, format="PNG"), through_links)


class ReverseProcessRecorder:
    """An ``on_step`` callback for :meth:`ImageDiffusion.sample` that keeps x_t (and the model's x0
    estimate) after every step (step 0 is the starting noise), for the strip and the GIF."""

    def __init__(self, keep: int = 8, indices: Sequence[int] | None = None):
        """Keep samples ``indices`` (e.g. one per digit), else the first ``keep``."""
        self.index = torch.tensor(list(indices)) if indices is not None else None
        self.keep = keep
        self.x_t: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []
        self.t: list[float] = []

    def _pick(self, x: torch.Tensor) -> np.ndarray:
        return _as_uint8(x[self.index.to(x.device)] if self.index is not None else x[: self.keep])

    def __call__(self, step: int, x_t: torch.Tensor, x0_hat: torch.Tensor, info: dict[str, Any]) -> None:
        self.x_t.append(self._pick(x_t))
        self.x0.append(self._pick(x0_hat))
        self.t.append(float(info.get("t", 0.0)))

    @classmethod
    def joined(cls, parts: Sequence[ReverseProcessRecorder]) -> ReverseProcessRecorder:
        """One recorder holding the samples of ``parts`` side by side, in order: the recorders of the batches
        of one request (each batch walks the same time grid, so their steps line up)."""
        if len(parts) == 1:
            return parts[0]
        out = cls(keep=sum(p.keep for p in parts))
        out.t = list(parts[0].t)
        out.x_t = [np.concatenate(frames) for frames in zip(*(p.x_t for p in parts), strict=True)]
        out.x0 = [np.concatenate(frames) for frames in zip(*(p.x0 for p in parts), strict=True)]
        return out

    def frame_indices(self, columns: int) -> list[int]:
        """``columns`` frames evenly spaced in *time* t (not in step number), first and last included."""
        ts = np.array(self.t)
        targets = np.linspace(ts[0], ts[-1], columns)
        return [int(np.argmin(np.abs(ts - target))) for target in targets]

    def save_strip(self, path: Path, columns: int = 10, scale: int = 3, through_links: bool = False) -> Path:
        """Rows = samples, columns = x_t at evenly spaced t from noise (left) to the sample (right)."""
        if not self.x_t:
            raise ValueError("nothing recorded: pass the recorder as on_step to sample()")
        idx = self.frame_indices(columns)
        n = self.x_t[0].shape[0]
        tiles = np.stack([self.x_t[j][i] for i in range(n) for j in idx])
        return save_grid(tiles, path, nrow=len(idx), scale=scale, through_links=through_links)

    def save_gif(self, path: Path, frames: int = 40, scale: int = 3, nrow: int = 4, ms: int = 80,
                 through_links: bool = False) -> Path:
        """The reverse process as an animation of x_t, holding the final frame for a second."""
        if not self.x_t:
            raise ValueError("nothing recorded: pass the recorder as on_step to sample()")
        idx = self.frame_indices(min(frames, len(self.x_t)))
        pics = [_to_image(mosaic(self.x_t[j], nrow), scale) for j in idx]
        durations = [ms] * (len(pics) - 1) + [1000]
        return _save_atomic(path, lambda tmp: pics[0].save(tmp, format="GIF", save_all=True,
                                                            append_images=pics[1:], duration=durations, loop=0),
                            through_links)
