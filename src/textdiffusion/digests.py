"""What proves a checkpoint whole, beyond what safetensors itself checks.

safetensors refuses a truncated file or a broken header, but hands back whatever bytes its data section holds:
a flipped bit is a wrong weight, a tensor re-saved as int64 is cast silently into the float model (mostly
zeros), and ``tokenizer.json``, a file of its own, can change under the weights (two symbols swapped: every
sample is spelled wrong and every score is of another text). So a checkpoint records in its metadata

    ``digests``       each tensor's dtype and the sha256 of its raw bytes, by the name it has in the file
    ``vocab_sha256``  the sha256 of the tokenizer's record, as canonical JSON (key order and spacing do not
                      count, so an export that re-indents tokenizer.json keeps it)

and every read checks the tensors it reads (:func:`verify_tensors`, from :func:`~textdiffusion.checkpoint.
read_group`) and the tokenizer beside them (:func:`verify_vocab`, from ``read_header`` and ``read_group``):
sample, eval, resume, export, compare, the API and ``serve`` all read through those two.

**Why one digest per tensor, not one per file.** Both hash the same bytes, so they cost the same (measured in
docs/runs-and-resume.md); per tensor, a read of one group (sampling reads only the EMA weights, a third of the
file) checks just what it reads instead of reading the whole file, and a mismatch names the damaged tensor.

Checkpoints written before digests carry none and load as before, silently: there is nothing to check them
against, and a warning at every sample of an old run would have no fix but retraining. The digests guard
against damage (a disk, a copy, another tool), not against a forger, who can recompute them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiffusion.errors import CheckpointError
from textdiffusion.json_reading import JSONProblem, parse_json

VOCAB_FILE = "tokenizer.json"  # the one vocabulary file tied to the weights (image.json holds only a shape)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def tensor_sha256(t: torch.Tensor) -> str:
    """The sha256 of a tensor's bytes as safetensors stores them (contiguous, little-endian)."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).hexdigest()


def vocab_sha256(record: Any) -> str:
    """The sha256 of a tokenizer's record (``Tokenizer.to_dict()`` or tokenizer.json parsed) as canonical JSON;
    the JSON round trip first makes a record in memory and its file agree (tuples, integer keys)."""
    canonical = json.dumps(json.loads(json.dumps(record, ensure_ascii=False)), sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def integrity_record(tensors: dict[str, torch.Tensor], vocab: Any | None) -> dict[str, str]:
    """The metadata entries that let a read prove the file whole: ``tensors`` by their names in the file and
    the tokenizer record ``vocab`` (None: an image run, nothing to tie)."""
    digests = {name: [dtype_name(t), tensor_sha256(t)] for name, t in tensors.items()}
    out = {"digests": json.dumps(digests, sort_keys=True)}
    if vocab is not None:
        out["vocab_sha256"] = vocab_sha256(vocab)
    return out


@dataclass(frozen=True)
class Integrity:
    """A checkpoint's recorded digests. ``tensors`` is None for a checkpoint written before digests."""

    tensors: dict[str, tuple[str, str]] | None  # name in the file -> (dtype, sha256)
    vocab: str | None  # sha256 of the tokenizer record, None when none was recorded

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> Integrity:
        vocab = meta.get("vocab_sha256")
        if "digests" not in meta:
            return cls(None, vocab)
        try:
            raw = parse_json(meta["digests"])
            if not isinstance(raw, dict) or not all(
                    isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in raw.values()):
                raise ValueError("not a map of tensor names to [dtype, sha256]")
        except (JSONProblem, ValueError) as e:
            raise CheckpointError(f"the digests recorded in {path} are unreadable ({e}); the file is damaged: "
                                  f"restore it from a copy or retrain") from None
        return cls({k: (v[0], v[1]) for k, v in raw.items()}, vocab)


def verify_tensors(path: Path, integrity: Integrity, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Refuse tensors (named as in the file, all those starting with ``prefix``) whose dtype or bytes differ
    from what was recorded when the file was written, or that were added or removed since."""
    if integrity.tensors is None:
        return
    fix = "restore it from a copy or retrain"
    recorded = {k for k in integrity.tensors if k.startswith(prefix)}
    if missing := sorted(recorded - tensors.keys()):
        raise CheckpointError(f"tensor {missing[0]} is missing from {path}, which held it when it was written; {fix}")
    if added := sorted(tensors.keys() - recorded):
        raise CheckpointError(f"tensor {added[0]} in {path} was not in the file when it was written (no digest); "
                              f"{fix}")
    for name in sorted(tensors):
        dtype, digest = integrity.tensors[name]
        if dtype_name(tensors[name]) != dtype:
            raise CheckpointError(f"tensor {name} in {path} is {dtype_name(tensors[name])}, but was written as "
                                  f"{dtype} (the file was rewritten by another tool); {fix}")
        if tensor_sha256(tensors[name]) != digest:
            raise CheckpointError(f"tensor {name} in {path} does not match the digest recorded when it was written "
                                  f"(its bytes changed on disk: a bad copy, disk or edit); {fix}")


def verify_vocab(path: Path, integrity: Integrity) -> None:
    """Refuse a tokenizer.json beside the checkpoint ``path`` that is not the one its weights were trained with.
    A missing or unreadable tokenizer.json is left to the reader of the tokenizer, which names that problem."""
    if integrity.vocab is None:
        return
    vocab_path = path.parent / VOCAB_FILE
    try:
        record = parse_json(vocab_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, JSONProblem):
        return
    if vocab_sha256(record) != integrity.vocab:
        raise CheckpointError(f"{vocab_path} is not the tokenizer the weights in {path.name} were trained with (its "
                              f"digest differs: the file was edited or swapped); restore the run's own "
                              f"{VOCAB_FILE}")
