"""A resume goes on with the run its checkpoint recorded, or says why it cannot.

config.json edited by hand after the checkpoint was written (a learning rate, a batch, a seed, a data split) is
refused by name, and the checkpoint's record is never rewritten with the edit; what a resume may change (the
step count, sampling options, the machine) still resumes, and so does a run recorded before a field existed.
An optimizer state that lost any of AdamW's moments is refused rather than restarted from zero.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from helpers import assert_same_weights, tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import CHECKPOINT, read_group, read_header
from textdiffusion.errors import CheckpointError
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture
def stopped(small_corpus: Path, tmp_path: Path) -> Path:
    """A masked run of 6 steps stopped with a checkpoint at step 3 (as after a Ctrl-C)."""
    run = tmp_path / "stopped"
    Trainer(tiny_config("masked", small_corpus, 6, **{"train.eval_every": 3}), run, progress=False).train(stop_at=3)
    return run


def _copy(run: Path, name: str) -> Path:
    return Path(shutil.copytree(run, run.parent / name))


def _edit(run: Path, key: str, value: object) -> None:
    meta = json.loads((run / "config.json").read_text())
    section, _, name = key.partition(".")
    if name:
        meta["config"][section][name] = value
    else:
        meta["config"][section] = value
    (run / "config.json").write_text(json.dumps(meta, indent=2))


def _rewrite_checkpoint(run: Path, state: dict | None = None, config: dict | None = None,
                        drop: tuple[str, ...] = ()) -> None:
    """Write the checkpoint again with another trainer state or config record, or without some tensors."""
    header = read_header(run)
    tensors = {f"{g}.{k}": v for g in ("model", "ema", "trainer") for k, v in read_group(run, g)[0].items()}
    tensors = {k: v for k, v in tensors.items() if not any(k.startswith(d) or k.endswith(d) for d in drop)}
    meta = {"format": "pt", "step": str(header.step), "state": json.dumps(state or header.state),
            "config": json.dumps(config or header.config), "run_id": header.run_id}
    save_file(tensors, str(run / CHECKPOINT), metadata=meta)


# ---- edited settings -----------------------------------------------------------------------------------------
EDITS = {"train.lr": 0.002, "train.batch_size": 3, "train.ema_decay": 0.5, "seed": 7, "data.val_fraction": 0.5,
         "train.warmup": 1, "train.grad_clip": 0.0, "train.beta2": 0.9, "train.eval_every": 2, "train.amp": "off"}


def test_a_resume_refuses_every_edited_setting_by_name(stopped, capsys):
    checkpoint = (stopped / CHECKPOINT).read_bytes()
    for key, value in EDITS.items():
        run = _copy(stopped, key)
        recorded = read_header(run).config
        was = recorded[key] if "." not in key else recorded[key.split(".")[0]][key.split(".")[1]]
        _edit(run, key, value)
        edited = (run / "config.json").read_bytes()
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2, key
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"{key}: {was!r} in the checkpoint, {value!r} in config.json" in err, err
        assert "undo the edit to config.json" in err and "--run-dir NEW_DIR" in err, err
        # nothing was rewritten: neither the record nor the edit
        assert (run / CHECKPOINT).read_bytes() == checkpoint, key
        assert (run / "config.json").read_bytes() == edited, key
        assert read_header(run).step == 3


def test_several_edits_are_named_together(stopped):
    _edit(stopped, "train.lr", 0.5)
    _edit(stopped, "seed", 5)
    with pytest.raises(CheckpointError, match=r"seed: 1337 in the checkpoint, 5 in config\.json; train\.lr: "):
        resume_training(stopped, progress=False)


def test_what_a_resume_may_change_still_resumes_exactly(stopped, small_corpus, tmp_path):
    """The step count, a sampling option and where the run trains may change; the run goes on as it was."""
    whole = tmp_path / "whole"
    Trainer(tiny_config("masked", small_corpus, 8, **{"train.eval_every": 3}), whole, progress=False).train()
    for key, value in (("method.sample_steps", 7), ("train.device", "cpu"), ("train.threads", 1),
                       ("train.save_every_s", 5.0), ("train.logger", "")):
        _edit(stopped, key, value)
    resume_training(stopped, progress=False, steps=8)
    assert_same_weights(whole, stopped)
    recorded = read_header(stopped).config
    assert recorded["train"]["steps"] == 8 and recorded["method"]["sample_steps"] == 7


def test_a_sampler_may_read_a_run_whose_schedule_was_edited(stopped, capsys):
    """Sampling uses the weights alone: an edited learning rate does not stop it (a resume would refuse it)."""
    _edit(stopped, "train.lr", 0.002)
    assert main(["sample", str(stopped), "--n=1", "--length=8", "--steps=2"]) == 0, capsys.readouterr().err


def test_a_run_recorded_before_a_field_existed_or_after_one_was_dropped_resumes(stopped):
    """A field the checkpoint did not record was trained as its default behaves; a field this version no
    longer has cannot differ. Neither blocks a resume, and a non-default value of the new field still does."""
    header = read_header(stopped)
    config = json.loads(json.dumps(header.config))
    del config["train"]["label_dropout"]
    config["train"]["a_field_of_another_version"] = 3
    _rewrite_checkpoint(stopped, config=config)
    meta = json.loads((stopped / "config.json").read_text())
    del meta["config"]["train"]["label_dropout"]
    (stopped / "config.json").write_text(json.dumps(meta))
    claimed = _copy(stopped, "claimed")
    _edit(claimed, "train.label_dropout", 0.3)
    with pytest.raises(CheckpointError, match=r"train\.label_dropout: None in the checkpoint, 0\.3 in config"):
        resume_training(claimed, progress=False)
    summary = resume_training(stopped, progress=False)
    assert summary.step == 6


# ---- optimizer moments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop", [".exp_avg", ".exp_avg_sq", "trainer.opt.0.", "trainer.opt."])
def test_a_resume_without_every_optimizer_moment_is_refused(stopped, drop, capsys):
    """One parameter's average, every squared average, every tensor of one parameter, or all of them."""
    _rewrite_checkpoint(stopped, drop=(drop,))
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "lacks" in err and "restart AdamW from zero" in err, err


def test_an_older_checkpoint_without_its_moment_record_is_checked_on_what_it_holds(stopped):
    header = read_header(stopped)
    state = json.loads(json.dumps(header.state))
    del state["optimizer"]["with_moments"]
    _rewrite_checkpoint(stopped, state=state)
    assert resume_training(_copy(stopped, "intact"), progress=False).step == 6
    _rewrite_checkpoint(stopped, state=state, drop=("trainer.opt.",))
    with pytest.raises(CheckpointError, match="lacks every moment"):
        resume_training(stopped, progress=False)


def test_a_step_0_checkpoint_has_no_moments_and_resumes(small_corpus, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_config("masked", small_corpus, 2), run, progress=False)  # writes the step-0 checkpoint
    assert not [k for k in read_group(run, "trainer")[0] if k.startswith("opt.")]
    assert resume_training(run, progress=False).step == 2
