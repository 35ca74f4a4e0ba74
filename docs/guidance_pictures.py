"""Draw the picture of docs/guidance.md: guidance on the digits and on text side by side, from the measured
results (benchmarks/results/mnist_table.json: class accuracy against FID over w; benchmarks/results/
guidance_text.json and guidance_text_long.json: speaker accuracy against judge perplexity over w, one line per
method and rule, at 2,000 and 8,000 training steps).

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


def _text_panel(ax, text: dict, title: str, legend: str = "upper center") -> None:
    """Speaker accuracy against judge perplexity over w, a line per method and rule."""
    for (method, rule), (color, ls) in STYLE.items():
        pts = sorted((r for r in text["rows"] if r["method"] == method and r["rule"] == rule), key=lambda r: r["w"])
        if not pts:
            continue
        xs, ys, ws = [r["judge_ppl"] for r in pts], [r["accuracy"] for r in pts], [r["w"] for r in pts]
        name = f"{method}, {'classifier-free' if rule == 'free' else 'classifier (' + pts[0]['classifier_rule'] + ')'}"
        ax.plot(xs, ys, marker="o", ms=3, color=color, ls=ls, label=name)
        _label_points(ax, xs, ys, ws, color)
    ax.axhline(text["reference"]["accuracy"], ls=":", color="grey", lw=1)
    ax.axhline(text["chance"], ls=":", color="lightgrey", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([t for t in (5, 10, 20, 50, 100, 200, 500) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
    ax.text(ax.get_xlim()[1], text["reference"]["accuracy"], "real held-out speeches ", ha="right", va="bottom",
            fontsize=8, color="grey")
    ax.text(ax.get_xlim()[1], text["chance"], "chance ", ha="right", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("judge perplexity (lower = more fluent)")
    ax.set_ylabel("speaker accuracy (speaker judge)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc=legend)


def curves() -> Path:
    digits = json.loads((RESULTS / "mnist_table.json").read_text())["rows"]
    text = json.loads((RESULTS / "guidance_text.json").read_text())
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6), dpi=110)

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

    _text_panel(middle, text, "text: 8 speakers of Tiny Shakespeare, cpu preset 2,000 steps")
    long_file = RESULTS / "guidance_text_long.json"
    if long_file.exists():
        _text_panel(right, json.loads(long_file.read_text()), "the same, 8,000 steps (ar, masked)",
                    "lower right")
    else:
        right.axis("off")
    fig.suptitle("Guidance trades fidelity for control (numbers at the points: the scale w)", fontsize=11)
    fig.tight_layout()
    path = IMAGES / "guidance-curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(curves())
