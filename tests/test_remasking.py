"""ReMDM's remasking sampler (diffusion/remasking.py): its posterior is a distribution, sigma = 0 is the ancestral
sampler, a written token is remasked with probability sigma_t, the loop holds alpha, known text stays."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import pytest
import torch

from helpers import train_tiny
from textdiffusion import load
from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError
from textdiffusion.diffusion.masking import make_schedule
from textdiffusion.diffusion.remasking import SCHEDULES, Remasking, sigma_max
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare):
    """A tiny masked and a tiny block (B = 4) model, a few steps each: the maths holds for any network."""
    root = tmp_path_factory.mktemp("remasking")
    corpus = root / "small.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    return {"masked": train_tiny("masked", corpus, root / "masked", steps=20),
            "block": train_tiny("block", corpus, root / "block", steps=20, **{"method.block_size": 4})}


@contextmanager
def remdm_options(trainer, **options: object) -> Iterator[None]:
    """The run's remdm options changed for the duration, as ``--set method.remdm_...`` changes them."""
    before = {k: getattr(trainer.method.cfg, f"remdm_{k}") for k in options}
    for k, v in options.items():
        setattr(trainer.method.cfg, f"remdm_{k}", v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(trainer.method.cfg, f"remdm_{k}", v)


def _sample(trainer, seed=0, on_step=None, **kw):
    return trainer.method.sample(trainer.ema.model, SampleRequest(**kw), torch.Generator().manual_seed(seed), on_step)


# ---- the posterior ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("mask_schedule", ["loglinear", "linear"])
@pytest.mark.parametrize("steps", [1, 2, 7, 64, 1000])
def test_posterior_is_a_distribution_at_sigma_max(schedule, mask_schedule, steps):
    """With eta = 1 (sigma_t = sigma_max for cap and rescale), every step's two posteriors, over the V tokens and
    [MASK], are >= 0 and sum to one, and a position is written at s with probability alpha_s whatever sigma."""
    alpha = make_schedule(mask_schedule).alpha
    plan = Remasking(schedule, eta=1.0).plan(torch.linspace(1.0, 0.0, steps + 1), alpha,
                                             make_schedule(mask_schedule).time_at)
    p_theta = torch.rand(13, dtype=torch.float64, generator=torch.Generator().manual_seed(steps)).softmax(0)
    for step in plan:
        a_t, a_s, sigma = step.alpha_t, step.alpha_s, step.sigma
        assert 0.0 <= sigma <= sigma_max(a_t, a_s) + 1e-15
        written = torch.cat(((1 - sigma) * torch.nn.functional.one_hot(torch.tensor(3), 13).double(),
                             torch.tensor([sigma], dtype=torch.float64)))
        if a_t < 1.0:
            masked = torch.cat(((a_s - (1 - sigma) * a_t) / (1 - a_t) * p_theta,
                                torch.tensor([(1 - a_s - sigma * a_t) / (1 - a_t)], dtype=torch.float64)))
            assert masked.min() >= -1e-12 and math.isclose(float(masked.sum()), 1.0, abs_tol=1e-12)
            assert math.isclose(float(masked[:-1].sum()), step.reveal, abs_tol=1e-12)
        assert written.min() >= 0 and math.isclose(float(written.sum()), 1.0, abs_tol=1e-12)
        # the forward marginal survives the step: written with probability alpha_s
        assert math.isclose(a_t * (1 - sigma) + (1 - a_t) * step.reveal, a_s, abs_tol=1e-12)
    assert plan[-1].alpha_s == 1.0 and plan[-1].reveal == 1.0 and plan[-1].sigma == 0.0
    if schedule != "loop" and steps >= 7:  # sigma reaches sigma_max on every step
        assert all(math.isclose(s.sigma, sigma_max(s.alpha_t, s.alpha_s)) for s in plan[:-1])


def test_schedules_choose_sigma_as_the_paper_defines_them():
    a_t, a_s = 0.5, 0.52  # sigma_max = 0.96
    assert math.isclose(sigma_max(a_t, a_s), 0.96)
    assert math.isclose(Remasking("cap", eta=0.1).sigma(a_t, a_s), 0.1)
    assert math.isclose(Remasking("cap", eta=1.0).sigma(a_t, a_s), 0.96)
    assert math.isclose(Remasking("rescale", eta=0.1).sigma(a_t, a_s), 0.096)
    assert sigma_max(0.0, 0.1) == 1.0 and sigma_max(0.9, 1.0) == 0.0


def test_loop_holds_alpha_inside_its_phase_and_remasks_only_there():
    loop = Remasking("loop", eta=0.02, t_on=0.55, t_off=0.05, alpha_on=0.9)
    grid = torch.linspace(1.0, 0.0, 101)
    plan = loop.plan(grid, make_schedule("loglinear").alpha, make_schedule("loglinear").time_at)
    inside = [s for s, t in zip(plan, grid.tolist(), strict=False) if t <= 0.55 + 1e-6 and s.s >= 0.05 - 1e-6]
    outside = [s for s in plan if s not in inside]
    assert len(inside) == 50 and len(outside) == 50
    assert all(s.alpha_t == s.alpha_s == 0.9 and s.sigma == 0.02 for s in inside)
    assert all(s.alpha_s > s.alpha_t and s.sigma == 0.0 for s in outside)
    # in the loop phase a masked position is revealed as often as a written one is remasked: 0.9 * 0.02 / 0.1
    assert math.isclose(inside[0].reveal, 0.18)
    # the network is given the time whose clean fraction the loop holds
    assert all(math.isclose(float(s.t), 0.1, rel_tol=1e-6) for s in inside)
    # eta above sigma_max = (1 - alpha_on) / alpha_on is capped
    assert Remasking("loop", eta=0.5, alpha_on=0.9).sigma(0.9, 0.9) == pytest.approx(1 / 9)


def test_bad_remasking_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"method.remdm_t_off=0.6 must be below method.remdm_t_on=0.55"):
        make_config("masked", "tiny", ["method.remdm_t_off=0.6"])
    with pytest.raises(ConfigError, match=r"method.remdm_eta must be a number from 0 to 1, got 1.5"):
        make_config("block", "tiny", ["method.remdm_eta=1.5"])
    with pytest.raises(ConfigError, match=r"method.remdm_schedule must be one of cap, rescale, loop, got 'loops'"):
        make_config("masked", "tiny", ["method.remdm_schedule=loops"])
    with pytest.raises(ConfigError, match=r"remdm_alpha_on must be a number above 0 and below 1"):
        make_config("masked", "tiny", ["method.remdm_alpha_on=1"])
    with pytest.raises(ConfigError, match=r"method.remdm_alpha_on=0.5 must be above alpha\(1\) = 0.99, the fraction"):
        make_config("masked", "tiny", ["method.schedule=linear", "method.sigma_max=0.01", "method.remdm_alpha_on=0.5"])
    with pytest.raises(ValueError, match="0 <= t_off < t_on < 1"):
        Remasking("loop", t_on=0.1, t_off=0.2)


# ---- on a tiny model -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["masked", "block"])
@pytest.mark.parametrize("schedule", ["cap", "rescale"])
def test_sigma_zero_is_the_ancestral_sampler(trained, method, schedule):
    tr = trained[method]
    request = {"n": 4, "prompt": "KING", "length": 40, "steps": 12}
    ancestral = _sample(tr, seed=3, sampler="ancestral", **request)
    with remdm_options(tr, schedule=schedule, eta=0.0):
        remdm = _sample(tr, seed=3, sampler="remdm", **request)
    assert torch.equal(remdm.ids, ancestral.ids) and remdm.nfe == ancestral.nfe
    with remdm_options(tr, schedule=schedule, eta=0.5):  # the comparison can fail: remasking changes the text
        assert not torch.equal(_sample(tr, seed=3, sampler="remdm", **request).ids, ancestral.ids)


def test_a_written_token_is_remasked_with_probability_sigma(trained):
    """Every step, each position written before it returns to [MASK] with probability sigma_t: over a whole draw
    the remasks number sum_i sigma_i * written_i, within 4 standard deviations of that binomial sum."""
    tr = trained["masked"]
    mask, steps = tr.method.tok.mask_id, 16
    frames: list[torch.Tensor] = []
    with remdm_options(tr, schedule="cap", eta=0.2):
        _sample(tr, seed=1, n=64, steps=steps, sampler="remdm", on_step=lambda i, s, info: frames.append(s))
        plan = tr.method.cfg.remasking().plan(torch.linspace(1.0, 0.0, steps + 1), tr.method.schedule.alpha)
    assert len(frames) == steps + 1
    remasked = expected = variance = 0.0
    for step, before, after in zip(plan, frames[:-1], frames[1:], strict=True):
        written = int((before != mask).sum())
        remasked += int(((before != mask) & (after == mask)).sum())
        expected += step.sigma * written
        variance += step.sigma * (1 - step.sigma) * written
    assert expected > 500  # enough draws for the test to mean something
    assert abs(remasked - expected) < 4 * math.sqrt(variance), (remasked, expected, math.sqrt(variance))


def test_loop_keeps_the_masked_fraction_and_costs_one_evaluation_per_step(trained):
    tr = trained["masked"]
    steps, n, L = 40, 64, tr.method.window
    fractions, calls = {}, []
    model = tr.ema.model
    original = model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = counted
    try:
        with remdm_options(tr, schedule="loop", eta=0.05, t_on=0.55, t_off=0.05, alpha_on=0.75):
            res = _sample(tr, seed=2, n=n, steps=steps, sampler="remdm",
                          on_step=lambda i, s, info: fractions.__setitem__(info["t"], float(
                              (s == tr.method.tok.mask_id).float().mean())))
    finally:
        del model.forward
    assert res.nfe == steps and len(calls) == steps
    looping = [f for t, f in fractions.items() if 0.05 <= t <= 0.55 - 1 / steps]
    assert len(looping) >= 15
    # the expected masked fraction is 1 - alpha_on at every loop step; each frame averages n * L positions
    sd = math.sqrt(0.25 * 0.75 / (n * L))
    assert all(abs(f - 0.25) < 6 * sd for f in looping), (looping, sd)
    assert tr.method.tok.mask_id not in res.ids.flatten().tolist()


@pytest.mark.parametrize("method", ["masked", "block"])
def test_known_text_is_never_remasked(trained, method):
    """An infill template's text (masked) and the prompt and finished blocks (block) stay in every frame, even
    with remasking as strong as the posterior allows (rescale, eta = 1)."""
    tr = trained[method]
    mask = tr.method.tok.mask_id
    frames: list[torch.Tensor] = []
    record = lambda i, s, info: frames.append(s.clone())  # noqa: E731
    with remdm_options(tr, schedule="rescale", eta=1.0):
        if method == "masked":
            template = "ROMEO:\nO ____ art thou? Ro__o! ___ wherefore"
            res = _sample(tr, n=8, infill=template, sampler="remdm", steps=24, on_step=record)
        else:
            res = _sample(tr, n=8, prompt="KING RI", length=24, sampler="remdm", steps=6, on_step=record)
    known = res.fixed
    assert frames and all(torch.equal(f[known], res.ids[known]) for f in frames)
    if method == "block":  # a block, once the next one is being written, never changes again
        B = tr.method.B
        for k in range(24 // B - 1):
            later = [f for f in frames if bool((f[:, (k + 1) * B:] != mask).any(1).all())]
            assert later and all(torch.equal(f[:, k * B:(k + 1) * B], res.ids[:, k * B:(k + 1) * B]) for f in later)
    # the remasking did act: some free position went back to [MASK] in some frame
    back = any(bool(((a != mask) & (b == mask) & ~known).any()) for a, b in pairwise(frames))
    assert back


def test_sample_command_takes_the_remdm_sampler_and_its_options(trained, capsys):
    run = str(trained["masked"].run_dir)
    assert main(["sample", run, "--n", "2", "--length", "24", "--sampler", "remdm", "--steps", "30", "--seed", "1",
                 "--set", "method.remdm_schedule=loop", "method.remdm_eta=0.05"]) == 0
    out, err = capsys.readouterr()
    evaluations = float(err.split("sampler remdm, ")[1].split(" network evaluations per sample")[0])
    assert 24 < evaluations <= 30  # one per step; the loop may finish its last steps early with nothing left
    assert len([line for line in out.splitlines() if line.strip()]) >= 2
    assert main(["sample", run, "--sampler", "remdm", "--set", "method.remdm_t_on=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: method.remdm_t_off=0.05 must be below method.remdm_t_on=0.01" in err


def test_python_api_streams_remasking(trained):
    """``load(run, remdm_...)`` sets the options as ``--set`` does; the stream shows tokens going back to masks."""
    model = load(trained["masked"].run_dir, device="cpu", remdm_schedule="rescale", remdm_eta=1.0)
    frames = list(model.stream(n=2, length=24, sampler="remdm", steps=20, seed=4))
    assert len(frames) == 21 and frames[-1].nfe == 20 and not frames[-1].masked[0]
    assert any(set(b.masked[0]) - set(a.masked[0]) for a, b in pairwise(frames))  # a written position remasked
    samples = model.sample(n=2, length=24, sampler="remdm", steps=20, seed=4)
    assert samples.texts == frames[-1].texts and samples.sampler == "remdm"
