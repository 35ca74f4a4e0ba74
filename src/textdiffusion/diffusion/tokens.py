"""Token draws: the filter a request puts on a distribution over tokens, the Gumbel-max draw, and the per-token
cross-entropy every discrete loss sums.

These functions take their options as given; the request's ``temperature``, ``top_k`` and ``top_p`` are checked
where the request is checked (:func:`textdiffusion.methods.base.check_draw`), so a sampler in this package never
sees a nan temperature or a top-p of 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p, Holtzman et al. 2020) filtering on the last dim."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps at least one)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Categorical sample by the Gumbel-max trick: argmax(logits + Gumbel noise), in float64.

    float32 uniforms cannot come closer to 1 than 2^-24, which caps the Gumbel noise -log(-log u) at about
    16.6 and so truncates its right tail: rare tokens are drawn less often than their probability, as if the
    temperature were lowered, and sample-quality metrics look better than the model is (Zheng et al. 2024,
    "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
    Sampling", Sec. 4). float64 pushes the cap to about 36.7. It consumes a fixed amount of randomness per call
    whatever the logits are, which keeps two samplers that share a generator (e.g. cached and uncached) in
    lock-step. (Apple's MPS has no float64; there it stays float32.)"""
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=dtype)
    u = u.clamp_(torch.finfo(dtype).tiny, 1.0)
    return (logits.to(dtype) - torch.log(-torch.log(u))).argmax(-1)


def cross_entropy_per_token(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(target) at every position: (..., V) logits and (...) ids -> (...) nats."""
    return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), reduction="none").view(target.shape)


@dataclass(frozen=True)
class TokenDraw:
    """How a sampler turns logits into tokens: the request's temperature, top-k and nucleus, then Gumbel-max."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        return filter_logits(logits, self.temperature, self.top_k, self.top_p)

    def __call__(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Tokens drawn from the filtered distribution."""
        return gumbel_sample(self.filter(logits), generator)
