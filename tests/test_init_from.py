"""``train.init_from`` / ``train --init-from``: a diffusion run that starts from an ``ar`` run's weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import CheckpointError, read_group
from textdiffusion.config import ConfigError
from textdiffusion.export import export_run
from textdiffusion.records import TrainSummary
from textdiffusion.sharing import shareable_path
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, shakespeare: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(shakespeare[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """An ar run trained long enough that its weights beat random ones by a wide margin."""
    run = tmp_path_factory.mktemp("source") / "ar"
    Trainer(tiny_config("ar", corpus, steps=300, **{"train.eval_every": 300}), run, progress=False).train()
    return run


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["masked", "block"])
def test_step_0_holds_the_ar_runs_ema_weights_and_a_fresh_optimizer(method, ar_run, corpus, tmp_path):
    trainer = Trainer(tiny_config(method, corpus, steps=10, **{"train.init_from": ar_run}), tmp_path / "r",
                      progress=False)
    ar_ema, step = read_group(ar_run, "ema")
    assert step == 300
    assert _same(_state(trainer.model), ar_ema)
    assert _same(_state(trainer.ema.model), ar_ema)
    assert not trainer.opt.state  # no moments carried over: the optimizer starts fresh
    assert _same(read_group(tmp_path / "r", "model")[0], ar_ema)  # the step-0 checkpoint holds them too


@pytest.mark.parametrize(("method", "steps", "margin"), [("block", 10, 0.15), ("masked", 60, 0.03)])
def test_it_trains_on_from_there_and_beats_a_start_from_scratch(method, steps, margin, ar_run, corpus, tmp_path):
    """Same seed, same steps: the run that started from ar ends lower. At step 0 it is not lower for masked:
    ar's logit at i predicts token i+1, masked's predicts token i, and the first steps re-aim the head."""
    def run(name: str, **sets: object) -> Trainer:
        return Trainer(tiny_config(method, corpus, steps=steps, **{"train.eval_every": steps}, **sets),
                       tmp_path / name, progress=False)

    scratch, warm = run("scratch"), run("warm", **{"train.init_from": ar_run})
    assert warm.train().score.nats < scratch.train().score.nats - margin
    assert not _same(_state(warm.model), read_group(ar_run, "ema")[0])  # it trained on from there


def test_the_run_records_where_it_started(ar_run, corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_config("masked", corpus, steps=4, **{"train.init_from": ar_run}), run, progress=False).train()
    meta = json.loads((run / "config.json").read_text())
    ar_meta = json.loads((ar_run / "config.json").read_text())
    ar_final = TrainSummary.read(ar_run)
    assert meta["config"]["train"]["init_from"] == str(ar_run)
    record = TrainSummary.read(run).init
    assert record is not None
    # named as shared records name a path: relative to the working directory inside it, else by its name
    assert (record.run, record.run_id, record.step) == (shareable_path(ar_run), ar_meta["run_id"], 300)
    assert not Path(record.run).is_absolute()
    assert (record.steps, record.elapsed) == (300, ar_final.elapsed)
    assert meta["init_from"] == record.to_json()
    assert record.label() == f"started from {record.run} at step 300"


def test_the_training_cost_counts_the_sources_steps_down_the_chain(ar_run, corpus, tmp_path):
    """final.json's total counts the steps behind the weights it started from, and those behind its source's
    own start: ar 300, then block 4 from it, then masked 3 from the block run."""
    Trainer(tiny_config("block", corpus, steps=4, **{"train.init_from": ar_run}), tmp_path / "b",
            progress=False).train()
    Trainer(tiny_config("masked", corpus, steps=3, **{"train.init_from": tmp_path / "b"}), tmp_path / "m",
            progress=False).train()
    block, masked = TrainSummary.read(tmp_path / "b"), TrainSummary.read(tmp_path / "m")
    assert (block.step, block.total_steps) == (4, 304)
    assert (masked.step, masked.init.steps, masked.total_steps) == (3, 4, 307)
    assert masked.total_elapsed == pytest.approx(masked.elapsed + block.elapsed + TrainSummary.read(ar_run).elapsed)
    written = json.loads((tmp_path / "m" / "final.json").read_text())
    assert (written["total_steps"], written["init_from"]["total_steps"]) == (307, 304)
    assert TrainSummary.read(ar_run).total_steps == 300
    assert "total_steps" not in json.loads((ar_run / "final.json").read_text())  # a plain run's step says it


def test_a_run_without_init_from_records_none(corpus, tmp_path):
    Trainer(tiny_config("masked", corpus, steps=2), tmp_path / "r", progress=False).train()
    assert TrainSummary.read(tmp_path / "r").init is None
    assert "init_from" not in json.loads((tmp_path / "r" / "final.json").read_text())
    assert "init_from" not in json.loads((tmp_path / "r" / "config.json").read_text())


def test_an_export_is_a_source_too(ar_run, corpus, tmp_path):
    export_run(ar_run, tmp_path / "export")
    trainer = Trainer(tiny_config("masked", corpus, steps=2, **{"train.init_from": tmp_path / "export"}),
                      tmp_path / "r", progress=False)
    assert _same(_state(trainer.model), read_group(ar_run, "ema")[0])


def test_a_resume_does_not_reload_the_source(ar_run, corpus, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ar_run, source)
    cfg = lambda: tiny_config("masked", corpus, steps=12, **{"train.init_from": source})  # noqa: E731
    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    Trainer(cfg(), tmp_path / "parts", progress=False).train(stop_at=6)
    shutil.rmtree(source)  # gone: a resume that read it again would fail
    summary = resume_training(tmp_path / "parts", progress=False)
    assert summary.step == 12 and summary.init is not None and summary.init.step == 300
    for group in ("model", "ema"):
        assert _same(read_group(tmp_path / "whole", group)[0], read_group(tmp_path / "parts", group)[0]), group


@pytest.mark.parametrize(("sets", "needle"), [
    ({"model.n_embd": 64}, "has model.n_embd=32 but this run has model.n_embd=64"),
    ({"model.n_layer": 3}, "has model.n_layer=2 but this run has model.n_layer=3"),
    ({"model.context": 48}, "model.context="),
])
def test_a_different_network_is_refused_by_its_field(sets, needle, ar_run, corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.init_from=") as e:
        Trainer(tiny_config("masked", corpus, **{"train.init_from": ar_run}, **sets), tmp_path / "r", progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_a_different_tokenizer_is_refused(ar_run, corpus, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8").replace("e", "") * 2, encoding="utf-8")  # one char fewer
    with pytest.raises(ConfigError, match=r"was trained with another tokenizer \(data.corpus=.*small.txt there\)"):
        Trainer(tiny_config("masked", other, **{"train.init_from": ar_run}), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match=r"has data\.tokenizer=char but this run has data\.tokenizer=bpe"):
        Trainer(tiny_config("masked", corpus, **{"train.init_from": ar_run, "data.tokenizer": "bpe"}), tmp_path / "s",
                progress=False)


def test_the_same_corpus_by_another_path_is_the_same_tokenizer(ar_run, corpus, tmp_path):
    copy = tmp_path / "copy.txt"
    shutil.copy(corpus, copy)
    trainer = Trainer(tiny_config("masked", copy, **{"train.init_from": ar_run}), tmp_path / "r", progress=False)
    assert _same(_state(trainer.model), read_group(ar_run, "ema")[0])


def test_a_method_with_another_network_is_refused(ar_run, corpus, tmp_path):
    with pytest.raises(ConfigError, match="is a ar run, whose network differs from embedding's"):
        Trainer(tiny_config("embedding", corpus, **{"train.init_from": ar_run}), tmp_path / "r", progress=False)


def test_a_missing_or_damaged_source_is_one_line(ar_run, corpus, tmp_path):
    with pytest.raises(ConfigError, match="is not a run directory"):
        Trainer(tiny_config("masked", corpus, **{"train.init_from": tmp_path / "nope"}), tmp_path / "a",
                progress=False)
    damaged = tmp_path / "damaged"
    shutil.copytree(ar_run, damaged)
    for f in damaged.glob("*.safetensors"):
        f.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        Trainer(tiny_config("masked", corpus, **{"train.init_from": damaged}), tmp_path / "b", progress=False)


def test_the_cli_flag_sets_the_field_and_errors_are_one_line(ar_run, corpus, tmp_path, capsys):
    common = ["train", "--method", "masked", "--preset", "tiny", "--data", str(corpus), "--steps", "2",
              "--no-progress", "--set", "train.eval_every=2"]
    assert main([*common, "--run-dir", str(tmp_path / "r"), "--init-from", str(ar_run)]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["train"]["init_from"] == str(ar_run)
    assert "starting from the EMA weights" not in capsys.readouterr().err  # --no-progress keeps it quiet
    assert main([*common, "--run-dir", str(tmp_path / "s"), "--init-from", str(ar_run),
                 "--set", "model.n_embd=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.init_from=") and "model.n_embd" in err and "\n" not in err
    assert main(["train", "--resume", str(tmp_path / "r"), "--init-from", str(ar_run)]) == 2
    assert "not --init-from" in capsys.readouterr().err


def test_compare_lists_where_a_run_started_and_what_that_cost(ar_run, corpus, tmp_path):
    from textdiffusion.apps.compare import read_run
    from textdiffusion.viz.report import _md_run

    cfg = tiny_config("block", corpus, steps=2, **{"train.init_from": ar_run})
    Trainer(cfg, tmp_path / "r", progress=False).train()
    record = read_run(tmp_path / "r")
    elapsed = TrainSummary.read(ar_run).elapsed
    assert record.init is not None and record.init.step == 300
    assert record.to_json()["init_from"]["run_id"] == json.loads((ar_run / "config.json").read_text())["run_id"]
    line = f"Started from {shareable_path(ar_run)} at step 300: 300 steps, {elapsed:,.1f} s of training before"
    assert f"{line} this run's own (302 steps in all)." in _md_run(record)
    from textdiffusion.viz.report import text_row

    steps = text_row(record).cells["step"]
    assert (steps.text, steps.value) == ("302 (2 own)", 302)  # the table counts the ar steps too
    assert read_run(ar_run).init is None and "init_from" not in read_run(ar_run).to_json()
