"""Duo on `uniform`: the Gaussian view's curriculum as a training option, and the few-step student by Discrete
Consistency Distillation (``train --distill-from`` a uniform run): their behaviour on real, tiny runs. The maths
alone is pinned in tests/test_gaussian_view.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import assert_same_weights, tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.config import Config
from textdiffusion.records import TrainSummary
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Words drawn at random from eight of five letters: a tiny network soon reads a word off its neighbours,
    so a cleaner state (further along a trajectory) changes what it predicts."""
    words = ("apple ", "brick ", "cloud ", "dream ", "eagle ", "flame ", "grape ", "house ")
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text("".join(rng.choice(words) for _ in range(10_000)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "uniform"
    cfg = tiny_config("uniform", corpus, steps=150, **{"train.eval_every": 150, "train.final_eval_windows": 8})
    Trainer(cfg, run, progress=False).train()
    return run


def _student(teacher: Path, corpus: Path, steps: int = 4, **sets: object) -> Config:
    return tiny_config("uniform", corpus, steps=steps, **{"train.distill_from": teacher,
                                                          "train.final_eval_windows": 8, **sets})


def _batch(trainer: Trainer, seed: int, n: int = 16) -> torch.Tensor:
    return trainer.source.train_batch(n, trainer.method.window, torch.Generator().manual_seed(seed))


# ---- the curriculum ----------------------------------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """The network, remembering whether its last input was a distribution (float) or ids."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.soft = network, None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.soft = x.is_floating_point()
        return self.network(x, *args, **kwargs)


def test_the_curriculum_feeds_a_soft_input_then_ends_in_the_discrete_loss(corpus, tmp_path):
    trainer = Trainer(tiny_config("uniform", corpus, **{"method.curriculum_steps": 10}), tmp_path / "c",
                      progress=False)
    plain = Trainer(tiny_config("uniform", corpus), tmp_path / "p", progress=False)
    method, net = trainer.method, Recorder(trainer.model)
    x = _batch(trainer, 0)
    losses = {}
    for step in (0, 9, 10):
        method.at_training_step(step)
        with torch.no_grad():
            losses[step] = float(method.loss(net, x, torch.Generator().manual_seed(1)))
        assert net.soft == (step < 10)
    assert method.tau == 0.0
    plain.method.at_training_step(10)
    with torch.no_grad():
        same = float(plain.method.loss(trainer.model, x, torch.Generator().manual_seed(1)))
    assert losses[10] == same  # past the curriculum: the discrete process, draw for draw
    assert losses[0] != same and losses[9] != losses[0]  # during it: the soft input, its temperature annealing


def test_a_curriculum_run_records_its_settings_and_resumes_exactly(corpus, tmp_path):
    sets = {"method.curriculum_steps": 4, "method.curriculum_tau": 0.2, "train.eval_every": 3,
            "train.final_eval_windows": 8}
    Trainer(tiny_config("uniform", corpus, steps=6, **sets), tmp_path / "whole", progress=False).train()
    Trainer(tiny_config("uniform", corpus, steps=6, **sets), tmp_path / "parts", progress=False).train(stop_at=3)
    resume_training(tmp_path / "parts", progress=False)
    assert_same_weights(tmp_path / "whole", tmp_path / "parts")
    method = json.loads((tmp_path / "whole" / "config.json").read_text())["config"]["method"]
    assert (method["curriculum_steps"], method["curriculum_tau"], method["curriculum_tau_end"]) == (4, 0.2, 0.01)


# ---- the student ---------------------------------------------------------------------------------------------------
def test_a_student_equal_to_its_teacher_has_zero_loss_at_one_substep_and_not_at_two(teacher, corpus, tmp_path):
    trainer = Trainer(_student(teacher, corpus, **{"train.distill_substeps": 1}), tmp_path / "s", progress=False)
    trainer.model.eval()
    x = _batch(trainer, 0)
    with torch.no_grad():
        one, two = (float(trainer.method.distillation_loss(trainer.model, trainer.teacher.network, x,
                                                           torch.Generator().manual_seed(5), 4, m)) for m in (1, 2))
    assert one == 0.0
    assert two > 1e-3  # the teacher reads a cleaner state of the same trajectory


def _divergence(trainer: Trainer, model: torch.nn.Module) -> float:
    """The consistency loss at two substeps on fixed batches and trajectories, in eval mode."""
    model.eval()
    with torch.no_grad():
        return sum(float(trainer.method.distillation_loss(model, trainer.teacher.network, _batch(trainer, 100 + i, 32),
                                                          torch.Generator().manual_seed(i), 4, 2))
                   for i in range(4)) / 4


def test_training_lowers_the_divergence_to_the_teacher_further_along(teacher, corpus, tmp_path):
    cfg = _student(teacher, corpus, steps=60, **{"train.distill_steps": 4, "train.eval_every": 60,
                                                 "train.lr": 3e-3, "train.warmup": 5})
    trainer = Trainer(cfg, tmp_path / "s", progress=False)
    before = _divergence(trainer, trainer.model)
    trainer.train()
    after = _divergence(trainer, trainer.model)
    assert before > 1e-3 and after < 0.85 * before, (before, after)


def test_a_student_is_a_run_that_samples_in_its_steps_and_resumes_exactly(teacher, corpus, tmp_path):
    cfg = lambda: _student(teacher, corpus, steps=6, **{"train.eval_every": 3})  # noqa: E731
    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    Trainer(cfg(), tmp_path / "parts", progress=False).train(stop_at=3)
    resume_training(tmp_path / "parts", progress=False)
    assert_same_weights(tmp_path / "whole", tmp_path / "parts")
    record = TrainSummary.read(tmp_path / "whole").distill
    assert record is not None and (record.steps, record.teacher_steps) == (16, 32)
    assert TrainSummary.read(tmp_path / "parts").distill == record

    from textdiffusion.api import load

    drawn = load(tmp_path / "whole").sample(n=2, length=32, seed=0, progress=False)
    assert drawn.steps == 16 and drawn.nfe <= 16


def test_what_consistency_distillation_cannot_use_is_one_line(teacher, corpus, tmp_path, capsys):
    common = ["train", "--steps", "2", "--no-progress"]
    cases = [(["--distill-from", str(teacher), "--set", "train.distill_draws=2"], "train.distill_draws=2"),
             (["--method", "uniform", "--preset", "tiny", "--data", str(corpus), "--set", "method.curriculum_steps=5",
               "method.objective=heuristic"], "method.curriculum_steps")]
    for i, (flags, words) in enumerate(cases):
        assert main([*common, *flags, "--run-dir", str(tmp_path / f"r{i}")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err, err
        assert not (tmp_path / f"r{i}").exists()
