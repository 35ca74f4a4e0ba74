"""The built-in methods and their samplers, as plain data: what ``textdiffusion --help`` lists.

The registry (:mod:`textdiffusion.methods`) is the truth, but importing it imports torch, which costs the
command line over a second before it can print its help. This table lets the help answer at once;
``tests/test_layout.py`` checks that it equals the registry, so it cannot drift. A method added elsewhere
(one file and ``@register``) works everywhere without an entry here: only the help text would not list it.
"""

from __future__ import annotations

# method -> its samplers (the first is the default), for the text methods
TEXT_METHODS: dict[str, tuple[str, ...]] = {
    "ar": ("ancestral",),
    "bits": ("ddim", "ddpm"),
    "block": ("ancestral", "cached", "confidence", "topk", "left_to_right", "remdm"),
    "embedding": ("ddim", "ddpm", "guided"),
    "latent": ("ddim", "ddpm"),
    "masked": ("ancestral", "cached", "confidence", "topk", "left_to_right", "remdm"),
    "uniform": ("ancestral", "confidence", "topk", "redraw"),
}
# method -> its samplers, for the image methods (``textdiffusion mnist``)
IMAGE_METHODS: dict[str, tuple[str, ...]] = {
    "image": ("ddpm", "ddim"),
}

# how a sampling steers toward a label: classifier-free (a labelled run) or a noisy classifier (any run)
GUIDANCE_RULES: tuple[str, ...] = ("free", "classifier")


def method_names() -> list[str]:
    return sorted({**TEXT_METHODS, **IMAGE_METHODS})
