"""Image metrics: the Fréchet distance against closed forms, the digit classifier, its cache, and FID/accuracy
on real MNIST. Everything is CPU-only and small (the classifier trains for 60 steps on 2,000 images)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from textdiffusion.checkpoint import CheckpointError
from textdiffusion.image_metrics import (
    META_FILE,
    WEIGHTS_FILE,
    classifier_for,
    classify,
    fid_and_accuracy,
    frechet_distance,
    load_classifier,
    random_shift,
    save_classifier,
    train_classifier,
)
from textdiffusion.nn.classifier import DigitClassifier, images_to_input


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run this file's tiny convolutions on one thread: a second one gains them nothing, and on a two-core
    machine where another process is busy, OpenMP's spin-waiting made the file ~8x slower (61 s vs 7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- Fréchet distance ------------------------------------------------------------------------------


def _correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g,
                                                                                dtype=torch.float64)


def test_frechet_identical_sets_is_zero():
    a = _correlated(300, 12, 0)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a.float(), a.clone().float())) < 1e-6


def test_frechet_shift_by_constant_is_squared_norm():
    a = _correlated(400, 8, 1)
    c = torch.linspace(-1.5, 2.0, 8, dtype=torch.float64)
    # same covariance, so the trace term vanishes and only ||mu_a - mu_b||^2 = ||c||^2 remains
    assert frechet_distance(a, a + c) == pytest.approx(float(c.square().sum()), rel=1e-6)


def test_frechet_closed_form_diagonal_gaussians():
    # All 2^4 sign patterns: columns are exactly zero-mean and mutually orthogonal, so the sample covariance is
    # exactly diagonal, sigma^2 * n / (n - 1). For diagonal covariances Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) is
    # sum_i (s_a,i - s_b,i)^2 with s the standard deviations.
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)
    n = signs.shape[0]
    sig_a = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    sig_b = torch.tensor([1.5, 1.0, 0.25, 4.0], dtype=torch.float64)
    mu_a = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    mu_b = torch.tensor([0.5, 0.0, -1.0, 0.0], dtype=torch.float64)
    a, b = signs * sig_a + mu_a, signs * sig_b + mu_b
    scale = (n / (n - 1)) ** 0.5
    expected = (mu_a - mu_b).square().sum() + ((sig_a - sig_b) * scale).square().sum()
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-9)


def test_frechet_scaled_covariance_closed_form():
    # b = s * a: S_b = s^2 S_a, (S_a S_b)^{1/2} = s S_a, so the distance is (1-s)^2 (||mu_a||^2 + Tr S_a)
    a = _correlated(500, 6, 2) + 0.3
    s = 2.5
    mu, cov = a.mean(0), torch.cov(a.T)
    expected = (1 - s) ** 2 * (mu.square().sum() + cov.trace())
    assert frechet_distance(a, s * a) == pytest.approx(float(expected), rel=1e-6)


def test_frechet_grows_with_shift_and_is_symmetric():
    a = _correlated(300, 10, 3)
    direction = torch.ones(10, dtype=torch.float64)
    values = [frechet_distance(a, a + k * direction) for k in (0.1, 0.5, 1.0, 2.0, 4.0)]
    assert all(x < y for x, y in itertools.pairwise(values))
    b = _correlated(200, 10, 4) * 0.7 + 1.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_matches_scipy_when_available():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = _correlated(400, 7, 5), _correlated(300, 7, 6) + 0.5
    an, bn = a.numpy(), b.numpy()
    ca, cb = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    covmean = np.real(linalg.sqrtm(ca @ cb))
    expected = np.sum((an.mean(0) - bn.mean(0)) ** 2) + np.trace(ca + cb - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-8)


def test_frechet_singular_covariance_is_finite():
    # fewer samples than features: both covariances are rank-deficient, the eigh route must not blow up
    a, b = _correlated(5, 20, 7), _correlated(6, 20, 8)
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.randn(1, 4), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.randn(10, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match="feature dimensions"):
        frechet_distance(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(torch.randn(10), torch.randn(10))


# ---- the classifier --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 8])
def test_classifier_shapes(size: int):
    model = DigitClassifier(width=8, feature_dim=24)
    x = torch.rand(5, 1, size, size) * 2 - 1
    assert model.features(x).shape == (5, 24)
    assert model(x).shape == (5, 10)
    assert DigitClassifier(num_classes=3, width=4)(x).shape == (5, 3)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.rand(5, size, size))


def test_images_to_input_and_shift():
    raw = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    assert torch.equal(images_to_input(raw), torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))
    x = torch.full((3, 1, 6, 6), -1.0)
    x[:, 0, 2:4, 2:4] = 1.0
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal((shifted == 1).sum((1, 2, 3)), torch.full((3,), 4))  # the blob moved, whole
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


@pytest.fixture(scope="module")
def mnist(mnist_file: Path) -> dict[str, torch.Tensor]:
    with np.load(mnist_file, allow_pickle=False) as d:
        return {"x_train": torch.from_numpy(d["x_train"][:2000]),
                "y_train": torch.from_numpy(d["y_train"][:2000]).long(),
                "x_test": torch.from_numpy(d["x_test"][:1000]),
                "y_test": torch.from_numpy(d["y_test"][:1000]).long()}


@pytest.fixture(scope="module")
def trained(mnist) -> tuple[DigitClassifier, float]:
    # 60 steps of 64 (about two passes over 2,000 images) at width 16: seed 0 gives ~0.9, seeds 0-2 all >= 0.86
    return train_classifier(mnist["x_train"], mnist["y_train"], mnist["x_test"][:500], mnist["y_test"][:500],
                            steps=60, batch_size=64, width=16, max_shift=0, progress=False, seed=0)


def test_train_classifier_learns(trained):
    model, accuracy = trained
    assert accuracy > 0.8
    assert not model.training


def test_train_classifier_is_deterministic_and_keeps_global_rng(mnist):
    kwargs = dict(steps=3, batch_size=32, width=4, feature_dim=8, progress=False, seed=5)
    data = (mnist["x_train"][:256], mnist["y_train"][:256], mnist["x_test"][:64], mnist["y_test"][:64])
    torch.manual_seed(123)
    m1, acc1 = train_classifier(*data, **kwargs)
    after = torch.rand(1)
    torch.manual_seed(123)
    m2, acc2 = train_classifier(*data, **kwargs)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG stream is untouched by training
    assert acc1 == acc2
    for p1, p2 in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2)


def test_train_classifier_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        train_classifier(torch.rand(10, 8, 8), torch.zeros(10, dtype=torch.long),
                         torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), steps=1)


# ---- save / load / cache ---------------------------------------------------------------------------


def _tiny(seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    return DigitClassifier(width=4, feature_dim=8, image_size=8).eval()


def test_save_load_round_trip(tmp_path: Path):
    model = _tiny()
    save_classifier(model, 0.75, tmp_path / "clf", {"steps": 10, "seed": 0, "data": "abc"})
    loaded, meta = load_classifier(tmp_path / "clf")
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert meta["test_accuracy"] == 0.75 and meta["width"] == 4 and meta["feature_dim"] == 8
    assert meta["image_size"] == 8 and meta["num_classes"] == 10 and meta["info"]["data"] == "abc"


def _one_line_error(folder: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_classifier(folder)
    assert "\n" not in str(info.value)


def test_load_missing_corrupt_or_mismatched(tmp_path: Path):
    _one_line_error(tmp_path / "nothing", "missing")
    folder = tmp_path / "clf"
    save_classifier(_tiny(), 0.5, folder, {})
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    _one_line_error(folder, "corrupt")
    save_classifier(_tiny(), 0.5, folder, {})
    (folder / WEIGHTS_FILE).unlink()
    _one_line_error(folder, "missing")
    save_classifier(_tiny(), 0.5, folder, {})
    (folder / META_FILE).write_text("{ not json")
    _one_line_error(folder, "corrupt")
    save_classifier(_tiny(), 0.5, folder, {})
    save_classifier(DigitClassifier(width=6, feature_dim=8), 0.5, tmp_path / "other", {})
    (folder / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    _one_line_error(folder, "does not match")
    (folder / META_FILE).write_text('{"format": "something else"}')
    _one_line_error(folder, "not a digit-classifier")


def test_classifier_for_trains_once_then_loads(tmp_path: Path):
    calls = []

    def train_fn() -> tuple[DigitClassifier, float]:
        calls.append(1)
        return _tiny(len(calls)), 0.9

    m1, meta1 = classifier_for("abc123", train_fn, tmp_path, {"steps": 7})
    m2, meta2 = classifier_for("abc123", train_fn, tmp_path, {"steps": 7})
    assert len(calls) == 1
    assert (tmp_path / "classifier-abc123" / META_FILE).exists()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(m1(x), m2(x))
    assert meta1 == meta2 and meta2["test_accuracy"] == 0.9 and meta2["info"]["steps"] == 7
    classifier_for("other", train_fn, tmp_path, {})  # another data key is another classifier
    assert len(calls) == 2
    (tmp_path / "classifier-abc123" / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="retraining"):
        classifier_for("abc123", train_fn, tmp_path, {})
    assert len(calls) == 3


# ---- evaluation ------------------------------------------------------------------------------------


def test_classify_shapes_and_restores_mode():
    model = _tiny().train()
    feats, pred = classify(model, torch.rand(7, 1, 8, 8) * 2 - 1, batch_size=3)
    assert feats.shape == (7, 8) and feats.dtype == torch.float32 and pred.shape == (7,)
    assert model.training
    feats_u8, _ = classify(model, torch.randint(0, 256, (7, 8, 8), dtype=torch.uint8))
    assert feats_u8.shape == (7, 8)


def test_fid_and_accuracy_on_real_digits(trained, mnist):
    model, _ = trained
    real = images_to_input(mnist["x_test"])
    labels = mnist["y_test"]
    first, second = real[:500], real[500:]
    same = fid_and_accuracy(model, first, second, labels[:500])
    noise = fid_and_accuracy(model, torch.rand_like(first) * 2 - 1, second, None)
    shifted = fid_and_accuracy(model, torch.roll(first, shifts=(6, 6), dims=(2, 3)), second, None)
    assert same["n_generated"] == 500 and same["n_reference"] == 500
    assert noise["class_accuracy"] is None
    assert same["fid"] * 5 < shifted["fid"] and same["fid"] * 5 < noise["fid"]
    _, pred = classify(model, first)
    assert same["class_accuracy"] == pytest.approx((pred == labels[:500]).float().mean().item())
    assert fid_and_accuracy(model, first, second, pred)["class_accuracy"] == 1.0
    with pytest.raises(ValueError, match="requested labels"):
        fid_and_accuracy(model, first, second, labels[:10])
