"""Networks: the transformer backbone shared by every text method."""

from textdiffusion.nn.transformer import KVCache, Transformer

__all__ = ["KVCache", "Transformer"]
