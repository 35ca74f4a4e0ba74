"""Image data: MNIST from .npz / IDX / the data dir / a (faked) download, the digits fallback, and every
validation error. The real MNIST is ``$TEXTDIFFUSION_DATA/mnist.npz``, which tests reach through conftest's
``mnist_file``."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from textdiffusion.data import images as images_mod
from textdiffusion.data.corpus import DataError, sha256_of
from textdiffusion.data.images import (
    MNIST_ARRAY_SHA256,
    MNIST_IDX_FILES,
    MNIST_IDX_MIRROR,
    MNIST_NPZ_URL,
    ImageData,
    is_canonical_mnist,
    load_digits,
    load_images,
    load_mnist_idx,
    load_mnist_npz,
)

KEYS = ("x_train", "y_train", "x_test", "y_test")


@pytest.fixture(scope="module")
def mnist(mnist_file: Path) -> ImageData:
    return load_mnist_npz(mnist_file)


@pytest.fixture(scope="module")
def small(mnist: ImageData) -> dict[str, np.ndarray]:
    """A slice of real MNIST (200 train, 50 test), labels as uint8 like the files on disk."""
    return {"x_train": mnist.x_train[:200].numpy(), "y_train": mnist.y_train[:200].numpy().astype(np.uint8),
            "x_test": mnist.x_test[:50].numpy(), "y_test": mnist.y_test[:50].numpy().astype(np.uint8)}


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x803 if arr.ndim == 3 else 0x801
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(directory: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, base in MNIST_IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (directory / f"{base}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (directory / base).write_bytes(raw)
    return directory


def fake_npz(path: Path, **overrides: np.ndarray | None) -> Path:
    """A tiny valid 8x8 npz, with arrays replaced (or dropped, when None) by ``overrides``."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray | None] = {
        "x_train": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), "y_train": np.arange(6) % 10,
        "x_test": rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), "y_test": np.arange(4) % 10,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --- loading ------------------------------------------------------------------------------------------------------


def test_real_npz_is_canonical_mnist(mnist: ImageData, mnist_file: Path):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert mnist.x_train.dtype == torch.uint8 and mnist.y_train.dtype == torch.int64
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    assert (mnist.name, mnist.image_size, mnist.num_classes, mnist.offline_fallback) == ("mnist", 28, 10, False)
    for key in KEYS:
        arr = getattr(mnist, key).numpy().astype(np.uint8)
        assert hashlib.sha256(arr.tobytes()).hexdigest() == MNIST_ARRAY_SHA256[key]
    assert is_canonical_mnist(mnist)
    rec = mnist.record()
    assert json.loads(json.dumps(rec)) == rec
    assert rec["sha256"] == sha256_of(mnist_file)
    assert (rec["n_train"], rec["n_test"], rec["image_size"], rec["offline_fallback"]) == (60000, 10000, 28, False)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_files_load_equal_to_the_arrays(tmp_path: Path, small: dict[str, np.ndarray], gz: bool):
    data = load_mnist_idx(write_idx(tmp_path / "idx", small, gz))
    for key in KEYS:
        assert np.array_equal(getattr(data, key).numpy(), small[key])
    assert data.y_train.dtype == torch.int64 and data.image_size == 28
    assert data.record()["sha256"] is None and "IDX" in data.source
    assert not is_canonical_mnist(data)


def test_directory_resolution(tmp_path: Path, small: dict[str, np.ndarray]):
    idx_dir = write_idx(tmp_path / "idx", small, gz=True)
    assert load_images(str(idx_dir)).x_train.shape == (200, 28, 28)
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "mnist.npz", **small)
    data = load_images(str(npz_dir))
    assert data.source == str(npz_dir / "mnist.npz") and data.x_test.shape == (50, 28, 28)
    assert load_images(str(npz_dir / "mnist.npz")).y_test.tolist() == small["y_test"].tolist()


def test_directory_with_neither_lists_what_it_expected(tmp_path: Path, small: dict[str, np.ndarray]):
    write_idx(tmp_path, small, gz=False)
    (tmp_path / MNIST_IDX_FILES["y_test"]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as e:
        load_images(str(tmp_path))
    assert "mnist.npz" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="lacks the MNIST IDX"):
        load_mnist_idx(tmp_path)


def test_mnist_by_name_from_the_data_dir(mnist_file: Path):
    data = load_images("MNIST", download=False)
    assert data.source == str(mnist_file) and data.x_train.shape == (60000, 28, 28)


def test_mnist_by_name_from_idx_files_in_the_data_dir(tmp_path, monkeypatch, small: dict[str, np.ndarray]):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(write_idx(tmp_path, small, gz=True)))
    assert load_images("mnist", download=False).x_train.shape == (200, 28, 28)


def test_mnist_by_name_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    with pytest.raises(DataError, match="--data digits") as e:
        load_images("mnist", download=False)
    assert str(tmp_path) in str(e.value)


def test_digits_fallback():
    data = load_images("digits")
    assert data.x_train.shape == (1500, 8, 8) and data.x_test.shape == (297, 8, 8)
    assert data.x_train.dtype == torch.uint8 and data.y_test.dtype == torch.int64
    assert data.offline_fallback and data.name == "digits" and "offline fallback" in data.source
    both = torch.cat([data.x_train.flatten(), data.x_test.flatten()])
    assert int(both.min()) == 0 and int(both.max()) == 255
    assert sorted(torch.cat([data.y_train, data.y_test]).unique().tolist()) == list(range(10))
    assert torch.equal(load_digits().x_test, data.x_test)  # the split is deterministic
    assert data.record()["image_size"] == 8 and not is_canonical_mnist(data)


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="not found") as e:
        load_mnist_npz(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(e.value)


def test_corrupt_npz(tmp_path: Path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"not a readable \.npz") as e:
        load_images(str(path))
    assert str(path) in str(e.value)


def test_truncated_gzip(tmp_path: Path, small: dict[str, np.ndarray]):
    write_idx(tmp_path, small, gz=True)
    path = tmp_path / f"{MNIST_IDX_FILES['x_train']}.gz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as e:
        load_mnist_idx(tmp_path)
    assert str(path) in str(e.value)


def test_bad_idx_magic(tmp_path: Path, small: dict[str, np.ndarray]):
    write_idx(tmp_path, small, gz=False)
    path = tmp_path / MNIST_IDX_FILES["y_train"]
    path.write_bytes(idx_bytes(small["x_train"]))  # an image file where the labels should be
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        load_mnist_idx(tmp_path)


def test_idx_size_not_matching_header(tmp_path: Path, small: dict[str, np.ndarray]):
    write_idx(tmp_path, small, gz=False)
    path = tmp_path / MNIST_IDX_FILES["x_test"]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="header says"):
        load_mnist_idx(tmp_path)


@pytest.mark.parametrize(("overrides", "fact"), [
    ({"x_train": np.zeros((6, 28, 27), np.uint8)}, r"\(6, 28, 27\)"),
    ({"y_train": np.zeros(5, np.int64)}, "holds 6 images"),
    ({"x_test": np.zeros((4, 8, 8), np.float32)}, "uint8"),
    ({"y_test": np.array([0, 1, 2, 10])}, "outside 0..9"),
    ({"y_train": np.array([-1, 0, 1, 2, 3, 4])}, "outside 0..9"),
    ({"y_test": np.zeros(4, np.float64)}, "integer"),
    ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)}, "empty"),
    ({"x_test": np.zeros((4, 7, 7), np.uint8)}, "same image size"),
    ({"x_train": None}, "no array 'x_train'"),
], ids=["non-square", "label-length", "float-images", "label-too-big", "label-negative", "float-labels", "empty",
        "size-mismatch", "missing-key"])
def test_invalid_npz_contents(tmp_path: Path, overrides: dict, fact: str):
    path = fake_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=fact) as e:
        load_mnist_npz(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_valid_fake_npz_loads(tmp_path: Path):
    data = load_mnist_npz(fake_npz(tmp_path / "ok.npz"))
    assert data.image_size == 8 and data.y_train.dtype == torch.int64 and not is_canonical_mnist(data)


def test_unknown_source_name():
    with pytest.raises(DataError, match="no such image data") as e:
        load_images("fashion-mnist-nowhere")
    assert "digits" in str(e.value)


def test_non_npz_file_is_rejected(tmp_path: Path):
    path = tmp_path / "images.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match=r"not an \.npz"):
        load_images(str(path))


# --- download (faked: no network here) ----------------------------------------------------------------------------


def test_download_success_saves_mnist_npz(tmp_path, monkeypatch, mnist_file: Path):
    payload = mnist_file.read_bytes()
    urls = []

    def fetch(url: str) -> bytes:
        urls.append(url)
        return payload

    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(images_mod, "_fetch", fetch)
    data = load_images("mnist")
    assert urls == [MNIST_NPZ_URL]
    assert data.source == str(tmp_path / "cache" / "mnist.npz") and is_canonical_mnist(data)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mnist.npz"]  # no temp file left behind
    assert (tmp_path / "cache" / "mnist.npz").read_bytes() == payload  # a verified npz is kept byte-for-byte
    assert data.record()["sha256"] == sha256_of(tmp_path / "cache" / "mnist.npz")


def test_download_falls_back_to_the_idx_mirror(tmp_path, monkeypatch, small: dict[str, np.ndarray]):
    """The IDX mirror path, verified against the hashes of a slice (so no 60k-image IDX files are built)."""
    for key in KEYS:
        monkeypatch.setitem(MNIST_ARRAY_SHA256, key, hashlib.sha256(small[key].tobytes()).hexdigest())
    served = {f"{MNIST_IDX_MIRROR}{base}.gz": gzip.compress(idx_bytes(small[key]), compresslevel=1)
              for key, base in MNIST_IDX_FILES.items()}

    def fetch(url: str) -> bytes:
        if url == MNIST_NPZ_URL:
            raise urllib.error.URLError("unreachable")
        return served[url]

    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    monkeypatch.setattr(images_mod, "_fetch", fetch)
    data = load_images("mnist")
    assert data.source == str(tmp_path / "mnist.npz")
    for key in KEYS:
        assert np.array_equal(getattr(data, key).numpy(), small[key])


def test_download_checksum_mismatch(tmp_path, monkeypatch, small: dict[str, np.ndarray]):
    npz = fake_npz(tmp_path / "wrong.npz").read_bytes()
    idx = {f"{MNIST_IDX_MIRROR}{base}.gz": gzip.compress(idx_bytes(small[key]), compresslevel=1)
           for key, base in MNIST_IDX_FILES.items()}
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(images_mod, "_fetch", lambda url: npz if url == MNIST_NPZ_URL else idx[url])
    with pytest.raises(DataError, match="sha256 mismatch") as e:
        load_images("mnist")
    msg = str(e.value)
    assert MNIST_NPZ_URL in msg and MNIST_IDX_MIRROR in msg and "--data digits" in msg and "\n" not in msg
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_download_offline(tmp_path, monkeypatch):
    def fetch(url: str) -> bytes:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(tmp_path))
    monkeypatch.setattr(images_mod, "_fetch", fetch)
    with pytest.raises(DataError, match="could not download MNIST") as e:
        load_images("mnist")
    assert str(tmp_path) in str(e.value) and "--data digits" in str(e.value)
