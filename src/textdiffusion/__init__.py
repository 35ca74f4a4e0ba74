"""TextDiffusion: diffusion models on text (and images), side by side with an autoregressive baseline."""

__version__ = "0.1.0"
