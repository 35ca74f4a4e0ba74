r"""Analog-bit diffusion: Bit Diffusion (Chen, Zhang & Hinton 2022, "Analog Bits") on tokens.

Each token id becomes its ceil(log2 V) binary digits, written as real numbers {-s, +s} (``method.bit_scale``
= s). Ordinary Gaussian diffusion runs on those vectors and the result is thresholded at 0 back into bits.
In the language of :mod:`textdiffusion.methods.embedding` this is embedding diffusion with a *fixed*
embedding table, the bit codes, so everything else is shared: the schedules and DDPM/DDIM steps of
:mod:`textdiffusion.diffusion.gaussian`, self-conditioning (Chen et al. 2022, Sec. 3.2), asymmetric time
intervals (``method.time_difference``, their ``td``; Sec. 3.3), prompts and infilling by replacement, and
the VDM bound used for validation.

What differs:

* **decoding** thresholds every coordinate at 0. With V not a power of two some bit patterns name no
  symbol; such an id is replaced by the valid symbol whose code is nearest (fewest differing bits) and
  counted, so ``eval`` reports the invalid-id rate;
* **softmax factorisation** (``method.target=probs``, Chen et al. 2022, Sec. 3.4): the backbone emits V
  logits per position and x0_hat = sum_w p(w) code(w), the probability-weighted average of the bit codes,
  trained by cross-entropy on the symbol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from textdiffusion.config import SCALE, option
from textdiffusion.methods.base import register
from textdiffusion.methods.embedding import EmbeddingDenoiser, EmbeddingDiffusion, GaussianTextConfig


def n_bits(vocab: int) -> int:
    """ceil(log2 V), at least 1."""
    return max(1, math.ceil(math.log2(max(vocab, 2))))


def bit_codes(vocab: int, scale: float = 1.0) -> torch.Tensor:
    """(V, ceil(log2 V)) table: row w is w in binary, most significant bit first, as {-scale, +scale}."""
    nb = n_bits(vocab)
    ids = torch.arange(vocab)[:, None]
    bits = (ids >> torch.arange(nb - 1, -1, -1)) & 1
    return (bits.float() * 2.0 - 1.0) * scale


def bits_to_ids(x: torch.Tensor) -> torch.Tensor:
    """Threshold at 0 and read the bits as a binary number (may exceed the vocabulary)."""
    nb = x.shape[-1]
    weights = 2 ** torch.arange(nb - 1, -1, -1, device=x.device)
    return ((x > 0).long() * weights).sum(-1)


@dataclass
class BitsConfig(GaussianTextConfig):
    """Bit Diffusion's own recipe by default: continuous time, cosine schedule, self-conditioning."""

    name: str = "bits"
    timesteps: int = 0
    noise_schedule: str = "cosine"
    self_condition: bool = True
    bit_scale: float = option(1.0, SCALE, "each token's bits are written as -bit_scale or +bit_scale")


@register
class BitDiffusion(EmbeddingDiffusion):
    name = "bits"
    config_class = BitsConfig
    samplers = ("ddim", "ddpm")
    sample_stats: ClassVar[dict[str, tuple[str, str]]] = {
        "invalid_id_rate": ("invalid-id rate", "bit patterns naming no symbol (snapped to the nearest)")}

    def __init__(self, cfg: BitsConfig, model_cfg, tokenizer):
        super().__init__(cfg, model_cfg, tokenizer)
        self.codes = bit_codes(tokenizer.n_symbols, cfg.bit_scale)

    @property
    def decoder(self) -> str:
        return "l2"  # fixed codes: nearest corner (what thresholding computes) and the exact posterior

    def rounding_weight(self, model: EmbeddingDenoiser) -> float:
        return 0.0  # nothing to round: the code table is fixed and decoding is thresholding

    def build_model(self) -> EmbeddingDenoiser:
        softmax = self.cfg.target == "probs"
        return EmbeddingDenoiser(self.model_cfg, self.tok.n_symbols, self.codes.shape[1], self.codes, "none", 1.0,
                                 self.cfg.self_condition, head=False, out_dim=self.tok.n_symbols if softmax else 0)

    def decoder_logits(self, model: EmbeddingDenoiser, x: torch.Tensor) -> torch.Tensor:
        """Scores whose argmax is the valid symbol nearest to x (L2), used for the x0 cross-entropy term and
        the bound's exact Gaussian-posterior decoder."""
        table = model.table().float()
        return 2.0 * x.float() @ table.T - table.pow(2).sum(-1)

    def output_logits(self, model: EmbeddingDenoiser, out: torch.Tensor) -> torch.Tensor:
        return out  # softmax factorisation: the backbone's output already is V logits

    def decode(self, model: EmbeddingDenoiser, x: torch.Tensor) -> torch.Tensor:
        ids = bits_to_ids(x)
        invalid = ids >= self.tok.n_symbols
        if invalid.any():  # nearest valid code in Hamming distance = nearest in L2 among the corners
            snapped = torch.sign(x).clamp_min(0) * 2.0 - 1.0
            ids = torch.where(invalid, self.decoder_logits(model, snapped * self.cfg.bit_scale).argmax(-1), ids)
        return ids

    def final_ids(self, model: EmbeddingDenoiser, plan: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        raw = bits_to_ids(plan)
        return self.decode(model, plan), {"invalid_id_rate": float((raw >= self.tok.n_symbols).float().mean())}
