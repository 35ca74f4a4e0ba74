r"""DDPM / DDIM on images: the intuitive baseline, on exactly the Gaussian process the text methods use.

Pixels p in {0..255} become x_0 = p / 127.5 - 1 in [-1, 1] and are noised with the shared forward process
of :mod:`textdiffusion.diffusion.gaussian`,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

and a U-Net (:mod:`textdiffusion.nn.unet`) learns to undo it. The training loss is the "simple" objective
of Ho et al. 2020 (Eq. 14), the MSE to the target (eps by default; x0 or v as for the text methods), with
t drawn uniformly from the T training steps. Sampling is the same :class:`GaussianSampler` loop the text
methods call: DDPM's ancestral step, or DDIM (Song et al. 2021) with eta and any number of steps <= T.

Class conditioning and classifier-free guidance (Ho & Salimans 2022): during training each label is
replaced by "no label" with probability ``unet.label_dropout``, so one network learns both p(x | c) and
p(x). At sampling, with guidance scale w,

    eps_guided = eps(x_t, t, none) + w (eps(x_t, t, c) - eps(x_t, t, none)),

so w = 1 is the plain conditional model, w = 0 the unconditional one, and w > 1 trades diversity for
fidelity to the class. (The guidance is applied to the eps implied by whatever the network predicts.)

Likelihood: :meth:`ImageDiffusion.nll` reports VDM's variational bound (Kingma et al. 2021) in bits per
dimension on the 8-bit pixels, the number image papers quote:

    -log P(pixels) <= E[-log p(pixels | z_{t_min})]   discrete decoder over the 256 levels
                    + KL(q(z_1 | x) || N(0, I))         prior
                    + diffusion term                     (the estimator shared with the text methods)

The decoder is the exact posterior over the 256 pixel levels of a Gaussian centred on each level,
softmax_k(-(z - sqrt(abar) v_k)^2 / 2(1 - abar)): the pixel analogue of the embedding method's rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from textdiffusion.config import Config, ConfigError, MethodConfig, UNetConfig
from textdiffusion.diffusion.gaussian import (
    SCHEDULES,
    TARGETS,
    GaussianSampler,
    diffusion_term_weights,
    eps_from_x0,
    gaussian_prior_kl,
    make_noise_schedule,
    q_sample,
    split_prediction,
    training_target,
    training_times,
)
from textdiffusion.diffusion.masking import stratified
from textdiffusion.methods.base import Method, NLLResult, register
from textdiffusion.nn.unet import UNet

LEVELS = 256  # 8-bit pixels


@dataclass(frozen=True)
class ImageSpec:
    """What the network needs to know about the images; saved as ``image.json`` in an image run (the
    image counterpart of a text run's ``tokenizer.json``)."""

    size: int
    channels: int = 1
    num_classes: int = 10

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "channels": self.channels, "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        return cls(int(d["size"]), int(d.get("channels", 1)), int(d.get("num_classes", 10)))


@dataclass
class ImageBatch:
    """uint8 images (B, H, W) with their int64 labels (B,); ``to`` moves both (the trainer's only need)."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=non_blocking),
                          self.labels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, size: int) -> list[ImageBatch]:
        return [ImageBatch(x, y) for x, y in zip(self.images.split(size), self.labels.split(size), strict=True)]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [-1, 1]."""
    return images.float().unsqueeze(1) / 127.5 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 1, H, W) in [-1, 1] -> uint8 (B, H, W) (clipped, rounded to the nearest level)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).squeeze(1)


@dataclass
class ImageRequest:
    """What to generate. ``labels``: one digit per sample (class-conditional models), or None for
    unconditional samples. ``guidance``: None = the run's ``method.guidance``."""

    n: int = 16
    labels: list[int] | None = None
    sampler: str = ""
    steps: int = 0
    eta: float | None = None
    guidance: float | None = None


@dataclass
class ImageResult:
    images: torch.Tensor  # float (n, C, H, W) in [-1, 1]
    labels: torch.Tensor | None  # requested labels (n,) or None
    nfe: float  # network evaluations per sample (a guided step costs two)
    info: dict[str, Any] = field(default_factory=dict)


# on_step(step, x_t, x0_hat, info) after every sampler step
ImageStepCallback = Callable[[int, torch.Tensor, torch.Tensor, dict[str, Any]], None]


@register
class ImageDiffusion(Method):
    name = "image"
    attention = "none"
    samplers = ("ddpm", "ddim")
    likelihood_kind = "bound"
    unit = "dim"

    def __init__(self, cfg: MethodConfig, unet_cfg: UNetConfig, spec: ImageSpec):
        self.cfg, self.unet_cfg, self.spec = cfg, unet_cfg, spec
        self.tok = None
        if cfg.noise_schedule not in SCHEDULES:
            raise ConfigError(f"unknown method.noise_schedule {cfg.noise_schedule!r}; choose {', '.join(SCHEDULES)}")
        if cfg.target not in TARGETS:
            raise ConfigError(f"method.target={cfg.target!r} is not available for images; choose "
                              f"{', '.join(TARGETS)}")
        if cfg.timesteps < 0:
            raise ConfigError("method.timesteps must be >= 0 (0 = continuous time)")
        if not 0.0 <= unet_cfg.label_dropout < 1.0:
            raise ConfigError(f"unet.label_dropout must be in [0, 1), got {unet_cfg.label_dropout}")
        self.schedule = make_noise_schedule(cfg.noise_schedule)
        self.t_min = 1.0 / cfg.timesteps if cfg.timesteps else 1e-3

    @classmethod
    def from_config(cls, cfg: Config, vocab: Any) -> ImageDiffusion:
        if not isinstance(vocab, ImageSpec):
            raise ConfigError("the image method trains on images: use `textdiffusion mnist train`")
        return cls(cfg.method, cfg.unet, vocab)

    @property
    def conditional(self) -> bool:
        return self.unet_cfg.class_conditional

    @property
    def window(self) -> int:
        return self.spec.size

    def build_model(self) -> UNet:
        return UNet(self.unet_cfg, self.spec.size, self.spec.channels,
                    self.spec.num_classes if self.conditional else 0)

    # ---- training ----------------------------------------------------------------------------------
    def _sample_t(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return training_times(n, self.cfg.timesteps, self.t_min, generator, device)

    def _train_labels(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        if not self.conditional:
            return None
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.unet_cfg.label_dropout
        return torch.where(drop, torch.full_like(labels, self.spec.num_classes), labels)

    def loss(self, model: UNet, x: ImageBatch, generator: torch.Generator) -> torch.Tensor:
        x0 = to_unit_range(x.images)
        n = x0.shape[0]
        t = self._sample_t(n, generator, x0.device)
        abar = self.schedule.alpha_bar(t)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        out = model(q_sample(x0, abar, eps), t, self._train_labels(x.labels, generator))
        return (out.float() - training_target(x0, eps, abar, self.cfg.target)).pow(2).mean()

    # ---- the likelihood bound ----------------------------------------------------------------------
    def _reconstruction_nats(self, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """-log p(pixels | z_{t_min}) per image: each pixel's exact posterior over the 256 levels."""
        a0 = self.schedule.alpha_bar(torch.tensor(self.t_min, device=x0.device))
        z = q_sample(x0, a0, torch.randn(x0.shape, generator=gen, device=x0.device))
        levels = torch.linspace(-1.0, 1.0, LEVELS, device=x0.device)
        logits = -(z.unsqueeze(-1) - a0.sqrt() * levels).pow(2) / (2.0 * (1.0 - a0))
        target = ((x0 + 1.0) * 127.5).round().long()
        logp = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return -logp.flatten(1).sum(1)

    @torch.no_grad()
    def nll(self, model: UNet, windows: ImageBatch, batch_size: int = 64) -> NLLResult:
        K = max(1, self.cfg.eval_time_samples)
        dev = windows.images.device
        gen = torch.Generator(device=dev).manual_seed(self.cfg.eval_seed)
        abar_one = self.schedule.alpha_bar(torch.tensor(1.0, device=dev))
        recon, prior, diff, mse = [], [], [], []
        for b in windows.split(batch_size):
            x0 = to_unit_range(b.images)
            labels = b.labels if self.conditional else None
            recon.append(self._reconstruction_nats(x0, gen))
            prior.append(gaussian_prior_kl(x0.flatten(1), abar_one))
            u = stratified(torch.rand(x0.shape[0], 1, generator=gen, device=dev), K)
            terms = []
            for k in range(K):
                t, weight = diffusion_term_weights(self.schedule, u[:, k], self.cfg.timesteps, self.t_min)
                eps = torch.randn(x0.shape, generator=gen, device=dev)
                abar = self.schedule.alpha_bar(t)
                out = model(q_sample(x0, abar, eps), t, labels).float()
                x0_hat, _ = split_prediction(out, q_sample(x0, abar, eps), abar, self.cfg.target)
                terms.append(weight * (x0 - x0_hat).pow(2).flatten(1).sum(1))
                mse.append(float((out - training_target(x0, eps, abar, self.cfg.target)).pow(2).mean()))
            diff.append(torch.stack(terms, 1).mean(1))
        n = len(windows)
        dims = n * self.spec.channels * self.spec.size**2
        per_image = (torch.cat(recon) + torch.cat(prior) + torch.cat(diff)).double().cpu()
        rec, pri, dif = (torch.cat(v).double().sum().item() for v in (recon, prior, diff))
        stderr = float(per_image.std() / math.sqrt(n)) / (dims / n) if n > 1 else float("nan")
        details = {
            "reconstruction_nats_per_dim": rec / dims, "prior_nats_per_dim": pri / dims,
            "diffusion_nats_per_dim": dif / dims, "stderr_nats": stderr, "time_samples_per_image": K,
            "denoising_mse": sum(mse) / len(mse), "seed": self.cfg.eval_seed, "schedule": self.schedule.name,
            "conditional_on_label": self.conditional,
            "note": "VDM variational bound on the 8-bit pixels (an upper bound on -log P, per dimension"
                    + (", conditioned on the true label" if self.conditional else "")
                    + "); denoising_mse is the training loss at uniform t, not a likelihood",
        }
        return NLLResult(nats_per_char=(rec + pri + dif) / dims, kind="bound", windows=n, chars=dims,
                         details=details, unit="dim")

    # ---- sampling ------------------------------------------------------------------------------------
    def _labels(self, req: ImageRequest, device: torch.device) -> torch.Tensor | None:
        if req.labels is None:
            return None
        if not self.conditional:
            raise ConfigError("this run was trained without labels (unet.class_conditional=false); drop --digit")
        if len(req.labels) != req.n:
            raise ConfigError(f"{len(req.labels)} labels for {req.n} samples; give one digit per sample")
        bad = [v for v in req.labels if not 0 <= v < self.spec.num_classes]
        if bad:
            raise ConfigError(f"digit {bad[0]} is not a class of this model; use 0..{self.spec.num_classes - 1}")
        return torch.tensor(req.labels, dtype=torch.long, device=device)

    def make_sampler(self, kind: str, steps: int, eta: float) -> GaussianSampler:
        try:
            return GaussianSampler(self.schedule, kind, steps, self.cfg.timesteps, eta)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @torch.no_grad()
    def sample(self, model: UNet, req: ImageRequest, generator: torch.Generator,  # type: ignore[override]
               on_step: ImageStepCallback | None = None) -> ImageResult:
        sampler = req.sampler or self.cfg.sampler or "ddpm"
        if sampler not in self.samplers:
            raise ConfigError(f"the image method has no sampler {sampler!r}; choose one of {', '.join(self.samplers)}")
        if req.n < 1:
            raise ConfigError("the number of samples must be >= 1")
        T = self.cfg.timesteps
        steps = req.steps or self.cfg.sample_steps or (T if sampler == "ddpm" and T else min(T or 250, 250))
        eta = self.cfg.eta if req.eta is None else req.eta
        gs = self.make_sampler(sampler, steps, eta)
        w = self.cfg.guidance if req.guidance is None else req.guidance
        if w < 0:
            raise ConfigError(f"the guidance scale must be >= 0, got {w}")
        dev = next(model.parameters()).device
        labels = self._labels(req, dev)
        guided = labels is not None and w != 1.0
        null = torch.full((req.n,), self.spec.num_classes, dtype=torch.long, device=dev) if guided else None
        shape = (req.n, self.spec.channels, self.spec.size, self.spec.size)
        x = torch.randn(shape, generator=generator, device=dev)
        x0_hat = x
        if on_step:
            on_step(0, x, torch.zeros_like(x), {"t": 1.0, "nfe": 0})
        times = gs.times()
        for i, (t, s) in enumerate(times):
            tt = torch.full((req.n,), t, device=dev)
            abar = self.schedule.alpha_bar(tt)
            if guided:
                # one batched forward for both branches: the conditional and the "no label" prediction
                out = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
                _, eps_c = split_prediction(out[: req.n], x, abar, self.cfg.target)
                _, eps_u = split_prediction(out[req.n :], x, abar, self.cfg.target)
                eps_hat = eps_u + w * (eps_c - eps_u)
                x0_hat, _ = split_prediction(eps_hat, x, abar, "eps")
            else:
                x0_hat, eps_hat = split_prediction(model(x, tt, labels).float(), x, abar, self.cfg.target)
            if self.cfg.clamp:
                # pixels live in [-1, 1]: clipping x0_hat (Ho et al. 2020's sampler) stops drift at high noise
                x0_hat = x0_hat.clamp(-1.0, 1.0)
                eps_hat = eps_from_x0(x, x0_hat, abar)
            x = gs.step(x, x0_hat, eps_hat, t, s, generator)
            if on_step:
                on_step(i + 1, x, x0_hat, {"t": s, "nfe": i + 1})
        nfe = len(times) * (2 if guided else 1)
        info = {"sampler": sampler, "steps": steps, "eta": 1.0 if sampler == "ddpm" else eta, "clip": self.cfg.clamp,
                "guidance": w if labels is not None else None}
        return ImageResult(x0_hat.clamp(-1.0, 1.0), labels, float(nfe), info)
