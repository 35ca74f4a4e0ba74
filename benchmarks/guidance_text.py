"""Classifier-free guidance on text, measured the way the digits are: does steering toward a speaker make the
speaker judge recognise the requested speaker, and what does it cost in fluency?

For each method (`ar`, `masked`), a `cpu`-preset run is trained on speaker-labelled Tiny Shakespeare
(`--set data.labels=speaker`, the 8 most-spoken speakers of the training split, label dropout 0.1). Then, for
each guidance scale w, `--samples-per-speaker` samples of `--length` characters are drawn for every speaker
and scored:

* accuracy: how often the speaker judge (:class:`textdiffusion.speaker_judge.SpeakerJudge`, naive Bayes over
  per-speaker character 4-gram models of the training speeches) names the speaker that was asked for;
* judge perplexity, word validity and distinct-2 under the evaluation's fixed reference (as `eval`);
* characters per second of the sampling.

Real held-out speeches cut to the same length are the scale: the judge's accuracy on them, and their quality.

    python benchmarks/guidance_text.py                 # trains (or reuses) runs/bench-guidance/{ar,masked}
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/bench-guidance", help="where the runs are trained (or reused)")
    ap.add_argument("--methods", default="ar,masked")
    ap.add_argument("--steps", type=int, default=2000, help="training steps per run (cpu preset)")
    ap.add_argument("--samples-per-speaker", type=int, default=16)
    ap.add_argument("--length", type=int, default=64, help="characters per sample (the cpu preset's context is 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=WEIGHTS, help="comma-separated guidance scales (0 must be among them: the "
                                                         "fluency ratio is taken against it)")
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

    rows: list[dict] = []
    for method in args.methods.split(","):
        run_dir = Path(args.root) / method
        if not (run_dir / "final.json").exists():
            info = train(method, "cpu", run_dir, args.steps, ["data.labels=speaker"])
            print(f"trained {method}: {info['wall_s']:.0f} s, val {info['val_bpc']:.3f} bits/char", file=sys.stderr)
        model = load(run_dir, device="auto")
        final = json.loads((run_dir / "final.json").read_text())
        assert model.labels == split.speakers, (model.labels, split.speakers)
        for w in [float(x) for x in args.weights.split(",")]:
            texts, labels, seconds = [], [], 0.0
            for i, name in enumerate(split.speakers):
                tic = time.perf_counter()
                out = model.generate(n=args.samples_per_speaker, length=args.length, label=name, guidance=w,
                                     seed=args.seed + i, progress=False)
                seconds += time.perf_counter() - tic
                texts += out
                labels += [i] * len(out)
            row = {"method": method, "w": w, **score(texts, labels, judge, ref),
                   "chars_per_s": len(texts) * args.length / seconds, "samples": len(texts),
                   "val_bpc": final.get("val_bpc"), "example": texts[labels.index(5)][:80]}
            rows.append(row)
            print(f"{method} w={w:g}: accuracy {row['accuracy']:.3f}, judge ppl {row['judge_ppl']:.1f}, "
                  f"{row['chars_per_s']:,.0f} chars/s", file=sys.stderr)

    lines = [f"Machine: {machine()}. `python benchmarks/guidance_text.py --steps {args.steps} --samples-per-speaker "
             f"{args.samples_per_speaker} --length {args.length}`: `cpu` preset with `--set data.labels=speaker` "
             f"(the 8 most-spoken speakers of the training split, label dropout 0.1), {args.steps} steps; "
             f"{args.samples_per_speaker} samples x {args.length} chars per speaker and w, seed {args.seed}. "
             f"Accuracy = how often the speaker judge names the requested speaker (chance {chance:.3f}).",
             "",
             "| method | w | speaker accuracy | judge ppl | ppl / w=0 | word validity | distinct-2 | chars/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| real held-out speeches | – | {reference['accuracy']:.3f} | {reference['judge_ppl']:.1f} | – | "
             f"{reference['word_validity']:.3f} | {reference['distinct_2']:.3f} | – |"]
    for r in rows:
        base = next(x for x in rows if x["method"] == r["method"] and x["w"] == 0.0)["judge_ppl"]
        lines.append(f"| {r['method']} | {r['w']:g} | {r['accuracy']:.3f} | {r['judge_ppl']:.1f} | "
                     f"{r['judge_ppl'] / base:.2f} | {r['word_validity']:.3f} | {r['distinct_2']:.3f} | "
                     f"{r['chars_per_s']:,.0f} |")
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
