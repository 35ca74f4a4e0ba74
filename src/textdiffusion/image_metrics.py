"""Image-model metrics: FID in a small MNIST classifier's feature space, and class-conditional accuracy.

Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") fits a Gaussian to the features of real and of generated images and reports
the Fréchet (2-Wasserstein) distance between the two Gaussians (Dowson & Landau 1982)::

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

Here the features are the penultimate activations of :class:`~textdiffusion.nn.classifier.DigitClassifier`,
trained on the same dataset (the Inception network of the original paper knows nothing about 28x28 digits).
Numbers are therefore comparable across runs that use the same cached classifier, and *not* with FIDs
published against Inception-v3 features.

The same classifier answers "did the class-conditional model draw the digit it was asked for?": the fraction
of samples it labels as requested. That figure is bounded by the classifier's own test accuracy, which is
stored with it and should be reported beside it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiffusion.checkpoint import CheckpointError, read_json, read_tensors, versions, write_json, write_tensors
from textdiffusion.nn.classifier import DigitClassifier, images_to_input
from textdiffusion.optim import warmup_cosine

WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
FORMAT = "textdiffusion-digit-classifier-v1"

# The default budget: 1500 x 128 images, 3.2 epochs of MNIST (see benchmarks/mnist_classifier.py for the
# measured time and accuracy).
DEFAULT_STEPS = 1500
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 3e-3


# ---- Fréchet distance --------------------------------------------------------------------------------

def _psd_sqrt(mat: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition (rounding negatives to 0)."""
    evals, evecs = torch.linalg.eigh(mat)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N_a, F)`` and ``(N_b, F)``.

    Heusel et al. 2017. Covariances are the unbiased sample estimates (divide by N - 1), as in the
    reference implementation. ``Tr (S_a S_b)^{1/2}`` is computed as the sum of square roots of the eigenvalues
    of ``S_a^{1/2} S_b S_a^{1/2}``: that matrix is similar to ``S_a S_b`` (so has the same spectrum) but is
    symmetric PSD, so ``eigh`` applies and the result is real, and it stays well defined when the
    covariances are singular (fewer samples than features), where the usual ``scipy.linalg.sqrtm`` of the
    non-symmetric product can return complex noise. Everything is in float64; the result is clamped at 0,
    which it can only undershoot by rounding.
    """
    if feats_a.dim() != 2 or feats_b.dim() != 2:
        raise ValueError(f"frechet_distance expects 2-D feature matrices (N, F); got shapes "
                         f"{tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature dimensions differ: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    if feats_a.shape[0] < 2 or feats_b.shape[0] < 2:
        raise ValueError(f"frechet_distance needs at least 2 rows in each feature set to estimate a covariance; "
                         f"got {feats_a.shape[0]} and {feats_b.shape[0]}")
    a = feats_a.detach().to("cpu", torch.float64)
    b = feats_b.detach().to("cpu", torch.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.cov(a.T).reshape(a.shape[1], a.shape[1])  # reshape: torch.cov squeezes F = 1 to a scalar
    cov_b = torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = (middle + middle.T) / 2  # symmetric in exact arithmetic; remove rounding asymmetry before eigh
    tr_covmean = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_covmean
    return max(float(d2), 0.0)


# ---- training --------------------------------------------------------------------------------------

def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``(N, 1, H, W)`` (in [-1, 1]) by its own integer offset in
    ``[-max_shift, max_shift]`` on both axes, filling with background (-1). Digits are centred by their centre
    of mass in MNIST, so small shifts are label-preserving and teach the classifier not to rely on it."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device="cpu").to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def _check_data(x: Tensor, y: Tensor, name: str) -> None:
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise ValueError(f"{name} images must be a uint8 tensor (N, H, W) of 0..255; got {x.dtype} "
                         f"{tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} labels must be a 1-D tensor with one label per image; got {tuple(y.shape)} "
                         f"for {x.shape[0]} images")


def _classifier_optimizer(model: DigitClassifier, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices and kernels only."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr)


def _epochs(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches of shuffled epochs, forever; a new permutation is drawn when the next batch would run
    past the end of the current one (the leftover images wait for the next epoch)."""
    order, cursor = torch.randperm(n, generator=generator), 0
    while True:
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        yield order[cursor:cursor + batch_size]
        cursor += batch_size


def train_classifier(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *,
                     steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                     seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                     num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                     max_shift: int = 2) -> tuple[DigitClassifier, float]:
    """Train a :class:`DigitClassifier` on uint8 images ``(N, H, W)`` and integer labels.

    AdamW with linear warm-up and cosine decay, shuffled epochs, random shifts of up to ``max_shift`` pixels.
    All randomness (initialisation, order, shifts, dropout) comes from ``seed`` and the caller's global RNG
    state is left untouched, so the same seed gives the same weights on the same hardware.
    Returns the model in eval mode and its accuracy on ``(x_test, y_test)``.
    """
    from textdiffusion.progress import progress_bar

    _check_data(x_train, y_train, "training")
    _check_data(x_test, y_test, "test")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps} and {batch_size}")
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = DigitClassifier(num_classes=num_classes, width=width, feature_dim=feature_dim,
                                image_size=int(x_train.shape[-1])).to(device)
        opt = _classifier_optimizer(model, lr)
        gen = torch.Generator().manual_seed(seed)
        xs, ys = x_train.to(device), y_train.to(device=device, dtype=torch.long)
        batches = _epochs(xs.shape[0], batch_size, gen)
        warmup = min(100, steps // 10 + 1)
        model.train()
        bar = progress_bar(iterable=range(steps), disable=not progress, desc="digit classifier", leave=False)
        for step in bar:
            idx = next(batches).to(device)
            x = random_shift(images_to_input(xs[idx]), max_shift, gen)
            loss = F.cross_entropy(model(x), ys[idx])
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, steps, lr, 0.0, warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn with the next throttled update
        bar.close()
    model.eval()
    _, pred = classify(model, images_to_input(x_test))
    accuracy = (pred == y_test.long().cpu()).float().mean().item()
    return model, accuracy


# ---- save / load / cache ---------------------------------------------------------------------------

def save_classifier(model: DigitClassifier, accuracy: float, path_dir: Path, info: dict[str, Any]) -> None:
    """Write ``classifier.safetensors`` + ``classifier.json`` (architecture, test accuracy, ``info``) to a folder.

    The weights go first: a crash between the two writes leaves no JSON, so the folder reads as "missing"
    rather than as a classifier whose description belongs to other weights.
    """
    path_dir = Path(path_dir)
    write_tensors(path_dir / WEIGHTS_FILE, model.state_dict(), step=int(info.get("steps", -1)))
    write_json(path_dir / META_FILE, {"format": FORMAT, **model.config(), "test_accuracy": float(accuracy),
                                      "parameters": sum(p.numel() for p in model.parameters()),
                                      "info": info, "versions": versions()})


def load_classifier(path_dir: Path, device: str | torch.device = "cpu") -> tuple[DigitClassifier, dict[str, Any]]:
    """Read a folder written by :func:`save_classifier`; returns ``(eval-mode model, metadata)``.

    Missing, corrupt or mutually inconsistent files raise a one-line :class:`CheckpointError`.
    """
    path_dir = Path(path_dir)
    meta = read_json(path_dir / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path_dir / META_FILE} is not a digit-classifier description (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}); delete the folder "
                              f"to retrain")
    try:
        model = DigitClassifier(num_classes=int(meta["num_classes"]), width=int(meta["width"]),
                                feature_dim=int(meta["feature_dim"]), dropout=float(meta.get("dropout", 0.0)),
                                image_size=meta.get("image_size"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path_dir / META_FILE} has a missing or bad field ({type(e).__name__}: {e}); "
                              f"delete the folder to retrain") from None
    tensors, _ = read_tensors(path_dir / WEIGHTS_FILE)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise CheckpointError(f"{path_dir / WEIGHTS_FILE} does not match {META_FILE} ({detail}); "
                              f"delete the folder to retrain") from None
    return model.to(device).eval(), meta


def classifier_for(data_key: str, train_fn: Callable[[], tuple[DigitClassifier, float]], cache_dir: Path,
                   info: dict[str, Any]) -> tuple[DigitClassifier, dict[str, Any]]:
    """The classifier for one dataset: loaded from ``cache_dir/classifier-<data_key>`` or trained and cached.

    ``data_key`` should identify the data (e.g. a prefix of its sha256) so a changed dataset never reuses a
    stale classifier. A cache that exists but cannot be read is retrained (with a warning) rather than
    fatal: it holds nothing that cannot be rebuilt.
    """
    folder = Path(cache_dir) / f"classifier-{data_key}"
    if (folder / META_FILE).exists() or (folder / WEIGHTS_FILE).exists():
        try:
            return load_classifier(folder)
        except CheckpointError as e:
            warnings.warn(f"retraining the digit classifier: {e}", stacklevel=2)
    tic = time.perf_counter()
    model, accuracy = train_fn()
    info = {**info, "data_key": data_key, "train_seconds": round(time.perf_counter() - tic, 1)}
    save_classifier(model, accuracy, folder, info)
    return model.eval(), read_json(folder / META_FILE)


# ---- evaluation ------------------------------------------------------------------------------------

@torch.no_grad()
def classify(model: DigitClassifier, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features ``(N, F)`` (float32, CPU) and predicted labels ``(N,)`` (CPU) of images in [-1, 1].

    Runs on the model's device in eval mode (restoring the caller's mode afterwards), in batches so that
    tens of thousands of images fit in memory.
    """
    images = images_to_input(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, preds = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            f = model.features(images[start:start + batch_size].to(device))
            feats.append(f.float().cpu())
            preds.append(model.head(f).argmax(-1).cpu())
    finally:
        model.train(was_training)
    if not feats:
        return torch.empty(0, model.feature_dim), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(preds)


def fid_and_accuracy(model: DigitClassifier, generated: Tensor, reference: Tensor,
                     requested_labels: Tensor | None) -> dict[str, Any]:
    """FID of ``generated`` against ``reference`` (real test images) and, when labels were requested, the
    fraction of generated images the classifier assigns to the requested class.

    Images are float ``(N, 1, H, W)`` in [-1, 1] (uint8 0..255 is also accepted). FID is biased upwards for
    small N (Chong & Forsyth 2020), so compare figures computed with the same numbers of images.
    """
    if requested_labels is not None and requested_labels.shape[0] != generated.shape[0]:
        raise ValueError(f"{requested_labels.shape[0]} requested labels for {generated.shape[0]} generated images")
    gen_feats, gen_pred = classify(model, generated)
    ref_feats, _ = classify(model, reference)
    class_accuracy = None
    if requested_labels is not None:
        class_accuracy = (gen_pred == requested_labels.long().cpu()).float().mean().item()
    return {"fid": frechet_distance(gen_feats, ref_feats), "n_generated": int(generated.shape[0]),
            "n_reference": int(reference.shape[0]), "class_accuracy": class_accuracy}


__all__ = ["DigitClassifier", "classifier_for", "classify", "fid_and_accuracy", "frechet_distance",
           "load_classifier", "random_shift", "save_classifier", "train_classifier"]
