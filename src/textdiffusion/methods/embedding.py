r"""Gaussian diffusion on token embeddings: Diffusion-LM (Li et al. 2022) and the ways it fails.

Tokens w_1..w_L become vectors x_0 = E[w] (a learned table, or a frozen pretrained one), the vectors are
noised with the shared Gaussian process of :mod:`textdiffusion.diffusion.gaussian`

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

and the bidirectional backbone (continuous input adapter, time-conditioned) learns to undo it. Generation
runs DDPM or DDIM from pure noise and finally maps each vector back to a token ("rounding"). The skeleton
(forward draw, bound, reverse process) is :class:`~textdiffusion.methods.gaussian_method.GaussianMethod`'s;
this file writes its hooks: the lookup E[w] (:meth:`EmbeddingDiffusion.encode`), the rounding
(:meth:`EmbeddingDiffusion.decode`) and the decoder term of the bound.

Training loss (Li et al. 2022, Eq. 2 and App. F, "e2e" when E is learned):

    L = || f_theta(x_t, t) - target ||^2                  the denoising term (eps, x0 or v)
        + rounding_weight * -log p(w | x_0)                rounding: keeps embeddings decodable
        + x0_ce_weight    * -log p(w | x0_hat(x_t, t))     the decoder applied to the *prediction*

The rounding term is what stops jointly learned embeddings from collapsing: the denoising term alone is
minimised by shrinking every embedding towards one point (then x_0 is trivially predictable and carries no
information). ``embed_norm=fixed`` rules collapse out by construction, every row having norm
sqrt(dim) * embed_scale. ``docs/embedding-diffusion.md`` has the measurements.

Decoders (vector -> token): cosine nearest neighbour, L2 nearest neighbour, or a learned softmax head.
``clamp`` snaps the predicted x0 to its decoded embedding at each sampling step (Li et al. 2022, Sec. 4.2).

Likelihood: the training loss is not a likelihood. :meth:`EmbeddingDiffusion.nll` estimates a true upper
bound on -log p(w), the variational bound of VDM (Kingma et al. 2021, Eqs. 11-17;
:meth:`GaussianMethod.vdm_bound`) with the embedding playing the role of the data:

    -log p(w) <= E[-log p(w | z_0)]                        reconstruction at the first training time
               + KL(q(z_1 | w) || N(0, I))                 prior
               + 1/2 E_t [ -SNR'(t) || x_0 - x0_hat(z_t, t) ||^2 ]   diffusion (continuous time)

(with T discrete steps the last term is sum_i 1/2 (SNR(s_i) - SNR(t_i)) ||x_0 - x0_hat||^2). The decoder
p(w | z_0) is the rounding head, or for the similarity decoders the exact Gaussian posterior
softmax_w(-||z_0 - sqrt(abar_0) E_w||^2 / 2(1 - abar_0)). Reported in nats per character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from textdiffusion.config import (
    LOSS_WEIGHT,
    PROBABILITY,
    SCALE,
    Choice,
    ConfigError,
    ModelConfig,
    Range,
    option,
)
from textdiffusion.diffusion.gaussian import (
    TARGETS,
    GaussianSampler,
    eps_from_x0,
    q_sample,
    training_target,
)
from textdiffusion.diffusion.tokens import TokenDraw, cross_entropy_per_token
from textdiffusion.guidance.gradient import GradientSteer
from textdiffusion.guidance.steer import Steer
from textdiffusion.methods.base import (
    DrawPlan,
    NLLProgress,
    NLLResult,
    SampleRequest,
    StepCallback,
    TextMethod,
    TextMethodConfig,
    register,
)
from textdiffusion.methods.gaussian_config import GaussianConfig
from textdiffusion.methods.gaussian_method import GaussianMethod
from textdiffusion.nn.text_classifier import ConvTextClassifier
from textdiffusion.nn.transformer import KVCache, Transformer

DECODERS = ("cosine", "l2", "head")
COSINE_TEMPERATURE = 0.1  # cosine similarities in [-1, 1] -> logits with a usable spread


@dataclass
class GaussianTextConfig(GaussianConfig, TextMethodConfig):
    """What the Gaussian text methods (embedding, bits) share on top of the Gaussian process."""

    # probs: the network emits a distribution over tokens and x0_hat is its expected embedding
    target: str = option("x0", Choice((*TARGETS, "probs")), "what the network predicts: eps, x0, v, or probs (a "
                                                            "distribution over tokens whose expected embedding is x0)")
    self_condition: bool = option(False, None, "feed the previous x0 estimate back to the network (Chen et al. 2022)")
    x0_ce_weight: float = option(0.0, LOSS_WEIGHT, "weight of the decoder's cross-entropy on the predicted x0, at "
                                                   "every t")
    probs_mse_weight: float = option(0.0, LOSS_WEIGHT, "target=probs: weight of the averaged x0's MSE, added to the "
                                                       "cross-entropy")


@dataclass
class EmbeddingConfig(GaussianTextConfig):
    """Options of embedding diffusion (Diffusion-LM); those marked ``sampling`` may change on a trained run."""

    name: str = "embedding"
    embeddings: str = option("learned", Choice(("learned", "pretrained")), "learned (with the denoiser) or pretrained "
                                                                           "(MiniLM's frozen table)")
    embed_dim: int = option(64, Range(1, 65536), "width of the learned embedding space (the pretrained table has its "
                                                 "own: 384)")
    embed_norm: str = option("fixed", Choice(("fixed", "none")), "fixed (every row rescaled to norm sqrt(dim) * "
                                                                 "embed_scale) or none")
    embed_scale: float = option(1.0, SCALE, "per-coordinate size of a fixed-norm embedding, relative to the unit "
                                            "noise")
    decoder: str = option("head", Choice(DECODERS), "how a vector becomes a token: cosine, l2 or head (a learned "
                                                    "softmax rounding head)")
    rounding_weight: float = option(1.0, LOSS_WEIGHT, "weight of Diffusion-LM's rounding term -log p(w | x_0)")
    # opened when the guided sampler runs
    guide_run: str = option("", None, "guided sampler: the ar run whose next-token logits are mixed with the "
                                      "diffusion plan", sampling=True)
    guide_weight: float = option(0.5, PROBABILITY, "guided sampler: weight of the diffusion plan (0 = the ar run "
                                                   "alone)", sampling=True)


class EmbeddingDenoiser(nn.Module):
    """Everything this method trains: the embedding table (unless frozen), the backbone and the rounding
    head. A frozen pretrained table is a non-persistent buffer, re-read from its package on load, so
    checkpoints stay small."""

    def __init__(self, model_cfg: ModelConfig, n_symbols: int, dim: int, frozen: torch.Tensor | None,
                 norm: str, scale: float, self_condition: bool, head: bool, out_dim: int = 0):
        super().__init__()
        self.norm, self.scale, self.dim = norm, scale, dim
        self.self_condition = self_condition
        if frozen is None:
            self.embed = nn.Parameter(torch.randn(n_symbols, dim))
        else:
            self.embed = None
            self.register_buffer("frozen", frozen.float().clone(), persistent=False)
        # out_dim > 0: the backbone emits that many numbers per position (logits over symbols) instead of a vector
        self.backbone = Transformer(model_cfg, vocab_size=0, out_dim=out_dim or dim, attention="bidirectional",
                                    time_conditioning=True, input_dim=dim * (2 if self_condition else 1))
        self.head = nn.Linear(dim, n_symbols) if head else None
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def table(self) -> torch.Tensor:
        """The (n_symbols, dim) embeddings the diffusion runs on, after normalisation."""
        e = self.embed if self.embed is not None else self.frozen
        if self.norm == "fixed":
            e = F.normalize(e, dim=-1) * (math.sqrt(self.dim) * self.scale)
        return e

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        if self.self_condition:
            x_t = torch.cat((x_t, x0_prev if x0_prev is not None else torch.zeros_like(x_t)), dim=-1)
        return self.backbone(x_t, t)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@register
class EmbeddingDiffusion(GaussianMethod[torch.Tensor], TextMethod):
    """Diffusion-LM on the Gaussian skeleton of :class:`GaussianMethod`: :meth:`encode` is the embedding lookup
    (the one place a token becomes a vector; a latent method overrides it), :meth:`decode` the rounding, and
    the rest is what text adds: self-conditioning, ``target=probs``, the rounding loss, prompts and infilling
    by imputation, the guided sampler and classifier guidance."""

    name = "embedding"
    config_class = EmbeddingConfig
    parameters_in_forward_only = False  # the rounding loss reads the embedding table outside the forward pass
    attention = "bidirectional"
    samplers = ("ddim", "ddpm", "guided")
    likelihood_kind = "bound"
    chains_windows = True  # prompts and infilling are imputed, so a window can start from the text before it
    eval_terms: ClassVar[dict[str, str]] = {"denoising_mse": "denoising MSE",
                                            "rounding_ce_per_token": "rounding CE/token"}
    classifier_rule = "gradient"  # Diffusion-LM's plug-and-play control: gradient steps on the latents

    def __init__(self, cfg: GaussianTextConfig, model_cfg: ModelConfig, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        self.setup_process()
        self.guide: Any = None  # the ar run of the guided sampler (see attach_companions)

    @property
    def time_conditioning(self) -> bool:
        return True

    @property
    def decoder(self) -> str:
        return self.cfg.decoder

    # ---- defaults ------------------------------------------------------------------------------------
    def default_steps(self, length: int, sampler: str = "") -> int | None:
        T = self.cfg.timesteps
        return self.cfg.sample_steps or (min(T, 200) if T else 200)

    def interactive_samplers(self) -> tuple[str, ...]:
        return tuple(s for s in self.samplers if s != "guided")  # guided needs a second run

    def companion_runs(self) -> dict[str, str]:
        """The guided sampler's ``ar`` run (only that sampler reads it)."""
        return {"method.guide_run": self.cfg.guide_run} if "guided" in self.samplers and self.cfg.guide_run else {}

    def attach_companions(self, runs: dict[str, Any]) -> None:
        """The guided sampler's ``ar`` model: a loaded run with the same tokenizer as this one."""
        guide = runs["method.guide_run"]
        if guide.method.name != "ar":
            raise ConfigError(f"method.guide_run {self.cfg.guide_run} was trained with method {guide.method.name}; "
                              f"it must be ar (an autoregressive run)")
        if guide.tokenizer.to_dict() != self.tok.to_dict():
            raise ConfigError("the guide run's tokenizer differs from this run's; train both on the same data "
                              "and tokenizer")
        self.guide = guide

    def build_model(self) -> EmbeddingDenoiser:
        frozen = None
        if self.cfg.embeddings == "pretrained":
            if self.tok.kind != "wordpiece":
                raise ConfigError(f"method.embeddings=pretrained is the MiniLM table, indexed by WordPiece ids, but "
                                  f"the data uses the {self.tok.kind} tokenizer; add --set data.tokenizer=wordpiece")
            from textdiffusion.data.pretrained import load_minilm_embeddings

            frozen = load_minilm_embeddings()
            if frozen.shape[0] != self.tok.n_symbols:
                raise ConfigError(f"the pretrained table has {frozen.shape[0]} rows but the tokenizer "
                                  f"{self.tok.n_symbols} symbols")
        dim = frozen.shape[1] if frozen is not None else self.cfg.embed_dim
        return EmbeddingDenoiser(self.model_cfg, self.tok.n_symbols, dim, frozen, self.cfg.embed_norm,
                                 self.cfg.embed_scale, self.cfg.self_condition, self.decoder == "head")

    # ---- tokens <-> vectors ------------------------------------------------------------------------
    def encode(self, model: EmbeddingDenoiser, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> their vectors x_0 = E[w] (..., dim), in the table's dtype."""
        return model.table()[ids]

    def latent_dim(self, model: EmbeddingDenoiser) -> int:
        """Width of x_0 at each position."""
        return model.dim

    def latent_geometry(self, model: EmbeddingDenoiser) -> dict[str, float]:
        """How the x_0 of the tokens sit in the noise, reported beside the bound (see :func:`embedding_geometry`)."""
        return embedding_geometry(model.table())

    def decoder_logits(self, model: EmbeddingDenoiser, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) vectors -> (..., n_symbols) scores whose argmax is the decoded token."""
        if self.decoder == "head":
            return model.head(x)
        table = model.table()
        if self.decoder == "cosine":
            return F.normalize(x.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T / COSINE_TEMPERATURE
        # -||x - e||^2 up to a per-row constant: 2 x.e - ||e||^2
        return 2.0 * x.float() @ table.float().T - table.float().pow(2).sum(-1)

    def decode(self, model: EmbeddingDenoiser, x: torch.Tensor) -> torch.Tensor:
        """Rounding: each vector to its decoder's likeliest token."""
        return self.decoder_logits(model, x).argmax(-1)

    def output_logits(self, model: EmbeddingDenoiser, out: torch.Tensor) -> torch.Tensor:
        """``target=probs``: how the network's output becomes logits over symbols (here: via the decoder)."""
        return self.decoder_logits(model, out)

    def final_ids(self, model: EmbeddingDenoiser, plan: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The sampler's last step: x_0 vectors -> ids, plus anything worth reporting about it."""
        return self.decode(model, plan), {}

    # ---- the denoiser ------------------------------------------------------------------------------
    def denoise(self, model: EmbeddingDenoiser, x_t: torch.Tensor, t: torch.Tensor,
                x0_prev: torch.Tensor | None,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network output plus the (x0_hat, eps_hat) it implies.

        With ``target=probs`` the output is read by the decoder as a distribution over tokens and x0_hat is
        its expected embedding, sum_w p(w | x_t) E[w]: "score interpolation" (Dieleman et al. 2022, CDCD,
        Sec. 3). The network then only ever proposes mixtures of real embeddings, and is trained by
        cross-entropy, the loss of a classifier, instead of a regression onto a point. When sampling,
        ``temperature`` sharpens (< 1) or flattens that distribution before the expectation."""
        out = model(x_t, t, x0_prev)
        abar = self.schedule.alpha_bar(t)
        if self.cfg.target == "probs":
            probs = (self.output_logits(model, out).float() / temperature).softmax(-1)
            x0_hat = probs @ model.table().float()
            return out, x0_hat, eps_from_x0(x_t.float(), x0_hat, abar)
        x0_hat, eps_hat = self.split(out, x_t, abar)
        return out, x0_hat, eps_hat

    def _self_condition(self, model: EmbeddingDenoiser, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Self-conditioning's first pass (Chen et al. 2022, Sec. 3.2): an x0 estimate from no estimate."""
        with torch.no_grad():
            _, x0_hat, _ = self.denoise(model, x_t, t, None)
        return x0_hat.detach().to(x_t.dtype)

    def _predict_x0(self, model: EmbeddingDenoiser, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0_hat as the bound sees it: with the self-conditioning pass the sampler would make."""
        x0_prev = self._self_condition(model, x_t, t) if self.cfg.self_condition else None
        return self.denoise(model, x_t, t, x0_prev)[1]

    # ---- training ----------------------------------------------------------------------------------
    def rounding_weight(self, model: EmbeddingDenoiser) -> float:
        """Weight of the rounding term: only where the decoder or the table can learn from it."""
        trainable_decoder = self.decoder == "head" or model.embed is not None
        return self.cfg.rounding_weight if trainable_decoder else 0.0

    def loss_terms(self, model: EmbeddingDenoiser, x: torch.Tensor,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        dev = x.device
        x0 = self.encode(model, x)
        t, abar, eps, x_t = self.forward_draw(x0, generator)
        x0_prev = None
        if self.cfg.self_condition:
            # half the rows get the model's own first estimate, half get zeros (so both modes are learned)
            use = (torch.rand(n, generator=generator, device=dev) < 0.5)[:, None, None]
            x0_prev = torch.where(use, self._self_condition(model, x_t, t), torch.zeros_like(x_t))
        out, x0_hat, _ = self.denoise(model, x_t, t, x0_prev)
        if self.cfg.target == "probs":
            # the MSE of the averaged x0 is reported, and trained on only with method.probs_mse_weight > 0
            terms = {"mse": (x0_hat - x0.float()).pow(2).mean(),
                     "ce": cross_entropy_per_token(self.output_logits(model, out), x).mean()}
        else:
            target = training_target(x0, eps, abar, self.cfg.target)
            terms = {"mse": (out.float() - target.float()).pow(2).mean()}
        if self.rounding_weight(model) > 0:
            # x_0 ~ q(x_0 | w): the embedding with the first training step's noise, in embedding units
            a0 = self.first_abar(dev)
            noisy = x0 + ((1.0 - a0) / a0).sqrt() * torch.randn(x0.shape, generator=generator, device=dev,
                                                                 dtype=x0.dtype)
            terms["rounding"] = cross_entropy_per_token(self.decoder_logits(model, noisy), x).mean()
        if self.cfg.x0_ce_weight > 0:
            terms["x0_ce"] = cross_entropy_per_token(self.decoder_logits(model, x0_hat), x).mean()
        return terms

    def loss(self, model: EmbeddingDenoiser, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        terms = self.loss_terms(model, x, generator)
        total = terms["mse"]
        if "ce" in terms:
            total = terms["ce"] + self.cfg.probs_mse_weight * terms["mse"] if self.cfg.probs_mse_weight else terms["ce"]
        if "rounding" in terms:
            total = total + self.rounding_weight(model) * terms["rounding"]
        if "x0_ce" in terms:
            total = total + self.cfg.x0_ce_weight * terms["x0_ce"]
        return total

    # ---- the likelihood bound ----------------------------------------------------------------------
    def decoder_nats(self, model: EmbeddingDenoiser, x: torch.Tensor, z0: torch.Tensor,
                     a0: torch.Tensor) -> torch.Tensor:
        """-log p(w | z_0) summed over positions: the rounding head on z_0 / sqrt(abar_0), or for the similarity
        decoders the exact posterior over tokens of a Gaussian centred on each scaled embedding,
        softmax_w(-||z_0 - sqrt(abar_0) E_w||^2 / 2(1 - abar_0))."""
        if self.decoder == "head":
            logits = model.head(z0 / a0.sqrt())
        else:
            table = model.table().float()
            d2 = (z0.float().pow(2).sum(-1, keepdim=True) - 2.0 * a0.sqrt() * z0.float() @ table.T
                  + a0 * table.pow(2).sum(-1))
            logits = -d2 / (2.0 * (1.0 - a0))
        return cross_entropy_per_token(logits, x).sum(-1)

    @torch.no_grad()
    def nll(self, model: EmbeddingDenoiser, windows: torch.Tensor, batch_size: int = 64,
            progress: NLLProgress | None = None) -> NLLResult:
        gen = torch.Generator(device=windows.device).manual_seed(self.cfg.eval_seed)
        n = windows.shape[0]
        mse, rounding = [], []

        def diagnose(xb: torch.Tensor) -> None:
            terms = self.loss_terms(model, xb, gen)  # the training loss terms, for diagnosis
            mse.append(float(terms["mse"]) * xb.shape[0])
            if "rounding" in terms:
                rounding.append(float(terms["rounding"]) * xb.shape[0])

        bound = self.vdm_bound(model, windows.split(batch_size), gen,
                               lambda _xb, x_t, t, _eps: self._predict_x0(model, x_t, t), progress, diagnose)
        chars = self.chars_in(windows)
        nats, parts = bound.result(chars)
        details: dict[str, Any] = {
            "reconstruction_nats_per_char": parts["reconstruction"], "prior_nats_per_char": parts["prior"],
            "diffusion_nats_per_char": parts["diffusion"], "stderr_nats": parts["stderr_nats"],
            "time_samples_per_window": bound.samples, "denoising_mse": sum(mse) / n, "seed": self.cfg.eval_seed,
            "schedule": self.schedule.name,
            "note": "VDM variational bound through the decoder (an upper bound on NLL); denoising_mse and "
                    "rounding_ce are the training loss terms, not likelihoods",
        }
        if rounding:
            details["rounding_ce_per_token"] = sum(rounding) / n
        details.update(self.latent_geometry(model))
        return NLLResult(nats_per_unit=nats, kind="bound", windows=n, units=chars, details=details)

    # ---- classifier guidance: a classifier of noisy latents (its rule: guidance/gradient.py) --------------
    def classifier_network(self, shape: dict[str, int], num_labels: int,
                           model: EmbeddingDenoiser) -> ConvTextClassifier:
        """A time-conditioned classifier of latents x_t, as wide as the run's embeddings."""
        return ConvTextClassifier(num_labels, input_dim=self.latent_dim(model), time_conditioning=True, **shape)

    def classifier_inputs(self, model: EmbeddingDenoiser, x: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t ~ q(x_t | E[w]) at a training time t, with the run's own (frozen) embedding table E."""
        t = self.training_times(x.shape[0], generator, x.device)
        with torch.no_grad():
            x0 = self.encode(model, x).float()
        eps = torch.randn(x0.shape, generator=generator, device=x.device)
        return q_sample(x0, self.schedule.alpha_bar(t), eps), t

    # ---- samplers ----------------------------------------------------------------------------------
    def ignored_decoding(self, sampler: str) -> tuple[str, ...]:
        """Every position is rounded to its nearest token at the end, so nothing is drawn from a distribution:
        only the guided sampler (which draws from the mixture with an ``ar`` run) reads all three options, and
        ``target=probs`` reads the temperature inside the denoiser (see :meth:`denoise`)."""
        if sampler == "guided":
            return ()
        return ("top_k", "top_p") if self.cfg.target == "probs" else ("temperature", "top_k", "top_p")

    def steer_for(self, req: SampleRequest) -> Steer:
        """Classifier guidance steers the latents by gradient steps (:mod:`textdiffusion.guidance.gradient`)."""
        steer = self.classifier_request(req)
        return Steer() if steer is None else GradientSteer(self.classifier, self.schedule, *steer)

    def draw(self, model: EmbeddingDenoiser, forward: Any, state: torch.Tensor, fixed: torch.Tensor,
             plan: DrawPlan, generator: torch.Generator, on_step: StepCallback | None) -> tuple[torch.Tensor, float]:
        """The reverse process from noise to a plan x_0 (``forward`` is unused: the denoiser also reads its own
        previous estimate), then rounding to tokens, or the guided sampler's left-to-right decoding with an ``ar``
        run. The temperature acts on the decoder distribution inside the denoiser (target=probs); the guided
        sampler applies it to the mixed per-position distribution instead."""
        guided = plan.sampler == "guided"
        gs = self.make_sampler("ddpm" if plan.sampler == "ddpm" else "ddim", plan.steps)
        latent_steer = plan.steer.on_latents(state.shape[0], fixed) if isinstance(plan.steer, GradientSteer) else None
        x0, nfe = self._diffuse(model, state, fixed, gs, generator, on_step,
                                1.0 if guided else plan.tokens.temperature, latent_steer)
        if guided:
            ids, ar_nfe = self._guided(model, x0, state, fixed, plan.tokens, generator)
            plan.notes["guide_weight"] = self.cfg.guide_weight
            return ids, float(nfe + ar_nfe)
        ids, extra = self.final_ids(model, x0)
        plan.notes.update(extra)
        return torch.where(fixed, state, ids), float(nfe)

    def sample_info(self, plan: DrawPlan) -> dict[str, Any]:
        return {"steps": plan.steps, "decoder": self.decoder, "clamp": self.cfg.clamp}

    def _diffuse(self, model: EmbeddingDenoiser, state: torch.Tensor, fixed: torch.Tensor,
                 gs: GaussianSampler, generator: torch.Generator, on_step: StepCallback | None,
                 temperature: float = 1.0, steer: Any = None) -> tuple[torch.Tensor, int]:
        """The reverse process from N(0, I) to x_0 (:meth:`GaussianMethod.reverse`): ``clamp`` snaps x0_hat to
        the embedding of its rounding; prompt/infill positions are imputed from their true embeddings."""
        known = self.encode(model, state.clamp(max=self.tok.n_symbols - 1))

        def denoise(x_t: torch.Tensor, t: torch.Tensor, x0_prev: torch.Tensor | None):
            return self.denoise(model, x_t, t, x0_prev if self.cfg.self_condition else None, temperature)[1:]

        def report(step: int, x: torch.Tensor, x0_hat: torch.Tensor, s: float) -> None:
            assert on_step is not None
            on_step(step, torch.where(fixed, state, self.decode(model, x0_hat)), {"t": s, "nfe": step})

        x = self.prior_noise(known.shape, generator, state.device, known.dtype)
        x0_hat = self.reverse(model, gs, x, denoise, generator, known, fixed[..., None],
                              report if on_step else None, steer)
        return x0_hat.to(known.dtype), gs.steps

    def _guided(self, model: EmbeddingDenoiser, plan: torch.Tensor, state: torch.Tensor, fixed: torch.Tensor,
                tokens: TokenDraw, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        r"""Decode left to right with a trained ``ar`` model, mixing at position i

            log p(w_i) = (1 - w) log p_ar(w_i | w_<i) + w log p_plan(w_i | plan_i)      (renormalised)

        where p_plan is the decoder's softmax at the diffusion plan's vector. w = 0 is the ar model alone,
        w = 1 ignores it and samples each position from the plan independently."""
        w = self.cfg.guide_weight
        ar = self.guide
        if ar is None:
            raise ConfigError("the guided sampler needs a trained ar run: --set method.guide_run=runs/ar-...")
        n, L = state.shape
        if ar.cfg.model.context < L:
            raise ConfigError(f"--length {L} exceeds the guide model's context of {ar.cfg.model.context}")
        plan_logp = F.log_softmax(self.decoder_logits(model, plan).float(), dim=-1)
        out = state.clone()
        cache = KVCache.empty(ar.cfg.model.n_layer, ar.cfg.model.context)
        token = torch.full((n, 1), self.tok.bos_id, dtype=torch.long, device=state.device)
        for i in range(L):
            ar_logp = F.log_softmax(ar.model(token, cache=cache)[:, -1].float(), dim=-1)
            mixed = (1.0 - w) * ar_logp + w * plan_logp[:, i]
            drawn = tokens(mixed, generator)
            out[:, i] = torch.where(fixed[:, i], state[:, i], drawn)
            token = out[:, i : i + 1]
        return out, L


def embedding_geometry(table: torch.Tensor, max_rows: int = 4096) -> dict[str, float]:
    """How spread out the embeddings are, in units of the unit-variance noise: the numbers behind
    "collapse" (all rows close together) and "scale" (rows tiny next to the noise)."""
    e = table.detach().float()
    if e.shape[0] > max_rows:  # a fixed subset of a large vocabulary
        e = e[torch.linspace(0, e.shape[0] - 1, max_rows).long()]
    d = torch.cdist(e, e)
    d.fill_diagonal_(float("inf"))
    nearest = d.min(1).values
    return {"embed_rms": float(e.pow(2).mean().sqrt()), "embed_mean_norm": float(e.norm(dim=-1).mean()),
            "embed_nn_dist_mean": float(nearest.mean()), "embed_nn_dist_min": float(nearest.min()),
            "embed_dim": int(e.shape[1])}
