"""Methods, registered by name. Importing this package registers every built-in method."""

from textdiffusion.methods import ar, bits, block, embedding, image, latent, masked, uniform  # noqa: F401  (registration side effect)
from textdiffusion.methods.base import (
    REGISTRY,
    Method,
    NLLResult,
    SampleRequest,
    SampleResult,
    TextMethod,
    get_method,
)

__all__ = ["REGISTRY", "Method", "NLLResult", "SampleRequest", "SampleResult", "TextMethod", "get_method"]
