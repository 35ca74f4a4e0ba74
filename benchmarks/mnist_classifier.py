"""The MNIST digit classifier behind image FID: training time and test accuracy at the default budget, and the
FID floor that real data reaches in its feature space.

Trains :func:`textdiffusion.image_metrics.train_classifier` on all 60,000 training images with the default
steps, batch size and learning rate, then reports

* wall and CPU time of training, and the test accuracy on the 10,000 test images;
* FID between two random halves of the test set (5,000 vs 5,000): the best a perfect generator can score at
  that sample size, since FID is biased upwards at finite N;
* FID between the first and the last 5,000 test images. These are *not* exchangeable: MNIST's first 5,000
  test digits come from NIST's SD-3 (Census Bureau employees, cleaner) and the last 5,000 from SD-1 (high-school
  students), so this is a real distribution shift, which is why the random split is the floor;
* FID between the test set and the first 10,000 training images (10,000 vs 10,000);
* FID between the test set and uniform noise, for scale.

    python benchmarks/mnist_classifier.py [--data PATH/mnist.npz] [--threads N] [--steps N]

Writes ``benchmarks/results/mnist_classifier.json``. Wall time depends on what else runs on the machine;
the load average before and after is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import machine
from textdiffusion.data.corpus import data_dir
from textdiffusion.image_metrics import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_STEPS,
    classify,
    frechet_distance,
    train_classifier,
)
from textdiffusion.nn.classifier import count_parameters, images_to_input


def load_mnist(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data /path/to/mnist.npz or set TEXTDIFFUSION_DATA")
    with np.load(path, allow_pickle=False) as d:
        return {k: torch.from_numpy(d[k]).long() if k.startswith("y") else torch.from_numpy(d[k])
                for k in ("x_train", "y_train", "x_test", "y_test")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="mnist.npz (default: $TEXTDIFFUSION_DATA/mnist.npz)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(args.data or data_dir() / "mnist.npz")

    load_before = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model, accuracy = train_classifier(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                                       steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                       device=args.device, progress=not args.no_progress)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    load_after = os.getloadavg()

    tic = time.perf_counter()
    test_feats, _ = classify(model, images_to_input(data["x_test"]))
    train_feats, _ = classify(model, images_to_input(data["x_train"][:10_000]))
    noise = torch.rand(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_feats, _ = classify(model, noise)
    feature_seconds = time.perf_counter() - tic
    perm = torch.randperm(test_feats.shape[0], generator=torch.Generator().manual_seed(0))
    fid = {
        "test_random_half_vs_half_5k": frechet_distance(test_feats[perm[:5000]], test_feats[perm[5000:]]),
        "test_first_5k_vs_last_5k": frechet_distance(test_feats[:5000], test_feats[5000:]),
        "test_10k_vs_train_first_10k": frechet_distance(test_feats, train_feats),
        "test_10k_vs_uniform_noise_10k": frechet_distance(test_feats, noise_feats),
    }
    result = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "device": str(args.device),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "parameters": count_parameters(model),
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "test_accuracy": accuracy,
        "fid": fid,
        "feature_extraction_s_30k_images": round(feature_seconds, 1),
    }
    print(f"trained {args.steps} steps x {args.batch_size} in {wall:.1f}s wall / {cpu:.1f}s CPU "
          f"({torch.get_num_threads()} threads; load {load_before[0]:.2f} -> {load_after[0]:.2f})")
    print(f"test accuracy {accuracy:.4f} ({count_parameters(model):,} parameters)")
    for name, value in fid.items():
        print(f"FID {name}: {value:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mnist_classifier.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
