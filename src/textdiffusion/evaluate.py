"""Evaluation every method is scored by: likelihood, sample quality against a fixed judge, and speed.

* ``val``: the method's own validation number. Exact -log p for ``ar``; the NELBO (an upper bound) for
  diffusion methods. Both in bits per character on the same tiled validation windows. A run trained on
  speaker labels (``data.labels=speaker``) is scored as it was validated in training: on its speakers'
  held-out speeches, each window under its speaker's label (the conditional NLL); its samples are drawn
  without a label (the unconditional model), and ``eval.json`` says both.
* ``exact`` (masked, block): beside the bound, the exact NLL of the sampler that writes one token per step,
  left to right (``--sampler left_to_right``): the chain rule, a network pass per token of a window (block:
  per position of a block), on its own, smaller count of evenly spread windows (``exact_windows``).
* Sample quality of N samples of fixed length, scored identically for every method:
  - ``judge_ppl``: per-character perplexity under :class:`CharNgramJudge`, an interpolated Witten-Bell
    character n-gram model fitted on the *training* split (deterministic, no network, built in);
  - ``word_validity``: fraction of generated words that occur in the training split;
  - ``distinct_2``: distinct word bigrams / all word bigrams over the samples (diversity);
  - ``repetition``: mean over samples of 1 - unique/total word bigrams within a sample (loops);
  - ``copy_rate``: fraction of 32-character windows of the samples found verbatim in the training split
    (memorisation).
  The same statistics on real validation text of the same length are reported as ``reference``.
* ``distance``: the Jensen-Shannon divergence between the character 1-4-gram distributions of the samples and
  of held-out text of the same size, beside the real-text floor, the value a second slice of held-out text
  reaches (:mod:`textdiffusion.sample_distance`). Judge perplexity rewards a sampler that collapses onto
  likely characters; this number charges it for what it stopped writing.
* Speed: generated characters per second and network evaluations (forward passes) per sample.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textdiffusion import precision
from textdiffusion.checkpoint import is_export
from textdiffusion.config import ConfigError
from textdiffusion.data.batches import TextData
from textdiffusion.data.corpus import corpus_fingerprint, read_corpus, resolve_corpus
from textdiffusion.data.sources import check_identity, corpus_location, text_source
from textdiffusion.final_score import score_key
from textdiffusion.methods.base import Method, SampleRequest, TextMethod, score
from textdiffusion.records import (
    FINAL,
    ExactScore,
    FinalScore,
    LabelNote,
    Quality,
    SampleDistance,
    SampleSettings,
    SampleSpeed,
    TextEval,
    TrainSummary,
    ValScore,
)
from textdiffusion.runs import LoadedRun, open_run
from textdiffusion.sample_distance import sample_distance
from textdiffusion.sharing import public_source, shareable_path

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
COPY_WINDOW = 32
SCORE_BATCH = 64  # windows per batch of the validation score (part of a score's key: it can move the last bits)


class CharNgramJudge:
    """Interpolated Witten-Bell character n-gram model (Witten & Bell 1991; Chen & Goodman 1999, Sec. 2.5).

        p_n(c | h) = (C(h c) + T(h) p_{n-1}(c | h')) / (C(h) + T(h)),   p_0(c) = 1 / V

    where C counts training occurrences, T(h) is the number of distinct characters seen after h, and h'
    drops h's oldest character; contexts never seen fall back to the lower order. All counts are numpy
    arrays of integer-coded n-grams, so fitting 1M characters takes about a second.
    """

    def __init__(self, text: str, order: int = 5, alphabet: Iterable[str] | None = None):
        """Fit on ``text``. ``alphabet`` (default: the characters of ``text``) sets V, the characters that
        get a probability of their own: models that are compared with each other (one per speaker, say) need
        the same one, or a character one of them never saw would cost each a different price."""
        if not text:
            raise ValueError("the judge needs a non-empty training text")
        self.order = order
        self.alphabet = sorted(set(text) | set(alphabet or ()))
        self.V = len(self.alphabet) + 1  # code 0 = a character the judge never saw
        if self.V ** order >= 2**62:
            raise ValueError("alphabet too large for this n-gram order")
        self._lut = {c: i + 1 for i, c in enumerate(self.alphabet)}
        codes = self._codes(text)
        self.tables = []
        for n in range(1, order + 1):
            keys = self._ngram_keys(codes, n)
            uniq, counts = np.unique(keys, return_counts=True)
            ctx = uniq // self.V
            ctx_uniq, starts = np.unique(ctx, return_index=True)
            ctx_total = np.add.reduceat(counts, starts)
            ctx_types = np.diff(np.append(starts, len(uniq)))
            self.tables.append((uniq, counts, ctx_uniq, ctx_total, ctx_types))

    def _codes(self, text: str) -> np.ndarray:
        return np.fromiter((self._lut.get(c, 0) for c in text), dtype=np.int64, count=len(text))

    def _ngram_keys(self, codes: np.ndarray, n: int) -> np.ndarray:
        m = len(codes) - n + 1
        keys = np.zeros(max(m, 0), dtype=np.int64)
        for j in range(n):
            keys = keys * self.V + codes[j:j + m]
        return keys

    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(sorted_keys, query).clip(max=len(sorted_keys) - 1)
        return np.where(sorted_keys[idx] == query, values[idx], 0)

    def char_nll(self, text: str) -> np.ndarray:
        """-log p(c_i | up to order-1 preceding chars of the same text), one value per character (nats)."""
        codes = self._codes(text)
        L = len(codes)
        p = np.full(L, 1.0 / self.V)
        for n, (uniq, counts, ctx_uniq, ctx_total, ctx_types) in enumerate(self.tables, start=1):
            if n > L:
                break
            keys = self._ngram_keys(codes, n)  # n-gram ending at position i = n-1+k
            c_hc = self._lookup(uniq, counts, keys)
            c_h = self._lookup(ctx_uniq, ctx_total, keys // self.V)
            t_h = self._lookup(ctx_uniq, ctx_types, keys // self.V)
            lower = p[n - 1:]
            interp = (c_hc + t_h * lower) / np.maximum(c_h + t_h, 1)
            p[n - 1:] = np.where(c_h > 0, interp, lower)
        return -np.log(p)

    def perplexity(self, texts: Iterable[str]) -> float:
        nll = [self.char_nll(t) for t in texts if t]
        if not nll:
            return float("nan")
        return float(math.exp(np.concatenate(nll).mean()))


def char_entropy(texts: Iterable[str]) -> float:
    """Entropy (bits) of the character unigram distribution over all the texts together. A sampler can buy
    judge perplexity by collapsing onto frequent characters; this number shows what it gave up (64-character
    validation windows of Tiny Shakespeare: about 4.8 bits)."""
    counts = np.array(list(Counter("".join(texts)).values()), dtype=np.float64)
    if not counts.size:
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def words_of(text: str, trim_edges: bool = True) -> list[str]:
    """Lower-cased words; with ``trim_edges`` the first and last word are dropped, since a fixed-length
    window usually cuts them (the reference text gets the same treatment)."""
    words = [w.lower() for w in WORD.findall(text)]
    return words[1:-1] if trim_edges else words


def _rolling_hashes(codes: np.ndarray, w: int) -> np.ndarray:
    m = len(codes) - w + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for j in range(w):
            h = h * base + codes[j:j + m].astype(np.uint64)
    return h


class TrainingReference:
    """Everything fitted once on the training split: the judge, the word list, the copy-window hashes."""

    def __init__(self, train_text: str, judge_order: int = 5):
        self.judge = CharNgramJudge(train_text, judge_order)
        self.vocab = set(words_of(train_text, trim_edges=False))
        self.train_hashes = np.unique(_rolling_hashes(self.judge._codes(train_text), COPY_WINDOW))

    def copy_rate(self, texts: list[str]) -> float:
        hits = total = 0
        for t in texts:
            h = _rolling_hashes(self.judge._codes(t), COPY_WINDOW)
            if h.size:
                idx = np.searchsorted(self.train_hashes, h).clip(max=len(self.train_hashes) - 1)
                hits += int((self.train_hashes[idx] == h).sum())
                total += h.size
        return hits / total if total else float("nan")

    def quality(self, texts: list[str]) -> dict[str, float]:
        all_words = [words_of(t) for t in texts]
        flat = [w for ws in all_words for w in ws]
        bigrams = [(a, b) for ws in all_words for a, b in itertools.pairwise(ws)]
        reps = []
        for ws in all_words:
            bg = list(itertools.pairwise(ws))
            if bg:
                reps.append(1.0 - len(set(bg)) / len(bg))
        return {
            "judge_ppl": self.judge.perplexity(texts),
            "word_validity": sum(w in self.vocab for w in flat) / len(flat) if flat else float("nan"),
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else float("nan"),
            "repetition": float(np.mean(reps)) if reps else float("nan"),
            "copy_rate": self.copy_rate(texts),
            "char_entropy": char_entropy(texts),
            "words": len(flat),
        }


def generate(run, req: SampleRequest, seed: int, batch: int = 64,
             progress: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Draw ``req.n`` samples in batches; returns the texts and timing/NFE statistics. ``progress``: a bar
    over the samples on stderr, moved once per batch (a per-step hook would cost some samplers a rounding of
    every step, and the timing here is a reported number)."""
    from textdiffusion.progress import progress_bar

    gen = torch.Generator(device=run.device).manual_seed(seed)
    texts: list[str] = []
    nfe_total, generated_chars, seconds = 0, 0, 0.0
    steps = None
    stats = dict.fromkeys(run.method.sample_stats, 0.0)  # per-sample numbers the method reports, averaged
    remaining = req.n
    with progress_bar(total=req.n, desc=f"sampling {req.n:,} texts", unit="sample", disable=not progress) as bar:
        while remaining > 0:
            b = min(batch, remaining)
            sub = SampleRequest(**{**req.__dict__, "n": b})
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            res = run.method.sample(run.model, sub, gen)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - tic
            ids = res.ids.cpu()
            texts += [run.tokenizer.decode(row.tolist()) for row in ids]
            nfe_total += res.nfe * b
            steps = res.info.get("steps", steps)
            for key in stats:
                stats[key] += res.info[key] * b
            # characters, not tokens: a BPE or WordPiece token stands for several characters
            free = (~res.fixed.cpu()) if res.fixed is not None else torch.ones_like(ids, dtype=torch.bool)
            generated_chars += sum(len(run.tokenizer.decode(row[keep].tolist()))
                                   for row, keep in zip(ids, free, strict=True))
            remaining -= b
            bar.update(b)
    return texts, {"seconds": seconds, "sample_chars_per_s": generated_chars / max(seconds, 1e-9),
                   "nfe_per_sample": nfe_total / req.n, "steps": steps,
                   **{key: total / req.n for key, total in stats.items()}}


def run_corpus(run) -> tuple[TextData, str, str]:
    """The run's corpus split exactly as in training (train/val): read from the place the run recorded when
    it is still there, and refused when its fingerprint differs from the recorded one."""
    recorded = run.meta.get("corpus") if isinstance(run.meta.get("corpus"), dict) else None
    path = resolve_corpus(corpus_location(run.cfg.data.corpus, recorded, run.path))
    check_identity(recorded, corpus_fingerprint(path), run.path)
    text, source = read_corpus(path)
    data = TextData.from_text(text, run.tokenizer, run.cfg.data.val_fraction, source,
                              train_chars=run.cfg.data.train_chars)
    data.path = path
    return data, text, source


def reference_windows(text: str, val_start: int, length: int, n: int) -> list[str]:
    """``n`` real validation windows of ``length`` characters, evenly spread over the validation split (which
    begins at ``val_start``)."""
    val_text = text[val_start:]
    starts = np.linspace(0, max(0, len(val_text) - length), n).astype(int)
    return [val_text[s:s + length] for s in starts]


def distance_from_real(texts: list[str], held_out: str) -> SampleDistance | None:
    """The n-gram distance of ``texts`` from ``held_out`` (the validation split), with its real-text floor;
    None when the split cannot hold two real slices of even one sample."""
    try:
        return sample_distance(texts, held_out)
    except ValueError:
        return None


def evaluate_text(run_dir: str | Path | LoadedRun, samples: int = 64, length: int = 0, sampler: str = "",
                  steps: int = 0, temperature: float | None = None, top_k: int | None = None,
                  top_p: float | None = None, seed: int = 0, val_windows: int | None = None, device: str = "auto",
                  batch: int = 64, overrides: list[str] | None = None, progress: bool = True,
                  exact_windows: int | None = None) -> TextEval:
    """Score a run and write ``RUN/eval.json``. Uses the EMA weights, like sampling. ``overrides`` are
    sampling options (``method.field=value``), recorded in the result. ``temperature``, ``top_k`` and
    ``top_p`` left at None take the run's own (``method.*``, ``overrides`` included); the values actually
    used are what ``eval.json`` records. ``progress``: bars on stderr over the validation scoring (its
    batches) and the samples (throttled off a terminal); they change no number.
    ``run_dir`` may also be a run already opened (the Python API's model holds one), with ``overrides`` the
    settings it was opened with; ``device`` is then not used.

    ``val_windows``: how many evenly spread validation windows to score (0 = the whole split). None (the
    default) returns the score final.json recorded when it is the very number scoring its windows here would
    give (the same weights, windows and settings; a short run's final score may cover a bounded part of the
    split, which the table then says), and otherwise scores the whole split.

    ``exact_windows`` (masked, block): how many evenly spread windows the exact NLL of the left_to_right sampler
    takes (0 = the whole split); None: final.json's exact score when it is the very number (reused), else
    ``train.final_exact_windows`` of them (none when that is 0)."""
    run = run_dir if isinstance(run_dir, LoadedRun) else open_run(run_dir, device=device, overrides=overrides)
    if run.method.family != "text":
        raise ConfigError(f"{run.path} is an image run; use `{run.method.command} eval {run.path}`")
    cfg = run.cfg
    data, text, source = run_corpus(run)
    # the validation set training scored: a plain run's tiled validation split; a labelled run's held-out
    # speeches, each window under its speaker's label (the conditional NLL, as in final.json)
    final = recorded_final(run)
    count = final.key.windows if val_windows is None and final is not None else val_windows or 0
    windows = text_source(data, cfg).val_set(run.method.window, count).to(run.device)
    val = recorded_val(final, len(windows))
    if val is None and progress and (note := reuse_note(final, len(windows))):
        print(note, file=sys.stderr)
    with torch.no_grad(), precision.autocast(cfg.train.amp, run.device)():  # the precision it trained in
        if val is None:
            nll = score(run.method, run.model, windows, batch_size=SCORE_BATCH, progress=progress,
                        desc=f"scoring {len(windows):,} validation windows")
            val = ValScore(nll.bits_per_unit, nll.nats_per_unit, nll.kind, nll.windows, nll.units, nll.details)
        exact = exact_score(run, data, final, exact_windows, progress)
        length = length or cfg.model.context
        decoding = run.method.decoding(temperature, top_k, top_p)
        req = SampleRequest(n=samples, length=length, sampler=sampler, steps=steps, **decoding)
        texts, speed = generate(run, req, seed, batch, progress=progress)
    ref = TrainingReference(data.train_text)
    # real text of the same length, evenly spread over the validation split, for scale
    ref_len = round(float(np.mean([len(t) for t in texts]))) if texts else length  # tokens may be > 1 char
    reference = ref.quality(reference_windows(text, data.val_start, ref_len, samples))
    taken = speed.pop("steps", None) or steps or run.method.default_steps(length) or length
    result = TextEval(
        run=shareable_path(run.path), method=cfg.method.name, preset=cfg.preset, step=run.step, weights="ema",
        parameters=sum(p.numel() for p in run.model.parameters()), device=str(run.device),
        val=val,
        samples=SampleSettings(n=samples, length=length, sampler=run.method.check_sampler(req.sampler), steps=taken,
                               **decoding, seed=seed, overrides=list(overrides or []), examples=texts[:3]),
        quality=Quality.from_json(ref.quality(texts)), reference=Quality.from_json(reference),
        reference_what=f"{samples} real validation windows of {ref_len} characters",
        speed=SampleSpeed.from_json(speed),
        distance=distance_from_real(texts, text[data.val_start:]),
        judge={"kind": f"character {ref.judge.order}-gram, interpolated Witten-Bell",
               "fitted_on": f"training split of {public_source(source)}",
               "chars": len(data.train_text)},
        labels=label_note(run.method), exact=exact)
    if not is_export(run.path):  # an export is read-only: the result is returned (and printed) only
        try:
            result.write(run.path)
        except OSError as e:  # a read-only run or a full disk: minutes of scoring are still worth printing
            result.not_written = e.strerror or str(e)
    return result


def recorded_final(run: LoadedRun) -> FinalScore | None:
    """final.json's validation score when it was made from the weights and settings ``run`` holds (equal
    :class:`~textdiffusion.records.ScoreKey` at the window count it scored: the same weights, options,
    precision and batch; see :mod:`textdiffusion.final_score`), else None."""
    recorded = TrainSummary.read(run.path)
    final = recorded.score if recorded is not None else None
    if final is None or final.key is None or final.key.step != run.step:
        return None  # cheap refusals first: the digest of the weights reads every tensor
    if final.key != score_key(run.cfg, run.model, run.step, final.key.windows, run.device, SCORE_BATCH):
        return None
    return final


def exact_score(run: LoadedRun, data: TextData, final: FinalScore | None, count: int | None,
                progress: bool) -> ExactScore | None:
    """The exact NLL of the run's ``exact_sampler`` (None for a method without one, or no windows asked for) on
    ``count`` evenly spread validation windows (0 = all; None: final.json's count, else
    ``train.final_exact_windows``): final.json's number when it is the very one, else scored here."""
    sampler = run.method.exact_sampler
    if not sampler:
        return None
    recorded = final.exact if final is not None else None
    if count is None:
        count = recorded.windows if recorded is not None else run.cfg.train.final_exact_windows
        if not count:
            return None
    source = text_source(data, run.cfg)
    total = len(source.val_set(run.method.window, 0))
    windows = source.val_set(run.method.window, count if 0 < count < total else 0).to(run.device)
    same = final is not None and final.key is not None and recorded is not None and recorded.key is not None
    if same and recorded.key == replace(final.key, windows=recorded.key.windows) and recorded.windows == len(windows):
        return replace(recorded, reused_from=FINAL, key=None)
    with torch.no_grad(), precision.autocast(run.cfg.train.amp, run.device)():
        nll = score(run.method, run.model, windows, batch_size=SCORE_BATCH, progress=progress, exact=True,
                    desc=f"exact NLL of --sampler {sampler}, {len(windows):,} windows")
    return ExactScore(nll.bits_per_unit, nll.nats_per_unit, nll.windows, nll.units, sampler, nll.details, total)


def recorded_val(final: FinalScore | None, windows: int) -> ValScore | None:
    """The score :func:`recorded_final` found, when it is the very number scoring ``windows`` evenly spread
    windows here would give (it scored that many), else None: it is then computed."""
    if final is None or final.key is None or final.key.windows != windows:
        return None
    return ValScore(final.bits, final.nats, final.kind, final.windows, final.units, final.details, FINAL,
                    final.windows_of)


def reuse_note(final: FinalScore | None, windows: int) -> str | None:
    """When final.json holds this very score but of another window count (a bounded final score, and an eval
    of the whole split), a line saying so: the user may want the recorded number rather than wait for a new one."""
    if final is None or final.key is None or final.key.windows == windows:
        return None
    return (f"final.json scored {final.key.windows:,} of these validation windows; scoring {windows:,} "
            f"(--val-windows {final.key.windows} returns its number without scoring)")


UNCONDITIONAL = "unconditional (no label)"


def label_note(method: TextMethod) -> LabelNote | None:
    """What ``eval.json`` says about a labelled run (nothing for a plain one): its labels, that the samples
    were drawn without one (the "no label" row label dropout trained, so the quality columns are the
    unconditional model's) and that the validation number is conditional, on the held-out speeches."""
    if not method.num_labels:
        return None
    names = list(method.label_names or (str(i) for i in range(method.num_labels)))
    return LabelNote(names, UNCONDITIONAL,
                     "conditional NLL on the held-out speeches, each window under its speaker's label")


def distance_rows(d: SampleDistance | None) -> list[tuple[str, str, str]]:
    """The table's row of the n-gram distance: the samples' value, real text's floor and the excess."""
    if d is None:
        return []
    orders = f"{min(d.orders)}-{max(d.orders)}" if len(d.orders) > 1 else str(d.orders[0])
    of = f" (first {d.texts} of {d.texts_of} samples)" if d.texts < d.texts_of else ""
    return [(f"n-gram JS ({orders}, bits)", f"{d.js_bits:.4f}",
             f"real text: {d.floor_bits:.4f}, excess {d.excess:.4f}; {d.chars:,} chars{of}")]


def term_row(label: str | tuple[str, str], value: float) -> tuple[str, str, str]:
    """A row of a method's ``eval_terms``: a bare label is a training-loss term; a (label, note) says its own."""
    name, note = label if isinstance(label, tuple) else (label, "a training-loss term on validation windows, "
                                                                "not a likelihood")
    return name, f"{value:.4f}", note


def format_table(ev: TextEval, method: type[Method] | None = None) -> str:
    """The human-readable table ``textdiffusion eval`` prints; ``method`` adds its own rows (its
    ``eval_terms`` from the validation details and its ``sample_stats`` from the samples)."""
    terms = method.eval_terms if method else {}
    stats = method.sample_stats if method else {}
    v, q, r, s = ev.val, ev.quality, ev.reference, ev.speed
    assert q is not None and r is not None, "a fresh evaluation scores its samples and the real text"
    samples_per_window = v.details.get("time_samples_per_window", "?")
    kind = "exact" if v.kind == "exact" else f"upper bound, {samples_per_window} t-samples/window"
    rows = [
        ("val bits/char", f"{v.bpc:.4f}", f"{kind}; {v.windows} windows, {v.chars:,} chars"),
        ("val nats/char", f"{v.nats_per_char:.4f}", ""),
        *[term_row(label, v.details[key]) for key, label in terms.items() if key in v.details],
        ("judge perplexity", f"{q.judge_ppl:.3f}", f"real text: {r.judge_ppl:.3f}"),
        ("word validity", f"{q.word_validity:.3f}", f"real text: {r.word_validity:.3f}"),
        ("distinct-2", f"{q.distinct_2:.3f}", f"real text: {r.distinct_2:.3f}"),
        ("repetition", f"{q.repetition:.3f}", f"real text: {r.repetition:.3f}"),
        ("char entropy (bits)", f"{q.char_entropy:.3f}", f"real text: {r.char_entropy:.3f}"),
        ("copy rate (32 chars)", f"{q.copy_rate:.3f}", f"real text: {r.copy_rate:.3f}"),
        *distance_rows(ev.distance),
        ("sample chars/s", f"{s.sample_chars_per_s:,.0f}", f"{ev.device}"),
        ("network evals/sample", f"{s.nfe_per_sample:.1f}", ""),
        *[(label, f"{s.stats[key]:.4f}", note) for key, (label, note) in stats.items() if key in s.stats],
    ]
    if ev.exact is not None:  # beside the bound: the exact NLL, and the sampler it is the likelihood of
        e = ev.exact
        rows[2:2] = [("exact bits/char", f"{e.bits:.4f}", f"{e.label}; {e.windows} windows, {e.chars:,} chars"),
                     ("exact nats/char", f"{e.nats:.4f}", "")]
    smp = ev.samples
    head = (f"{ev.method} ({ev.preset}, step {ev.step}, {ev.parameters:,} params) — "
            f"{smp.n} samples x {smp.length} chars, sampler {smp.sampler}, T={smp.temperature}")
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [head, "-" * len(head)]
    if v.reused_from:  # the number was not computed here: say where it comes from and why it is the same
        lines.append(f"val: the score {v.reused_from} recorded for these weights, windows and settings (reused, "
                     f"not recomputed)")
        if v.windows_of is not None and v.windows < v.windows_of:
            lines.append(f"val: {v.windows:,} of the {v.windows_of:,} validation windows (the bounded final "
                         f"score); --val-windows 0 scores them all")
    if ev.exact is not None and ev.exact.reused_from:
        lines.append(f"exact: the score {ev.exact.reused_from} recorded for these weights, windows and settings "
                     f"(reused, not recomputed)")
    if "sampler_note" in v.details:  # the bound belongs to another sampler than the run's own
        lines.append(f"val: {v.details['sampler_note']}")
    if ev.labels is not None:  # a labelled run: say which numbers are conditional and which are not
        names = ev.labels.names
        lines += [f"labels: {len(names)} ({', '.join(names)})",
                  f"samples: {ev.labels.samples}; val: {ev.labels.val}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)
