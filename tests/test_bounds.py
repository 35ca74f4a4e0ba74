"""Bounded command lines, output paths checked up front, data that cannot be read, and data identity.

Every refusal here must be one line (``error: <what>; <fix>``, exit code 2) and come before the work it
guards: no sampling before an unwritable output is refused, no allocation before an absurd size is.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from textdiffusion import limits as bounds
from textdiffusion.apps.cli import main
from textdiffusion.data import corpus as corpus_mod
from textdiffusion.data import images as images_mod
from textdiffusion.data.corpus import DataError, corpus_fingerprint, read_corpus
from textdiffusion.data.sources import check_identity, corpus_location
from textdiffusion.methods.base import SampleRequest
from textdiffusion.runs import open_run

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare):
    """Tiny masked and ar runs on a 60k-character file, and a tiny class-conditional image run on the digits."""
    root = tmp_path_factory.mktemp("bounds")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    for method in ("masked", "ar"):
        assert main(["train", "--method", method, "--preset", "tiny", "--data", str(corpus), "--steps", "6",
                     "--run-dir", str(root / method), "--set", "train.eval_every=6", "--no-progress"]) == 0
    assert main(["mnist", "train", "--preset", "tiny", "--data", "digits", "--steps", "4", "--run-dir",
                 str(root / "image"), "--set", "train.eval_every=4", "--no-progress"]) == 0
    return root


# ---- 1. bounded work ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, parts", [
    (["--steps", "50000"], ["--steps 50000", "--steps <= 10000"]),  # argparse refuses 10**5 and more
    (["--set", "method.sample_steps=50000"], ["method.sample_steps=50000", "--steps <= 10000"]),
    (["--n", "1000000000"], ["--n 1000000000", "1,000,000"]),
    (["--length", "1000000000"], ["--length 1000000000", "--length <= 100000"]),  # masked chains windows
])
def test_absurd_sample_requests_are_refused(runs, capsys, extra, parts):
    assert main(["sample", str(runs / "masked"), *extra]) == 2
    one_line_error(capsys, *parts)
    assert capsys.readouterr().out == ""


def test_a_method_that_writes_past_its_context_has_a_length_limit(runs, capsys):
    assert main(["sample", str(runs / "ar"), "--length", "1000000000"]) == 2
    one_line_error(capsys, "--length <= 100000")


def test_the_method_training_grid_bounds_steps():
    bounds.check_text_steps(2000, True, 2000)
    with pytest.raises(Exception, match="the 2000 steps the model was trained with; use --steps <= 2000"):
        bounds.check_text_steps(2001, True, 2000)
    assert bounds.text_step_limit(None) == bounds.MAX_TEXT_STEPS
    assert bounds.text_step_limit(10**6) == bounds.MAX_TEXT_STEPS  # a huge grid does not lift the cap


def test_batch_size_bounds_every_tensor():
    assert bounds.text_batch_size(256, 256, 65) == 256  # the char context of `cpu`: one batch up to 256
    assert bounds.text_batch_size(16, 16, 65) == 1024  # capped
    # a 30k WordPiece vocabulary: the logits decide
    b = bounds.text_batch_size(128, 128, 30522)
    assert b * 128 * 30522 <= 1 << 28 and (b + 1) * 128 * 30522 > 1 << 28
    # ar past its context: the window goes through the network, the whole sample is kept
    assert bounds.text_batch_size(100_000, 256, 65) == (1 << 24) // 100_000
    assert bounds.text_batch_size(10**9, 10**9, 10**6) == 1
    assert bounds.image_batch_size(28) == 500 and bounds.image_batch_size(8) == 500
    assert bounds.image_batch_size(64) == 500 * 28 * 28 // (64 * 64)
    assert bounds.batches(7, 3) == [(0, 3), (3, 3), (6, 1)]


def _texts(out: str) -> list[str]:
    return out.rstrip("\n").split("\n" + "=" * 40 + "\n")


def test_one_batch_draws_what_an_unbatched_sampling_drew(runs, capsys):
    args = ["--n", "5", "--length", "24", "--seed", "7", "--steps", "6"]
    assert main(["sample", str(runs / "masked"), *args]) == 0
    texts = _texts(capsys.readouterr().out)
    run = open_run(runs / "masked", device="cpu")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        res = run.method.sample(run.model, SampleRequest(n=5, length=24, steps=6), gen)
    assert texts == [run.tokenizer.decode(row.tolist()) for row in res.ids]


def test_many_samples_are_drawn_in_batches_with_progress(runs, capsys, monkeypatch):
    monkeypatch.setattr(bounds, "_MAX_TEXT_BATCH", 4)
    args = ["--length", "16", "--seed", "3", "--steps", "4"]
    assert main(["sample", str(runs / "masked"), "--n", "10", *args]) == 0
    captured = capsys.readouterr()
    many = _texts(captured.out)
    assert len(many) == 10 and "sample" in captured.err  # tqdm's bar, on stderr
    assert "10 x 16 chars" in captured.err
    assert main(["sample", str(runs / "masked"), "--n", "4", *args]) == 0
    assert _texts(capsys.readouterr().out) == many[:4]  # the first batch of --n 10 is the whole of --n 4
    # a trajectory records every step of every sample: only one batch of them
    assert main(["sample", str(runs / "masked"), "--n", "10", *args, "--trajectory", str(runs / "t.json")]) == 2
    one_line_error(capsys, "--n <= 4")
    assert not (runs / "t.json").exists()


def test_image_samples_are_drawn_in_batches(runs, tmp_path, monkeypatch):
    from textdiffusion.apps.mnist import _draw_layout, _layout
    from textdiffusion.image_evaluation import open_image_run
    from textdiffusion.methods.image import ImageRequest

    run = open_image_run(runs / "image", device="cpu")
    layout = _layout(run.method, 30, None, 10)
    request = {"sampler": "ddpm", "steps": 3}  # fresh noise at every step: batches draw other numbers
    one, recorder, _ = _draw_layout(run, layout, torch.Generator().manual_seed(1), False, **request)
    direct = run.method.sample(run.model, ImageRequest(n=30, labels=layout.labels, **request),
                               torch.Generator().manual_seed(1)).images
    assert torch.equal(one, direct.cpu())  # one batch: what sampling drew before batching
    monkeypatch.setattr(bounds, "_MAX_IMAGE_BATCH", 7)
    many, joined, _ = _draw_layout(run, layout, torch.Generator().manual_seed(1), False, **request)
    assert many.shape == one.shape and not torch.equal(many, one)  # 5 batches draw other noise
    # the strip follows its samples (one per digit row) across batches: its last frame is those samples
    from textdiffusion.viz.images import _as_uint8

    assert len(joined.x_t) == len(recorder.x_t)
    assert np.array_equal(joined.x_t[-1], _as_uint8(many[layout.strip]))


def test_image_counts_are_limited(runs, capsys):
    assert main(["mnist", "sample", str(runs / "image"), "--n", "20000"]) == 2
    one_line_error(capsys, "--n 20000", "mnist eval --samples")
    assert main(["mnist", "eval", str(runs / "image"), "--samples", "1000000"]) == 2
    one_line_error(capsys, "--samples <= 100000")


# ---- 2. output paths, checked before sampling ---------------------------------------------------------
def test_trajectory_paths_are_checked_first(runs, tmp_path, capsys, monkeypatch):
    run = str(runs / "masked")
    assert main(["sample", run, "--trajectory", str(tmp_path)]) == 2
    one_line_error(capsys, "is a folder")
    missing = tmp_path / "no" / "such" / "t.json"
    assert main(["sample", run, "--trajectory", str(missing)]) == 2
    one_line_error(capsys, "does not exist", "create it first")
    assert not (tmp_path / "no").exists()  # no folders made
    (tmp_path / "file").write_text("x")
    assert main(["sample", run, "--trajectory", str(tmp_path / "file" / "t.json")]) == 2
    one_line_error(capsys, "is a file, not a folder")
    monkeypatch.setattr(bounds, "_writable", lambda folder: False)  # root may write anywhere: pretend
    assert main(["sample", run, "--trajectory", str(tmp_path / "t.json")]) == 2
    one_line_error(capsys, "permission denied")


@pytest.mark.skipif(ROOT, reason="root may write into a read-only folder")
def test_trajectory_into_a_read_only_folder(runs, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["sample", str(runs / "masked"), "--trajectory", str(ro / "t.json")]) == 2
        one_line_error(capsys, "permission denied")
    finally:
        ro.chmod(0o700)


def test_mnist_out_must_be_a_folder(runs, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["mnist", "sample", str(runs / "image"), "--out", str(f)]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert main(["mnist", "sample", str(runs / "image"), "--out", str(f / "sub")]) == 2
    one_line_error(capsys, "no folder can be made")
    (tmp_path / "out" / "samples.png").mkdir(parents=True)
    assert main(["mnist", "sample", str(runs / "image"), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, "samples.png is a folder")
    assert main(["mnist", "sample", str(runs / "image"), "--out", str(tmp_path / "new" / "dir"), "--n", "10",
                 "--sampler", "ddim", "--steps", "2", "--no-gif"]) == 0
    assert (tmp_path / "new" / "dir" / "samples.png").is_file()  # --out is a folder to create


# ---- 3. data that cannot be read ----------------------------------------------------------------------
def _train(data: str, run_dir: Path, image: bool = False) -> int:
    head = ["mnist", "train"] if image else ["train", "--method", "ar"]
    return main([*head, "--preset", "tiny", "--data", data, "--steps", "2", "--run-dir", str(run_dir),
                 "--no-progress"])


def test_a_device_or_pipe_is_not_a_corpus(tmp_path, capsys):
    assert _train("/dev/zero", tmp_path / "r") == 2
    one_line_error(capsys, "/dev/zero is not a regular file")
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    assert _train(str(fifo), tmp_path / "r") == 2
    one_line_error(capsys, "not a regular file")
    assert _train("/dev/zero", tmp_path / "r", image=True) == 2
    one_line_error(capsys, "/dev/zero")
    npz_fifo = tmp_path / "d.npz"
    os.mkfifo(npz_fifo)
    assert _train(str(npz_fifo), tmp_path / "r", image=True) == 2
    one_line_error(capsys, "not a regular file")


def test_a_directory_of_no_readable_txt_files(tmp_path, capsys):
    (tmp_path / "d" / "sub.txt").mkdir(parents=True)  # a folder named .txt is not a text file
    os.mkfifo(tmp_path / "d" / "pipe.txt")
    assert _train(str(tmp_path / "d"), tmp_path / "r") == 2
    one_line_error(capsys, "holds no .txt files")


def test_unreadable_corpus(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("some text\n" * 100)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(corpus_mod, "open", denied, raising=False)  # the module's open(); root reads anything
    assert _train(str(path), tmp_path / "r") == 2
    one_line_error(capsys, "cannot read", "Permission denied", "chmod u+r")


@pytest.mark.skipif(ROOT, reason="root reads unreadable files")
def test_unreadable_corpus_for_real(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("some text\n" * 100)
    path.chmod(0)
    assert _train(str(path), tmp_path / "r") == 2
    one_line_error(capsys, "Permission denied")
    hidden = tmp_path / "locked"
    hidden.mkdir()
    (hidden / "c.txt").write_text("text\n")
    hidden.chmod(0)
    try:
        assert _train(str(hidden / "c.txt"), tmp_path / "r2") == 2
        one_line_error(capsys, "Permission denied")
    finally:
        hidden.chmod(0o700)


def test_a_corpus_too_large_for_memory(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("x" * 5000)
    monkeypatch.setattr(corpus_mod, "MAX_CORPUS_BYTES", 4096)
    assert _train(str(path), tmp_path / "r") == 2
    one_line_error(capsys, "4.9 KiB of text", "4.0 KiB", "smaller corpus")
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):  # each file is small, the directory is not
        (d / f"{i}.txt").write_text("y" * 2000)
    with pytest.raises(DataError, match=r"5\.9 KiB"):
        read_corpus(d)


def _npz(path: Path, side: int, n: int = 2, compressed: bool = False) -> Path:
    x = np.zeros((n, side, side), np.uint8)
    y = np.zeros(n, np.int64)
    (np.savez_compressed if compressed else np.savez)(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_images_far_from_28x28_are_refused_before_decoding(tmp_path, capsys):
    assert _train(str(_npz(tmp_path / "big.npz", 256)), tmp_path / "r", image=True) == 2
    one_line_error(capsys, "256x256 images", "downscale")


def test_image_data_too_large_is_refused_from_its_headers(tmp_path, monkeypatch):
    bomb = _npz(tmp_path / "bomb.npz", 28, n=2000, compressed=True)  # 3 MB of zeros in a few KB
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 1_000_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an array was decoded before its size was checked")

    monkeypatch.setattr(images_mod, "_validate", no_decoding)
    with pytest.raises(DataError, match=r"decoded size is 3\.0 MiB"):
        images_mod.load_images(str(bomb))


def test_gzipped_idx_is_decompressed_with_a_cap(tmp_path, monkeypatch):
    n = 3000
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    for key, base in images_mod.MNIST_IDX_FILES.items():
        if key.startswith("x"):
            raw = header + bytes(n * 28 * 28)
        else:
            raw = (0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(n)
        (tmp_path / f"{base}.gz").write_bytes(gzip.compress(raw))
    monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 1_000_000)
    with pytest.raises(DataError, match=r"ubyte\.gz: the decompressed file is more than the 976\.6 KiB"):
        images_mod.load_images(str(tmp_path))


# ---- 4. data identity ---------------------------------------------------------------------------------
def test_every_corpus_kind_has_a_fingerprint(tmp_path, shakespeare):
    from textdiffusion.data.corpus import NAMED_CORPORA, resolve_corpus

    f = tmp_path / "c.txt"
    f.write_text("hello\n")
    rec = corpus_fingerprint(f)
    assert rec["kind"] == "file" and rec["path"] == str(f.resolve()) and len(rec["sha256"]) == 64
    named = corpus_fingerprint(resolve_corpus("tinyshakespeare", download=False))
    assert named["sha256"] == NAMED_CORPORA["tinyshakespeare"].sha256

    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text("one\n")
    (d / "b.txt").write_text("two\n")
    first = corpus_fingerprint(d)
    assert first["kind"] == "directory" and first["path"] == str(d.resolve())
    (d / "notes.md").write_text("not read, not hashed")
    assert corpus_fingerprint(d) == first
    (d / "b.txt").write_text("two!\n")
    edited = corpus_fingerprint(d)["sha256"]
    (d / "b.txt").rename(d / "c.txt")
    renamed = corpus_fingerprint(d)["sha256"]
    (d / "d.txt").write_text("")
    added = corpus_fingerprint(d)["sha256"]
    assert len({first["sha256"], edited, renamed, added}) == 4


def test_image_fingerprints(tmp_path):
    digits = images_mod.load_images("digits").record()
    assert len(digits["arrays_sha256"]) == 64 and digits["path"] is None
    assert images_mod.load_images("digits").record()["arrays_sha256"] == digits["arrays_sha256"]
    plain = _npz(tmp_path / "a.npz", 8, n=3)
    packed = _npz(tmp_path / "b.npz", 8, n=3, compressed=True)
    a, b = images_mod.load_images(str(plain)).record(), images_mod.load_images(str(packed)).record()
    assert a["path"] == str(plain.resolve()) and a["sha256"] != b["sha256"]
    assert a["arrays_sha256"] == b["arrays_sha256"]  # the same pictures in another container
    check_identity(a, b, "R")  # ... are the same data
    other = _npz(tmp_path / "c.npz", 8, n=4)
    with pytest.raises(DataError, match="has changed since it was trained"):
        check_identity(a, images_mod.load_images(str(other)).record(), "R")


def test_identity_check_skips_what_was_not_recorded():
    check_identity(None, {"sha256": "a" * 64}, "R")
    check_identity({"source": "d (2 .txt files)"}, {"sha256": "a" * 64}, "R")  # 0.1.0: directories had none
    old_digits = json.loads((Path(__file__).parent / "data" / "runs-0.1.0" / "image" / "config.json")
                            .read_text())["corpus"]
    check_identity(old_digits, images_mod.load_images("digits").record(), "R")
    old_text = json.loads((Path(__file__).parent / "data" / "runs-0.1.0" / "ar" / "config.json")
                          .read_text())["corpus"]
    assert corpus_location("/tmp/oldruns/corpus.txt", old_text) == "/tmp/oldruns/corpus.txt"  # no path: config
    with pytest.raises(DataError, match="changed since"):
        check_identity(old_text, {"sha256": "b" * 64, "path": "/x"}, "R")


def test_a_relative_corpus_is_found_from_anywhere_and_checked(tmp_path, shakespeare, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "c.txt").write_text(shakespeare[:30_000], encoding="utf-8")
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    assert main(["train", "--method", "ar", "--preset", "tiny", "--data", "c.txt", "--steps", "4", "--run-dir",
                 str(run), "--no-progress"]) == 0
    capsys.readouterr()
    corpus = json.loads((run / "config.json").read_text())["corpus"]
    assert corpus["path"] == "../work/c.txt" and corpus["kind"] == "file"  # relative to the run, never absolute
    monkeypatch.chdir(tmp_path)  # c.txt is not here
    assert main(["eval", str(run), "--samples", "2", "--val-windows", "4"]) == 0
    capsys.readouterr()
    with open(work / "c.txt", "a", encoding="utf-8") as f:
        f.write("an edit\n")
    assert main(["eval", str(run), "--samples", "2"]) == 2
    one_line_error(capsys, "has changed since it was trained", "restore the original data")
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 2
    one_line_error(capsys, "has changed since it was trained")


def test_a_changed_directory_corpus_blocks_resume(tmp_path, shakespeare, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.txt").write_text(shakespeare[:20_000], encoding="utf-8")
    (d / "b.txt").write_text(shakespeare[20_000:30_000], encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--method", "masked", "--preset", "tiny", "--data", str(d), "--steps", "4",
                 "--run-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["corpus"]["kind"] == "directory"
    (d / "c.txt").write_text("a new file\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 2
    one_line_error(capsys, str(d.resolve()), "has changed since it was trained")
    (d / "c.txt").unlink()
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 0


def test_a_changed_image_set_blocks_eval(runs, tmp_path, capsys, monkeypatch):
    run = tmp_path / "image"
    shutil.copytree(runs / "image", run)
    meta = json.loads((run / "config.json").read_text())
    meta["corpus"]["arrays_sha256"] = "0" * 64  # as if trained on other digits
    (run / "config.json").write_text(json.dumps(meta))
    assert main(["mnist", "eval", str(run), "--samples", "10"]) == 2
    one_line_error(capsys, "has changed since it was trained")


# ---- 5. the right command for the run's kind ----------------------------------------------------------
@pytest.mark.parametrize("argv, run, parts", [
    (["mnist", "train", "--resume"], "masked", ["text run (method masked)", "textdiffusion train --resume"]),
    (["train", "--resume"], "image", ["image run", "textdiffusion mnist train --resume"]),
    (["mnist", "sample"], "ar", ["text run", "textdiffusion sample"]),
    (["mnist", "eval"], "ar", ["text run", "textdiffusion eval"]),
    (["sample"], "image", ["textdiffusion mnist sample"]),
])
def test_a_run_of_the_other_kind_points_at_its_command(runs, capsys, argv, run, parts):
    def files() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (runs / run).rglob("*")}

    before = files()
    assert main([*argv, str(runs / run)]) == 2
    one_line_error(capsys, *parts)
    assert files() == before  # nothing trained, sampled or written


def test_a_config_that_is_not_an_object_is_left_to_the_loader(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[]")
    assert main(["sample", str(tmp_path)]) == 2
    one_line_error(capsys)
