"""The Python API: load a run (or train one) and generate, infill, stream, score and evaluate in a line each.

    import textdiffusion

    model = textdiffusion.load("runs/masked")                 # a TextModel (or an ImageModel for an image run)
    texts = model.generate(prompt="ROMEO:", n=4, seed=0)      # list[str]
    for frame in model.stream(prompt="ROMEO:"):               # the denoising, one frame per sampler step
        print(frame.step, frame.text)

This is the one place where a run is opened and sampled for a user: the command line (``sample``, ``eval``),
the live page and ``compare`` go through it, so a seed gives the same text from Python as from
``textdiffusion sample``. It is the top of the library (request limits: :mod:`textdiffusion.limits`; image
scores: :mod:`textdiffusion.image_evaluation`) and imports no app; the apps stand on it.
``docs/python-api.md`` is its guide.

The package follows the requests it answers:

- :mod:`.loading`: :func:`load` a run, :func:`train` one;
- :mod:`.options`: :class:`TextOptions`, the options of one text request (how many, how long, which sampler,
  how each token is drawn, the label and its guidance), given as keywords or as one object;
- :mod:`.text`: :class:`TextModel` (generate, infill, sample, plan, stream, score, evaluate), :class:`TextStream`;
- :mod:`.image`: :class:`ImageModel` (generate, stream, evaluate), :class:`ImageStream`;
- :mod:`.streaming`: what both streams share: a sampler that reports through a callback, read as an iterator;
- :mod:`.results`: what the calls return (:class:`TextSamples`, :class:`Frame`, :class:`ImageSamples`, ...).

Every sampling runs under ``torch.no_grad()`` and in the precision the run was trained in
(:func:`textdiffusion.precision.autocast`: bf16 on a GPU for a bf16 run, fp32 elsewhere). User errors are the
package's one-line :class:`~textdiffusion.config.ConfigError`, :class:`~textdiffusion.errors.DataError` and
:class:`~textdiffusion.errors.CheckpointError`.
"""

from __future__ import annotations

from textdiffusion.api.image import ImageModel, ImageStream
from textdiffusion.api.loading import load, train
from textdiffusion.api.options import TextOptions
from textdiffusion.api.results import Frame, ImageFrame, ImageSamples, SamplingPlan, Score, TextSamples
from textdiffusion.api.text import TextModel, TextStream

__all__ = ["Frame", "ImageFrame", "ImageModel", "ImageSamples", "ImageStream", "SamplingPlan", "Score",
           "TextModel", "TextOptions", "TextSamples", "TextStream", "load", "train"]
