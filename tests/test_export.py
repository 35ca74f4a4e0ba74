"""`textdiffusion export`: the weights alone with a model card, opened like a run, read-only; and no absolute
local path in anything meant to be shared (a run's records, an export, a comparison report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import textdiffusion
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import CheckpointError, is_export
from textdiffusion.data.sources import corpus_location
from textdiffusion.export import export_run
from textdiffusion.sharing import DATA_SYMBOL, shareable_argv, shareable_path

OLD_RUNS = Path(__file__).resolve().parent / "data" / "runs-0.1.0"


def one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def local_paths_in(folder: Path, *paths: Path) -> list[str]:
    """Every file under ``folder`` that names one of ``paths`` or the home directory (absolute local paths)."""
    needles = [str(p) for p in paths] + [str(Path.home())]
    found = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = f.read_bytes().decode("utf-8", "replace")
        found += [f"{f.name}: {n}" for n in needles if n in text]
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare) -> Path:
    """A finished tiny masked run, trained through the command line from the folder above its data, with an
    absolute path for its run directory: what the run's records name of both is checked below."""
    root = tmp_path_factory.mktemp("exp")
    corpus = root / "data" / "small.txt"
    corpus.parent.mkdir()
    corpus.write_text(shakespeare[:250_000], encoding="utf-8")  # enough speakers for a speaker classifier
    run = root / "runs" / "masked"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(["train", "--method", "masked", "--preset", "tiny", "--data", "data/small.txt", "--steps",
                     "12", "--run-dir", str(run), "--no-progress"]) == 0
    return run


@pytest.fixture(scope="module")
def trained_absolute(tmp_path_factory, small_text) -> Path:
    """A tiny ar run given its data by an absolute path (which its own config.json keeps, as typed)."""
    root = tmp_path_factory.mktemp("abs")
    corpus = root / "data" / "c.txt"
    corpus.parent.mkdir()
    corpus.write_text(small_text, encoding="utf-8")
    assert main(["train", "--method", "ar", "--preset", "tiny", "--data", str(corpus), "--steps", "4", "--run-dir",
                 str(root / "ar"), "--no-progress"]) == 0
    return root / "ar"


def test_an_export_samples_exactly_as_its_run(trained, tmp_path, capsys):
    out = tmp_path / "shared" / "masked"
    capsys.readouterr()
    assert main(["export", str(trained), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ema weights" in printed and "x larger" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "final.json", "tokenizer.json",
                                                     "weights.safetensors"]
    with safe_open(str(out / "weights.safetensors"), framework="pt") as f:
        names, meta = set(f.keys()), f.metadata()
    with safe_open(str(trained / "checkpoint.safetensors"), framework="pt") as f:
        stored = f.keys()  # a safe_open handle is not iterable
        ema = {k[len("ema."):] for k in stored if k.startswith("ema.")}
    assert names == ema  # the EMA weights and nothing else: no optimizer moments, no RNG state
    assert meta["weights"] == "ema" and meta["step"] == "12" and "optimizer" not in json.loads(meta["state"])
    size = sum(p.stat().st_size for p in out.iterdir())
    assert size * 3 < (trained / "checkpoint.safetensors").stat().st_size

    run, export = textdiffusion.load(trained, device="cpu"), textdiffusion.load(out, device="cpu")
    assert export.step == run.step == 12 and export.method == "masked"
    for a, b in zip(run.run.model.state_dict().values(), export.run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert export.generate("ROMEO:", n=3, seed=5, progress=False) == run.generate("ROMEO:", n=3, seed=5,
                                                                                   progress=False)
    assert main(["sample", str(out), "--n", "2", "--seed", "3", "--length", "16"]) == 0
    from_export = capsys.readouterr().out
    assert main(["sample", str(trained), "--n", "2", "--seed", "3", "--length", "16"]) == 0
    assert capsys.readouterr().out.split("[")[0] == from_export.split("[")[0]  # the texts, before the timing


def test_the_model_card_says_what_the_model_is(trained, tmp_path):
    out = tmp_path / "card"
    res = export_run(trained, out)
    card = (out / "README.md").read_text()
    final = json.loads((trained / "final.json").read_text())
    meta = json.loads((trained / "config.json").read_text())
    assert "method `masked`" in card and "(text family)" in card and "MDLM" in card
    assert f"| {final['val_bpc']:.4f} | upper bound on the negative log-likelihood (NELBO) |" in card
    assert f"{final['val_nats']:.4f}" in card and "64 validation windows" in card
    assert meta["corpus"]["sha256"] in card and "small.txt" in card
    assert f"{meta['corpus']['train_chars']:,} training and {meta['corpus']['val_chars']:,} validation" in card
    assert "textdiffusion train --method masked --preset tiny --data data/small.txt --steps 12" in card
    assert "device: cpu" in card and "torch " + torch.__version__ in card and "training time:" in card
    assert 'textdiffusion.load("card")' in card and "textdiffusion sample card" in card
    assert res.weights == "ema" and res.step == 12 and res.family == "text"
    assert json.loads((out / "final.json").read_text())["val_bpc"] == final["val_bpc"]
    assert json.loads((out / "config.json").read_text())["export"]["from_run"] == "masked"


@pytest.fixture(scope="module")
def small_text(shakespeare) -> str:
    return shakespeare[:30_000]


def test_an_ar_card_says_exact_and_names_no_typed_absolute_path(trained_absolute, tmp_path):
    root = trained_absolute.parent
    assert str(root / "data" / "c.txt") in (trained_absolute / "config.json").read_text()  # data.corpus as typed
    out = tmp_path / "ar-export"
    export_run(trained_absolute, out)
    card = (out / "README.md").read_text()
    assert "| exact negative log-likelihood |" in card and "--data c.txt" in card
    assert local_paths_in(out, root) == []
    model = textdiffusion.load(out, device="cpu")
    assert model.config.data.corpus == "c.txt"


def test_nothing_shared_names_a_local_path(trained, tmp_path, capsys):
    """A fresh run's records, its export and a comparison report of both name no absolute local path (the
    tmp folder holds the data and the run; the home directory stands for any user's)."""
    root = trained.parents[1]
    for name in ("config.json", "final.json", "tokenizer.json", "metrics.jsonl"):
        assert str(root) not in (trained / name).read_text(), name
    corpus = json.loads((trained / "config.json").read_text())["corpus"]
    assert corpus["path"] == "../../data/small.txt"  # found from the run, from any working directory
    out = tmp_path / "export"
    export_run(trained, out)
    assert local_paths_in(out, root, tmp_path) == []
    report = tmp_path / "report"
    assert main(["compare", str(trained), str(out), "--out", str(report), "--samples", "2", "--sweep", "",
                 "--guidance", "", "--no-progress"]) == 0
    assert local_paths_in(report, root, tmp_path) == []
    assert not (out / "sweep.json").exists() and set(p.name for p in out.iterdir()) == {
        "README.md", "config.json", "final.json", "tokenizer.json", "weights.safetensors"}
    capsys.readouterr()


def test_an_export_is_read_only(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    export_run(trained, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    one_line_error(capsys, "is an export", "cannot be trained", "resume the run it was exported from")
    assert main(["train", "--method", "masked", "--preset", "tiny", "--run-dir", str(out)]) == 2
    one_line_error(capsys, "is an export")
    with pytest.raises(CheckpointError, match="is an export"):
        textdiffusion.train("masked", "tiny", steps=2, run_dir=out, progress=False)
    assert main(["sample", str(out), "--weights", "model"]) == 2
    one_line_error(capsys, "only the weights the run was measured with", "default weights (ema)")
    monkeypatch.chdir(trained.parents[1])  # the export names its data as typed, data/small.txt: found from here
    assert main(["eval", str(out), "--samples", "2", "--val-windows", "4", "--no-progress"]) == 0
    assert "is an export (read-only): the results above were not written into it" in capsys.readouterr().out
    textdiffusion.load(out, device="cpu").classifier(steps=2)  # classifier guidance trains one for the process
    assert "not cached: an export is read-only" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_export_refuses_what_it_must_not_replace(trained, tmp_path, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(trained), str(taken)]) == 2
    one_line_error(capsys, "is not empty (notes.txt)", "--force")
    assert (taken / "notes.txt").read_text() == "mine"
    assert main(["export", str(trained), str(taken), "--force"]) == 0 and is_export(taken)
    assert not (taken / "notes.txt").exists()
    assert main(["export", str(trained), str(taken)]) == 0  # an earlier export is replaced
    capsys.readouterr()
    other = tmp_path / "other-run"
    shutil.copytree(trained, other)
    for target in (other, trained / "inside"):
        assert main(["export", str(trained), str(target), "--force"]) == 2
        one_line_error(capsys)
    assert (other / "checkpoint.safetensors").is_file()
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    one_line_error(capsys, "does not exist")
    assert main(["export", str(trained), str(taken / "sub")]) == 2
    one_line_error(capsys, "inside the export")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["export", str(trained), "."]) == 2
    one_line_error(capsys, "is the working directory")
    monkeypatch.chdir(tmp_path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind


def test_a_0_1_0_run_exports_and_samples_as_it_did(tmp_path):
    out = tmp_path / "old"
    export_run(OLD_RUNS / "masked", out)
    assert local_paths_in(out, Path("/tmp/oldruns")) == []
    assert "not recorded" in (out / "README.md").read_text()
    old, new = textdiffusion.load(OLD_RUNS / "masked", device="cpu"), textdiffusion.load(out, device="cpu")
    assert new.generate(n=2, length=24, seed=11, progress=False) == old.generate(n=2, length=24, seed=11,
                                                                                  progress=False)


def test_an_image_run_exports(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["mnist", "train", "--preset", "tiny", "--data", "digits", "--steps", "2", "--run-dir", str(run),
                 "--no-progress"]) == 0
    out = tmp_path / "digits-export"
    assert main(["export", str(run), str(out)]) == 0
    assert "textdiffusion mnist sample" in capsys.readouterr().out
    assert main(["mnist", "sample", str(out), "--n", "2", "--steps", "2"]) == 2
    one_line_error(capsys, "is an export", "--out FOLDER")
    assert main(["mnist", "sample", str(out), "--n", "2", "--steps", "2", "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "samples.png").is_file() and not (out / "samples").exists()
    assert (out / "image.json").is_file() and "(image family)" in (out / "README.md").read_text()
    a = textdiffusion.load(run, device="cpu").generate([1, 2], sampler="ddim", steps=3, seed=4, progress=False)
    b = textdiffusion.load(out, device="cpu").generate([1, 2], sampler="ddim", steps=3, seed=4, progress=False)
    assert (a.pixels == b.pixels).all()


# ---- the path rules ---------------------------------------------------------------------------------------
def test_shareable_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shareable_path(tmp_path / "runs" / "a") == "runs/a"  # inside the working directory: relative
    assert shareable_path("/somewhere/else/run") == "run"  # elsewhere: its name
    assert shareable_path("../runs/b") == "../runs/b"  # relative: as typed
    argv = ["/venv/bin/textdiffusion", "train", "--run-dir", str(tmp_path / "r"), "--set", "data.corpus=/d/c.txt",
            "--data", "/d/c.txt", "--steps", "4"]
    assert shareable_argv(argv) == ["textdiffusion", "train", "--run-dir", "r", "--set", "data.corpus=c.txt",
                                    "--data", "c.txt", "--steps", "4"]


def test_recorded_corpus_places_are_found(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "c.txt").write_text("x")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "runs")  # neither the run's folder nor the data's
    assert Path(corpus_location("c.txt", {"path": "../../data/c.txt"}, run)).resolve() == data / "c.txt"
    assert corpus_location("c.txt", {"path": "../../data/gone.txt"}, run) == "c.txt"  # moved: the config's
    monkeypatch.setenv("TEXTDIFFUSION_DATA", str(data))
    assert Path(corpus_location("named", {"path": f"{DATA_SYMBOL}/c.txt"}, run)) == data.resolve() / "c.txt"
    assert corpus_location("x", {"path": str(data / "c.txt")}) == str(data / "c.txt")  # earlier runs: absolute
