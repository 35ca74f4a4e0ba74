"""Bit-for-bit fingerprint of what the package prints: train a `tiny` run of every method and record its
validation numbers and samples, through the command line, so a refactor can prove it changed nothing.

    python benchmarks/fingerprint.py --record benchmarks/results/fingerprint.json   # before a change
    python benchmarks/fingerprint.py --check  benchmarks/results/fingerprint.json   # after it: exit 1 on any diff

Everything runs on the CPU with one thread (thread count changes float reduction order), fixed seeds and the
canonical Tiny Shakespeare (``$TEXTDIFFUSION_DATA``, default ``../shared/data``); images use scikit-learn's
offline 8x8 digits. Timing fields are dropped: they are the only numbers allowed to move. Besides every method
and sampler it covers a speaker-labelled run sampled under classifier-free guidance and classifier-guided ar and
masked samples (a short noisy classifier trained through the Python API, then read from its cache by the CLI).
The record holds float rounding of the CPU it was made on (2-core CI machine, torch 2.13.0+cpu).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "sample_chars_per_s", "chars_per_s", "images_per_s", "elapsed", "wall_s", "created",
          "run", "run_dir", "device", "versions", "tokens_per_s"}

# (name, method, extra --set values); each is a `tiny` run of 60 steps
TEXT_RUNS: list[tuple[str, str, list[str]]] = [
    ("ar", "ar", []),
    ("masked", "masked", []),
    ("masked-count-timecond", "masked", ["method.estimator=count", "method.time_conditioning=true"]),
    ("masked-linear", "masked", ["method.schedule=linear"]),
    ("embedding", "embedding", []),
    ("embedding-cosine-eps", "embedding", ["method.decoder=cosine", "method.target=eps", "method.timesteps=0",
                                           "method.x0_ce_weight=0.5"]),
    ("bits", "bits", []),
    ("bits-probs", "bits", ["method.target=probs", "method.probs_mse_weight=0.1"]),
    ("block", "block", ["method.block_size=4"]),
    ("masked-speakers", "masked", ["data.labels=speaker", "data.label_top=4"]),
]

# sample invocations per method: (label, extra CLI args)
SAMPLES: dict[str, list[tuple[str, list[str]]]] = {
    "ar": [("prompt", ["--prompt", "ROMEO:", "--temperature", "0.8", "--top-k", "20"])],
    "masked": [(s, ["--sampler", s, "--steps", "16"]) for s in ("ancestral", "cached", "confidence", "topk")]
    + [("infill", ["--infill", "First ____ing:\nBefore we proceed", "--length", "32"]),
       ("prompt-top-p", ["--prompt", "KING", "--top-p", "0.9"])],
    "embedding": [(s, ["--sampler", s, "--steps", "20"]) for s in ("ddim", "ddpm")]
    + [("guided", ["--sampler", "guided", "--steps", "10", "--set", "method.guide_run={ar}"]),
       ("clamp-eta", ["--steps", "10", "--set", "method.clamp=true", "method.eta=0.5"]),
       ("infill", ["--infill", "First ____ing:\n", "--steps", "10"])],
    "bits": [(s, ["--sampler", s, "--steps", "20"]) for s in ("ddim", "ddpm")]
    + [("td", ["--steps", "10", "--set", "method.time_difference=2"])],
    "block": [(s, ["--sampler", s, "--steps", "8"]) for s in ("ancestral", "cached", "confidence", "topk")]
    + [("prompt-long", ["--prompt", "ROMEO:", "--length", "70", "--temperature", "0.9"])],
    "masked-speakers": [(f"label-w{w}", ["--label", "GLOUCESTER", "--guidance", w, "--steps", "16"])
                        for w in ("0", "1", "2.5")],
}

# classifier-guided samples: a noisy speaker classifier trained for CLASSIFIER_STEPS through the Python API
# (cached in the run directory), then read from that cache by the command line
CLASSIFIER_STEPS = 40
CLASSIFIER_SAMPLES: dict[str, list[tuple[str, list[str]]]] = {
    "ar": [("classifier-w3", ["--label", "GLOUCESTER", "--guidance", "3", "--guidance-rule", "classifier"])],
    "masked": [("classifier-w5", ["--label", "GLOUCESTER", "--guidance", "5", "--guidance-rule", "classifier",
                                  "--steps", "16"])],
}
TRAIN_CLASSIFIER = ("import sys, torch; torch.set_num_threads(1); import textdiffusion as td; "
                    "clf = td.load(sys.argv[1], device='cpu').classifier(steps=int(sys.argv[2]), progress=False); "
                    "print(round(clf.meta['held_out_accuracy'], 6))")


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "textdiffusion", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed: textdiffusion {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    return proc


def scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def read_run(rd: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"final": scrub(json.loads((rd / "final.json").read_text()))}
    rows = [json.loads(ln) for ln in (rd / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    # the evaluation rows, which the record holds; the train rows (train.log_every, "kind": "train") came later
    # and are checked against an uninterrupted run and a run without them by tests/test_logging.py
    out["metrics"] = [scrub(r) for r in rows if "kind" not in r]
    out["training_samples"] = {p.name: (p.read_text() if p.suffix == ".txt" else hashlib.sha256(p.read_bytes())
                                        .hexdigest()) for p in sorted((rd / "samples").iterdir())}
    return out


def fingerprint(work: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TEXTDIFFUSION_DATA": os.environ.get("TEXTDIFFUSION_DATA", str(REPO.parent / "shared" / "data"))}
    result: dict[str, Any] = {}
    dirs: dict[str, Path] = {}
    for name, method, sets in TEXT_RUNS:
        rd = work / name
        cmd = ["train", "--method", method, "--preset", "tiny", "--run-dir", str(rd), "--no-progress",
               "--device", "cpu", "--set", "train.threads=1", *sets]
        cli(cmd, env)
        dirs[name] = rd
        entry = read_run(rd)
        for label, args in SAMPLES.get(name, []):
            args = [a.replace("{ar}", str(dirs["ar"])) for a in args]
            proc = cli(["sample", str(rd), "--n", "2", "--seed", "3", "--device", "cpu", *args], env)
            entry[f"sample/{label}"] = proc.stdout
        if name in CLASSIFIER_SAMPLES:
            proc = subprocess.run([sys.executable, "-c", TRAIN_CLASSIFIER, str(rd), str(CLASSIFIER_STEPS)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"failed: the speaker classifier of {name}\n{proc.stdout}{proc.stderr}")
            entry["classifier/held_out_accuracy"] = proc.stdout.strip()
            for label, args in CLASSIFIER_SAMPLES[name]:
                proc = cli(["sample", str(rd), "--n", "2", "--seed", "3", "--device", "cpu", *args], env)
                entry[f"sample/{label}"] = proc.stdout
        cli(["eval", str(rd), "--samples", "4", "--val-windows", "16", "--device", "cpu"], env)
        entry["eval"] = scrub(json.loads((rd / "eval.json").read_text()))
        result[name] = entry
        print(f"{name}: {entry['final'].get('val_bpc')}", file=sys.stderr)
    rd = work / "image"
    cli(["mnist", "train", "--preset", "tiny", "--data", "digits", "--steps", "40", "--run-dir", str(rd),
         "--no-progress", "--device", "cpu", "--set", "train.threads=1"], env)
    entry = read_run(rd)
    for label, args in (("ddim", ["--sampler", "ddim", "--steps", "20"]),
                        ("ddpm-guided", ["--sampler", "ddpm", "--steps", "20", "--guidance", "2.0"]),
                        ("digit", ["--digit", "3", "--n", "4", "--sampler", "ddim", "--steps", "10", "--eta", "0.5"])):
        out = work / f"image-{label}"
        cli(["mnist", "sample", str(rd), "--out", str(out), "--seed", "5", "--device", "cpu", "--no-gif", *args], env)
        entry[f"sample/{label}"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    result["image"] = entry
    print(f"image: {entry['final'].get('val_bpd')}", file=sys.stderr)
    return result


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'recorded' if k in a else 'now'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if a != b and not (a != a and b != b):  # NaN == NaN here
        return [f"{path}: recorded {a!r}, now {b!r}"]
    return []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", type=Path, help="write the fingerprint to this file")
    g.add_argument("--check", type=Path, help="compare against this file; exit 1 on any difference")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = fingerprint(Path(tmp))
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.record}")
        return 0
    recorded = json.loads(args.check.read_text())
    problems = diff(recorded, json.loads(json.dumps(now)))
    for line in problems:
        print(line)
    print(f"{len(problems)} differences from {args.check}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
