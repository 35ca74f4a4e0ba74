"""Draw the pictures of docs/block-diffusion.md: the training attention mask, straight from the backbone's
``attention_bias`` (so the picture cannot drift from the code), and the measured trade-off curve from
benchmarks/results/block_table.json.

    python docs/block_pictures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from textdiffusion.nn.transformer import attention_bias

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def training_mask(length: int = 16, block: int = 4) -> Path:
    mask, _ = attention_bias("block-causal", 2 * length, 2 * length, torch.device("cpu"), block, paired=True)
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=120)
    ax.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest")
    for k in range(0, 2 * length + 1, block):
        lw = 1.6 if k % length == 0 else 0.4
        ax.axhline(k - 0.5, color="tab:blue", lw=lw)
        ax.axvline(k - 0.5, color="tab:blue", lw=lw)
    ticks = [length // 2 - 0.5, length + length // 2 - 0.5]
    ax.set_xticks(ticks, ["keys: noisy $z_t$", "keys: clean $x$"])
    ax.set_yticks(ticks, ["queries:\nnoisy $z_t$", "queries:\nclean $x$"])
    ax.set_title(f"BD3-LM training mask, L = {length}, B = {block}\n(dark = may attend)", fontsize=10)
    fig.tight_layout()
    path = IMAGES / "block-training-mask.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def tradeoff(results: Path = HERE.parent / "benchmarks" / "results" / "block_table.json") -> Path | None:
    if not results.exists():
        return None
    data = json.loads(results.read_text())
    rows = [r for r in data["rows"] if "budget" not in r["run"]]
    ar = next(r for r in rows if r["method"] == "ar")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    blocks = [r for r in rows if r["method"] == "block"]
    sizes = [int(r["label"].split("B=")[1].split(",")[0]) for r in blocks]
    left.plot(sizes, [r["val_nats"] for r in blocks], "o-", label="block (bound)")
    left.axhline(ar["val_nats"], color="k", ls="--", label="ar (exact)")
    masked = next(r for r in rows if r["method"] == "masked")
    left.axhline(masked["val_nats"], color="tab:red", ls=":", label="masked (bound)")
    clip = results.parent / "block_clip.json"
    if clip.exists():
        c = json.loads(clip.read_text())
        pick = c["pick"]
        left.plot([4], [c["clipped_val_nats"]], "*", ms=12, color="tab:green",
                  label=f"B = 4, mask rates clipped to [{pick['clip_low']:g}, {pick['clip_high']:g}]")
    left.set_xscale("log", base=2)
    left.set_xlabel("block size B (characters)")
    left.set_ylabel("validation nats/char")
    left.legend()
    left.set_title("likelihood: B = 1 is autoregressive, B = 64 is masked")
    for r in rows:
        for s in r["samplers"]:
            marker = {"ar": "s", "masked": "^", "block": "o"}[r["method"]]
            right.scatter(s["chars_s_b1"], s["judge_ppl"], marker=marker,
                          color="k" if r["method"] == "ar" else ("tab:blue" if s["sampler"] == "ancestral"
                                                                else "tab:orange"))
            right.annotate(r["label"].split(",")[0].replace("block ", ""), (s["chars_s_b1"], s["judge_ppl"]),
                           fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.axhline(data["reference"]["judge_ppl"], color="k", ls=":", lw=0.8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("characters per second at batch 1")
    right.set_ylabel("judge perplexity (lower is better)")
    right.set_title("quality vs speed (blue: ancestral, orange: confidence)")
    fig.tight_layout()
    path = IMAGES / "block-tradeoff.png"
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(training_mask())
    print(tradeoff())
