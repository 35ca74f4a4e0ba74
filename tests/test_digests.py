"""Checkpoints prove they are whole: damage safetensors cannot see (a flipped bit in the data, tensors re-saved
in another dtype, an edited tokenizer.json) is refused by every reader, in one line naming the file and what
is wrong; a checkpoint written before digests still loads."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import textdiffusion
from helpers import tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.apps.serve.served import load_runs
from textdiffusion.checkpoint import CHECKPOINT, WEIGHTS, CheckpointError, read_group, read_header
from textdiffusion.digests import tensor_sha256, vocab_sha256
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture(scope="module")
def trained(shakespeare, tmp_path_factory) -> Path:
    """One tiny run the tests copy and damage (its corpus beside it, where resume finds it)."""
    folder = tmp_path_factory.mktemp("digests")
    corpus = folder / "small.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    run = folder / "run"
    Trainer(tiny_config("masked", corpus, steps=2), run, progress=False).train()
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _flip_a_bit(path: Path, name: str) -> None:
    """Flip one bit in the middle of tensor ``name``'s bytes, leaving the header (and so safetensors) content."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8:8 + n])[name]["data_offsets"]
    data[8 + n + (begin + end) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _first_ema(path: Path) -> str:
    return sorted(k for k in load_file(str(path)) if k.startswith("ema."))[0]


def _refusal(run: Path, command: str, capsys) -> str:
    """Run ``command`` on the damaged ``run`` and return its refusal, asserting it is one line ("" if none)."""
    if command in ("sample", "eval"):
        argv = ["sample", str(run)] if command == "sample" else ["eval", str(run), "--samples", "2"]
        return _one_line_error(capsys) if main(argv) == 2 else ""
    call = {"resume": lambda: resume_training(run, progress=False), "api": lambda: textdiffusion.load(run),
            "serve": lambda: load_runs([run])}[command]
    try:
        call()
    except CheckpointError as e:
        assert "\n" not in str(e)
        return str(e)
    return ""


def _swap_two_symbols(run: Path) -> None:
    tok = json.loads((run / "tokenizer.json").read_text())
    chars = tok["chars"]
    chars[1], chars[2] = chars[2], chars[1]
    (run / "tokenizer.json").write_text(json.dumps(tok))


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(n in err for n in needles), err
    return err


def test_a_checkpoint_records_each_tensors_dtype_and_digest_and_the_tokenizers(run):
    meta = _metadata(run / CHECKPOINT)
    digests = json.loads(meta["digests"])
    tensors = load_file(str(run / CHECKPOINT))
    assert digests.keys() == tensors.keys()
    assert all(digests[k] == [str(t.dtype).removeprefix("torch."), tensor_sha256(t)] for k, t in tensors.items())
    assert meta["vocab_sha256"] == vocab_sha256(json.loads((run / "tokenizer.json").read_text()))


def test_the_tokenizer_digest_ignores_key_order_and_spacing(run, capsys):
    tok = json.loads((run / "tokenizer.json").read_text())
    (run / "tokenizer.json").write_text(json.dumps(dict(reversed(list(tok.items()))), indent=7))
    assert main(["sample", str(run), "--length", "8"]) == 0


@pytest.mark.parametrize("command", ["sample", "eval", "resume", "api", "serve"])
def test_a_flipped_bit_in_the_ema_weights_is_refused_by_every_reader(run, command, capsys):
    name = _first_ema(run / CHECKPOINT)
    _flip_a_bit(run / CHECKPOINT, name)
    refusal = _refusal(run, command, capsys)
    assert f"tensor {name} in {run / CHECKPOINT} does not match the digest" in refusal, refusal


def test_a_flipped_bit_in_the_optimizer_moments_is_refused_by_resume(run):
    name = sorted(k for k in load_file(str(run / CHECKPOINT)) if k.startswith("trainer.opt."))[0]
    _flip_a_bit(run / CHECKPOINT, name)
    assert main(["sample", str(run), "--length", "8"]) == 0  # sampling never reads the moments
    with pytest.raises(CheckpointError, match=f"tensor {name} in .* does not match the digest"):
        resume_training(run, progress=False)


@pytest.mark.parametrize("command", ["sample", "resume"])
def test_ema_weights_resaved_as_int64_are_refused_by_dtype(run, command, capsys):
    path = run / CHECKPOINT
    meta, tensors = _metadata(path), load_file(str(path))
    save_file({k: v.to(torch.int64) if k.startswith("ema.") and v.is_floating_point() else v
               for k, v in tensors.items()}, str(path), metadata=meta)
    refusal = _refusal(run, command, capsys)
    assert f"tensor {_first_ema(path)} in {path} is int64, but was written as float32" in refusal, refusal


@pytest.mark.parametrize("command", ["sample", "eval", "resume", "api", "serve"])
def test_two_symbols_swapped_in_the_tokenizer_are_refused(run, command, capsys):
    _swap_two_symbols(run)
    refusal = _refusal(run, command, capsys)
    assert f"{run / 'tokenizer.json'} is not the tokenizer the weights in {CHECKPOINT}" in refusal, refusal
    assert refusal.endswith("restore the run's own tokenizer.json")


def test_a_checkpoint_without_digests_loads_silently(run, capsys):
    """Checkpoints written before digests carry none: nothing to check, and they still sample and resume."""
    path = run / CHECKPOINT
    meta = {k: v for k, v in _metadata(path).items() if k not in ("digests", "vocab_sha256")}
    save_file(load_file(str(path)), str(path), metadata=meta)
    _swap_two_symbols(run)  # without a record, nothing ties the tokenizer to the weights
    assert main(["sample", str(run), "--length", "8"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert read_group(run, "ema")[0] and read_header(run).step == 2


def test_unreadable_digests_are_refused_in_one_line(run, capsys):
    path = run / CHECKPOINT
    save_file(load_file(str(path)), str(path), metadata={**_metadata(path), "digests": "{broken"})
    assert main(["sample", str(run)]) == 2
    _one_line_error(capsys, "the digests recorded in", "restore it from a copy or retrain")


def test_an_export_carries_digests_and_refuses_a_flipped_bit(run, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["export", str(run), str(out)]) == 0
    meta = _metadata(out / WEIGHTS)
    assert meta["vocab_sha256"] == _metadata(run / CHECKPOINT)["vocab_sha256"]
    assert main(["sample", str(out), "--length", "8"]) == 0
    name = sorted(json.loads(meta["digests"]))[0]
    _flip_a_bit(out / WEIGHTS, name)
    capsys.readouterr()
    assert main(["sample", str(out)]) == 2
    _one_line_error(capsys, f"tensor {name} in {out / WEIGHTS} does not match the digest")
