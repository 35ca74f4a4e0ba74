"""A text sampler's denoising as an animated GIF: one picture per recorded step, from noise to the text.

The frames come from a :class:`~textdiffusion.viz.trajectory.TrajectoryRecorder` (the same record as
``sample --trajectory``), so any text run can be drawn, whatever its method or tokenizer. Each character sits
in a fixed cell of a grid, a line break too (drawn ↵, as in the terminal), so no character moves while the
text fills in and is coloured as the live page colours it: still-masked positions are grey blocks, the
characters the user gave (prompt, infill) blue, characters that changed since the previous picture on a
yellow ground. Plain Pillow, a core dependency; written through the atomic write like the rest of a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from textdiffusion.files import atomic_write
from textdiffusion.viz.terminal import NEWLINE_GLYPH
from textdiffusion.viz.trajectory import TrajectoryRecorder

BACKGROUND = (255, 255, 255)
INK = (29, 36, 51)
MASK = (200, 206, 216)  # a still-masked position: a grey block, as ░ in the terminal
FIXED = (47, 111, 222)  # a character the user gave
CHANGED = (255, 224, 138)  # the ground of a character revealed (or rewritten) since the previous picture
CAPTION = (93, 103, 120)
FONT_SIZE = 16
MONOSPACE_FONTS = ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf", "Menlo.ttc", "consola.ttf")


@dataclass(frozen=True)
class TextFrame:
    """One picture of the denoising: the text at a step, and which character positions are still masked."""

    step: int
    text: str
    masked: frozenset[int]


def frames_of(recorder: TrajectoryRecorder, sample: int = 0, max_frames: int = 48) -> list[TextFrame]:
    """Sample ``sample``'s frames, at most ``max_frames`` spread evenly from the first to the last (a
    1000-step sampler needs a recorder with ``keep_states=True`` to be thinned)."""
    return [TextFrame(int(f["step"]), f["texts"][sample], frozenset(f["masked"][sample]))
            for f in recorder.thinned(max_frames)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A monospace system font when there is one, else Pillow's own (the grid keeps it aligned anyway)."""
    for name in MONOSPACE_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def render(frames: Sequence[TextFrame], columns: int = 64, fixed: Iterable[int] = (),
           font_size: int = FONT_SIZE) -> list[Image.Image]:
    """The pictures, all of one size (the rows of the longest frame), ``columns`` characters to a row."""
    if not frames:
        return []
    font = _font(font_size)
    _, top, _, bottom = font.getbbox("Mg_|")
    cell_w = max(round(font.getlength("M")), 1)
    cell_h = bottom - min(top, 0) + 4
    pad, caption_h = 10, cell_h + 6
    final, last_step = frames[-1], frames[-1].step
    rows = max(-(-len(f.text) // columns) for f in frames) or 1
    widest_caption = font.getlength(f"step {last_step} / {last_step}  ·  {len(final.text)} still masked")
    width = pad * 2 + max(cell_w * columns, round(widest_caption))
    height = pad * 2 + caption_h + cell_h * rows
    keep = set(fixed)
    pictures: list[Image.Image] = []
    prev: TextFrame | None = None
    for frame in frames:
        img = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        caption = f"step {frame.step} / {last_step}"
        if frame.masked:
            caption += f"  ·  {len(frame.masked)} still masked"
        draw.text((pad, pad), caption, fill=CAPTION, font=font)
        comparable = prev is not None and len(prev.text) == len(frame.text)
        # position k sits in cell divmod(k, columns), a line break too (drawn ↵): no character moves when a
        # masked position turns out to be one
        for k, ch in enumerate(frame.text):
            row, col = divmod(k, columns)
            x, y = pad + col * cell_w, pad + caption_h + row * cell_h
            if k in frame.masked:
                draw.rectangle((x + 1, y + 2, x + cell_w - 2, y + cell_h - 2), fill=MASK)
                continue
            if comparable and prev is not None and prev.text[k] != ch:
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=CHANGED)
            colour = CAPTION if ch == "\n" else FIXED if k in keep else INK
            draw.text((x, y + 2), NEWLINE_GLYPH if ch == "\n" else ch, fill=colour, font=font)
        pictures.append(img)
        prev = frame
    return pictures


def save_denoising_gif(frames: Sequence[TextFrame], path: Path | str, columns: int = 64, fixed: Iterable[int] = (),
                       ms: int = 120, hold_ms: int = 2500) -> Path:
    """Write the frames as a looping GIF, ``ms`` per picture and the finished text held ``hold_ms``."""
    if not frames:
        raise ValueError("no frames to draw: record the sampler with a TrajectoryRecorder first")
    pictures = [p.convert("P", palette=Image.Palette.ADAPTIVE, colors=32) for p in render(frames, columns, fixed)]
    durations = [ms] * (len(pictures) - 1) + [hold_ms]
    path = Path(path)
    atomic_write(path, lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                                                    duration=durations, loop=0), through_links=True)
    return path
