"""Guidance on text, measured the way the digits are: does steering toward a speaker make the speaker judge
recognise the requested speaker, and what does it cost in fluency? Two rules, every method that has them:

* ``free`` (classifier-free guidance): a `cpu`-preset run per method (`ar`, `masked`, `block`) trained on
  speaker-labelled Tiny Shakespeare (`--set data.labels=speaker`, the 8 most-spoken speakers of the training
  split, label dropout 0.1), in ROOT/METHOD;
* ``classifier`` (plug-and-play: the language model trained *without* labels, steered by a small noisy speaker
  classifier of its own states; :mod:`textdiffusion.guidance.classifier`): a plain `cpu`-preset run per method
  (`ar` FUDGE, `masked`/`block` Taylor-approximated discrete guidance, `embedding` Diffusion-LM gradient steps) in
  ROOT/plain-METHOD, its classifier trained on first use (default recipe) and cached in the run.

For each scale w, `--samples-per-speaker` samples of `--length` characters are drawn for every speaker (speaker i
with seed `--seed` + i) and scored:

* accuracy: how often the speaker judge (:class:`textdiffusion.speaker_judge.SpeakerJudge`, naive Bayes over
  per-speaker character 4-gram models of the training speeches) names the speaker that was asked for;
* judge perplexity, word validity and distinct-2 under the evaluation's fixed reference (as `eval`);
* characters per second of the sampling (classifier work included).

Real held-out speeches cut to the same length are the scale: the judge's accuracy on them, and their quality.

    python benchmarks/guidance_text.py                 # trains (or reuses) the runs under runs/bench-guidance
    python benchmarks/guidance_text.py --rules classifier --classifier-methods masked --weights 0,5
    python benchmarks/guidance_text.py --markdown out.md --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, train
from textdiffusion.api import load
from textdiffusion.data.corpus import load_corpus
from textdiffusion.data.speakers import split_speakers
from textdiffusion.evaluate import TrainingReference
from textdiffusion.speaker_judge import SpeakerJudge

WEIGHTS = "0,1,2,3,5"


def score(texts: list[str], labels: list[int], judge: SpeakerJudge, ref: TrainingReference) -> dict[str, float]:
    q = ref.quality(texts)
    return {"accuracy": judge.accuracy(texts, labels), "judge_ppl": q["judge_ppl"],
            "word_validity": q["word_validity"], "distinct_2": q["distinct_2"]}


def _speaker_rows(model, split, judge, ref, method: str, rule: str, weights: list[float], args,
                  extra: dict) -> list[dict]:
    rows = []
    for w in weights:
        texts, labels, seconds = [], [], 0.0
        for i, name in enumerate(split.speakers):
            tic = time.perf_counter()
            out = model.generate(n=args.samples_per_speaker, length=args.length, label=name, guidance=w,
                                 rule=rule, seed=args.seed + i, progress=False)
            seconds += time.perf_counter() - tic
            texts += out
            labels += [i] * len(out)
        row = {"method": method, "rule": rule, "w": w, **score(texts, labels, judge, ref),
               "chars_per_s": len(texts) * args.length / seconds, "samples": len(texts), **extra,
               "example": texts[labels.index(5)][:80]}
        rows.append(row)
        print(f"{method} {rule} w={w:g}: accuracy {row['accuracy']:.3f}, judge ppl {row['judge_ppl']:.1f}, "
              f"{row['chars_per_s']:,.0f} chars/s", file=sys.stderr, flush=True)
    return rows


def _open(run_dir: Path, method: str, steps: int, sets: list[str]):
    if not (run_dir / "final.json").exists():
        info = train(method, "cpu", run_dir, steps, sets)
        print(f"trained {run_dir}: {info['wall_s']:.0f} s, val {info['val_bpc']:.3f} bits/char", file=sys.stderr)
    return load(run_dir, device="auto"), json.loads((run_dir / "final.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/bench-guidance", help="where the runs are trained (or reused)")
    ap.add_argument("--rules", default="free,classifier", help="free, classifier or both")
    ap.add_argument("--methods", default="ar,masked,block", help="methods of the classifier-free rule")
    ap.add_argument("--classifier-methods", default="ar,masked,block,embedding",
                    help="methods of the classifier rule (plain runs in ROOT/plain-METHOD)")
    ap.add_argument("--steps", type=int, default=2000, help="training steps per run (cpu preset)")
    ap.add_argument("--samples-per-speaker", type=int, default=16)
    ap.add_argument("--length", type=int, default=64, help="characters per sample (the cpu preset's context is 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=WEIGHTS, help="comma-separated guidance scales (0 must be among them: the "
                                                         "fluency ratio is taken against it)")
    ap.add_argument("--classifier-weights", default="", help="scales of the classifier rule (default: --weights)")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)

    text, _ = load_corpus("tinyshakespeare")
    train_text = text[: int(len(text) * 0.9)]
    split = split_speakers(train_text, top=8)
    judge = SpeakerJudge(split)
    ref = TrainingReference(train_text)
    real = [(i, body[: args.length]) for i, body in split.held_out]
    reference = score([t for _, t in real], [i for i, _ in real], judge, ref)
    chance = 1 / len(split.speakers)
    print(f"judge on {len(real)} real held-out speeches cut to {args.length} chars: accuracy "
          f"{reference['accuracy']:.3f} (chance {chance:.3f})", file=sys.stderr)
    weights = [float(x) for x in args.weights.split(",")]
    classifier_weights = [float(x) for x in (args.classifier_weights or args.weights).split(",")]
    rules = args.rules.split(",")

    rows: list[dict] = []
    if "free" in rules:
        for method in args.methods.split(","):
            model, final = _open(Path(args.root) / method, method, args.steps, ["data.labels=speaker"])
            assert model.labels == split.speakers, (model.labels, split.speakers)
            rows += _speaker_rows(model, split, judge, ref, method, "free", weights, args,
                                  {"val_bpc": final.get("val_bpc")})
    if "classifier" in rules:
        for method in args.classifier_methods.split(","):
            model, final = _open(Path(args.root) / f"plain-{method}", method, args.steps, [])
            clf = model.classifier()
            assert clf.names == split.speakers, (clf.names, split.speakers)
            extra = {"val_bpc": final.get("val_bpc"), "classifier_accuracy": clf.meta["held_out_accuracy"],
                     "classifier_seconds": clf.meta["train_seconds"], "classifier_rule": clf.rule}
            print(f"{method}: speaker classifier ({clf.rule}) held-out accuracy {clf.meta['held_out_accuracy']:.3f} "
                  f"under noise, trained in {clf.meta['train_seconds']:.0f} s", file=sys.stderr)
            rows += _speaker_rows(model, split, judge, ref, method, "classifier", classifier_weights, args, extra)

    lines = [f"Machine: {machine()}. `python benchmarks/guidance_text.py --steps {args.steps} --samples-per-speaker "
             f"{args.samples_per_speaker} --length {args.length}`: `cpu` preset, {args.steps} steps per run; "
             f"{args.samples_per_speaker} samples x {args.length} chars per speaker and w, seed {args.seed}. "
             f"Accuracy = how often the speaker judge names the requested speaker (chance {chance:.3f}).",
             "",
             "| method | rule | w | speaker accuracy | judge ppl | ppl / w=0 | word validity | distinct-2 | chars/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| real held-out speeches | – | – | {reference['accuracy']:.3f} | {reference['judge_ppl']:.1f} | – | "
             f"{reference['word_validity']:.3f} | {reference['distinct_2']:.3f} | – |"]
    for r in rows:
        base = next((x for x in rows if x["method"] == r["method"] and x["rule"] == r["rule"] and x["w"] == 0.0),
                    None)
        ratio = f"{r['judge_ppl'] / base['judge_ppl']:.2f}" if base else "–"
        rule = "classifier-free" if r["rule"] == "free" else f"classifier ({r['classifier_rule']})"
        lines.append(f"| {r['method']} | {rule} | {r['w']:g} | {r['accuracy']:.3f} | {r['judge_ppl']:.1f} | "
                     f"{ratio} | {r['word_validity']:.3f} | {r['distinct_2']:.3f} | {r['chars_per_s']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": reference, "rows": rows, "chance": chance,
                                               "speakers": list(split.speakers), "machine": machine(),
                                               "torch": torch.__version__, "numpy": np.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
