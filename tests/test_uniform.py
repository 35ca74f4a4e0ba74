"""Uniform-state diffusion: the maths pinned on tiny tensors (diffusion/uniform.py), then the method."""

from __future__ import annotations

import itertools
import math
import os
import signal

import pytest
import torch

from helpers import tiny_config, train_tiny
from test_methods import _markov_corpus, _true_nll
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.apps.compare import compare_runs
from textdiffusion.checkpoint import read_group
from textdiffusion.data import TextData
from textdiffusion.diffusion.masking import make_schedule
from textdiffusion.diffusion.uniform import (
    ANCESTRAL,
    REDRAW,
    UniformSampler,
    corrupt,
    jump_rate,
    marginal,
    nelbo_integrand,
    nelbo_terms,
    posterior,
    prior_kl,
    time_before,
)
from textdiffusion.guidance.classifier import ClassifierRecipe, classifier_for
from textdiffusion.methods.base import SampleRequest
from textdiffusion.trainer import Trainer, _loss_label, resume_training

D = torch.float64


def brute_force_posterior(z: int, x_probs: torch.Tensor, a_t: float, a_s: float) -> torch.Tensor:
    """q(z_s | z_t = z, x) by Bayes' rule over the joint of (x, z_s, z_t), written out term by term."""
    n = x_probs.shape[0]
    a_ts = a_t / a_s
    joint = torch.zeros(n, dtype=D)
    for y in range(n):
        for x in range(n):
            q_s = a_s * (x == y) + (1 - a_s) / n
            q_ts = a_ts * (z == y) + (1 - a_ts) / n
            joint[y] += x_probs[x] * q_s * q_ts
    return joint / joint.sum()


def test_posterior_is_a_distribution_and_is_bayes_rule():
    g = torch.Generator().manual_seed(0)
    n = 5
    for a_t, a_s in ((0.1, 0.4), (0.5, 0.9), (0.0, 0.3), (0.7, 1.0)):
        for z in range(n):
            one_hot = torch.nn.functional.one_hot(torch.tensor(2), n).to(D)
            soft = torch.rand(n, generator=g, dtype=D).softmax(0)
            for x_probs in (one_hot, soft):
                got = posterior(torch.tensor(z), x_probs, torch.tensor(a_t, dtype=D), torch.tensor(a_s, dtype=D))
                assert float(got.sum()) == pytest.approx(1.0, abs=1e-12) and bool((got >= 0).all())
                if (x_probs == one_hot).all():
                    # for a known x, Bayes' rule over z_s alone: q(z_t | z_s) q(z_s | x) / q(z_t | x)
                    a_ts = a_t / a_s
                    expect = torch.tensor([(a_ts * (z == y) + (1 - a_ts) / n) * (a_s * (y == 2) + (1 - a_s) / n)
                                           for y in range(n)], dtype=D) / (a_t * (z == 2) + (1 - a_t) / n)
                    assert torch.allclose(got, expect, atol=1e-12)
                # a soft x_theta is substituted into the same formula (not mixed): brute force of that formula
                a_ts = a_t / a_s
                joint = torch.tensor([(a_ts * (z == y) + (1 - a_ts) / n) * (a_s * x_probs[y] + (1 - a_s) / n)
                                      for y in range(n)], dtype=D)
                assert torch.allclose(got, joint / joint.sum(), atol=1e-12)
    # and for a one-hot x it is the conditional of the brute-force joint over (z_s, z_t)
    x = torch.nn.functional.one_hot(torch.tensor(1), 4).to(D)
    assert torch.allclose(posterior(torch.tensor(3), x, torch.tensor(0.2, dtype=D), torch.tensor(0.6, dtype=D)),
                          brute_force_posterior(3, x, 0.2, 0.6), atol=1e-12)


def test_corrupt_redraws_at_the_rate_and_reaches_the_uniform_marginal():
    g = torch.Generator().manual_seed(0)
    x = torch.full((3, 40000), 2, dtype=torch.long)
    alpha = torch.tensor([1.0, 0.6, 0.0])
    z, redrawn = corrupt(x, alpha, 5, g)
    assert torch.allclose(redrawn.float().mean(1), 1 - alpha, atol=0.01)
    assert bool((z[0] == 2).all())
    for row, a in enumerate(alpha.tolist()):
        freq = torch.bincount(z[row], minlength=5).double() / z.shape[1]
        expect = marginal(torch.nn.functional.one_hot(torch.tensor(2), 5).to(D), torch.tensor(a, dtype=D))
        assert torch.allclose(freq, expect, atol=0.01)


def udlm_integrand(log_x_theta: torch.Tensor, x: int, z: int, a: float, rate: float) -> float:
    """UDLM's integrand as printed: (alpha'/(N alpha)) [N/xbar_z - N/xbar_theta_z - sum_{y != z} (xbar_y/xbar_z)
    log(xbar_theta_z xbar_y / (xbar_theta_y xbar_z))], alpha'/alpha = -beta: the form the module rewrites."""
    n = log_x_theta.shape[0]
    xbar = torch.full((n,), 1 - a, dtype=D)
    xbar[x] += n * a
    xbar_theta = n * a * log_x_theta.exp() + (1 - a)
    total = n / xbar[z] - n / xbar_theta[z]
    for y in range(n):
        if y != z:
            total -= xbar[y] / xbar[z] * torch.log(xbar_theta[z] * xbar[y] / (xbar_theta[y] * xbar[z]))
    return float(-rate / n * total)


def test_integrand_is_udlms_expression_nonnegative_and_zero_only_for_the_clean_answer():
    g = torch.Generator().manual_seed(1)
    n = 6
    for _ in range(20):
        log_x_theta = torch.randn(n, generator=g, dtype=D).log_softmax(0)
        x, z = (int(v) for v in torch.randint(0, n, (2,), generator=g))
        a = float(torch.rand(1, generator=g)) * 0.98 + 0.01
        got = float(nelbo_integrand(log_x_theta, torch.tensor(x), torch.tensor(z), torch.tensor(a, dtype=D),
                                    torch.tensor(2.0, dtype=D)))
        assert got == pytest.approx(udlm_integrand(log_x_theta, x, z, a, 2.0), rel=1e-9)
        assert got > 0
    # the network that names the clean symbol with certainty has nothing left to pay, wherever z_t is
    certain = torch.full((n,), -math.inf, dtype=D)
    certain[3] = 0.0
    for z in range(n):
        zero = float(nelbo_integrand(certain, torch.tensor(3), torch.tensor(z), torch.tensor(0.4), torch.tensor(1.0)))
        assert zero == pytest.approx(0.0, abs=1e-12)


def expected_integrand(x_theta, x_probs: torch.Tensor, t: float, schedule) -> float:
    """E_{x ~ x_probs} E_{z_t ~ q(.|x)} of the summed integrand, for sequences of any length over N symbols,
    enumerated: ``x_theta(z, t)`` gives the (L, N) log-probabilities the model predicts for state ``z``."""
    tt = torch.tensor(t, dtype=D)
    a, rate = schedule.alpha(tt), jump_rate(schedule, tt)
    length, n = x_probs.dim(), x_probs.shape[0]
    total = 0.0
    for x in itertools.product(range(n), repeat=length):
        if x_probs[x] == 0:
            continue
        for z in itertools.product(range(n), repeat=length):
            q = math.prod(float(a * (zi == xi) + (1 - a) / n) for zi, xi in zip(z, x, strict=True))
            terms = nelbo_integrand(x_theta(z, t), torch.tensor(x), torch.tensor(z), a, rate)
            total += float(x_probs[x]) * q * float(terms.sum())
    return total


def continuous_nelbo(x_theta, x_probs: torch.Tensor, schedule, points: int = 400) -> float:
    """The time integral by the midpoint rule in u with t = u^3: the integrand has a log(1/t) singularity at
    t = 0 (a redrawn character right after the start costs log(N/t)), which t = u^3 smooths away."""
    total = 0.0
    for i in range(points):
        u = (i + 0.5) / points
        total += expected_integrand(x_theta, x_probs, u ** 3, schedule) * 3 * u ** 2 / points
    return total


def discrete_nelbo(x_theta, x: int, n: int, steps: int, schedule) -> float:
    """The discrete-time NELBO of one position on the grid t_i = i / steps, enumerated: the reconstruction
    -log p(x | z_{t_1}) plus the KLs between q(z_s | z_t, x) and p(z_s | z_t) = q(z_s | z_t, x_theta); alpha(1) = 0,
    so the prior term is 0."""
    onehot = torch.nn.functional.one_hot(torch.tensor(x), n).to(D)
    total = 0.0
    for i in range(1, steps + 1):
        t, s = i / steps, (i - 1) / steps
        a_t, a_s = schedule.alpha(torch.tensor(t, dtype=D)), schedule.alpha(torch.tensor(s, dtype=D))
        for z in range(n):
            q_z = float(marginal(onehot, a_t)[z])
            model = posterior(torch.tensor(z), x_theta((z,), t)[0].exp(), a_t, a_s)
            if i == 1:
                total += q_z * -math.log(float(model[x]))
            else:
                true = posterior(torch.tensor(z), onehot, a_t, a_s)
                total += q_z * float((true * (true.log() - model.log())).sum())
    return total


def test_continuous_nelbo_is_the_limit_of_the_discrete_elbo():
    n = 4
    schedule = make_schedule("loglinear")
    g = torch.Generator().manual_seed(2)
    table = torch.randn(n, n, generator=g, dtype=D)

    def x_theta(z, t):  # a fixed denoiser that reads z_t and t
        return (table[z[0]] * (1 - t) + 0.3).log_softmax(-1)[None]

    x = 1
    limit = continuous_nelbo(x_theta, torch.nn.functional.one_hot(torch.tensor(x), n).to(D), schedule)
    gaps = [abs(discrete_nelbo(x_theta, x, n, steps, schedule) - limit) for steps in (4, 32, 512)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02 * limit


def test_the_exact_denoiser_makes_the_bound_tight():
    """Two positions over three symbols, a known joint p: with x_theta^l(z_t) = p(x^l | z_t^{-l}), enumerated,
    E_x[NELBO] equals the entropy H(p); with E[x^l | z_t] (which also reads the noisy z_t^l) it is strictly above."""
    n = 3
    schedule = make_schedule("loglinear")
    p = torch.tensor([[0.30, 0.05, 0.10], [0.02, 0.25, 0.03], [0.15, 0.0, 0.10]], dtype=D)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())

    def given_others(z, t):
        a = float(schedule.alpha(torch.tensor(t, dtype=D)))
        kernel = lambda zi: torch.tensor([a * (zi == xi) + (1 - a) / n for xi in range(n)], dtype=D)  # noqa: E731
        first = (p * kernel(z[1])[None, :]).sum(1)  # p(x^1 | z^2) unnormalised
        second = (p * kernel(z[0])[:, None]).sum(0)  # p(x^2 | z^1)
        return torch.stack((first / first.sum(), second / second.sum())).clamp_min(1e-300).log()

    def given_all(z, t):
        a = float(schedule.alpha(torch.tensor(t, dtype=D)))
        kernel = lambda zi: torch.tensor([a * (zi == xi) + (1 - a) / n for xi in range(n)], dtype=D)  # noqa: E731
        post = p * kernel(z[0])[:, None] * kernel(z[1])[None, :]
        post = post / post.sum()
        return torch.stack((post.sum(1), post.sum(0))).clamp_min(1e-300).log()

    tight = continuous_nelbo(given_others, p, schedule, points=60)
    assert tight == pytest.approx(entropy, rel=1e-3)
    loose = continuous_nelbo(given_all, p, schedule, points=60)
    assert loose > entropy * 1.2  # 2.72 nats against 1.79


def test_prior_kl_is_zero_at_full_noise_and_the_kl_to_uniform_otherwise():
    assert prior_kl(0.0, 65) == 0.0
    a1, n = 0.2, 5
    q1 = marginal(torch.nn.functional.one_hot(torch.tensor(0), n).to(D), torch.tensor(a1, dtype=D))
    assert prior_kl(a1, n) == pytest.approx(float((q1 * (q1 * n).log()).sum()), rel=1e-12)


@pytest.mark.parametrize("name", ["loglinear", "linear"])
def test_jump_rate_is_minus_alpha_prime_over_alpha_and_terms_stay_finite_at_the_ends(name):
    s = make_schedule(name, sigma_max=8.0)
    t = torch.linspace(0.05, 0.95, 7, dtype=D)
    h = 1e-6
    dalpha = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(jump_rate(s, t), -dalpha / s.alpha(t), rtol=1e-5)
    ends = time_before(s, torch.tensor([1e-6, 0.5, 1.0], dtype=D))
    x = torch.tensor([[0, 1, 2], [2, 2, 2], [1, 0, 1]])
    g = torch.Generator().manual_seed(0)
    z, _ = corrupt(x, s.alpha(ends), 3, g)
    terms = nelbo_terms(torch.randn(3, 3, 3, generator=g), x, z, ends, s)
    assert bool(torch.isfinite(terms).all()) and bool((terms >= 0).all())


# ---- the draw loops, apart from any network ---------------------------------------------------------------
def test_one_ancestral_step_from_pure_noise_draws_from_x_theta_and_keeps_fixed_positions():
    n, length, symbols = 2000, 50, 4
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    state = torch.randint(0, symbols, (n, length), generator=torch.Generator().manual_seed(0))
    fixed = torch.zeros(n, length, dtype=torch.bool)
    fixed[:, :5] = True
    before = state.clone()

    def forward(z, t, rows=None):
        return probs.log().expand(*z.shape, symbols)

    sampler = UniformSampler(ANCESTRAL, 1, alpha=make_schedule("loglinear").alpha)
    out, nfe = sampler.run(forward, state, fixed, torch.Generator().manual_seed(1))
    assert nfe == 1.0 and torch.equal(out[:, :5], before[:, :5])
    # from t = 1 (alpha = 0) nothing of z_t is left to weigh: the posterior at s = 0 is x_theta itself
    freq = torch.bincount(out[:, 5:].flatten(), minlength=symbols).double() / out[:, 5:].numel()
    assert torch.allclose(freq, probs.double(), atol=0.01)


def test_every_position_may_change_until_the_last_ancestral_step_and_ends_on_a_confident_answer():
    symbols, length = 5, 40
    target = torch.arange(length) % symbols
    logits = torch.nn.functional.one_hot(target, symbols).float() * 8.0

    def forward(z, t, rows=None):
        return logits.expand(z.shape[0], length, symbols)

    frames = []
    sampler = UniformSampler(ANCESTRAL, 16, alpha=make_schedule("loglinear").alpha)
    start = torch.randint(0, symbols, (8, length), generator=torch.Generator().manual_seed(0))
    out, _ = sampler.run(forward, start, torch.zeros_like(start, dtype=torch.bool), torch.Generator().manual_seed(2),
                         lambda step, state, info: frames.append(state))
    assert len(frames) == 16
    # a character written early can still be replaced: some position changes back and forth along the way
    changes = torch.stack([(a != b) for a, b in itertools.pairwise(frames)])
    assert bool(changes[len(changes) // 2:].any())
    assert float((out == target).double().mean()) > 0.95


def test_the_redraw_loop_redraws_every_free_position_from_x_theta_at_every_step():
    symbols, length = 3, 30
    calls = []

    def forward(z, t, rows=None):
        calls.append(z.clone())
        return torch.zeros(z.shape[0], length, symbols)  # x_theta uniform: each step a fresh uniform draw

    fixed = torch.zeros(50, length, dtype=torch.bool)
    fixed[:, -3:] = True
    start = torch.zeros(50, length, dtype=torch.long)
    out, nfe = UniformSampler(REDRAW, 3).run(forward, start, fixed, torch.Generator().manual_seed(0))
    assert nfe == 3.0 and len(calls) == 3 and bool((out[:, -3:] == 0).all())
    assert float((calls[1][:, :-3] != calls[2][:, :-3]).double().mean()) == pytest.approx(2 / 3, abs=0.03)


def test_unknown_uniform_sampler_and_step_count_are_refused():
    with pytest.raises(ValueError, match="unknown uniform sampler"):
        UniformSampler("cached", 4)
    with pytest.raises(ValueError, match=">= 1"):
        UniformSampler(REDRAW, 0)


# ---- the method, through the trainer, the samplers, the CLI and the API -----------------------------------
@pytest.fixture(scope="module")
def uniform_runs(tmp_path_factory, shakespeare):
    """A tiny uniform run of each objective on 60k characters, trained once for the module."""
    root = tmp_path_factory.mktemp("uniform")
    corpus = root / "small.txt"
    corpus.write_text(shakespeare[:60_000], encoding="utf-8")
    runs = {"nelbo": train_tiny("uniform", corpus, root / "nelbo", steps=80),
            "heuristic": train_tiny("uniform", corpus, root / "heuristic", steps=80,
                                    **{"method.objective": "heuristic"})}
    return root, runs


def _sample(trainer, seed=0, **kw):
    return trainer.method.sample(trainer.ema.model, SampleRequest(**kw), torch.Generator().manual_seed(seed))


def test_the_nelbo_is_an_upper_bound_on_a_markov_chains_entropy(tmp_path):
    corpus, P, pi = _markov_corpus(tmp_path)
    trainer = Trainer(tiny_config("uniform", corpus, steps=200, **{"method.eval_time_samples": 8}),
                      tmp_path / "run", progress=False)
    trainer.train()
    windows = TextData.tiled_windows(trainer.data.val_ids, trainer.method.window)
    floor = _true_nll(windows, P, pi)
    res = trainer.evaluate(windows, trainer.model)
    assert res.kind == "bound" and res.details["objective"] == "nelbo"
    assert res.nats_per_unit >= floor - 3 * res.details["stderr_nats"], (res.nats_per_unit, floor)
    assert res.nats_per_unit < math.log(4) - 0.1  # it learned: far below a uniform guess over four symbols


def test_the_bound_is_deterministic_and_the_heuristic_says_its_own_sampler_has_none(uniform_runs):
    _, runs = uniform_runs
    tr = runs["nelbo"]
    a, b = tr.evaluate(tr.val_windows), tr.evaluate(tr.val_windows)
    assert a.nats_per_unit == b.nats_per_unit and a.kind == "bound" and "sampler_note" not in a.details
    assert tr.method.loss_is_likelihood and tr.method.default_sampler == "ancestral"
    h = runs["heuristic"]
    score = h.evaluate(h.val_windows)
    assert score.kind == "bound" and score.details["objective"] == "heuristic"
    assert "redraw sampler has no likelihood" in score.details["sampler_note"]
    assert not h.method.loss_is_likelihood and h.method.default_sampler == REDRAW
    assert _loss_label(h.method, h.cfg) == ("objective", 1.0)  # the bar does not call cross-entropy bits/char


@pytest.mark.parametrize("sampler", ["ancestral", "confidence", "topk", "redraw"])
def test_prompt_and_infill_keep_their_characters_under_every_sampler(uniform_runs, sampler):
    _, runs = uniform_runs
    tr = runs["nelbo"]
    tok = tr.data.tokenizer
    res = _sample(tr, n=3, prompt="KING RICHARD", length=30, sampler=sampler, steps=6)
    assert all(tok.decode(r.tolist()).startswith("KING RICHARD") for r in res.ids) and res.ids.shape == (3, 30)
    template = "ROMEO:\nO ____ art thou? Ro__o!"
    res = _sample(tr, n=4, infill=template, sampler=sampler, steps=6)
    for row in res.ids:
        text = tok.decode(row.tolist())
        assert len(text) == len(template) and all(a == b for a, b in zip(text, template, strict=True) if b != "_")
        assert bool((row < tok.n_symbols).all())  # ordinary characters only: no mask was ever written
    assert res.nfe <= 6


def test_writes_past_its_context_by_chained_windows_and_is_reproducible(uniform_runs):
    _, runs = uniform_runs
    tr = runs["nelbo"]
    length = 2 * tr.method.window + 5
    res = _sample(tr, seed=4, n=2, length=length, prompt="First", steps=4)
    assert res.ids.shape == (2, length) and res.info["windows"] > 1
    assert tr.data.tokenizer.decode(res.ids[0].tolist()).startswith("First")
    assert torch.equal(res.ids, _sample(tr, seed=4, n=2, length=length, prompt="First", steps=4).ids)


def test_live_frames_start_from_noise_and_end_on_the_sample(uniform_runs):
    _, runs = uniform_runs
    tr = runs["nelbo"]
    frames = []
    res = tr.method.sample(tr.ema.model, SampleRequest(n=2, steps=5), torch.Generator().manual_seed(0),
                           lambda step, state, info: frames.append((step, state, info)))
    assert [f[0] for f in frames] == list(range(6)) and frames[0][2]["t"] == 1.0 and frames[-1][2]["t"] == 0.0
    assert torch.equal(frames[-1][1], res.ids) and not torch.equal(frames[0][1], res.ids)


def test_resume_after_an_interruption_ends_bit_identical(small_corpus, tmp_path):
    cfg = lambda: tiny_config("uniform", small_corpus, steps=16, **{"train.eval_every": 8})  # noqa: E731
    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    trainer = Trainer(cfg(), tmp_path / "parts", progress=False)

    def ctrl_c(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    assert trainer.train(on_step=ctrl_c).interrupted
    resume_training(tmp_path / "parts", progress=False)
    for name in ("model", "ema"):
        a, b = read_group(tmp_path / "whole", name)[0], read_group(tmp_path / "parts", name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_eval_prints_a_labelled_bound_and_the_heuristics_note(uniform_runs, capsys):
    root, _ = uniform_runs
    assert main(["eval", str(root / "nelbo"), "--samples", "2", "--steps", "4", "--val-windows", "8",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "upper bound" in out and "sampler ancestral" in out and "no likelihood" not in out
    assert main(["eval", str(root / "heuristic"), "--samples", "2", "--steps", "4", "--val-windows", "8",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sampler redraw" in out and "val: the NELBO of this network" in out and "has no likelihood" in out


def test_a_sampler_of_masks_is_refused_in_one_line(uniform_runs, capsys):
    root, _ = uniform_runs
    assert main(["sample", str(root / "nelbo"), "--sampler", "cached"]) == 2
    assert "has no sampler 'cached'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plays(tmp_path_factory, shakespeare):
    """A quarter of Tiny Shakespeare, whose speeches carry speaker labels."""
    root = tmp_path_factory.mktemp("plays")
    corpus = root / "plays.txt"
    corpus.write_text(shakespeare[: len(shakespeare) // 4], encoding="utf-8")
    return root, corpus


def test_free_guidance_on_a_labelled_run_zero_is_unconditional_and_one_conditional(plays):
    root, corpus = plays
    train_tiny("uniform", corpus, root / "labelled", steps=30, **{"data.labels": "speaker", "data.label_top": 4})
    model = load(root / "labelled", device="cpu")
    options = {"n": 4, "length": 24, "seed": 5, "progress": False, "steps": 6}
    name = model.labels[1]
    unconditional, conditional = model.generate(**options), model.generate(label=name, **options)
    assert model.generate(label=name, guidance=0.0, **options) == unconditional
    assert model.generate(label=name, guidance=1.0, **options) == conditional
    assert len(model.generate(label=name, guidance=3.0, **options)) == 4
    assert model.score("ROMEO is here").kind == "bound"


def test_a_noisy_classifier_steers_the_ancestral_sampler(plays):
    root, corpus = plays
    train_tiny("uniform", corpus, root / "plain", steps=30)
    model = load(root / "plain", device="cpu")
    model.text_method.use_classifier(classifier_for(model.run, ClassifierRecipe(steps=60, batch_size=32, top=4),
                                                    progress=False))
    options = {"n": 4, "length": 24, "seed": 3, "progress": False, "steps": 6}
    plain = model.generate(**options)
    zero = model.sample(label="menenius", guidance=0, rule="classifier", **options)
    assert zero.texts == plain
    steered = model.sample(label="MENENIUS", guidance=40, rule="classifier", **options)
    assert steered.texts != plain


def test_compare_carries_a_bounds_sampler_note_into_the_report(uniform_runs, tmp_path):
    root, _ = uniform_runs
    compare_runs([str(root / "nelbo"), str(root / "heuristic")], tmp_path, samples=2, sweep="", guidance="none",
                 progress=False)
    page = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert page.count("Validation number: the NELBO of this network") == 1  # the heuristic's card only
    assert "redraw sampler has no likelihood" in (tmp_path / "report.html").read_text(encoding="utf-8")
