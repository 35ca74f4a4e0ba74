r"""Classifier guidance by gradient steps on continuous latents: Diffusion-LM's control step (Li et al. 2022,
Sec. 5.1, Eq. 4), for the Gaussian text methods (``embedding``, ``bits``).

After the sampler proposes x_s, take ``STEPS`` gradient steps on it toward

    w * log p(c | x_s)  -  ||x_s - x_s^proposed||^2 / (2 (1 - abar_s))

— the classifier's pull, held near the denoiser's proposal by the fluency term (Diffusion-LM's
lambda log p(x_{t-1} | x_t), a Gaussian around the proposal; the variance 1 - abar_s of x_s given x_0 sets its
scale, since DDIM's step has none). Each step has size ``STEP_SIZE`` * (1 - abar_s), so the fluency term alone
would pull a fraction of the way back:

    y <- y + STEP_SIZE (1 - abar_s) [ w grad_y log p(c | y, s)  -  (y - x_s^proposed) / (1 - abar_s) ]

Known positions (prompt and infill tokens, whose x_s the sampler redraws from q(x_s | x_0) anyway) are left at
the proposal. The classifier is the run's noisy classifier of latents
(:class:`~textdiffusion.guidance.classifier.NoisyClassifier`), trained on x_t ~ q(x_t | x_0) with its time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from textdiffusion.diffusion.gaussian import NoiseSchedule
from textdiffusion.guidance.steer import Steer

STEPS = 3  # gradient steps per sampler step (Diffusion-LM takes 3)
STEP_SIZE = 0.5  # in units of the variance 1 - abar_s


def gradient_steer(classifier: Any, schedule: NoiseSchedule, label: int, w: float, n: int,
                   fixed: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``steer(x_s, s)`` for :func:`~textdiffusion.diffusion.gaussian.reverse_process`: the control step above on
    ``n`` rows of latents (n, L, d) toward ``label`` with scale ``w``; ``fixed`` (n, L) marks known positions.
    ``classifier.gradient(y, label, t)`` is d log p(label | y, t) / dy."""
    keep = fixed[..., None]

    def steer(x: torch.Tensor, s: float) -> torch.Tensor:
        var = 1.0 - float(schedule.alpha_bar(torch.tensor(s)))
        ts = torch.full((n,), s, device=x.device)
        proposal = y = x.float()
        for _ in range(STEPS):
            grad = w * classifier.gradient(y, label, ts) - (y - proposal) / var
            y = torch.where(keep, proposal, y + STEP_SIZE * var * grad)
        return y.to(x.dtype)

    return steer


class GradientSteer(Steer):
    """The steer a Gaussian text method's draw loop gets for a classifier request: it tilts no logits (the
    latents are steered, not a token distribution) and hands the reverse process :func:`gradient_steer` for the
    rows and known positions of the draw."""

    active = True

    def __init__(self, classifier: Any, schedule: NoiseSchedule, label: int, w: float):
        self.classifier, self.schedule, self.label, self.w = classifier, schedule, label, w

    def on_latents(self, n: int, fixed: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """The control step for ``n`` rows of latents whose known positions are ``fixed``."""
        return gradient_steer(self.classifier, self.schedule, self.label, self.w, n, fixed)
