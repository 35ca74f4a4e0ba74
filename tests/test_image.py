"""Image diffusion (``--method image`` / ``textdiffusion mnist``): U-Net, training, sampling, bound, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import metric_rows
from textdiffusion.apps.cli import main
from textdiffusion.config import ConfigError, UNetConfig
from textdiffusion.data.images import ImageBatch, ImageSpec, to_pixels, to_unit_range
from textdiffusion.methods.configs import make_config
from textdiffusion.methods.image import ImageDiffusion, ImageRequest
from textdiffusion.nn.unet import UNet
from textdiffusion.runs import open_run
from textdiffusion.trainer import Trainer


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory, mnist_file: Path) -> Path:
    """512 training and 128 test digits of the real MNIST as a small npz."""
    with np.load(mnist_file, allow_pickle=False) as d:
        arrays = {"x_train": d["x_train"][:512], "y_train": d["y_train"][:512],
                  "x_test": d["x_test"][:128], "y_test": d["y_test"][:128]}
    path = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    np.savez(path, **arrays)
    return path


def _method(**sets) -> tuple[ImageDiffusion, UNet]:
    cfg = make_config("image", "tiny", [f"{k}={v}" for k, v in sets.items()])
    method = ImageDiffusion.from_config(cfg, ImageSpec(size=28))
    return method, method.build_model()


@pytest.mark.parametrize(("size", "mult"), [(28, "1,2,2"), (28, "1,2"), (8, "1,2"), (8, "1,2,2")])
@pytest.mark.parametrize("classes", [0, 10])
def test_unet_maps_images_to_images(size, mult, classes):
    net = UNet(UNetConfig(base_channels=8, channel_mult=mult, heads=2, groups=4), size, 1, classes)
    x = torch.randn(3, 1, size, size)
    labels = torch.tensor([0, 5, classes]) if classes else None
    out = net(x, torch.rand(3), labels)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv: the untrained net says 0


def test_unet_uses_time_and_label():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mult="1,2", heads=2, groups=4), 8, 1, 10)
    for p in net.parameters():  # leave the zero init behind so the output depends on its inputs
        torch.nn.init.normal_(p, std=0.05)
    net.eval()  # no dropout
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.3, 0.3])
    base = net(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(base, net(x, torch.tensor([0.8, 0.8]), torch.tensor([1, 1])))
    assert not torch.allclose(base, net(x, t, torch.tensor([2, 2])))
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([10, 10])))  # None = the "no label" token


def test_unet_rejects_wrong_shapes():
    net = UNet(UNetConfig(base_channels=8, channel_mult="1,2", heads=2, groups=4), 28, 1, 0)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        net(torch.randn(2, 28, 28), torch.rand(2))
    with pytest.raises(ConfigError, match="cannot be halved"):
        UNet(UNetConfig(channel_mult="1,2,2,2"), 28, 1, 0)
    with pytest.raises(ConfigError, match="comma-separated"):
        UNet(UNetConfig(channel_mult="1;2"), 28, 1, 0)


def test_pixels_round_trip_through_the_unit_range():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    x = to_unit_range(pixels)
    assert x.shape == (1, 1, 16, 16) and x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(to_pixels(x), pixels)


def _trained(mnist_npz: Path, tmp: Path, steps: int = 30, **sets) -> Trainer:
    cfg = make_config("image", "tiny", [f"data.corpus={mnist_npz}", f"train.steps={steps}",
                                        *(f"{k}={v}" for k, v in sets.items())])
    trainer = Trainer(cfg, tmp, progress=False)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def image_run(mnist_npz, tmp_path_factory) -> Path:
    rd = tmp_path_factory.mktemp("imgrun") / "run"
    _trained(mnist_npz, rd, steps=30, **{"train.eval_every": 15})
    return rd


def test_training_writes_an_image_run(image_run: Path):
    files = {p.name for p in image_run.iterdir()}
    assert {"config.json", "image.json", "checkpoint.safetensors", "metrics.jsonl", "final.json"} <= files
    assert "tokenizer.json" not in files
    rows = metric_rows(image_run)
    assert [r["step"] for r in rows] == [15, 30] and all("val_bpd" in r and "images_per_s" in r for r in rows)
    assert rows[1]["train_loss"] < 1.0  # eps-MSE starts at 1 for the zero-initialised net
    final = json.loads((image_run / "final.json").read_text())
    assert final["val_kind"] == "bound" and 0 < final["val_bpd"] < 8  # an 8-bit pixel costs at most 8 bits
    with Image.open(image_run / "samples" / "step_000030.png") as img:
        assert img.size[0] > 28 * 10  # ten digits per row
    meta = json.loads((image_run / "config.json").read_text())
    assert meta["corpus"]["name"] == "mnist" and meta["corpus"]["offline_fallback"] is False


def test_image_training_resumes_exactly(mnist_npz, tmp_path):
    quick = {"train.sample_every_eval": "false", "train.final_eval_windows": 8}
    straight = _trained(mnist_npz, tmp_path / "a", steps=16, **quick)
    cfg = make_config("image", "tiny", [f"data.corpus={mnist_npz}", "train.steps=16",
                                        *(f"{k}={v}" for k, v in quick.items())])
    half = Trainer(cfg, tmp_path / "b", progress=False)
    half.train(stop_at=8)
    resumed = Trainer(cfg, tmp_path / "b", resume=True, progress=False)
    resumed.train()
    for name, p in straight.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name


def test_ddim_with_eta_zero_is_deterministic_given_the_seed(image_run: Path):
    run = open_run(image_run)

    def draw(seed, sampler="ddim", eta=0.0):
        gen = torch.Generator().manual_seed(seed)
        return run.method.sample(run.model, ImageRequest(n=4, labels=[1, 2, 3, 4], sampler=sampler, steps=10,
                                                         eta=eta), gen).images

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    # with eta > 0 fresh noise enters at every step, drawn from the same generator: still reproducible
    assert torch.equal(draw(0, eta=1.0), draw(0, eta=1.0))
    assert torch.equal(draw(0, sampler="ddpm"), draw(0, sampler="ddpm"))
    assert not torch.equal(draw(0, eta=1.0), draw(0))


def test_guidance_zero_is_the_unconditional_model(image_run: Path):
    run = open_run(image_run)
    req = {"n": 3, "sampler": "ddim", "steps": 8, "eta": 0.0}
    uncond = run.method.sample(run.model, ImageRequest(**req), torch.Generator().manual_seed(5))
    w0 = run.method.sample(run.model, ImageRequest(labels=[1, 4, 7], guidance=0.0, **req),
                           torch.Generator().manual_seed(5))
    w3 = run.method.sample(run.model, ImageRequest(labels=[1, 4, 7], guidance=3.0, **req),
                           torch.Generator().manual_seed(5))
    assert torch.allclose(uncond.images, w0.images, atol=1e-4)
    assert w0.nfe == 16 and uncond.nfe == 8  # a guided step evaluates both branches
    assert not torch.allclose(w0.images, w3.images)


def test_sampling_errors_are_one_line(image_run: Path):
    run = open_run(image_run)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="exceed"):
        run.method.sample(run.model, ImageRequest(n=1, sampler="ddim", steps=5000), gen)
    with pytest.raises(ConfigError, match=r"0\.\.9"):
        run.method.sample(run.model, ImageRequest(n=1, labels=[12]), gen)
    with pytest.raises(ConfigError, match="one digit per sample"):
        run.method.sample(run.model, ImageRequest(n=2, labels=[1]), gen)
    with pytest.raises(ConfigError, match="no sampler"):
        run.method.sample(run.model, ImageRequest(n=1, sampler="euler"), gen)


def test_bound_is_deterministic_and_its_terms_match_exact_values(image_run: Path, mnist_npz):
    """The VDM bound's prior and reconstruction terms against their values computed here from the schedule
    alone: the prior as the closed-form KL(q(z_1 | x) || N(0, I)), the reconstruction as its expectation over
    the noise by Gauss-Hermite quadrature (each pixel's posterior over the 256 levels at z_{t_min}). A wrong
    time, noise level, pixel scale or per-dimension normalisation in either term shows here; the three terms
    add up to the total by construction, so their sum is not checked."""
    run = open_run(image_run)
    with np.load(mnist_npz) as d:
        batch = ImageBatch(torch.from_numpy(d["x_test"][:16]), torch.from_numpy(d["y_test"][:16]).long())
    a, b = run.method.nll(run.model, batch), run.method.nll(run.model, batch)
    assert a.nats_per_unit == b.nats_per_unit and a.unit == "dim" and a.units == 16 * 28 * 28
    d = a.details
    pixels = batch.images.flatten().long()
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0

    a1 = run.method.schedule.alpha_bar(torch.tensor(1.0)).double()
    q1 = torch.distributions.Normal(a1.sqrt() * levels[pixels], (1.0 - a1).sqrt())
    prior = torch.distributions.kl_divergence(q1, torch.distributions.Normal(0.0, 1.0)).mean().item()
    # the bound sums in float32, where 1 - abar(1) rounds by up to 2^-25 per dimension: the tolerance
    assert d["prior_nats_per_dim"] == pytest.approx(prior, rel=0, abs=2**-25)
    assert d["prior_nats_per_dim"] < 1e-3  # linear schedule: almost no signal left at t = 1

    # E_e[-log p(k | z)] for each level k, z = sqrt(a0) v_k + sqrt(1 - a0) e, e ~ N(0, 1)
    a0 = run.method.schedule.alpha_bar(torch.tensor(run.method.t_min)).double()
    nodes, weights = (torch.from_numpy(v) for v in np.polynomial.hermite_e.hermegauss(121))
    weights = weights / weights.sum()
    z = a0.sqrt() * levels[:, None] + (1.0 - a0).sqrt() * nodes  # (level k, node)
    logp = torch.log_softmax(-(z[..., None] - a0.sqrt() * levels).pow(2) / (2.0 * (1.0 - a0)), dim=-1)
    nll = -logp.diagonal(dim1=0, dim2=2).T  # (level k, node): -log p(k | z_k,node)
    mean, var = nll @ weights, nll.pow(2) @ weights - (nll @ weights).pow(2)
    count = torch.bincount(pixels, minlength=256).double()
    expected = float((count * mean).sum() / count.sum())
    stderr = float((count * var).sum().sqrt() / count.sum())  # of the bound's one draw per pixel
    assert 0 < stderr < 0.01 * expected
    assert abs(d["reconstruction_nats_per_dim"] - expected) < 4 * stderr, (d["reconstruction_nats_per_dim"], expected)
    assert d["diffusion_nats_per_dim"] > 0


def test_mnist_cli_sample_writes_grid_strip_and_gif(image_run: Path, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["mnist", "sample", str(image_run), "--out", str(out), "--sampler", "ddim", "--steps", "12",
                 "--n", "20"]) == 0
    with Image.open(out / "samples.png") as grid:
        arr = np.asarray(grid)
        assert arr.std() > 0  # not blank
    with Image.open(out / "denoising.png") as strip:
        # ten time columns (noise to sample) by one row per digit, 28 px + 2 px padding, scaled 3x
        assert strip.size == ((10 * 30 + 2) * 3, (10 * 30 + 2) * 3)
    with Image.open(out / "reverse.gif") as gif:
        assert gif.n_frames > 5
    assert main(["mnist", "sample", str(image_run), "--out", str(out), "--digit", "3", "--n", "4", "--steps",
                 "5", "--sampler", "ddim", "--no-gif"]) == 0


def test_mnist_sample_shows_a_bar_over_the_denoising_steps(image_run: Path, tmp_path, capsys):
    """One batch of a many-step sampler takes minutes: the bar counts its steps (none with --no-progress), and
    drawing with it gives the very images drawn without it."""
    argv = ["mnist", "sample", str(image_run), "--sampler", "ddim", "--steps", "12", "--n", "10", "--no-gif"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "drawing 10 images" in err and "/12 " in err and "step/s" in err  # a bar over the 12 steps
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "drawing" not in capsys.readouterr().err
    with Image.open(tmp_path / "a" / "samples.png") as a, Image.open(tmp_path / "b" / "samples.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_mnist_cli_errors(image_run: Path, tmp_path, capsys):
    assert main(["mnist", "sample", str(image_run), "--digit", "11"]) == 2
    assert "--digit must be 0..9" in capsys.readouterr().err
    assert main(["sample", str(image_run)]) == 2
    assert "textdiffusion mnist sample" in capsys.readouterr().err
    assert main(["mnist", "train", "--preset", "tiny", "--data", str(tmp_path / "nope.npz"), "--run-dir",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.npz" in err and err.count("\n") == 1


def _quick_classifier(run: Path, cache: Path) -> None:
    """Pre-fill the classifier cache ``cache`` for the run's data, so an evaluation does not train the full one."""
    from textdiffusion.data.images import load_images
    from textdiffusion.image_evaluation import _data_key
    from textdiffusion.image_metrics import classifier_for, train_classifier

    cfg = json.loads((run / "config.json").read_text())["config"]
    data = load_images(cfg["data"]["corpus"])
    quick = lambda: train_classifier(data.x_train, data.y_train, data.x_test, data.y_test,  # noqa: E731
                                     steps=20, batch_size=64, progress=False)
    classifier_for(_data_key(data), quick, cache / "classifiers", {"note": "test"})


def test_mnist_eval_reports_fid_and_class_accuracy(image_run: Path, tmp_path, monkeypatch):
    from textdiffusion.image_evaluation import evaluate_images

    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path))  # the classifier cache goes here
    _quick_classifier(image_run, tmp_path)
    row = evaluate_images(image_run, samples=20, sampler="ddim", steps=5, batch_size=10, progress=False)
    assert row.fid > 0 and 0.0 <= row.class_accuracy <= 1.0 and row.samples == 20
    assert 0.0 < row.classifier_test_accuracy <= 1.0 and row.steps == 5
    saved = json.loads((image_run / "eval.json").read_text())
    assert saved["fid"] == row.fid and list(saved) == list(row.to_json())


def test_mnist_eval_says_its_cost_then_shows_one_quiet_bar(image_run: Path, tmp_path, monkeypatch, capsys):
    """The default steps (50, not DDPM's 1000), the work said up front, and a bar over batches x steps that
    writes a few lines into a log (capsys is not a terminal) where an unthrottled one would redraw 50 times."""
    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path))
    _quick_classifier(image_run, tmp_path)
    capsys.readouterr()
    assert main(["mnist", "eval", str(image_run), "--samples", "4", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("mnist eval: 4 samples x 50 ddpm steps = 200 U-Net evaluations of one image on cpu")
    assert "sampling 4 images: 100%" in err and "50/50" in err
    assert err.count("\r") + err.count("\n") <= 6, err
    row = json.loads((image_run / "eval.json").read_text())
    assert row["steps"] == 50 and row["sampler"] == "ddpm" and row["samples"] == 4


def test_mnist_eval_prints_its_results_when_eval_json_cannot_be_written(image_run: Path, tmp_path, monkeypatch,
                                                                         capsys):
    import errno

    import textdiffusion.image_evaluation as image_evaluation

    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path))
    _quick_classifier(image_run, tmp_path)
    before = (image_run / "eval.json").read_bytes() if (image_run / "eval.json").exists() else None

    def read_only(path, record):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(image_evaluation, "write_json", read_only)
    capsys.readouterr()
    assert main(["mnist", "eval", str(image_run), "--samples", "4", "--steps", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out
    assert out.rstrip().splitlines()[-1] == (f"{image_run / 'eval.json'} was not written (Read-only file "
                                             f"system): the results above are printed only")
    assert ((image_run / "eval.json").read_bytes() if (image_run / "eval.json").exists() else None) == before


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_every_target_and_schedule_trains_and_samples(target, schedule):
    method, net = _method(**{"method.target": target, "method.noise_schedule": schedule})
    gen = torch.Generator().manual_seed(0)
    batch = ImageBatch(torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8), torch.tensor([0, 1, 2, 3]))
    loss = method.loss(net, batch, gen)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    res = method.sample(net, ImageRequest(n=2, labels=[3, 4], sampler="ddim", steps=4), gen)
    assert res.images.shape == (2, 1, 28, 28) and res.images.abs().max() <= 1.0


def test_x0_clipping_is_a_sampling_option(image_run: Path):
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    req = ImageRequest(n=2, labels=[0, 1], sampler="ddim", steps=6)
    clipped = open_run(image_run)
    raw = open_run(image_run, overrides=["method.clamp=false"])
    a = clipped.method.sample(clipped.model, req, gen())
    b = raw.method.sample(raw.model, req, gen())
    assert a.info["clip"] and not b.info["clip"]
    assert not torch.equal(a.images, b.images)
