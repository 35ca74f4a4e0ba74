"""Self-distillation through time: the targets' maths (``diffusion/self_distillation.py``), the student's loss for
masked and block diffusion, and ``train.distill_from`` / ``train --distill-from`` (``distill_from.py``)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from helpers import assert_same_weights, tiny_config
from textdiffusion.apps.cli import main
from textdiffusion.checkpoint import read_group
from textdiffusion.config import Config, ConfigError
from textdiffusion.diffusion.masking import make_schedule
from textdiffusion.diffusion.self_distillation import grid_times, kl_to_targets, teacher_targets
from textdiffusion.records import TrainSummary
from textdiffusion.trainer import Trainer, resume_training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Words drawn at random from eight of five letters: a tiny network soon reads a word's letters off its
    neighbours, so what its second step reads (the letters its first revealed) changes what it predicts."""
    words = ("apple ", "brick ", "cloud ", "dream ", "eagle ", "flame ", "grape ", "house ")
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text("".join(rng.choice(words) for _ in range(10_000)), encoding="utf-8")
    return path


def _teacher(tmp_path_factory: pytest.TempPathFactory, corpus: Path, method: str, steps: int) -> Path:
    run = tmp_path_factory.mktemp("teacher") / method
    Trainer(tiny_config(method, corpus, steps=steps, **{"train.eval_every": steps}), run, progress=False).train()
    return run


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return _teacher(tmp_path_factory, corpus, "masked", 200)


@pytest.fixture(scope="module")
def block_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return _teacher(tmp_path_factory, corpus, "block", 30)


def _student(teacher: Path, corpus: Path, steps: int = 4, **sets: object) -> Config:
    return tiny_config(teacher.name, corpus, steps=steps, **{"train.distill_from": teacher, **sets})


def _batch(trainer: Trainer, seed: int, n: int = 16) -> torch.Tensor:
    return trainer.source.train_batch(n, trainer.method.window, torch.Generator().manual_seed(seed))


# ---- the maths, on a network whose output is known ------------------------------------------------------------
def _counting_teacher(vocab: int, mask_id: int):
    """A denoiser whose distribution at every position depends on how many masks its row still holds, so the
    step at which a target was taken can be read off the target."""

    def teacher(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        masks = (z == mask_id).sum(1, keepdim=True).float()
        logits = torch.arange(vocab).float()[None, None] * masks[..., None] / 10.0
        return logits.expand(*z.shape, vocab)

    return teacher


def test_the_target_is_a_distribution_at_every_position():
    V, mask = 7, 7
    z = torch.full((4, 12), mask)
    z[:, ::3] = 2
    t = torch.full(z.shape, 0.75)
    gen = torch.Generator().manual_seed(0)
    teacher = lambda z, t: torch.randn(*z.shape, V, generator=torch.Generator().manual_seed(int(z.sum())))  # noqa: E731
    for m in (1, 2, 5):
        target = teacher_targets(teacher, z, t, t - 0.25, m, make_schedule("loglinear", 10.0).alpha, mask, gen)
        assert target.shape == (4, 12, V) and bool(torch.isfinite(target).all())
        assert torch.allclose(target.exp().sum(-1), torch.ones(4, 12), atol=1e-6)


def test_each_position_takes_the_distribution_of_the_teacher_step_that_revealed_it():
    """From t = 1 to s = 0 in two steps: the first reveals about half the masks and its distribution (read at L
    masks) is theirs; the second reveals the rest, whose target is read at the masks the first step left."""
    V, mask, L = 5, 5, 64
    z = torch.full((3, L), mask)
    target = teacher_targets(_counting_teacher(V, mask), z, torch.ones(z.shape), torch.zeros(z.shape), 2,
                             make_schedule("loglinear", 10.0).alpha, mask, torch.Generator().manual_seed(1))

    def read_at(masks: int) -> torch.Tensor:  # the counting teacher's distribution at a row of ``masks`` masks
        return (torch.arange(V).float() * masks / 10.0).log_softmax(-1)

    first = (target - read_at(L)).abs().amax(-1) < 1e-6
    for row in range(3):
        revealed = int(first[row].sum())
        assert 0.3 * L < revealed < 0.7 * L  # revealed with probability 1/2 on the first step
        assert torch.allclose(target[row][~first[row]], read_at(L - revealed).expand(L - revealed, V), atol=1e-6)


def test_several_draws_average_the_probabilities_of_single_draws():
    """draws=K is the mean of K independent runs' probabilities (the same generator, run after run): a
    distribution with the expected target of one draw."""
    V, mask, L = 5, 5, 40
    z = torch.full((2, L), mask)
    t, s = torch.ones(z.shape), torch.full(z.shape, 0.5)
    alpha = make_schedule("loglinear", 10.0).alpha
    teacher = _counting_teacher(V, mask)
    averaged = teacher_targets(teacher, z, t, s, 2, alpha, mask, torch.Generator().manual_seed(6), draws=3)
    gen = torch.Generator().manual_seed(6)
    singles = [teacher_targets(teacher, z, t, s, 2, alpha, mask, gen) for _ in range(3)]
    assert not torch.allclose(singles[0], singles[1])  # the runs differ ...
    assert torch.allclose(averaged.exp(), torch.stack(singles).exp().mean(0), atol=1e-6)  # ... and are averaged
    assert torch.allclose(averaged.exp().sum(-1), torch.ones(2, L), atol=1e-6)


def test_at_one_substep_the_target_is_the_teachers_one_step_output():
    V, mask = 6, 6
    z = torch.randint(0, V + 1, (3, 10), generator=torch.Generator().manual_seed(2))
    t = torch.full(z.shape, 0.5)
    net = torch.nn.Embedding(V + 1, V)
    teacher = lambda z, t: net(z)  # noqa: E731
    with torch.no_grad():
        target = teacher_targets(teacher, z, t, t - 0.5, 1, make_schedule("loglinear", 10.0).alpha, mask,
                                 torch.Generator().manual_seed(3))
        assert torch.equal(target, net(z).float().log_softmax(-1))
        assert float(kl_to_targets(net(z), target, z == mask)) == 0.0


def test_times_come_from_the_students_grid():
    t = grid_times((2000,), 8, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert set((t * 8).round().long().tolist()) == set(range(1, 9))
    assert torch.allclose(t * 8, (t * 8).round())


# ---- the student's loss on real networks -----------------------------------------------------------------
@pytest.mark.parametrize("teacher", ["masked_run", "block_run"])
def test_a_student_equal_to_its_teacher_has_zero_loss_at_one_substep_and_not_at_two(teacher, corpus, tmp_path,
                                                                                   request):
    run = request.getfixturevalue(teacher)
    trainer = Trainer(_student(run, corpus, **{"train.distill_substeps": 1}), tmp_path / "s", progress=False)
    trainer.model.eval()
    x = _batch(trainer, 0)
    with torch.no_grad():
        one = trainer.method.distillation_loss(trainer.model, trainer.teacher.network, x,
                                               torch.Generator().manual_seed(5), 4, 1)
        two = trainer.method.distillation_loss(trainer.model, trainer.teacher.network, x,
                                               torch.Generator().manual_seed(5), 4, 2)
    assert float(one) == 0.0
    assert float(two) > 1e-4  # the second step reads what the first revealed


def _divergence(trainer: Trainer, model: torch.nn.Module, draws: int = 16) -> float:
    """KL from the teacher's 2-step targets, averaged over ``draws`` runs of the teacher from each z_t (so the
    randomness of its steps, which no one-step student can predict, is averaged out), to ``model``'s one step:
    on fixed batches and states, in eval mode."""
    method, total = trainer.method, 0.0
    model.eval()
    with torch.no_grad():
        for i in range(3):
            x = _batch(trainer, 100 + i, 32)
            z, masked, t = method._distillation_state(x, 4, torch.Generator().manual_seed(i))
            teacher = method._denoiser(trainer.teacher.network, x, None)
            mean = sum(teacher_targets(teacher, z, t, (t - 0.25).clamp(min=0.0), 2, method.schedule.alpha,
                                       method.tok.mask_id, torch.Generator().manual_seed(1000 + k)).exp()
                       for k in range(draws)) / draws
            total += float(kl_to_targets(method._denoiser(model, x, None)(z, t), mean.log(), masked))
    return total / 3


def test_training_reduces_the_divergence_to_the_teachers_two_step_output(masked_run, corpus, tmp_path):
    cfg = _student(masked_run, corpus, steps=60, **{"train.distill_steps": 4, "train.eval_every": 60,
                                                    "train.final_eval_windows": 8})
    trainer = Trainer(cfg, tmp_path / "s", progress=False)
    before = _divergence(trainer, trainer.model)
    trainer.train()
    after = _divergence(trainer, trainer.model)
    assert before > 0.005 and after < 0.75 * before, (before, after)


# ---- the run: its first weights, its record, its rounds, resume ---------------------------------------------------
def test_the_student_starts_from_the_teachers_ema_weights_and_the_teacher_is_frozen(masked_run, corpus, tmp_path):
    trainer = Trainer(_student(masked_run, corpus), tmp_path / "s", progress=False)
    ema, _ = read_group(masked_run, "ema")
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, ema[name]) and torch.equal(trainer.ema.model.state_dict()[name], ema[name])
    teacher = trainer.teacher.network
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, ema[name])  # four steps later, the teacher is as it was loaded


def test_the_record_names_the_teacher_and_the_student_samples_in_its_steps(masked_run, corpus, tmp_path):
    Trainer(_student(masked_run, corpus), tmp_path / "s", progress=False).train()
    meta = json.loads((tmp_path / "s" / "config.json").read_text())
    teacher_id = json.loads((masked_run / "config.json").read_text())["run_id"]
    record = TrainSummary.read(tmp_path / "s").distill
    assert record is not None and record.teacher.run_id == teacher_id and record.teacher.step == 200
    assert (record.steps, record.teacher_steps) == (16, 32)  # the teacher's 32 (one per token), halved
    assert meta["distill_from"] == record.to_json()
    assert meta["config"]["method"]["sample_steps"] == 16 and meta["config"]["train"]["distill_steps"] == 16
    assert "distilled from" in record.label() and TrainSummary.read(masked_run).distill is None

    from textdiffusion.api import load

    drawn = load(tmp_path / "s").sample(n=2, length=32, seed=0, progress=False)
    assert drawn.steps == 16 and drawn.nfe <= 16  # a student samples in the steps it was taught
    assert load(masked_run).sample(n=2, length=32, seed=0, progress=False).steps == 32


def test_a_round_from_the_student_halves_its_steps_again_and_rounds_chain(block_run, corpus, tmp_path, capsys):
    common = ["train", "--steps", "2", "--no-progress", "--set", "train.eval_every=2",
              "--set", "train.final_eval_windows=8"]
    assert main([*common, "--distill-from", str(block_run), "--run-dir", str(tmp_path / "r1")]) == 0
    assert main([*common, "--distill-from", str(tmp_path / "r1"), "--run-dir", str(tmp_path / "r2"),
                 "--set", "train.distill_draws=2"]) == 0
    out = capsys.readouterr().out
    assert "distilled from " in out and " at step 30: 2 sampling steps for its 4" in out
    assert f"the next round: textdiffusion train --distill-from {tmp_path / 'r2'}" in out
    first, second = (TrainSummary.read(tmp_path / r).distill for r in ("r1", "r2"))
    assert (first.steps, first.teacher_steps) == (2, 4)  # block B=4: 4 steps per block, then 2, then 1
    assert (second.steps, second.teacher_steps) == (1, 2)
    # a student's training cost counts its teacher's, and its teacher's teacher's, steps
    assert [TrainSummary.read(tmp_path / r).total_steps for r in ("r1", "r2")] == [2 + 30, 2 + 2 + 30]
    assert json.loads((tmp_path / "r2" / "final.json").read_text())["total_steps"] == 34
    config = json.loads((tmp_path / "r2" / "config.json").read_text())["config"]
    assert config["method"]["name"] == "block" and config["train"]["distill_draws"] == 2


def test_resume_continues_a_student_exactly(masked_run, corpus, tmp_path):
    cfg = lambda: _student(masked_run, corpus, steps=6, **{"train.eval_every": 3})  # noqa: E731
    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    Trainer(cfg(), tmp_path / "parts", progress=False).train(stop_at=3)
    resume_training(tmp_path / "parts", progress=False)
    assert_same_weights(tmp_path / "whole", tmp_path / "parts")
    assert TrainSummary.read(tmp_path / "parts").distill == TrainSummary.read(tmp_path / "whole").distill


def test_resume_refuses_a_teacher_trained_further(masked_run, corpus, tmp_path):
    teacher = tmp_path / "masked"
    shutil.copytree(masked_run, teacher)
    Trainer(_student(teacher, corpus, steps=4), tmp_path / "s", progress=False).train(stop_at=2)
    resume_training(teacher, steps=202, progress=False)
    with pytest.raises(ConfigError, match="restore that teacher") as e:
        resume_training(tmp_path / "s", progress=False)
    assert "\n" not in str(e.value)


# ---- errors: one line, naming the field ---------------------------------------------------------------------
@pytest.mark.parametrize(("sets", "field"), [({"model.n_embd": 64}, "model.n_embd"),
                                             ({"method.time_conditioning": True}, "method.time_conditioning")])
def test_an_incompatible_teacher_is_refused_by_the_field(sets, field, masked_run, corpus, tmp_path):
    with pytest.raises(ConfigError, match=rf"train\.distill_from=.*{field}=") as e:
        Trainer(_student(masked_run, corpus, **sets), tmp_path / "s", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()


def test_the_cli_refuses_other_methods_and_two_starts_in_one_line(masked_run, block_run, corpus, tmp_path, capsys):
    common = ["train", "--preset", "tiny", "--data", str(corpus), "--steps", "2", "--no-progress"]
    cases = [(["--method", "masked", "--distill-from", str(block_run)], "method.name=block"),
             (["--method", "ar", "--distill-from", str(masked_run)], "masked, block or uniform"),
             (["--method", "masked", "--distill-from", str(tmp_path / "nope")], "not a run directory"),
             (["--method", "masked", "--distill-from", str(masked_run), "--init-from", str(masked_run)],
              "leave train.init_from empty")]
    for i, (flags, words) in enumerate(cases):
        assert main([*common, *flags, "--run-dir", str(tmp_path / f"r{i}")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: train.") and words in err and "\n" not in err, err
    assert main([*common, "--method", "masked", "--distill-from", str(masked_run), "--run-dir",
                 str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "ok"), "--distill-from", str(masked_run)]) == 2
    assert "not --distill-from" in capsys.readouterr().err
