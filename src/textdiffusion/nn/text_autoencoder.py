r"""A text autoencoder: a window of L tokens <-> k = L / c latent vectors of width d.

The encoder is local: latent j is computed from its own chunk of c tokens and nothing else (the window is cut
into k chunks that the encoder transformer reads as k separate sequences). So the latent of a chunk whose
characters are all known can be computed without the rest of the window, which is what makes prompts and
infilling possible by imputation in the latent (:mod:`textdiffusion.methods.latent`). The decoder is global:
it reads all k latents at once (a bidirectional transformer over the L positions), so it can repair a chunk
boundary that the diffusion left inconsistent.

The encoder's mean is normalised, every latent vector to zero mean and unit variance across its d coordinates
(a layer norm with no learned scale). That pins the latent's scale against the unit noise of the diffusion
once and for all: without it, reconstruction alone would let the encoder grow its means until the fixed
encoder noise ``sigma`` no longer mattered, and the diffusion's noise levels would mean something different at
every step of training. With it, the stochastic encoder q(z | x) = N(mu(x), sigma^2 I) has a signal-to-noise
ratio of 1 / sigma^2 per coordinate by construction (8 at the default sigma of 0.35), and the decoder, trained
on draws from it, must decode a neighbourhood of each mean: the latent space is smooth (Cosmos, Meshchaninov et
al. 2025, for the same reason adds noise to its latents).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from textdiffusion.config import ModelConfig
from textdiffusion.nn.transformer import Transformer


class TextAutoencoder(nn.Module):
    """Encoder mu(x) (B, L) -> (B, k, d) and decoder logits(z) (B, k, d) -> (B, L, n_symbols).

    ``vocab_size`` counts every token the encoder may read (symbols and specials); the decoder only ever
    writes ordinary symbols (``n_symbols``)."""

    def __init__(self, model_cfg: ModelConfig, vocab_size: int, n_symbols: int, compression: int, latent_dim: int,
                 layers: int):
        super().__init__()
        self.c, self.d = compression, latent_dim
        cfg = dataclasses.replace(model_cfg, n_layer=layers, tie_embeddings=False)
        width = cfg.n_embd
        self.encoder = Transformer(cfg, vocab_size, out_dim=width, attention="bidirectional")
        # patchify: the chunk's c output vectors, side by side, to one latent
        self.to_latent = nn.Linear(compression * width, latent_dim)
        # unpatchify: one latent to c vectors, one per position of its chunk (each offset its own projection)
        self.from_latent = nn.Linear(latent_dim, compression * width)
        self.decoder = Transformer(cfg, vocab_size=0, out_dim=n_symbols, attention="bidirectional", input_dim=width)

    def mean(self, ids: torch.Tensor) -> torch.Tensor:
        """mu(x): (B, L) token ids -> (B, L / c, d) normalised latent means, each chunk read on its own."""
        b, length = ids.shape
        k = length // self.c
        h = self.encoder(ids.reshape(b * k, self.c))  # k independent sequences of c tokens: locality
        mu = self.to_latent(h.reshape(b, k, self.c * h.shape[-1]))
        return F.layer_norm(mu, (self.d,))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder (:meth:`logits`): what a functional call with other parameters runs."""
        return self.logits(z)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """p(x | z): (B, k, d) latents -> (B, k * c, n_symbols) logits over every position of the window."""
        b, k, _ = z.shape
        h = self.from_latent(z).reshape(b, k * self.c, -1)
        return self.decoder(h)
