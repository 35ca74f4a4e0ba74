"""The one transformer backbone every text method uses.

Pre-norm blocks with RMSNorm, rotary position embeddings (RoPE, Su et al. 2021) and PyTorch's fused
``scaled_dot_product_attention``. What differs between methods is *not* the network but three switches:

* ``attention``: ``causal`` (autoregressive), ``bidirectional`` (diffusion) or ``block-causal`` (block
  diffusion: bidirectional inside a block of ``block_size`` tokens, causal across blocks);
  :func:`attention_bias` is the single place where a mode becomes a mask;
* ``time_conditioning``: adaLN modulation (Peebles & Xie 2023, "DiT") from a noise level, for methods
  whose denoiser must know how noisy its input is;
* the input adapter: token ids (an embedding table, :class:`TokenInput`) or continuous vectors (a linear
  map, :class:`VectorInput`) for Gaussian diffusion on embeddings, bits or pixels.

``model.positions=none`` switches RoPE off; a bidirectional transformer then sees a *set* of vectors, the
bug behind a published failure that :mod:`textdiffusion.methods.embedding` reproduces on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from textdiffusion.config import ModelConfig
from textdiffusion.nn.time_embedding import sinusoidal

ATTENTION_MODES = ("causal", "bidirectional", "block-causal")
ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


def attention_bias(mode: str, q_len: int, k_len: int, device: torch.device, block_size: int = 1,
                   paired: bool = False) -> tuple[torch.Tensor | None, bool]:
    """Return ``(attn_mask, is_causal)`` for SDPA (a boolean mask: True = may attend).

    With a KV cache the queries are the *last* ``q_len`` of ``k_len`` positions, so causal masking is
    an explicit lower-triangular band rather than SDPA's ``is_causal`` (which assumes q_len == k_len).

    ``block-causal``: position i may see position j when block(j) <= block(i), block(i) = i // block_size.
    ``paired`` is block diffusion's training layout (Arriola et al. 2025, BD3-LM): the input is a
    noisy sequence followed by its clean copy, L + L positions, and

        noisy block b sees its own noisy block and the clean blocks < b,
        clean block b sees the clean blocks <= b,

    so one forward computes every block's denoising prediction, each conditioned on a clean prefix only.
    """
    if mode == "bidirectional":
        return None, False
    if mode == "causal":
        if q_len == k_len:
            return None, True
        if q_len == 1:
            return None, False  # a single new query may see every cached key
        offset = k_len - q_len
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)
        return mask, False
    if mode == "block-causal":
        if paired:
            block = torch.arange(q_len // 2, device=device) // block_size
            same, before = block[:, None] == block[None, :], block[:, None] > block[None, :]
            noisy_rows = torch.cat((same, before), dim=1)
            clean_rows = torch.cat((torch.zeros_like(same), same | before), dim=1)
            return torch.cat((noisy_rows, clean_rows), dim=0), False
        q_block = torch.arange(k_len - q_len, k_len, device=device) // block_size
        mask = q_block[:, None] >= (torch.arange(k_len, device=device) // block_size)[None, :]
        return (None if bool(mask.all()) else mask), False
    raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """RoPE: rotate each (even, odd) feature pair of q and k by an angle proportional to position.

    The attention score q_m . k_n then depends only on m - n. ``tables`` is computed once per forward
    and shared by every layer.
    """

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # (L, D/2)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, L, D) by the angles whose cos/sin are (L, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@dataclass
class KVCache:
    """Per-layer keys/values for incremental causal decoding.

    Deeper layers' keys depend on everything earlier in the sequence, so old entries cannot simply be
    dropped; the caller starts a fresh cache (re-encoding a recent window) once ``full``."""

    max_len: int
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    next_pos: int = 0
    writing: bool = True  # False: a forward reads the cache but leaves it as it was (see peek)

    @classmethod
    def empty(cls, n_layer: int, max_len: int) -> KVCache:
        return cls(max_len, [None] * n_layer, [None] * n_layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None:
            k = torch.cat((old_k, k), dim=2)
            v = torch.cat((old_v, v), dim=2)
        if k.shape[2] > self.max_len:
            raise ValueError(f"KV cache holds at most {self.max_len} positions; start a new cache")
        if self.writing:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def drop_last(self, n: int) -> None:
        """Forget the last ``n`` positions (a forward that wrote more than should stay)."""
        if n > 0:
            self.keys = [None if k is None else k[:, :, :-n] for k in self.keys]
            self.values = [None if v is None else v[:, :, :-n] for v in self.values]
            self.next_pos -= n

    def peek(self) -> KVCache:
        """A read-only view: forwards through it see the cached prefix but add nothing to it (block
        diffusion denoises a block many times against the same clean prefix)."""
        return KVCache(self.max_len, self.keys, self.values, self.next_pos, writing=False)

    def rows(self, index: torch.Tensor) -> KVCache:
        """A read-only view of some of the batch's sequences (a sampler re-running only the rows that changed)."""
        keys = [None if k is None else k[index] for k in self.keys]
        values = [None if v is None else v[index] for v in self.values]
        return KVCache(self.max_len, keys, values, self.next_pos, writing=False)

    @property
    def full(self) -> bool:
        return self.next_pos >= self.max_len


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, bias: tuple[torch.Tensor | None, bool],
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is None:
            q, k = qkv[0], qkv[1]
        else:
            q, k = apply_rotary(qkv[:2], *rope).unbind(0)  # one rotation call for q and k together
        v = qkv[2]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask, is_causal = bias
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {cfg.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-norm residual block; with time conditioning, adaLN-Zero shifts/scales/gates both branches."""

    def __init__(self, cfg: ModelConfig, time_dim: int | None):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(cfg.n_embd), RMSNorm(cfg.n_embd)
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.modulation = None
        if time_dim is not None:
            # zeroed after the backbone's init (see Transformer), so a fresh block ignores t: adaLN-Zero
            self.modulation = nn.Linear(time_dim, 6 * cfg.n_embd)

    def forward(self, x: torch.Tensor, bias: tuple[torch.Tensor | None, bool],
                rope: tuple[torch.Tensor, torch.Tensor] | None, temb: torch.Tensor | None, cache: KVCache | None,
                layer: int) -> torch.Tensor:
        if self.modulation is None or temb is None:
            x = x + self.drop(self.attn(self.norm1(x), bias, rope, cache, layer))
            return x + self.drop(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(temb)[:, None, :].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + (1 + gate1) * self.drop(self.attn(h, bias, rope, cache, layer))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + (1 + gate2) * self.drop(self.mlp(h))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a noise level t in [0, 1], then an MLP (Vaswani et al. / Ho et al. 2020)."""

    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(t, self.freq_dim))


class TokenInput(nn.Module):
    """Input adapter for discrete methods: ids -> vectors."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> their rows; (B, L, K) distributions over the first K ids -> the expected row, a soft
        input (uniform-state diffusion's curriculum feeds a tempered softmax of its Gaussian view)."""
        if ids.is_floating_point():
            return ids.to(self.embed.weight.dtype) @ self.embed.weight[: ids.shape[-1]]
        return self.embed(ids)


class VectorInput(nn.Module):
    """Input adapter for continuous methods: (B, L, in_dim) vectors -> the model width."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Transformer(nn.Module):
    """Input adapter -> N pre-norm blocks -> RMSNorm -> linear head over ``out_dim`` outputs.

    ``input_dim`` > 0 selects the continuous adapter (inputs are vectors of that width, not ids)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, out_dim: int | None = None,
                 attention: str = "causal", time_conditioning: bool = False, input_dim: int = 0,
                 block_size: int = 1, num_labels: int = 0):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; expected one of {ATTENTION_MODES}")
        self.block_size = block_size  # for block-causal attention
        if input_dim and cfg.tie_embeddings:
            raise ValueError("tied embeddings need token inputs; set model.tie_embeddings=false")
        self.cfg = cfg
        self.attention = attention
        self.input = VectorInput(input_dim, cfg.n_embd) if input_dim else TokenInput(vocab_size, cfg.n_embd)
        self.time = TimeEmbedding(cfg.n_embd) if time_conditioning else None
        self.blocks = nn.ModuleList(Block(cfg, cfg.n_embd if time_conditioning else None)
                                    for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, cfg.rope_base)
        self.out_dim = out_dim or vocab_size
        # with tie_embeddings the head is the first out_dim rows of the input table (Press & Wolf 2017)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, self.out_dim, bias=False)
        self.apply(self._init)
        # GPT-2 style: scale residual projections by depth so the residual stream starts well-conditioned
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for block in self.blocks:
            if block.modulation is not None:
                nn.init.zeros_(block.modulation.weight)
                nn.init.zeros_(block.modulation.bias)
        # class labels (a speaker) for conditional generation: row num_labels is "no label", which label
        # dropout trains so one network is both p(x | label) and p(x), as classifier-free guidance needs (Ho &
        # Salimans 2022). Built last, and only when asked, so every other parameter starts as in an unlabelled
        # model of the same seed.
        self.num_labels = num_labels
        self.label = nn.Embedding(num_labels + 1, cfg.n_embd) if num_labels else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, mean=0.0, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, cache: KVCache | None = None,
                paired: bool = False, labels: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B, L) ids, (B, L, K) distributions over the first K ids (token input), or (B, L, input_dim)
        vectors.
        ``t``: (B,) noise levels when time-conditioned. Returns (B, L, out_dim).
        ``paired``: block diffusion's training layout, a noisy sequence then its clean copy (see
        :func:`attention_bias`); both halves get the same positions.
        ``labels``: (B,) class labels in [0, num_labels] (num_labels = none) of a label-conditioned backbone;
        the label's embedding is added at every position, so a causal model sees it from the first token.
        ``attn_mask``: a boolean mask (B, 1, Q, K) that replaces the attention mode's for this forward (True = may
        attend): training's annealed attention (:mod:`textdiffusion.diffusion.adaptation`)."""
        h = self.input(x)
        if self.label is not None:
            if labels is None:
                raise ValueError("this backbone is label-conditioned: pass labels (num_labels for none)")
            h = h + self.label(labels)[:, None, :].to(h.dtype)
        elif labels is not None:
            raise ValueError("this backbone has no labels; build it with num_labels > 0")
        start = cache.next_pos if cache is not None else 0
        n = h.shape[1] // 2 if paired else h.shape[1]
        positions = torch.arange(start, start + n, device=h.device)
        if paired:
            positions = positions.repeat(2)
        rope = self.rotary.tables(positions, h.dtype) if self.cfg.positions != "none" else None
        bias = (attn_mask, False) if attn_mask is not None else \
            attention_bias(self.attention, h.shape[1], start + h.shape[1], h.device, self.block_size, paired)
        temb = None
        if self.time is not None:
            if t is None:
                raise ValueError("this backbone is time-conditioned: pass t")
            temb = F.silu(self.time(t))
        for i, block in enumerate(self.blocks):
            h = block(h, bias, rope, temb, cache, i)
        if cache is not None and cache.writing:
            cache.next_pos += h.shape[1]
        h = self.norm(h)
        if self.head is None:
            return F.linear(h, self.input.embed.weight[: self.out_dim])
        return self.head(h)
