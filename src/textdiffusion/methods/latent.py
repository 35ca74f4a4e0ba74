r"""Latent diffusion on text: the image recipe applied to characters (PLANNER, LD4LG, Cosmos).

Learn an autoencoder that maps a window of L characters to k = L / c dense latent vectors of width d
(:class:`~textdiffusion.nn.text_autoencoder.TextAutoencoder`), diffuse in that space with the shared Gaussian
process, then decode back to characters. The Gaussian skeleton (forward draw, VDM bound, DDPM/DDIM reverse
process with imputation) is :class:`~textdiffusion.methods.gaussian_method.GaussianMethod`'s; this file writes
its hooks: :meth:`LatentDiffusion.encode` is the encoder, :meth:`LatentDiffusion.decode` the decoder.

Two phases of one run (``method.autoencoder_steps``; the trainer tells the method each step through
:meth:`~textdiffusion.methods.base.Method.at_training_step`, so a resumed run is in the right phase):

    steps [0, A):  the autoencoder alone      -log p(x | z),  z = mu(x) + sigma eps    (reconstruction with noise)
    steps [A, N):  the denoiser alone         ||f(z_t, t) - v||^2 on the frozen encoder's draws z

The stochastic encoder q(z | x) = N(mu(x), sigma^2 I), mu normalised to unit variance per latent vector and
sigma = ``method.latent_noise`` fixed, keeps the latent's scale fixed for the diffusion and its space smooth.
The diffusion learns the density of the draws z, which is what the likelihood needs: the LSGM bound
(:mod:`textdiffusion.diffusion.latent_bound`)

    -log p(x) <= E_q[-log p(x | z)] + E_q[-log p(z)] - H(q(z | x)),

the middle term bounded by VDM. ``docs/latent-diffusion.md`` has the measurements and the table of where each
line of the maths lives.

Locality: latent j is encoded from its own c characters only, so a chunk whose characters are all known (from
a prompt or an infill template) has a known latent, imputed during the reverse process (Song et al. 2021).
A chunk only partly known cannot be: its known characters are kept, the rest decoded from a latent drawn
without them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from textdiffusion.config import LOSS_WEIGHT, Config, ConfigError, ModelConfig, Range, option
from textdiffusion.diffusion.gaussian import training_target
from textdiffusion.diffusion.latent_bound import LSGMBound
from textdiffusion.diffusion.tokens import cross_entropy_per_token
from textdiffusion.methods.base import (
    DrawPlan,
    NLLProgress,
    NLLResult,
    SampleRequest,
    StepCallback,
    TextMethod,
    TextMethodConfig,
    register,
    report_batches,
)
from textdiffusion.methods.gaussian_config import GaussianConfig
from textdiffusion.methods.gaussian_method import GaussianMethod
from textdiffusion.nn.text_autoencoder import TextAutoencoder
from textdiffusion.nn.transformer import Transformer

AUTOENCODER_SHARE = 0.3  # the share of the training steps the autoencoder gets when autoencoder_steps is 0


@dataclass
class LatentConfig(GaussianConfig, TextMethodConfig):
    """Options of latent diffusion. The process defaults differ from embedding's: a cosine schedule in continuous
    time, so abar at t_min is within 1e-4 of 1 and the bound's decoder term at t_min is cheap against the
    encoder's entropy, and v-prediction, which stays accurate at that low noise."""

    name: str = "latent"
    noise_schedule: str = "cosine"
    timesteps: int = 0
    target: str = "v"
    compression: int = option(4, Range(1, 4096), "c: characters per latent vector (model.context must be a "
                                                 "multiple of it)")
    latent_dim: int = option(16, Range(1, 4096), "d: width of each latent vector")
    # measured on the cpu preset (docs/latent-diffusion.md): 0.2 decodes 99.9% but samples worst, 0.5 samples
    # best but decodes 97.6%; 0.35 keeps reconstruction above 99% and most of 0.5's samples
    latent_noise: float = option(0.35, Range(0.0, 10.0, lo_open=True), "sigma of the encoder q(z|x) = N(mu(x), "
                                                                       "sigma^2), against means of unit variance")
    latent_scale: float = option(1.0, Range(0.0, 100.0, lo_open=True), "the diffusion runs on latent_scale * z: "
                                                                        "above 1 the noise reaches the latent later")
    self_condition: bool = option(True, None, "feed the previous z0 estimate back to the denoiser (Chen et al. 2022)")
    diffusion_draws: int = option(4, Range(1, 64), "noise draws (t, eps) per window in each diffusion step: the "
                                                   "denoiser sees k = L / c positions, so a draw costs 1/c of one on "
                                                   "characters")
    decoder_ce_weight: float = option(0.0, LOSS_WEIGHT, "weight of the frozen decoder's cross-entropy on the "
                                                        "denoiser's z0_hat, beside its squared error")
    autoencoder_steps: int = option(0, Range(0, 10**9), "the first training steps, the autoencoder's alone; the "
                                                        "rest train the diffusion (0 = 30% of train.steps)")
    autoencoder_layers: int = option(2, Range(1, 64), "transformer layers of the encoder and of the decoder "
                                                      "(each as wide as model.n_embd)")


class LatentDiffusionModel(nn.Module):
    """Everything latent diffusion trains: the autoencoder and the time-conditioned denoiser on its k latents."""

    def __init__(self, model_cfg: ModelConfig, vocab_size: int, n_symbols: int, cfg: LatentConfig):
        super().__init__()
        self.autoencoder = TextAutoencoder(model_cfg, vocab_size, n_symbols, cfg.compression, cfg.latent_dim,
                                           cfg.autoencoder_layers)
        self.denoiser = Transformer(dataclasses.replace(model_cfg, tie_embeddings=False), vocab_size=0,
                                    out_dim=cfg.latent_dim, attention="bidirectional", time_conditioning=True,
                                    input_dim=cfg.latent_dim * (2 if cfg.self_condition else 1))
        self.self_condition = cfg.self_condition

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, z0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's raw output at (z_t, t), read through ``method.target`` by the method; with
        self-conditioning also given the previous estimate of z_0 (zeros when there is none)."""
        if self.self_condition:
            z_t = torch.cat((z_t, z0_prev if z0_prev is not None else torch.zeros_like(z_t)), dim=-1)
        return self.denoiser(z_t, t)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def autoencoder_phase(asked: int, train_steps: int) -> int:
    """The step at which the diffusion phase starts: ``asked``, or ``AUTOENCODER_SHARE`` of the run when 0."""
    if asked == 0:
        return round(AUTOENCODER_SHARE * train_steps)
    if asked >= train_steps:
        raise ConfigError(f"method.autoencoder_steps={asked} leaves none of the {train_steps} training steps to the "
                          f"diffusion; lower it below train.steps (or 0 for {AUTOENCODER_SHARE:.0%} of them)")
    return asked


@register
class LatentDiffusion(GaussianMethod[torch.Tensor], TextMethod):
    """Gaussian diffusion in the latent of a learned text autoencoder, trained in two phases of one run."""

    name = "latent"
    config_class = LatentConfig
    attention = "bidirectional"
    samplers = ("ddim", "ddpm")
    likelihood_kind = "bound"
    # each phase trains one part of the network and leaves the other without a gradient
    leaves_parameters_unused = True
    # the loss runs the autoencoder directly, outside the network's forward (the denoiser): the trainer averages
    # gradients after backward, which DDP's hooks on the forward could not
    parameters_in_forward_only = False
    eval_terms: ClassVar[dict[str, str | tuple[str, str]]] = {
        "reconstruction_nats_per_char": ("bound: E_q[-log p(x|z)]", "nats/char, the decoder on z ~ q(z|x)"),
        "latent_nats_per_char": ("bound: E_q[-log p(z)]", "nats/char, VDM's bound on the latent's density"),
        "entropy_nats_per_char": ("bound: H(q(z|x))", "nats/char, subtracted: the encoder's entropy"),
        "reconstruction_accuracy": ("reconstruction accuracy", "characters decoded exactly from the encoder's mean"),
    }

    def __init__(self, cfg: LatentConfig, model_cfg: ModelConfig, tokenizer: Any):
        super().__init__(cfg, model_cfg, tokenizer)
        self.setup_process()
        if cfg.timesteps:
            raise ConfigError(f"method.timesteps={cfg.timesteps}: the latent method runs in continuous time (its bound "
                              f"integrates over every noise level); leave method.timesteps at 0")
        if model_cfg.context % cfg.compression:
            raise ConfigError(f"model.context={model_cfg.context} is not a multiple of method.compression="
                              f"{cfg.compression}; pick a compression that divides it")
        self.autoencoder_steps = cfg.autoencoder_steps  # the phase boundary; from_config resolves 0 against the run
        self.training_autoencoder = True

    @classmethod
    def from_config(cls, cfg: Config, vocab: Any) -> LatentDiffusion:
        method = super().from_config(cfg, vocab)
        assert isinstance(method, LatentDiffusion)
        method.autoencoder_steps = autoencoder_phase(cfg.method.autoencoder_steps, cfg.train.steps)
        return method

    @property
    def time_conditioning(self) -> bool:
        return True

    @property
    def chunks(self) -> int:
        """k: latent vectors per window."""
        return self.model_cfg.context // self.cfg.compression

    def build_model(self) -> LatentDiffusionModel:
        return LatentDiffusionModel(self.model_cfg, self.tok.vocab_size, self.tok.n_symbols, self.cfg)

    def default_steps(self, length: int, sampler: str = "") -> int | None:
        """32 DDIM steps: on the cpu preset's 16 latent positions the samples scored the same at 16, 32 and 64
        steps (docs/latent-diffusion.md, "Sampling steps"), so the default takes the fast end short of where the
        few-step drop begins for a DDIM sampler."""
        return self.cfg.sample_steps or 32

    def flops_per_unit(self, n_parameters: int) -> float | None:
        return None  # two networks of different lengths in two phases: not one transformer's count

    # ---- text <-> latents -------------------------------------------------------------------------
    def encode(self, model: LatentDiffusionModel, ids: torch.Tensor) -> torch.Tensor:
        """x_0 of the diffusion at its most likely: the encoder's mean, scaled, s mu(x), (B, k, d)."""
        return self.cfg.latent_scale * model.autoencoder.mean(ids)

    def decode(self, model: LatentDiffusionModel, x: torch.Tensor) -> torch.Tensor:
        """The decoder's likeliest character at every position of the diffusion's x = s z: (B, k, d) -> (B, L)."""
        return self.decoder_logits(model, x).argmax(-1)

    def decoder_logits(self, model: LatentDiffusionModel, x: torch.Tensor) -> torch.Tensor:
        """p(x | z) at z = x / s, for x in the diffusion's space."""
        return model.autoencoder.logits(x / self.cfg.latent_scale)

    def draw_latent(self, mu: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z ~ q(z | x) = N(mu, sigma^2 I)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + self.cfg.latent_noise * eps

    def predict_z(self, model: LatentDiffusionModel, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's estimate of z at (z_t, t), in float."""
        abar = self.schedule.alpha_bar(t)
        z0_hat = self.split(model(z_t, t), z_t, abar)[0]
        if self.cfg.self_condition:  # the second pass on the first's estimate, as the sampler's steps run it
            z0_hat = self.split(model(z_t, t, z0_hat.to(z_t.dtype)), z_t, abar)[0]
        return z0_hat

    # ---- training: two phases ---------------------------------------------------------------------
    def at_training_step(self, step: int) -> None:
        self.training_autoencoder = step < self.autoencoder_steps

    def loss(self, model: LatentDiffusionModel, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.training_autoencoder:
            return self.autoencoder_loss(model, x, generator)
        return self.diffusion_loss(model, x, generator)

    def autoencoder_loss(self, model: LatentDiffusionModel, x: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
        """Reconstruction with noise: the decoder's cross-entropy per character on a draw z ~ q(z | x)."""
        z = self.draw_latent(model.autoencoder.mean(x), generator)
        return cross_entropy_per_token(model.autoencoder.logits(z), x).mean()

    def diffusion_loss(self, model: LatentDiffusionModel, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The denoiser's squared error on its target, on draws z of the frozen encoder (the density the bound's
        middle term asks of it is that of the draws, not of the means), plus the frozen decoder's cross-entropy on
        its estimate z0_hat (Diffusion-LM's x0 cross-entropy): the squared error alone barely beats a Gaussian
        (Wiener) estimate of z in 1,400 steps, while the characters say which of the thousands of chunks z is."""
        with torch.no_grad():
            x0 = self.cfg.latent_scale * self.draw_latent(model.autoencoder.mean(x).float(), generator)
        x0 = x0.repeat(self.cfg.diffusion_draws, 1, 1)
        x = x.repeat(self.cfg.diffusion_draws, 1)
        t, abar, eps, x_t = self.forward_draw(x0, generator)
        prev = None
        # self-conditioning (Chen et al. 2022, Sec. 3.2): on half the steps, a first pass without gradient gives
        # the estimate the second pass is conditioned on, as at sampling time
        if self.cfg.self_condition and bool(torch.rand(1, generator=generator, device=x0.device) < 0.5):
            with torch.no_grad():
                prev = self.split(model(x_t, t).float(), x_t, abar)[0].to(x_t.dtype)
        out = model(x_t, t, prev).float()
        loss = (out - training_target(x0, eps, abar, self.cfg.target)).pow(2).mean()
        if self.cfg.decoder_ce_weight:
            # the decoder with its weights detached: the gradient reaches the denoiser, never the autoencoder
            frozen = {name: p.detach() for name, p in model.autoencoder.named_parameters()}
            x0_hat = self.split(out, x_t, abar)[0]
            logits = torch.func.functional_call(model.autoencoder, frozen, (x0_hat / self.cfg.latent_scale,))
            loss = loss + self.cfg.decoder_ce_weight * cross_entropy_per_token(logits, x).mean()
        return loss

    # ---- the likelihood: the LSGM bound -------------------------------------------------------------
    def check_score_window(self, length: int) -> None:
        if length % self.cfg.compression:
            raise ConfigError(f"the latent method scores whole chunks of {self.cfg.compression} characters; "
                              f"{length} is not a multiple of {self.cfg.compression}")

    @torch.no_grad()
    def nll(self, model: LatentDiffusionModel, windows: torch.Tensor, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        gen = torch.Generator(device=windows.device).manual_seed(self.cfg.eval_seed)
        bound = LSGMBound(self.schedule, self.t_min, self.cfg.eval_time_samples, self.cfg.latent_noise,
                          self.cfg.latent_scale)
        exact = 0
        for xb in report_batches(windows.split(batch_size), progress):
            mu = model.autoencoder.mean(xb).float()
            exact += int((model.autoencoder.logits(mu).argmax(-1) == xb).sum())
            z = self.draw_latent(mu, gen)
            reconstruction = cross_entropy_per_token(model.autoencoder.logits(z), xb).sum(-1)
            bound.add(reconstruction, z, lambda z_t, t, _eps: self.predict_z(model, z_t, t), gen)
        chars = self.chars_in(windows)
        terms = bound.result(chars)
        details: dict[str, Any] = {
            "reconstruction_nats_per_char": terms.reconstruction, "latent_nats_per_char": terms.latent,
            "entropy_nats_per_char": terms.entropy, "latent_decoder_nats_per_char": terms.latent_decoder,
            "latent_prior_nats_per_char": terms.latent_prior,
            "latent_diffusion_nats_per_char": terms.latent_diffusion, "stderr_nats": terms.stderr,
            "reconstruction_accuracy": exact / windows.numel(), "time_samples_per_window": self.cfg.eval_time_samples,
            "autoencoder_steps": self.autoencoder_steps, "seed": self.cfg.eval_seed, "schedule": self.schedule.name,
            "note": "LSGM bound: E_q[-log p(x|z)] + E_q[-log p(z)] (VDM) - H(q(z|x)), an upper bound on NLL",
        }
        return NLLResult(nats_per_unit=terms.total, kind="bound", windows=windows.shape[0], units=chars,
                         details=details)

    # ---- sampling -----------------------------------------------------------------------------------
    def known_chunks(self, fixed: torch.Tensor) -> torch.Tensor:
        """(n, k) which chunks are wholly known, from the (n, L) known positions."""
        return fixed.reshape(fixed.shape[0], self.chunks, self.cfg.compression).all(-1)

    def prepare(self, req: SampleRequest, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The template's initial state, refused when it fixes characters but not one whole chunk: the latent
        can only be conditioned chunk by chunk."""
        state, fixed = super().prepare(req, device)
        c = self.cfg.compression
        if bool(fixed.any()):
            whole = self.known_chunks(self.padded(state, fixed)[1])
            if not bool(whole.any()):
                raise ConfigError(f"the latent method conditions on whole chunks of {c} characters (positions "
                                  f"0-{c - 1}, {c}-{2 * c - 1}, ...) and this request fixes none; give at least "
                                  f"{c} known characters in a row from a multiple of {c}")
        return state, fixed

    def padded(self, state: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A request shorter than the context drawn as a whole window: masks (unknown) to its end."""
        pad = self.model_cfg.context - state.shape[1]
        if pad == 0:
            return state, fixed
        return (torch.cat((state, state.new_full((state.shape[0], pad), self.tok.mask_id)), 1),
                torch.cat((fixed, fixed.new_zeros((fixed.shape[0], pad))), 1))

    def draw(self, model: LatentDiffusionModel, forward: Any, state: torch.Tensor, fixed: torch.Tensor,
             plan: DrawPlan, generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """The reverse process in the latent from N(0, I) (wholly known chunks imputed), then the decoder: its
        distribution drawn with the request's temperature, top-k and top-p. ``on_step`` sees every step's z0_hat
        decoded (argmax, no draw, so watching changes no sample), and last the sample itself. ``forward`` is
        unused: the denoiser takes no labels."""
        length = state.shape[1]
        full, known_at = self.padded(state, fixed)
        keep = self.known_chunks(known_at)
        known = self.cfg.latent_scale * self.draw_latent(model.autoencoder.mean(full).float(), generator)
        sampler = self.make_sampler(plan.sampler, plan.steps)

        def denoise(z_t: torch.Tensor, t: torch.Tensor, prev: torch.Tensor | None):
            x0_hat, eps_hat = self.split(model(z_t, t, prev), z_t, self.schedule.alpha_bar(t))
            return x0_hat, eps_hat

        def report(step: int, _z: torch.Tensor, z0_hat: torch.Tensor, s: float) -> None:
            assert on_step is not None
            if s > 0:  # the last frame is the decoder's draw, below
                on_step(step, torch.where(fixed, state, self.decode(model, z0_hat)[:, :length]), {"t": s, "nfe": step})

        z = self.prior_noise(known.shape, generator, state.device)
        z0 = self.reverse(model, sampler, z, denoise, generator, known, keep[..., None],
                          report if on_step else None)
        ids = torch.where(fixed, state, plan.tokens(self.decoder_logits(model, z0)[:, :length], generator))
        if on_step is not None:
            on_step(sampler.steps, ids, {"t": 0.0, "nfe": sampler.steps + 1})
        plan.notes.update({"chunk": self.cfg.compression, "imputed_chunks": int(keep[0].sum()),
                           "partial_chunks": int((known_at.reshape(*keep.shape, -1).any(-1) & ~keep)[0].sum())})
        return ids, float(sampler.steps + 1)  # the steps and the decoder's pass

    def sample_info(self, plan: DrawPlan) -> dict[str, Any]:
        return {"steps": plan.steps, "clamp": self.cfg.clamp}
