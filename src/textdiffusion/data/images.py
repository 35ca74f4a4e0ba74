"""Finding, reading and verifying image data (MNIST) for the image diffusion models.

``--data`` for images is a path (an ``mnist.npz`` or a directory of the four MNIST IDX files), the name
``mnist`` (resolved from the data directory, otherwise downloaded), or ``digits``: scikit-learn's bundled
8x8 digits, a small offline fallback so that the image code paths can run on a machine with no network.

MNIST is verified by the SHA-256 of its *decoded* arrays rather than of a file, because the same data
ships in several containers (Keras' ``mnist.npz``, the original gzipped IDX files, re-compressed copies):
hashing the arrays makes "this run used canonical MNIST" a statement about the numbers, whatever the format.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import stat
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textdiffusion.data.corpus import DataError, data_dir, human_bytes, path_exists
from textdiffusion.files import atomic_write, write_bytes

__all__ = [
    "DIGITS_SOURCE",
    "MNIST_ARRAY_SHA256",
    "MNIST_IDX_FILES",
    "MNIST_IDX_MIRROR",
    "MNIST_NPZ_URL",
    "ImageBatch",
    "ImageData",
    "ImageSpec",
    "is_canonical_mnist",
    "load_digits",
    "load_images",
    "load_mnist_idx",
    "load_mnist_npz",
    "to_pixels",
    "to_unit_range",
]

KEYS = ("x_train", "y_train", "x_test", "y_test")

#: the largest image side accepted: the U-Nets here are sized for digits (MNIST 28x28, the digits 8x8), and a
#: 256x256 "MNIST" would ask tens of GB of activations before anything else failed
MAX_IMAGE_SIDE = 64
#: the most bytes of image data read or decoded (MNIST is 55 MB decoded, 11 MB as mnist.npz): everything
#: is held in memory, so this is checked from file sizes and array headers before anything is decoded
MAX_IMAGE_BYTES = 1 << 30

#: SHA-256 of ``np.ascontiguousarray(arr).tobytes()`` for each canonical MNIST array, as uint8.
MNIST_ARRAY_SHA256: dict[str, str] = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
_MNIST_SHAPES: dict[str, tuple[int, ...]] = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}

#: Array key -> IDX file name (each may also be present gzipped, with ``.gz`` appended).
MNIST_IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
MNIST_NPZ_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_IDX_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DIGITS_SOURCE = "scikit-learn load_digits (offline fallback, 8x8)"
DIGITS_TEST_SIZE = 297

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"
# --data is a `mnist train` option only (`mnist eval` and `sample` read the run's recorded data)
_OFFLINE_HINT = "`mnist train` also takes --data /path/to/mnist.npz, or --data digits for the offline 8x8 fallback"


@dataclass
class ImageData:
    """A train/test split of class-labelled square grey-scale images, plus where it came from.

    Images stay uint8 0..255 (the models decide how to scale them) so that what is hashed and recorded is
    exactly what was on disk.
    """

    x_train: torch.Tensor  # uint8 (N, H, W), 0..255
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor  # uint8 (M, H, W)
    y_test: torch.Tensor  # int64 (M,)
    name: str  # "mnist" or "digits"
    source: str  # human-readable: the file or directory it came from, or DIGITS_SOURCE
    offline_fallback: bool  # True only for the scikit-learn digits
    num_classes: int = 10
    sha256: str | None = None  # of the .npz file it was read from; None for IDX files and the digits
    path: str | None = None  # absolute path of the .npz file or the IDX directory; None for the digits

    @property
    def image_size(self) -> int:
        """Side length H (== W) of the square images."""
        return int(self.x_train.shape[1])

    @functools.cached_property
    def arrays_sha256(self) -> str:
        """One digest of the four arrays as held (images uint8, labels int64, shapes included): the data's
        identity whatever container it came in (npz, IDX, plain or gzipped), which resume and eval check."""
        h = hashlib.sha256()
        for key in KEYS:
            arr = np.ascontiguousarray(getattr(self, key).detach().cpu().numpy())
            h.update(f"{key}:{arr.dtype.str}:{arr.shape}\n".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        """A JSON-able description for a run's config.json, so a result can be traced to its exact data."""
        return {
            "name": self.name,
            "source": self.source,
            "offline_fallback": self.offline_fallback,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "sha256": self.sha256,
            "arrays_sha256": self.arrays_sha256,
            "path": self.path,
        }


# ---- what the image methods are built from and trained on -----------------------------------------------
@dataclass(frozen=True)
class ImageSpec:
    """What the network needs to know about the images; saved as ``image.json`` in an image run (the
    image counterpart of a text run's ``tokenizer.json``)."""

    size: int
    channels: int = 1
    num_classes: int = 10

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "channels": self.channels, "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        return cls(int(d["size"]), int(d.get("channels", 1)), int(d.get("num_classes", 10)))


@dataclass
class ImageBatch:
    """uint8 images (B, H, W) with their int64 labels (B,); ``to`` moves both (the trainer's only need)."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=non_blocking),
                          self.labels.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, size: int) -> list[ImageBatch]:
        return [ImageBatch(x, y) for x, y in zip(self.images.split(size), self.labels.split(size), strict=True)]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, H, W) in [-1, 1]."""
    return images.float().unsqueeze(1) / 127.5 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 1, H, W) in [-1, 1] -> uint8 (B, H, W) (clipped, rounded to the nearest level)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).squeeze(1)


def _array_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def is_canonical_mnist(data: ImageData) -> bool:
    """True when all four arrays are byte-identical to canonical MNIST (labels compared as uint8)."""
    arrays = {
        "x_train": data.x_train.detach().cpu().numpy(),
        "y_train": data.y_train.detach().cpu().numpy(),
        "x_test": data.x_test.detach().cpu().numpy(),
        "y_test": data.y_test.detach().cpu().numpy(),
    }
    for key, arr in arrays.items():
        if arr.shape != _MNIST_SHAPES[key]:
            return False
        if key.startswith("y") and (arr.min() < 0 or arr.max() > 255):
            return False
        if _array_sha256(arr.astype(np.uint8, copy=False)) != MNIST_ARRAY_SHA256[key]:
            return False
    return True


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # torch warns on (and must not alias) read-only buffers
        arr = arr.copy()
    return torch.from_numpy(arr)


def _check_side(side: int, where: str, key: str) -> None:
    if side > MAX_IMAGE_SIDE:
        raise DataError(f"{where}: {key} holds {side}x{side} images, larger than the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} "
                        f"the image models here are sized for (MNIST is 28x28); downscale them, e.g. to 28x28")


def _check_bytes(n: int, where: str, what: str) -> None:
    """Refuse ``n`` bytes over the limit; ``n`` may be a read cut at limit + 1, hence "more than"."""
    if n > MAX_IMAGE_BYTES:
        size = f"is {human_bytes(n)}, more than" if n > MAX_IMAGE_BYTES + 1 else "is more than"
        raise DataError(f"{where}: {what} {size} the {human_bytes(MAX_IMAGE_BYTES)} of images this loader holds "
                        f"in memory (MNIST is 55 MiB); pass a smaller data set")


def _file_size(path: Path) -> int:
    """The size of a regular file, refusing devices, pipes and files over the limit before reading them."""
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a device, pipe or socket); pass mnist.npz or the IDX "
                        f"files themselves")
    _check_bytes(st.st_size, str(path), "the file")
    return st.st_size


def _read_file(path: Path) -> bytes:
    _file_size(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; give yourself read access (chmod u+r) or pass "
                        f"another file") from None
    _check_bytes(len(raw), str(path), "the file")
    return raw


def _check_npz_headers(npz: Any, where: str) -> None:
    """Read each array's .npy header (shape and dtype, a few bytes) and refuse oversized images or more data
    than :data:`MAX_IMAGE_BYTES` before anything is decompressed: a small compressed file can hold a huge
    array of zeros."""
    total = 0
    for key in KEYS:
        try:
            with npz.zip.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{where} is a corrupt .npz archive ({key}: {type(e).__name__}: {e}); download it "
                            f"again or pass another file") from None
        if key.startswith("x") and len(shape) >= 2:
            _check_side(max(int(d) for d in shape[1:]), where, key)
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    _check_bytes(total, where, "the arrays' decoded size")


def _validate(arrays: dict[str, np.ndarray], where: str) -> tuple[torch.Tensor, ...]:
    """Check the four arrays of a split and return them as tensors (images uint8, labels int64).

    Every check raises a one-line DataError naming ``where`` and the offending array, because a shape or
    dtype mistake caught here would otherwise surface as an obscure error deep inside training.
    """
    sizes = []
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        if x.dtype != np.uint8:
            raise DataError(f"{where}: {xk} has dtype {x.dtype}, expected uint8 images with values 0..255; "
                            f"convert them to uint8 before saving")
        if x.ndim != 3 or x.shape[1] != x.shape[2]:
            raise DataError(f"{where}: {xk} has shape {tuple(x.shape)}, expected (N, H, W) square images "
                            f"with H == W")
        _check_side(x.shape[1], where, xk)
        if x.shape[0] == 0:
            raise DataError(f"{where}: {xk} is empty (0 images); each split needs at least one image")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: {yk} has dtype {y.dtype}, expected integer class labels 0..9")
        if y.shape != (x.shape[0],):
            raise DataError(f"{where}: {yk} has shape {tuple(y.shape)} but {xk} holds {x.shape[0]} images; "
                            f"expected labels of shape ({x.shape[0]},)")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi > 9:
            raise DataError(f"{where}: {yk} has labels outside 0..9 (min {lo}, max {hi}); "
                            f"expected digit classes 0..9")
        sizes.append(x.shape[1])
    if sizes[0] != sizes[1]:
        raise DataError(f"{where}: train images are {sizes[0]}x{sizes[0]} but test images are "
                        f"{sizes[1]}x{sizes[1]}; both splits must have the same image size")
    return (_to_tensor(arrays["x_train"]), _to_tensor(arrays["y_train"].astype(np.int64, copy=False)),
            _to_tensor(arrays["x_test"]), _to_tensor(arrays["y_test"].astype(np.int64, copy=False)))


def _make(arrays: dict[str, np.ndarray], where: str, name: str, source: str, offline_fallback: bool = False,
          sha256: str | None = None, path: Path | None = None) -> ImageData:
    x_train, y_train, x_test, y_test = _validate(arrays, where)
    return ImageData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, name=name, source=source,
                     offline_fallback=offline_fallback, sha256=sha256,
                     path=str(Path(path).resolve()) if path is not None else None)


def _read_npz_bytes(payload: bytes, where: str) -> dict[str, np.ndarray]:
    """Decode the four arrays of an npz held in memory (so the bytes hashed are the bytes read)."""
    corrupt = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        npz = np.load(io.BytesIO(payload), allow_pickle=False)
    except corrupt as e:
        raise DataError(f"{where} is not a readable .npz archive ({type(e).__name__}: {e}); "
                        f"download it again or pass another file") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{where} holds a single array, not an .npz archive; save one with "
                        f"np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    with npz:
        missing = [k for k in KEYS if k not in npz.files]
        if missing:
            have = ", ".join(npz.files) or "nothing"
            raise DataError(f"{where} has no array {missing[0]!r} (it holds: {have}); expected arrays "
                            f"{', '.join(KEYS)}")
        _check_npz_headers(npz, where)
        try:
            return {k: npz[k] for k in KEYS}
        except corrupt as e:
            raise DataError(f"{where} is a corrupt .npz archive ({type(e).__name__}: {e}); "
                            f"download it again or pass another file") from None


def load_mnist_npz(path: Path) -> ImageData:
    """Read an MNIST-style ``.npz`` with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``."""
    path = Path(path)
    if not path_exists(path):
        raise DataError(f"MNIST file not found: {path}; pass a path to an existing mnist.npz")
    payload = _read_file(path)
    arrays = _read_npz_bytes(payload, str(path))
    return _make(arrays, str(path), "mnist", str(path), sha256=hashlib.sha256(payload).hexdigest(), path=path)


def _decode_idx(raw: bytes, magic: int, where: str) -> np.ndarray:
    """Parse IDX bytes (already un-gzipped): big-endian magic, uint32 dimensions, uint8 payload."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise DataError(f"{where} is too short to be an IDX file ({len(raw)} bytes); download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{where} has IDX magic number 0x{found:08x}, expected 0x{magic:08x} (MNIST {kind}); "
                        f"check that it is the right file")
    if len(raw) < header:
        raise DataError(f"{where} is truncated inside its IDX header ({len(raw)} bytes); download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)  # Python ints: a forged header cannot overflow into a plausible size
    if len(raw) - header != expected:
        raise DataError(f"{where} holds {len(raw) - header} data bytes but its header says {dims} = {expected}; "
                        f"the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _gunzip(raw: bytes, where: str) -> bytes:
    """Decompress, never to more than :data:`MAX_IMAGE_BYTES` (a few KB of gzip can expand to GBs)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(MAX_IMAGE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where} is a truncated or corrupt gzip file ({type(e).__name__}: {e}); "
                        f"download it again") from None
    _check_bytes(len(out), where, "the decompressed file")
    return out


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = _read_file(path)
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:  # sniffed too: a gzipped file may have lost its .gz
        raw = _gunzip(raw, str(path))
    return _decode_idx(raw, magic, str(path))


def _idx_paths(directory: Path) -> dict[str, Path | None]:
    """Array key -> the IDX file for it in ``directory`` (plain preferred over ``.gz``), or None if absent."""
    found: dict[str, Path | None] = {}
    for key, base in MNIST_IDX_FILES.items():
        plain, gz = directory / base, directory / f"{base}.gz"
        try:
            found[key] = plain if plain.is_file() else gz if gz.is_file() else None
        except OSError as e:  # a folder that may be listed but not searched
            raise DataError(f"cannot read {directory}: {e.strerror or e}; check its permissions") from None
    return found


def _magic_for(key: str) -> int:
    return _IDX_IMAGES_MAGIC if key.startswith("x") else _IDX_LABELS_MAGIC


def load_mnist_idx(directory: Path) -> ImageData:
    """Read the four MNIST IDX files (each plain or ``.gz``) from ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"MNIST directory not found: {directory}; pass a directory holding the four IDX files")
    paths = _idx_paths(directory)
    missing = [MNIST_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory} lacks the MNIST IDX file(s) {', '.join(missing)} (plain or .gz); "
                        f"put all four there")
    arrays = {k: _read_idx(p, _magic_for(k)) for k, p in paths.items() if p is not None}
    return _make(arrays, str(directory), "mnist", f"{directory} (MNIST IDX files)", path=directory)


def load_digits() -> ImageData:
    """scikit-learn's bundled 8x8 digits as an offline stand-in for MNIST.

    Values 0..16 are rescaled to uint8 0..255 so downstream code sees the same range as MNIST; the split
    is a fixed permutation (``default_rng(0)``, last 297 of 1797 as test) so it is the same on every machine.
    """
    from textdiffusion.extras import require

    require(("sklearn",), "digits", "--data digits (the offline 8x8 digits, `mnist demo`'s fallback when MNIST is "
            "neither in the data folder nor downloadable: `textdiffusion data` fetches it)")
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = np.clip(np.round(np.asarray(bunch.images, dtype=np.float64) * 255 / 16), 0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(images))
    train, test = perm[:-DIGITS_TEST_SIZE], perm[-DIGITS_TEST_SIZE:]
    arrays = {"x_train": images[train], "y_train": labels[train], "x_test": images[test], "y_test": labels[test]}
    return _make(arrays, "scikit-learn digits", "digits", DIGITS_SOURCE, offline_fallback=True)


def _fetch(url: str) -> bytes:
    """GET ``url`` (30 s timeout). Module-level so tests can replace it: this project's CI has no network."""
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _checksum_mismatches(arrays: dict[str, np.ndarray]) -> list[str]:
    return [k for k in KEYS if _array_sha256(arrays[k]) != MNIST_ARRAY_SHA256[k]]


def _download_npz() -> tuple[dict[str, np.ndarray], bytes | None]:
    payload = _fetch(MNIST_NPZ_URL)
    return _read_npz_bytes(payload, MNIST_NPZ_URL), payload


def _download_idx() -> tuple[dict[str, np.ndarray], bytes | None]:
    arrays = {}
    for key, base in MNIST_IDX_FILES.items():
        url = f"{MNIST_IDX_MIRROR}{base}.gz"
        arrays[key] = _decode_idx(_gunzip(_fetch(url), url), _magic_for(key), url)
    return arrays, None


def _write_atomically(dest: Path, arrays: dict[str, np.ndarray], payload: bytes | None) -> None:
    """Write via a temp file in the same folder and ``os.replace``, so an interrupted run leaves no half file.

    A verified npz download is kept byte-for-byte (its file hash then matches upstream's, and nothing is
    re-compressed); arrays from the IDX mirror are saved with ``np.savez_compressed``.
    """
    if payload is not None:
        write_bytes(dest, payload)
        return

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: arrays[k] for k in KEYS})

    atomic_write(dest, save)


def _download_mnist(dest: Path) -> ImageData:
    """Fetch MNIST from the first mirror whose decoded arrays pass the checksums; save it atomically to ``dest``."""
    failures = []
    for label, get in ((MNIST_NPZ_URL, _download_npz), (f"{MNIST_IDX_MIRROR}*-ubyte.gz", _download_idx)):
        try:
            arrays, payload = get()
        except Exception as e:  # network and format errors come in many types; all mean "try the next mirror"
            failures.append(f"{label}: {type(e).__name__}: {e}")
            continue
        bad = _checksum_mismatches(arrays)
        if bad:
            failures.append(f"{label}: sha256 mismatch for {', '.join(bad)}")
            continue
        break
    else:
        raise DataError(f"could not download MNIST ({'; '.join(failures)}); offline? put mnist.npz (or the "
                        f"four IDX files) in {dest.parent} or set TEXTDIFFUSION_DATA to its folder "
                        f"({_OFFLINE_HINT})")
    try:
        _write_atomically(dest, arrays, payload)
    except OSError as e:
        raise DataError(f"downloaded MNIST but cannot write {dest} ({e.strerror or e}); set TEXTDIFFUSION_DATA "
                        f"to a writable folder") from None
    return load_mnist_npz(dest)


def _load_directory(directory: Path) -> ImageData:
    paths = _idx_paths(directory)
    if all(p is not None for p in paths.values()):
        return load_mnist_idx(directory)
    if (directory / "mnist.npz").is_file():
        return load_mnist_npz(directory / "mnist.npz")
    missing = ", ".join(MNIST_IDX_FILES[k] for k, p in paths.items() if p is None)
    raise DataError(f"{directory} holds neither mnist.npz nor all four MNIST IDX files (missing: {missing}; "
                    f"each may be .gz); put them there or pass a path to mnist.npz")


def load_images(source: str = "mnist", download: bool = True) -> ImageData:
    """Resolve ``--data`` for images: ``digits``, an existing path, ``mnist`` (data dir, then download)."""
    key = str(source).strip().lower()
    if key == "digits":
        return load_digits()
    path = Path(source).expanduser()
    if path_exists(path):
        if path.is_dir():
            return _load_directory(path)
        if path.suffix.lower() == ".npz":
            return load_mnist_npz(path)
        raise DataError(f"{path} is not an .npz file; pass a path to mnist.npz, a directory of the four MNIST "
                        f"IDX files, `mnist` or `digits`")
    if key == "mnist":
        root = data_dir()
        if (root / "mnist.npz").is_file():
            return load_mnist_npz(root / "mnist.npz")
        if root.is_dir() and all(p is not None for p in _idx_paths(root).values()):
            return load_mnist_idx(root)
        if not download:
            raise DataError(f"MNIST not found in {root} (looked for mnist.npz or the four IDX files); put "
                            f"mnist.npz there, set TEXTDIFFUSION_DATA to its folder, or download it from "
                            f"{MNIST_NPZ_URL} ({_OFFLINE_HINT})")
        return _download_mnist(root / "mnist.npz")
    raise DataError(f"no such image data file or directory: {source!r}; pass a path to mnist.npz, a directory "
                    f"of the four MNIST IDX files, `mnist` or `digits`")

