"""A small digit classifier: the feature extractor for image FID and the judge of class-conditional samples.

Why our own network and not Inception-v3: FID (Heusel et al. 2017) only needs *some* feature space in which
real and generated images are compared, and an ImageNet network sees a 28x28 grey digit as an upscaled blob;
the usual MNIST practice is a small classifier trained on MNIST itself, whose penultimate layer encodes
exactly the properties (stroke shape, digit identity) that matter. It also needs no download: it trains on
two CPU cores in a couple of minutes and is cached beside the data.

Layout (``width = w``), for 28x28 inputs::

    conv 3x3 (1 -> w)     -> GN -> ReLU                28x28
    max-pool 2                                         14x14
    conv 3x3 (w -> 2w)    -> GN -> ReLU                14x14
    max-pool 2                                          7x7
    conv 3x3 (2w -> 2w)   -> GN -> ReLU  (x2)           7x7
    adaptive average pool to 4x4 -> flatten -> linear (32w -> feature_dim) -> ReLU   = features (FID space)
    dropout -> linear (feature_dim -> num_classes)                                 = logits

The adaptive pool makes the network size-agnostic, so the same class serves 8x8 sklearn digits (whose 2x2
map is replicated up to 4x4). Pooling to 4x4 rather than globally keeps a coarse layout of where the strokes
are (top loop of a 9 vs bottom loop of a 6). On MNIST (first 5,000 test digits) 400 training steps gave
98.2% with a 4x4 map and 97.4% with 2x2; a global average pool reached only 96.1% after 500 steps.
GroupNorm rather than BatchNorm: no running statistics, so train/eval differ only by dropout and the
features of an image do not depend on what else is in its batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POOLED = 4  # side of the pooled map that is flattened into the feature layer


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    """conv 3x3 -> GroupNorm -> ReLU; the conv has no bias because the norm's shift replaces it."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(math.gcd(8, c_out), c_out),
            nn.ReLU(inplace=True)]


class DigitClassifier(nn.Module):
    """A four-conv CNN for single-channel digits in [-1, 1]; see the module docstring for the layout.

    ``image_size`` is not needed by the network (it is size-agnostic); it is recorded so a saved
    classifier can say which data it was trained for.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128, dropout: float = 0.1,
                 image_size: int | None = None):
        super().__init__()
        if num_classes < 2 or width < 1 or feature_dim < 1:
            raise ValueError(f"DigitClassifier needs num_classes >= 2, width >= 1, feature_dim >= 1; got "
                             f"{num_classes}, {width}, {feature_dim}")
        self.num_classes = num_classes
        self.width = width
        self.feature_dim = feature_dim
        self.dropout = dropout
        self.image_size = image_size
        self.body = nn.Sequential(
            *_conv_block(1, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 2 * width),
            *_conv_block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(POOLED),
            nn.Flatten(),
            nn.Linear(2 * width * POOLED * POOLED, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(N, feature_dim)``: the space FID is computed in."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"DigitClassifier expects images of shape (N, 1, H, W); got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.head(self.features(x))

    def config(self) -> dict[str, int | float | None]:
        """The constructor arguments, for the JSON beside saved weights."""
        return {"num_classes": self.num_classes, "width": self.width, "feature_dim": self.feature_dim,
                "dropout": self.dropout, "image_size": self.image_size}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images_to_input(images: Tensor) -> Tensor:
    """uint8 ``(N, H, W)``/``(N, 1, H, W)`` in 0..255 or float in [-1, 1] -> float ``(N, 1, H, W)`` in [-1, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected digit images of shape (N, H, W) or (N, 1, H, W); got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float()


__all__ = ["DigitClassifier", "count_parameters", "images_to_input"]
