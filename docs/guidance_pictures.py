"""Draw the picture of docs/guidance.md: guidance on the digits and on text side by side, from the measured
results (benchmarks/results/mnist_table.json: class accuracy against FID over w; benchmarks/results/
guidance_text.json: speaker accuracy against judge perplexity over w, one line per method and rule).

    python docs/guidance_pictures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "benchmarks" / "results"
IMAGES = HERE / "images"
STYLE = {("ar", "free"): ("tab:blue", "-"), ("masked", "free"): ("tab:orange", "-"),
         ("block", "free"): ("tab:green", "-"), ("ar", "classifier"): ("tab:blue", "--"),
         ("masked", "classifier"): ("tab:orange", "--"), ("block", "classifier"): ("tab:green", "--"),
         ("embedding", "classifier"): ("tab:purple", "--")}


def _label_points(ax, xs, ys, ws, color) -> None:
    for x, y, w in zip(xs, ys, ws, strict=True):
        ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=color)


def curves() -> Path:
    digits = json.loads((RESULTS / "mnist_table.json").read_text())["rows"]
    text = json.loads((RESULTS / "guidance_text.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)

    rows = sorted((r for k, r in digits.items() if k.startswith("ddim-50-w") and "eta" not in k),
                  key=lambda r: r["guidance"])
    xs, ys, ws = [r["fid"] for r in rows], [r["class_accuracy"] for r in rows], [r["guidance"] for r in rows]
    left.plot(xs, ys, "o-", color="black")
    _label_points(left, xs, ys, ws, "black")
    left.axhline(rows[0]["classifier_test_accuracy"], ls=":", color="grey", lw=1)
    left.text(left.get_xlim()[1], rows[0]["classifier_test_accuracy"], "real test digits ", ha="right",
              va="bottom", fontsize=8, color="grey")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xticks([5, 10, 20, 50])
    left.set_xlabel("FID (lower = closer to real digits)")
    left.set_ylabel("class accuracy of the requested digit")
    left.set_title("digits: class-conditional U-Net, DDIM 50 steps", fontsize=10)

    for (method, rule), (color, ls) in STYLE.items():
        pts = sorted((r for r in text["rows"] if r["method"] == method and r["rule"] == rule), key=lambda r: r["w"])
        if not pts:
            continue
        xs, ys, ws = [r["judge_ppl"] for r in pts], [r["accuracy"] for r in pts], [r["w"] for r in pts]
        name = f"{method}, {'classifier-free' if rule == 'free' else 'classifier (' + pts[0]['classifier_rule'] + ')'}"
        right.plot(xs, ys, marker="o", ms=3, color=color, ls=ls, label=name)
        _label_points(right, xs, ys, ws, color)
    right.axhline(text["reference"]["accuracy"], ls=":", color="grey", lw=1)
    right.axhline(text["chance"], ls=":", color="lightgrey", lw=1)
    right.text(right.get_xlim()[1], text["reference"]["accuracy"], "real held-out speeches ", ha="right",
               va="bottom", fontsize=8, color="grey")
    right.text(right.get_xlim()[1], text["chance"], "chance ", ha="right", va="bottom", fontsize=8, color="grey")
    right.set_xscale("log")
    right.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xticks([10, 20, 50, 100, 200])
    right.set_xlabel("judge perplexity (lower = more fluent)")
    right.set_ylabel("speaker accuracy (speaker judge)")
    right.set_title("text: 8 speakers of Tiny Shakespeare, cpu preset, 64 chars", fontsize=10)
    right.legend(fontsize=7, loc="upper center")
    fig.suptitle("Guidance trades fidelity for control (numbers at the points: the scale w)", fontsize=11)
    fig.tight_layout()
    path = IMAGES / "guidance-curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(curves())
