r"""Classifier guidance without retraining the language model: a small speaker classifier on *noisy* states.

Diffusion-LM's promise (Li et al. 2022, Sec. 5) is plug-and-play control: keep a language model trained without
labels, train only a small classifier p(c | x_t) on the states the sampler passes through, and steer sampling
by Bayes' rule,

    p(x_{s} | x_t, c)  ∝  p(x_{s} | x_t) · p(c | x_{s})^w,

with w = 1 the exact posterior and w > 1 a sharper one (Dhariwal & Nichol 2021). The classifier must judge the
states *this* method's sampler visits, so it is trained on the method's own forward process
(:meth:`~textdiffusion.methods.base.TextMethod.classifier_inputs`):

* ``masked``: windows with a U(0, 1) fraction of [MASK]s (MDLM's corruption); ``block``: a clean prefix of
  whole blocks, one block partly masked and the rest masked, the states of block-by-block sampling;
* ``ar``: clean windows, with a label prediction at every position (p(c | x_{<=i}), the prefix classifier
  FUDGE needs; Yang & Klein 2021);
* ``embedding``: the Gaussian-noised embeddings x_t of the run's own (frozen) table, with their time.

How each sampler uses it: the Taylor-approximated discrete rule for ``masked``/``block`` (Nisonoff et al. 2024;
:mod:`textdiffusion.guidance.taylor`), FUDGE's reweighting for ``ar`` (:mod:`textdiffusion.guidance.fudge`), gradient
steps on the latents with Diffusion-LM's fluency term for ``embedding``. docs/guidance.md has the maths.

The classifier is a small character CNN (:mod:`textdiffusion.nn.text_classifier`; causal for ``ar``), trained on the
speech bodies of the run's corpus (the ``top`` most-spoken speakers of the training split, as ``data.labels``
picks them, every 10th speech held out), with speakers drawn **uniformly** so its logits carry no prior: guided
sampling asks for each speaker alike. It is cached in the run directory (``speaker-classifier/``, safetensors
and JSON like every checkpoint) and keyed by the run's checkpoint step and the recipe: a run trained further
gets a new classifier.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from textdiffusion.checkpoint import (
    CheckpointError,
    is_export,
    read_json,
    read_tensors,
    versions,
    write_json,
    write_tensors,
)
from textdiffusion.config import ConfigError
from textdiffusion.errors import DataError

CLASSIFIER_DIR = "speaker-classifier"
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
FORMAT = "textdiffusion-noisy-classifier/1"


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the noisy classifier (a :class:`~textdiffusion.nn.text_classifier.ConvTextClassifier`) is built and
    trained."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    embed: int = 64
    width: int = 128
    layers: int = 2
    kernel: int = 5
    top: int = 8  # speakers: the most-spoken of the training split, as data.label_top picks them
    seed: int = 0

    def network(self) -> dict[str, int]:
        """The network's shape, as :meth:`TextMethod.classifier_network` takes it."""
        return {"embed": self.embed, "width": self.width, "layers": self.layers, "kernel": self.kernel}


class NoisyClassifier:
    """A trained speaker classifier over one run's noisy states; the method's sampler calls it."""

    def __init__(self, method: Any, net: torch.nn.Module, names: tuple[str, ...], meta: dict[str, Any]):
        self.method, self.net, self.names, self.meta = method, net.eval(), names, meta
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def rule(self) -> str:
        return self.method.classifier_rule

    def logits(self, inputs: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Label logits: (n, K), or (n, L, K) at every prefix for a causal classifier."""
        return self.method.classifier_logits(self.net, inputs, t)

    def log_prob(self, inputs: torch.Tensor, label: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """log p(label | state) per state (per prefix for a causal classifier)."""
        return self.logits(inputs, t).float().log_softmax(-1)[..., label]

    def gradient(self, inputs: torch.Tensor, label: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """d log p(label | x) / d x for continuous inputs ``x`` (one-hot rows for token states, latents for
        embeddings), summed over the batch's independent rows: each row's gradient is its own."""
        with torch.enable_grad():
            x = inputs.detach().float().requires_grad_(True)
            self.log_prob(x, label, t).sum().backward()
        assert x.grad is not None
        return x.grad


def speaker_streams(run: Any, top: int) -> tuple[Any, Any, tuple[str, ...]]:
    """(training streams, held-out streams, names) of the ``top`` most-spoken speakers of ``run``'s corpus,
    tokenised by the run's tokenizer (:class:`~textdiffusion.data.speakers.SpeakerStreams`)."""
    from textdiffusion.data.sources import SpeakerSource, load_source

    cfg = replace(run.cfg, data=replace(run.cfg.data, labels="speaker", label_top=top))
    source = load_source(cfg, run.path)
    if not isinstance(source, SpeakerSource):
        raise DataError(f"{run.path} is not a text run; classifier guidance steers text toward a speaker")
    window = run.method.window
    source.train_streams.check_window(window, "training", source.label_names)
    source.val_streams.check_window(window, "held-out", source.label_names)
    return source.train_streams, source.val_streams, tuple(source.label_names)


def balanced_windows(streams: Any, batch: int, window: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` crops with speakers drawn uniformly (not in proportion to how much they speak), so the
    classifier learns no prior over speakers; a uniform start within the chosen speaker's stream."""
    k = len(streams.lengths)
    labels = torch.randint(0, k, (batch,), generator=generator)
    room = (streams.lengths[labels] - window + 1).double()
    starts = streams.offsets[labels] + (torch.rand(batch, generator=generator, dtype=torch.float64) * room).long()
    return streams.ids[starts[:, None] + torch.arange(window)], labels


def _loss_and_hits(method: Any, net: torch.nn.Module, model: Any, x: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, t = method.classifier_inputs(model, x, generator)
    logits = method.classifier_logits(net, inputs, t).float()
    if logits.dim() == 3:  # a prediction at every prefix
        labels = labels[:, None].expand(logits.shape[:2])
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten()), (logits.argmax(-1) == labels).float()


def train_noisy_classifier(run: Any, recipe: ClassifierRecipe = ClassifierRecipe(),
                           progress: bool = True) -> NoisyClassifier:
    """Train the speaker classifier of ``run`` (a :class:`~textdiffusion.runs.LoadedRun`) on its method's noisy
    states; its held-out accuracy is measured on the held-out speeches under the same noise."""
    from textdiffusion.optim import warmup_cosine
    from textdiffusion.progress import progress_bar

    method, model, device = run.method, run.model, run.device
    train, held, names = speaker_streams(run, recipe.top)
    window = method.window
    torch.manual_seed(recipe.seed)
    net = method.classifier_network(recipe.network(), len(names), model).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(recipe.seed)
    noise = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    tic = time.perf_counter()
    bar = progress_bar(total=recipe.steps, desc="speaker classifier", unit="step", disable=not progress)
    net.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, recipe.steps, recipe.lr, recipe.lr / 10, min(100, recipe.steps // 10))
        x, labels = balanced_windows(train, recipe.batch_size, window, gen)
        loss, _ = _loss_and_hits(method, net, model, x.to(device), labels.to(device), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()
    accuracy = held_out_accuracy(method, net, model, held, window, device, recipe.seed)
    meta = {"format": FORMAT, "method": method.name, "rule": method.classifier_rule, "speakers": list(names),
            "recipe": asdict(recipe), "run_step": run.step, "window": window,
            "held_out_accuracy": accuracy, "chance": 1 / len(names),
            "train_seconds": round(time.perf_counter() - tic, 1), "versions": versions()}
    return NoisyClassifier(method, net, names, meta)


@torch.no_grad()
def held_out_accuracy(method: Any, net: torch.nn.Module, model: Any, held: Any, window: int,
                      device: torch.device, seed: int) -> float:
    """How often the classifier names the speaker of a held-out window, under the training noise (at every
    prefix for a causal classifier): the number that says whether it learned anything beyond chance."""
    tiles = held.tiled_windows(window)
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    hits = [_loss_and_hits(method, net, model, x.to(device), y.to(device), gen)[1].flatten()
            for x, y in zip(tiles.ids.split(256), tiles.labels.split(256), strict=True)]
    return float(torch.cat(hits).mean())


def save_classifier(clf: NoisyClassifier, folder: Path) -> None:
    """Weights first, then the description: a crash between the two leaves a folder that reads as missing."""
    write_tensors(folder / WEIGHTS_FILE, clf.net.state_dict(), step=int(clf.meta["run_step"]))
    write_json(folder / META_FILE, clf.meta)


def load_classifier(run: Any, folder: Path) -> NoisyClassifier:
    """A classifier written by :func:`save_classifier` for ``run``; a missing or corrupt one is a one-line
    :class:`~textdiffusion.checkpoint.CheckpointError`."""
    meta = read_json(folder / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META_FILE} is not a speaker-classifier description; delete {folder} to "
                              f"retrain it")
    try:
        recipe = ClassifierRecipe(**meta["recipe"])
        names = tuple(str(n) for n in meta["speakers"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / META_FILE} has a missing or bad field ({e}); delete {folder} to "
                              f"retrain it") from None
    net = run.method.classifier_network(recipe.network(), len(names), run.model)
    tensors, _ = read_tensors(folder / WEIGHTS_FILE)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not match {META_FILE}; delete {folder} to retrain "
                              f"it") from None
    return NoisyClassifier(run.method, net.to(run.device), names, meta)


def cached_classifier(run: Any) -> NoisyClassifier | None:
    """The run's speaker classifier if one is cached for its checkpoint and readable, else None: never trains
    (``compare`` and the live page offer classifier guidance only for runs that have one)."""
    folder = Path(run.path) / CLASSIFIER_DIR
    if not run.method.classifier_rule or not (folder / META_FILE).exists():
        return None
    try:
        clf = load_classifier(run, folder)
    except CheckpointError:
        return None
    return clf if clf.meta.get("run_step") == run.step else None


def classifier_for(run: Any, recipe: ClassifierRecipe | None = None, progress: bool = True,
                   retrain: bool = False) -> NoisyClassifier:
    """The run's speaker classifier: read from ``RUN/speaker-classifier`` when it was trained for this checkpoint
    step (and with ``recipe``, when one is given), else trained (saying so, with its cost; the default recipe when
    none is given) and cached there."""
    method = run.method
    if not method.classifier_rule:
        raise ConfigError(f"the {method.name} method has no classifier-guidance rule; use --guidance-rule free on a "
                          f"run trained with --set data.labels=speaker")
    folder = Path(run.path) / CLASSIFIER_DIR
    if not retrain and (folder / META_FILE).exists():
        try:
            clf = load_classifier(run, folder)
            if clf.meta.get("run_step") == run.step and (recipe is None or clf.meta.get("recipe") == asdict(recipe)):
                return clf
            why = "the run or the recipe changed since it was trained"
        except CheckpointError as e:
            why = str(e)
        print(f"retraining the speaker classifier: {why}", file=sys.stderr)
    elif progress:
        kept = "not cached: an export is read-only" if is_export(run.path) else f"once; cached in {folder}"
        print(f"training the speaker classifier for classifier guidance ({(recipe or ClassifierRecipe()).steps} "
              f"steps, {kept})", file=sys.stderr)
    clf = train_noisy_classifier(run, recipe or ClassifierRecipe(), progress)
    if not is_export(run.path):  # an export is never written into: its classifier lives for this process
        save_classifier(clf, folder)
    if progress:
        print(f"speaker classifier: held-out accuracy {clf.meta['held_out_accuracy']:.3f} under the forward "
              f"process's noise (chance {clf.meta['chance']:.3f})", file=sys.stderr)
    return clf
