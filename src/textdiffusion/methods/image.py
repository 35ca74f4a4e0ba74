r"""DDPM / DDIM on images: the intuitive baseline, on exactly the Gaussian process the text methods use.

Pixels p in {0..255} become x_0 = p / 127.5 - 1 in [-1, 1] and are noised with the shared forward process
of :mod:`textdiffusion.diffusion.gaussian`,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

and a U-Net (:mod:`textdiffusion.nn.unet`) learns to undo it. The training loss is the "simple" objective
of Ho et al. 2020 (Eq. 14), the MSE to the target (eps by default; x0 or v as for the text methods), with
t drawn uniformly from the T training steps. Sampling is the same :class:`GaussianSampler` loop the text
methods call: DDPM's ancestral step, or DDIM (Song et al. 2021) with eta and any number of steps <= T. The
skeleton (forward draw, bound, reverse process) is :class:`~textdiffusion.methods.gaussian_method.GaussianMethod`'s;
this file writes its hooks: pixels to x_0 and back, the clip, the decoder term, and the guided U-Net.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from textdiffusion.config import GUIDANCE, Config, ConfigError, UNetConfig, option
from textdiffusion.data.images import ImageBatch, ImageSpec, to_unit_range
from textdiffusion.diffusion.gaussian import split_prediction, training_target
from textdiffusion.methods.base import Method, NLLProgress, NLLResult, register
from textdiffusion.methods.gaussian_config import GaussianConfig
from textdiffusion.methods.gaussian_method import GaussianMethod
from textdiffusion.nn.unet import UNet

LEVELS = 256  # 8-bit pixels


@dataclass
class ImageConfig(GaussianConfig):
    """DDPM on MNIST (Ho et al. 2020) by default: linear betas, T = 1000, eps-prediction, ancestral
    sampling, x0_hat clipped to the pixel range (``clamp``)."""

    name: str = "image"
    noise_schedule: str = "linear"
    timesteps: int = 1000
    target: str = "eps"
    sampler: str = "ddpm"
    eval_time_samples: int = 4
    clamp: bool = option(True, None, "clip x0_hat to the pixel range [-1, 1] at every sampling step", sampling=True)
    # eps = eps_uncond + w (eps_cond - eps_uncond)
    guidance: float = option(1.0, GUIDANCE, "classifier-free guidance scale: 0 unconditional, 1 plain conditional, "
                                            "above 1 sharper", sampling=True)

    network = "unet"
    # the U-Net shapes are sized for each preset's machine (cpu: ~0.3 M parameters, minutes on a laptop;
    # base: a GPU run)
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        p: {"data": {"corpus": "mnist"}, "train": {"weight_decay": 0.0, **extra_train}, "unet": unet}
        for p, unet, extra_train in (
        ("tiny", {"base_channels": 8, "channel_mult": "1,2", "heads": 2, "groups": 4, "dropout": 0.0},
         {"batch_size": 16, "final_eval_windows": 32}),
        ("cpu", {"base_channels": 16, "channel_mult": "1,2,2", "heads": 4, "groups": 8, "dropout": 0.0},
         {"steps": 4000, "batch_size": 64, "lr": 2e-3, "min_lr": 2e-4, "warmup": 200, "eval_every": 500,
          "eval_windows": 256, "final_eval_windows": 2000, "ema_decay": 0.995}),
        ("base", {"base_channels": 64, "channel_mult": "1,2,2", "num_res_blocks": 2, "heads": 4, "groups": 32,
                  "dropout": 0.1},
         {"steps": 20000, "batch_size": 128, "lr": 2e-4, "min_lr": 2e-5, "warmup": 500, "eval_every": 2000,
          "eval_windows": 512, "final_eval_windows": 0, "ema_decay": 0.9995}),
    )}


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
class ImageDiffusion(GaussianMethod[ImageBatch], Method[ImageRequest, ImageResult]):
    """DDPM/DDIM on the Gaussian skeleton of :class:`GaussianMethod`: :meth:`encode` scales pixels to [-1, 1],
    ``clamp`` clips x0_hat to that range, and the decoder term is the exact posterior over the 256 levels; the
    denoiser is a U-Net with classifier-free guidance."""

    name = "image"
    config_class = ImageConfig
    samplers = ("ddpm", "ddim")
    likelihood_kind = "bound"
    unit = "dim"
    family = "image"
    command = "textdiffusion mnist"

    def __init__(self, cfg: ImageConfig, unet_cfg: UNetConfig, spec: ImageSpec):
        self.cfg, self.unet_cfg, self.spec = cfg, unet_cfg, spec
        cfg.check()
        if not 0.0 <= unet_cfg.label_dropout < 1.0:
            raise ConfigError(f"unet.label_dropout must be in [0, 1), got {unet_cfg.label_dropout}")
        self.setup_process()

    @classmethod
    def from_config(cls, cfg: Config, vocab: Any) -> ImageDiffusion:
        if not isinstance(vocab, ImageSpec):
            raise ConfigError("the image method trains on images: use `textdiffusion mnist train`")
        assert isinstance(cfg.method, ImageConfig)
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

    # ---- defaults ------------------------------------------------------------------------------------
    def default_steps(self, length: int = 0, sampler: str = "") -> int | None:
        """DDPM walks the whole training grid; DDIM skips through it in at most 250 steps."""
        T = self.cfg.timesteps
        sampler = sampler or self.default_sampler
        return self.cfg.sample_steps or (T if sampler == "ddpm" and T else min(T or 250, 250))

    def training_samples(self) -> ImageRequest:
        """What the trainer draws at each evaluation: two of each digit (or 20 unconditional), DDIM 50."""
        k = self.spec.num_classes
        return ImageRequest(n=2 * k, labels=list(range(k)) * 2 if self.conditional else None, sampler="ddim",
                            steps=min(50, self.cfg.timesteps or 50))

    # ---- pixels <-> x_0 ------------------------------------------------------------------------------
    def encode(self, model: UNet, data: ImageBatch) -> torch.Tensor:
        """uint8 pixels p -> x_0 = p / 127.5 - 1 in [-1, 1], (B, C, H, W)."""
        return to_unit_range(data.images)

    def decode(self, model: UNet, x0: torch.Tensor) -> torch.Tensor:
        """x_0 -> images in the pixel range [-1, 1]."""
        return x0.clamp(-1.0, 1.0)

    def project_x0(self, model: UNet, x0_hat: torch.Tensor) -> torch.Tensor:
        """Pixels live in [-1, 1]: clipping x0_hat (Ho et al. 2020's sampler) stops drift at high noise."""
        return x0_hat.clamp(-1.0, 1.0)

    # ---- training ----------------------------------------------------------------------------------
    def _train_labels(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        if not self.conditional:
            return None
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.unet_cfg.label_dropout
        return torch.where(drop, torch.full_like(labels, self.spec.num_classes), labels)

    def loss(self, model: UNet, x: ImageBatch, generator: torch.Generator) -> torch.Tensor:
        x0 = self.encode(model, x)
        t, abar, eps, x_t = self.forward_draw(x0, generator)
        out = model(x_t, t, self._train_labels(x.labels, generator))
        return (out.float() - training_target(x0, eps, abar, self.cfg.target)).pow(2).mean()

    # ---- the likelihood bound ----------------------------------------------------------------------
    def bound_x0(self, model: UNet, data: ImageBatch) -> torch.Tensor:
        """The bound sees each image as one vector of pixels, (B, C * H * W)."""
        return self.encode(model, data).flatten(1)

    def decoder_nats(self, model: UNet, data: ImageBatch, z: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """-log p(pixels | z_{t_min}) per image: each pixel's exact posterior over the 256 levels,
        softmax_k(-(z - sqrt(abar) v_k)^2 / 2(1 - abar))."""
        x0 = self.bound_x0(model, data)
        levels = torch.linspace(-1.0, 1.0, LEVELS, device=z.device)
        logits = -(z.unsqueeze(-1) - abar.sqrt() * levels).pow(2) / (2.0 * (1.0 - abar))
        target = ((x0 + 1.0) * 127.5).round().long()
        logp = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return -logp.flatten(1).sum(1)

    @torch.no_grad()
    def nll(self, model: UNet, windows: ImageBatch, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        gen = torch.Generator(device=windows.images.device).manual_seed(self.cfg.eval_seed)
        mse: list[float] = []

        def predict(b: ImageBatch, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            """x0_hat for the bound's flat x_t, recording the training loss at the bound's draws."""
            x0 = self.encode(model, b)
            x_t, eps, abar = x_t.view_as(x0), eps.view_as(x0), self.schedule.alpha_bar(t)
            out = model(x_t, t, b.labels if self.conditional else None).float()
            mse.append(float((out - training_target(x0, eps, abar, self.cfg.target)).pow(2).mean()))
            return self.split(out, x_t, abar)[0].flatten(1)

        bound = self.vdm_bound(model, windows.split(batch_size), gen, predict, progress)
        n = len(windows)
        dims = n * self.spec.channels * self.spec.size**2
        nats, parts = bound.result(dims)
        details = {
            "reconstruction_nats_per_dim": parts["reconstruction"], "prior_nats_per_dim": parts["prior"],
            "diffusion_nats_per_dim": parts["diffusion"], "stderr_nats": parts["stderr_nats"],
            "time_samples_per_image": bound.samples, "denoising_mse": sum(mse) / len(mse),
            "seed": self.cfg.eval_seed, "schedule": self.schedule.name, "conditional_on_label": self.conditional,
            "note": "VDM variational bound on the 8-bit pixels (an upper bound on -log P, per dimension"
                    + (", conditioned on the true label" if self.conditional else "")
                    + "); denoising_mse is the training loss at uniform t, not a likelihood",
        }
        return NLLResult(nats_per_unit=nats, kind="bound", windows=n, units=dims, unit="dim", details=details)

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

    @torch.no_grad()
    def sample(self, model: UNet, req: ImageRequest, generator: torch.Generator,
               on_step: ImageStepCallback | None = None) -> ImageResult:
        sampler = self.check_sampler(req.sampler)
        if req.n < 1:
            raise ConfigError("the number of samples must be >= 1")
        steps = req.steps or self.default_steps(sampler=sampler) or 1
        eta = self.cfg.eta if req.eta is None else req.eta
        gs = self.make_sampler(sampler, steps, eta)
        w = self.cfg.guidance if req.guidance is None else req.guidance
        if not GUIDANCE.allows(w):  # nan would draw images with exit 0
            raise ConfigError(f"the guidance scale must be {GUIDANCE.describe()}, got {w}")
        dev = next(model.parameters()).device
        labels = self._labels(req, dev)
        guided = labels is not None and w != 1.0
        null = torch.full((req.n,), self.spec.num_classes, dtype=torch.long, device=dev) if guided else None

        def denoise(x: torch.Tensor, tt: torch.Tensor, _prev: torch.Tensor | None):
            abar = self.schedule.alpha_bar(tt)
            if not guided:
                return self.split(model(x, tt, labels), x, abar)
            # one batched forward for both branches: the conditional and the "no label" prediction
            out = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
            _, eps_c = self.split(out[: req.n], x, abar)
            _, eps_u = self.split(out[req.n :], x, abar)
            eps_hat = eps_u + w * (eps_c - eps_u)
            return split_prediction(eps_hat, x, abar, "eps")[0], eps_hat

        def report(step: int, x: torch.Tensor, x0_hat: torch.Tensor, s: float) -> None:
            assert on_step is not None
            on_step(step, x, x0_hat, {"t": s, "nfe": step})

        x = self.prior_noise((req.n, self.spec.channels, self.spec.size, self.spec.size), generator, dev)
        if on_step:
            on_step(0, x, torch.zeros_like(x), {"t": 1.0, "nfe": 0})
        x0_hat = self.reverse(model, gs, x, denoise, generator, on_step=report if on_step else None)
        info = {"sampler": sampler, "steps": steps, "eta": 1.0 if sampler == "ddpm" else eta, "clip": self.cfg.clamp,
                "guidance": w if labels is not None else None}
        return ImageResult(self.decode(model, x0_hat), labels, float(gs.steps * (2 if guided else 1)), info)
