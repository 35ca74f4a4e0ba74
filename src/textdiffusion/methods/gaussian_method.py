r"""What every method on the Gaussian process shares, written once: text embeddings, analog bits, image pixels,
and any future latent space.

A Gaussian method is four maps around the shared process of :mod:`textdiffusion.diffusion.gaussian`:

    encode:   data -> x_0                      (look up an embedding, write bits, scale pixels, run an encoder)
    denoise:  (x_t, t) -> (x0_hat, eps_hat)    (the network, its output read through the target by :meth:`split`)
    project:  x0_hat -> x0_hat                 (snap to the nearest data point, clip to the pixel range)
    decode:   x_0 -> data                      (round to tokens, clip to pixels)

plus the decoder term of the likelihood, -log p(data | z_{t_min}). The denoiser is the one map handed over as
a function (to :meth:`GaussianMethod.reverse` and :meth:`GaussianMethod.vdm_bound`), because what it is
conditioned on is the family's own: a previous estimate (self-conditioning) for text, a class and a guidance
scale for images. Everything else is this module's:

* the forward draw for training: t uniform (stratified), then eps, then x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps;
* the VDM bound (Kingma et al. 2021, Eqs. 11-17) on -log p(data):

      -log p(data) <= E[-log p(data | z_{t_min})]                    reconstruction (the method's decoder)
                    + KL(q(z_1 | x_0) || N(0, I))                      prior
                    + 1/2 E_t[-SNR'(t) ||x_0 - x0_hat(z_t, t)||^2]     diffusion (continuous time; a sum for T steps)

  fed batch by batch into :class:`~textdiffusion.diffusion.gaussian.VDMBound`;
* the reverse process from x_1 ~ N(0, I) through :func:`~textdiffusion.diffusion.gaussian.reverse_process`, with
  the method's projection when ``clamp`` is on, and imputation of known parts of x_0 (prompt and infill tokens):
  their x0_hat is the known x_0 and their x_s a fresh draw from q(x_s | x_0) (Song et al. 2021).

Why a mixin: the text methods are :class:`~textdiffusion.methods.base.TextMethod`\ s (a tokenizer, token windows,
``SampleRequest``) and the image method a plain ``Method`` (an image spec, ``ImageBatch``, ``ImageRequest``). The
Gaussian machinery is orthogonal to that split, so it sits beside it: ``class EmbeddingDiffusion(GaussianMethod,
TextMethod)`` and ``class ImageDiffusion(GaussianMethod, Method)``. It holds no state of its own beyond the
schedule, and asks its host only for ``cfg`` (a :class:`~textdiffusion.diffusion.gaussian.GaussianConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import torch

from textdiffusion.config import ConfigError
from textdiffusion.diffusion.gaussian import (
    Denoiser,
    GaussianSampler,
    LoopCallback,
    NoiseSchedule,
    VDMBound,
    make_noise_schedule,
    q_sample,
    reverse_process,
    split_prediction,
    training_times,
)
from textdiffusion.methods.base import NLLProgress, report_batches

Data = TypeVar("Data")  # what the method's batches are: token ids (B, L), or an ImageBatch
# (batch, x_t, t, eps) -> x0_hat: the bound's view of the denoiser (eps for a method that reports its loss)
BoundPrediction = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianMethod(Generic[Data]):
    """The Gaussian skeleton, mixed into a text or an image method (see the module docstring). A subclass
    writes :meth:`encode`, :meth:`decode` and :meth:`decoder_nats`, and :meth:`project_x0` when snapping to
    ``encode(decode(x0_hat))`` is not what ``clamp`` means for it."""

    cfg: Any  # a GaussianConfig
    schedule: NoiseSchedule
    t_min: float  # the first training time: where the reconstruction term sits

    def setup_process(self) -> None:
        """Check the config and build the noise schedule (called from the method's ``__init__``)."""
        self.cfg.check()
        self.schedule = make_noise_schedule(self.cfg.noise_schedule)
        self.t_min = self.cfg.t_min

    @property
    def max_steps(self) -> int | None:
        return self.cfg.timesteps or None  # the sampler's grid is the training grid

    # ---- the hooks a method writes ---------------------------------------------------------------------
    def encode(self, model: Any, data: Data) -> torch.Tensor:
        """Clean data -> x_0, the continuous point the process starts from."""
        raise NotImplementedError

    def decode(self, model: Any, x0: torch.Tensor) -> Any:
        """x_0 (or an estimate of it) -> data: the sampler's last step."""
        raise NotImplementedError

    def decoder_nats(self, model: Any, data: Data, z: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """-log p(data | z) per example, for z ~ q(z | x_0) at signal level ``abar``: the reconstruction term."""
        raise NotImplementedError

    def project_x0(self, model: Any, x0_hat: torch.Tensor) -> torch.Tensor:
        """``clamp``'s projection of x0_hat onto what data looks like: by default the x_0 of its decoding (the
        nearest embedding, Li et al. 2022, Sec. 4.2)."""
        return self.encode(model, self.decode(model, x0_hat)).float()

    # ---- the forward process --------------------------------------------------------------------------
    def training_times(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return training_times(n, self.cfg.timesteps, self.t_min, generator, device)

    def first_abar(self, device: torch.device) -> torch.Tensor:
        """abar at the first training time t_min: the signal left in z_0 of the reconstruction term."""
        return self.schedule.alpha_bar(torch.tensor(self.t_min, device=device))

    def forward_draw(self, x0: torch.Tensor, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, abar(t), eps, x_t) for a training step: t first, then eps, always in that order."""
        t = self.training_times(x0.shape[0], generator, x0.device)
        abar = self.schedule.alpha_bar(t)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return t, abar, eps, q_sample(x0, abar, eps)

    def split(self, out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output, read through ``cfg.target`` as (x0_hat, eps_hat), in float."""
        return split_prediction(out.float(), x_t.float(), abar, self.cfg.target)

    # ---- the likelihood bound -------------------------------------------------------------------------
    def reconstruction_nats(self, model: Any, data: Data, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """-log p(data | z_0) per example, z_0 ~ q(z_0 | x_0) drawn at the first training time."""
        a0 = self.first_abar(x0.device)
        z0 = q_sample(x0, a0, torch.randn(x0.shape, generator=generator, device=x0.device))
        return self.decoder_nats(model, data, z0, a0)

    def bound_x0(self, model: Any, data: Data) -> torch.Tensor:
        """x_0 as the bound sees it, (B, ...): the KL and the squared errors are summed over all but the batch."""
        return self.encode(model, data).float()

    @torch.no_grad()
    def vdm_bound(self, model: Any, batches: Sequence[Data], generator: torch.Generator,
                  predict: BoundPrediction, progress: NLLProgress | None = None,
                  after: Callable[[Data], None] | None = None) -> VDMBound:
        """The VDM bound over ``batches``: each batch's x_0, its reconstruction, prior and diffusion terms, with
        ``predict(batch, x_t, t, eps)`` as the denoiser. ``after(batch)`` runs once a batch is scored, drawing
        from the same ``generator`` (a method's diagnostics), so every number depends on the batches alone."""
        bound = VDMBound(self.schedule, self.cfg.timesteps, self.t_min, self.cfg.eval_time_samples)
        for batch in report_batches(batches, progress):
            bound.add(self.bound_x0(model, batch),
                      lambda x0, batch=batch: self.reconstruction_nats(model, batch, x0, generator),
                      lambda x_t, t, eps, batch=batch: predict(batch, x_t, t, eps), generator)
            if after is not None:
                after(batch)
        return bound

    # ---- the reverse process ------------------------------------------------------------------------
    def make_sampler(self, kind: str, steps: int, eta: float | None = None) -> GaussianSampler:
        """DDPM or DDIM on the training grid; ``eta`` None is the run's ``method.eta``."""
        try:
            return GaussianSampler(self.schedule, kind, steps, self.cfg.timesteps,
                                   self.cfg.eta if eta is None else eta, self.cfg.time_difference)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @staticmethod
    def prior_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """x_1 ~ N(0, I): where the reverse process starts."""
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)

    def reverse(self, model: Any, sampler: GaussianSampler, x: torch.Tensor, denoise: Denoiser,
                generator: torch.Generator, known: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                on_step: LoopCallback | None = None,
                steer: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
        """The reverse process from ``x`` = x_1 to the last x0_hat. With ``cfg.clamp`` every x0_hat is
        :meth:`project_x0`-ed; where ``keep`` (a bool mask broadcasting against x) is set, x0_hat is the
        ``known`` x_0 and x_s is redrawn from q(x_s | x_0) after each step (imputation). ``steer`` moves each x_s
        (classifier guidance) before that."""
        clamping = bool(self.cfg.clamp)
        imputing = keep is not None and known is not None and bool(keep.any())

        def project(x0_hat: torch.Tensor) -> torch.Tensor:
            if clamping:
                x0_hat = self.project_x0(model, x0_hat)
            if imputing:
                x0_hat = torch.where(keep, known.float(), x0_hat)
            return x0_hat

        def renoise(x_s: torch.Tensor, s: float) -> torch.Tensor:
            abar_s = self.schedule.alpha_bar(torch.tensor(s, device=x_s.device))
            noise = torch.randn(x_s.shape, generator=generator, device=x_s.device, dtype=x_s.dtype)
            return torch.where(keep, q_sample(known, abar_s, noise), x_s)

        return reverse_process(sampler, x, denoise, generator, project if clamping or imputing else None,
                               renoise if imputing else None, on_step, steer)
