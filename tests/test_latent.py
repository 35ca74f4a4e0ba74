"""Latent diffusion (``--method latent``): the autoencoder's locality, the two training phases, sampling with
prompts and infilling by chunks, and the method through the command line, the Python API, compare and serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_config, train_tiny
from textdiffusion.api import load
from textdiffusion.apps.cli import main
from textdiffusion.apps.compare import compare_runs
from textdiffusion.apps.serve import load_runs
from textdiffusion.checkpoint import read_group
from textdiffusion.config import ConfigError
from textdiffusion.methods.base import SampleRequest
from textdiffusion.methods.configs import make_config
from textdiffusion.methods.latent import LatentDiffusion
from textdiffusion.runs import open_run
from textdiffusion.trainer import Trainer, resume_training

PHASES = {"method.autoencoder_steps": 6, "train.eval_every": 12}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare) -> Path:
    path = tmp_path_factory.mktemp("latent") / "c.txt"
    path.write_text(shakespeare[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A tiny latent run: 6 autoencoder steps, then 14 of diffusion."""
    out = tmp_path_factory.mktemp("latent-run") / "run"
    train_tiny("latent", corpus, out, steps=20, **{"method.autoencoder_steps": 6, "train.eval_every": 10})
    return out


def _built(cfg, tmp_path):
    trainer = Trainer(cfg, tmp_path / f"built{len(list(tmp_path.iterdir()))}", progress=False)
    return trainer.method, trainer.model


def test_latent_j_reads_only_its_own_chunk(corpus, tmp_path):
    method, model = _built(tiny_config("latent", corpus, steps=10), tmp_path)
    c = method.cfg.compression
    ids = torch.randint(0, method.tok.n_symbols, (1, method.window), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 2 * c + 1] = (changed[0, 2 * c + 1] + 1) % method.tok.n_symbols  # one character of chunk 2
    with torch.no_grad():
        before, after = model.autoencoder.mean(ids), model.autoencoder.mean(changed)
    moved = (before - after).abs().amax(-1)[0]
    assert moved[2] > 0 and torch.all(torch.cat((moved[:2], moved[3:])) == 0)
    # the means are normalised: unit variance across each latent vector, whatever the weights
    assert torch.allclose(before.var(-1, unbiased=False), torch.ones(before.shape[:2]), atol=0.01)


def test_each_phase_trains_its_own_part(corpus, tmp_path):
    cfg = tiny_config("latent", corpus, steps=10, **{"method.autoencoder_steps": 4, "method.decoder_ce_weight": 1})
    method, model = _built(cfg, tmp_path)
    x = torch.randint(0, method.tok.n_symbols, (2, method.window))
    for step, trained, untouched in ((3, "autoencoder", "denoiser"), (4, "denoiser", "autoencoder")):
        model.zero_grad(set_to_none=True)
        method.at_training_step(step)
        method.loss(model, x, torch.Generator().manual_seed(0)).backward()
        assert all(p.grad is not None for p in getattr(model, trained).parameters())
        assert all(p.grad is None for p in getattr(model, untouched).parameters())
    # gradients are averaged after backward, where a parameter without one is skipped, as the optimizer skips it
    assert LatentDiffusion.leaves_parameters_unused and not LatentDiffusion.parameters_in_forward_only


def test_the_phase_boundary_is_recorded_and_checked(run, corpus, tmp_path):
    final = json.loads((run / "final.json").read_text())
    details = final["val_details"]
    assert details["autoencoder_steps"] == 6 and 0.0 <= details["reconstruction_accuracy"] <= 1.0
    recorded = json.loads((run / "config.json").read_text())["config"]["method"]
    assert recorded["autoencoder_steps"] == 6 and recorded["compression"] == 4
    method = _built(tiny_config("latent", corpus, steps=50), tmp_path)[0]
    assert method.autoencoder_steps == 15  # 0: 30% of the run
    for sets, message in ((["method.autoencoder_steps=50"], "leaves none of the 50 training steps"),
                          (["method.compression=5"], "model.context=32 is not a multiple of method.compression=5"),
                          (["method.timesteps=100"], "runs in continuous time")):
        with pytest.raises(ConfigError, match=message):
            _built(make_config("latent", "tiny", [f"data.corpus={corpus}", "train.steps=50", *sets]), tmp_path)


def test_a_resume_across_the_phase_boundary_is_exact(corpus, tmp_path):
    def cfg():
        return tiny_config("latent", corpus, steps=10, **{"method.autoencoder_steps": 5, "train.eval_every": 10})

    Trainer(cfg(), tmp_path / "whole", progress=False).train()
    Trainer(cfg(), tmp_path / "parts", progress=False).train(stop_at=3)  # inside the autoencoder phase
    resume_training(tmp_path / "parts", progress=False, stop_at=7)  # across the boundary
    resume_training(tmp_path / "parts", progress=False)
    whole, parts = read_group(tmp_path / "whole", "model")[0], read_group(tmp_path / "parts", "model")[0]
    assert all(torch.equal(whole[k], parts[k]) for k in whole)
    assert any(not torch.equal(whole[k], parts[k].zero_()) for k in whole if k.startswith("denoiser"))


def test_prompt_and_infill_keep_their_characters_and_impute_whole_chunks(run):
    loaded = open_run(run, device="cpu")
    method = loaded.method
    for req in (SampleRequest(n=3, prompt="ROMEO: I", length=20, steps=5),
                SampleRequest(n=2, infill="ROMEO:\nO ____ art thou, my love?", sampler="ddpm", steps=5)):
        res = method.sample(loaded.model, req, torch.Generator().manual_seed(0))
        state, fixed = method.prepare(req, torch.device("cpu"))
        assert res.ids.shape == state.shape and torch.equal(res.ids[fixed], state[fixed])
        assert res.info["imputed_chunks"] >= 2 and res.nfe == 6  # 5 denoiser steps and the decoder
    with pytest.raises(ConfigError, match="conditions on whole chunks of 4 characters"):
        method.sample(loaded.model, SampleRequest(n=1, prompt="RO", length=16, steps=2), torch.Generator())


def test_the_imputed_chunks_come_from_the_encoder(run):
    """A wholly known chunk's latent is held at a draw from q(z | x) of its characters: with the noise of the
    encoder at its smallest the decoder reads those characters back from it at every step."""
    loaded = open_run(run, device="cpu")
    frames = []
    req = SampleRequest(n=1, prompt="ROMEO: I", length=16, steps=4)
    a = loaded.method.sample(loaded.model, req, torch.Generator().manual_seed(3),
                             lambda step, ids, info: frames.append((step, ids.clone(), info)))
    b = loaded.method.sample(loaded.model, req, torch.Generator().manual_seed(3))
    assert torch.equal(a.ids, b.ids)  # watching decodes by argmax and draws nothing
    assert [s for s, _, _ in frames] == [1, 2, 3, 4] and frames[-1][2]["t"] == 0.0
    assert all(ids.shape == (1, 16) for _, ids, _ in frames)


def test_labels_and_classifiers_are_refused(run):
    loaded = open_run(run, device="cpu")
    with pytest.raises(ConfigError):
        loaded.method.sample(loaded.model, SampleRequest(n=1, label="x"), torch.Generator())
    assert loaded.method.classifier_rule == "" and not loaded.method.supports_labels


def test_cli_train_sample_eval(run, capsys):
    assert main(["sample", str(run), "--prompt", "ROMEO:\nI", "--steps", "4", "--sampler", "ddpm"]) == 0
    assert main(["sample", str(run), "--steps", "4", "--top-k", "1"]) == 0
    assert main(["eval", str(run), "--samples", "4", "--steps", "4", "--val-windows", "8"]) == 0
    out = capsys.readouterr().out
    for label in ("E_q[-log p(x|z)]", "E_q[-log p(z)]", "H(q(z|x))", "reconstruction accuracy", "upper bound"):
        assert label in out
    assert main(["sample", str(run), "--prompt", "RO", "--steps", "2"]) == 2
    assert "conditions on whole chunks" in capsys.readouterr().err


def test_the_api_streams_decoded_frames_and_scores(run):
    model = load(run, device="cpu")
    stream = model.stream("ROMEO: I", length=16, steps=3, seed=1)
    frames = list(stream)
    assert [f.step for f in frames] == [0, 1, 2, 3] and all(len(f.text) == 16 for f in frames)
    assert frames[-1].text == stream.result.texts[0] and frames[-1].text.startswith("ROMEO: I")
    score = model.score("ROMEO: I am here, my lord, and " * 3 + "so.")  # 96 characters: whole chunks
    assert score.kind == "bound" and score.bits_per_char > 0 and score.chars == 96
    with pytest.raises(ConfigError, match="scores whole chunks of 4 characters; 30 is not a multiple of 4"):
        model.score("ROMEO: I am here, my lord, and " * 2)  # 62: a window of 32 and a rest of 30


def test_compare_and_serve_take_latent_runs(run, tmp_path):
    paths = compare_runs([str(run)], tmp_path / "report", samples=2, sweep="2", progress=False, guidance="none")
    assert "latent" in Path(paths["json"]).read_text()
    served = load_runs([str(run)], device="cpu")
    assert [s.method.name for s in served.values()] == ["latent"]


def test_the_denoiser_sees_every_noise_draw_and_its_own_estimate(corpus, tmp_path):
    cfg = tiny_config("latent", corpus, steps=10, **{"method.autoencoder_steps": 2, "method.diffusion_draws": 3})
    method, model = _built(cfg, tmp_path)
    seen: list[tuple[int, bool]] = []
    model.denoiser.register_forward_hook(lambda _m, args, _out: seen.append((args[0].shape[0], bool(args[0][
        ..., method.cfg.latent_dim:].abs().sum() > 0))))
    method.at_training_step(5)
    x = torch.randint(0, method.tok.n_symbols, (2, method.window))
    for seed in range(6):
        method.loss(model, x, torch.Generator().manual_seed(seed))
    assert {rows for rows, _ in seen} == {6}  # 2 windows x 3 draws
    assert len(seen) > 6 and any(fed for _, fed in seen)  # some steps ran a first pass and fed its estimate back
    seen.clear()
    z_t, t = torch.randn(2, method.chunks, method.cfg.latent_dim), torch.full((2,), 0.5)
    with torch.no_grad():
        first = method.split(model(z_t, t), z_t, method.schedule.alpha_bar(t))[0]
        second = method.split(model(z_t, t, first), z_t, method.schedule.alpha_bar(t))[0]
        assert torch.equal(method.predict_z(model, z_t, t), second)  # the bound scores the two-pass estimate
