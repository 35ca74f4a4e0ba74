"""`textdiffusion compare`: the three files, what every number is labelled as, the sweep cache, one-line errors,
and the report itself in headless Chromium opened from file:// (table, plots, animation, pictures)."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import pytest
import torch

from helpers import train_tiny
from textdiffusion.apps import compare as compare_module
from textdiffusion.apps.cli import main
from textdiffusion.apps.compare import compare_runs, parse_sweep
from textdiffusion.config import ConfigError, make_config
from textdiffusion.data.tokenizer import BPETokenizer, CharTokenizer
from textdiffusion.trainer import Trainer
from textdiffusion.viz.trajectory import TrajectoryRecorder, decode_masked

SWEEP = "2,4"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare) -> Path:
    root = tmp_path_factory.mktemp("compare")
    corpus = root / "c.txt"
    corpus.write_text(shakespeare[:40_000], encoding="utf-8")
    for method in ("ar", "masked"):
        train_tiny(method, corpus, root / method, steps=20, **{"train.eval_every": 10})
    cfg = make_config("image", "tiny", ["data.corpus=digits", "train.steps=10", "train.eval_every=5"])
    Trainer(cfg, root / "digits", progress=False).train()
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    compare_runs([str(runs / "ar"), str(runs / "masked"), str(runs / "digits")], out, samples=4, sweep=SWEEP,
                 progress=False)
    return out


def test_writes_the_three_files(report):
    assert {p.name for p in report.iterdir()} >= {"report.html", "comparison.md", "comparison.json"}


def test_json_says_what_each_number_is(report):
    data = json.loads((report / "comparison.json").read_text())
    assert data["format"] == "textdiffusion-comparison/1"
    by = {r["method"]: r for r in data["runs"]}
    assert set(by) == {"ar", "masked", "image"}
    assert by["ar"]["val"]["kind"] == "exact" and by["masked"]["val"]["kind"] == "bound"
    assert by["image"]["val"]["unit"] == "bits/dim" and by["masked"]["val"]["unit"] == "bits/char"
    assert data["settings"]["samples"] == 4 and data["settings"]["seeds"] == 1
    # ar ignores the step count: one point; masked: the sweep plus its default (length = context = 32)
    assert [p["steps"] for p in by["ar"]["sweep"]] == [32]
    assert [p["steps"] for p in by["masked"]["sweep"]] == [2, 4, 32]
    assert [p.get("default", False) for p in by["masked"]["sweep"]] == [False, False, True]
    for p in by["masked"]["sweep"]:
        assert p["n"] == 4 and p["judge_ppl"] > 1 and p["nfe"] <= p["steps"] and p["sample_chars_per_s"] > 0
    # curves straight from metrics.jsonl: validation from the evaluation rows, the training loss from the train
    # rows (tiny: train.log_every=10), never both on one point
    curves = by["masked"]["curves"]
    assert [c["step"] for c in curves if "val_bpc" in c] == [10, 20]
    assert [c["step"] for c in curves if "train_loss" in c] == [10, 20]
    assert all("elapsed" in c and ("val_bpc" in c) != ("train_loss" in c) for c in curves)


def test_trajectories_grow_left_to_right_or_unmask(report):
    data = json.loads((report / "comparison.json").read_text())
    by = {r["method"]: r for r in data["runs"]}
    ar = by["ar"]["trajectory"]["frames"]
    assert len(ar) == 33 and len(ar[0]["masked"]) == 32 and ar[-1]["masked"] == []
    # ar: exactly one new character per step, always the leftmost masked one
    for prev, cur in itertools.pairwise(ar):
        assert cur["changed"] == 1 and cur["masked"] == prev["masked"][1:]
    masked = by["masked"]["trajectory"]["frames"]
    assert len(masked[0]["masked"]) == 32 and masked[-1]["masked"] == []
    assert sum(f["changed"] for f in masked) == 32  # every position unmasked exactly once
    assert masked[-1]["text"] == by["masked"]["trajectory"]["final"]


def test_image_runs_get_their_pictures(report):
    data = json.loads((report / "comparison.json").read_text())
    img = next(r for r in data["runs"] if r["kind"] == "image")
    files = img["images"]["files"]
    assert {"grid", "strip", "gif"} <= set(files)
    for rel in files.values():
        assert (report / rel).stat().st_size > 0
    assert "FID" in img["eval_note"] or "eval" in img["eval_note"]


def test_markdown_has_the_tables_and_labels(report):
    md = (report / "comparison.md").read_text()
    assert "| run | method | preset | params |" in md
    assert "(exact)" in md and "(bound)" in md
    assert "### Quality vs sampling steps" in md and "| masked | 32 (default) |" in md
    assert "## Image runs" in md and "bits/dim" in md


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    # nothing fetched from the network: no external scripts, styles, fonts or images
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    assert page.count("data:image/png;base64,") >= 2
    data = re.search(r'<script type="application/json" id="td-data">(.*?)</script>', page, re.S).group(1)
    assert len(json.loads(data)["runs"]) == 3


def test_sweep_is_cached_and_reused(runs, report, tmp_path, monkeypatch):
    assert (runs / "masked" / "sweep.json").exists()

    def no_sampling(*args, **kwargs):
        raise AssertionError("the cached sweep should have been reused")

    monkeypatch.setattr(compare_module, "_sweep_point", no_sampling)
    compare_runs([str(runs / "masked")], tmp_path, samples=4, sweep=SWEEP, progress=False)
    first = json.loads((report / "comparison.json").read_text())["runs"][1]["sweep"]
    again = json.loads((tmp_path / "comparison.json").read_text())["runs"][0]["sweep"]
    assert again == first
    # a different sample count is a different experiment: it is measured, not reused
    with pytest.raises(AssertionError, match="cached sweep"):
        compare_runs([str(runs / "masked")], tmp_path, samples=5, sweep=SWEEP, progress=False)


def test_cached_point_of_another_shape_is_measured_again(runs, report, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "masked"
    shutil.copytree(runs / "masked", run)
    cache = json.loads((run / "sweep.json").read_text())
    default = next(p for p in cache["points"] if p["key"]["steps"] == 0 and p["key"]["samples"] == 4)
    del default["result"]["judge_ppl"]  # as if written by a version that scored differently
    (run / "sweep.json").write_text(json.dumps(cache))
    measured = []
    real = compare_module._sweep_point
    monkeypatch.setattr(compare_module, "_sweep_point", lambda *a: measured.append(a[3]) or real(*a))
    compare_runs([str(run)], tmp_path / "out", samples=4, sweep=SWEEP, progress=False)
    assert measured == [0]  # only the unreadable point; the sweep's own points came from the cache
    again = [p for p in json.loads((run / "sweep.json").read_text())["points"] if p["key"] == default["key"]]
    assert len(again) == 1 and again[0]["result"]["judge_ppl"] > 1


def test_stale_eval_json_is_not_used(runs, tmp_path):
    ev = {"step": 1, "quality": {"judge_ppl": 1.0}, "samples": {"n": 1}, "speed": {}}
    (runs / "ar" / "eval.json").write_text(json.dumps(ev))
    try:
        compare_runs([str(runs / "ar")], tmp_path, samples=4, sweep="", progress=False)
    finally:
        (runs / "ar" / "eval.json").unlink()
    run = json.loads((tmp_path / "comparison.json").read_text())["runs"][0]
    assert run["eval"] is None and "from step 1" in run["eval_note"]
    assert run["val"]["source"].startswith("final.json")


def test_legend_is_one_text_in_both_outputs(report):
    from textdiffusion.viz.report import ESTIMATES, VAL_KINDS, inline_html, legend_markdown

    md = (report / "comparison.md").read_text()
    page = (report / "report.html").read_text()
    assert legend_markdown() in md
    legend = re.search(r'<div class="note" id="how-to-read">(.*?)</div>', page, re.S).group(1)
    for text in (*VAL_KINDS.values(), ESTIMATES):
        assert str(inline_html(text)) in legend


def test_inline_markup_escapes_everything_else():
    from textdiffusion.viz.report import inline_html

    assert str(inline_html("a < `b&c` *d* <script>")) == "a &lt; <code>b&amp;c</code> <i>d</i> &lt;script&gt;"


def test_page_escapes_run_names(runs, tmp_path):
    import shutil

    odd = tmp_path / '<script>x&"q'
    shutil.copytree(runs / "ar", odd, ignore=shutil.ignore_patterns("sweep.json"))
    compare_runs([str(odd)], tmp_path / "out", samples=2, sweep="", progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    # the page data is JSON (safe in its script element: no "</" or "<!--"); everything else is HTML-escaped
    found = re.search(r'<script type="application/json" id="td-data">(.*?)</script>', page, re.S)
    assert json.loads(found.group(1))["runs"][0]["name"] == odd.name
    html = page[:found.start()] + page[found.end():]
    assert "<script>x" not in html and html.count("&lt;script&gt;x&amp;&#34;q") >= 3  # table, card, title


def test_parse_sweep():
    assert parse_sweep("16, 4,4,") == [4, 16] and parse_sweep("") == []
    with pytest.raises(ConfigError, match="whole number"):
        parse_sweep("4,x")
    with pytest.raises(ConfigError, match="between 1 and"):
        parse_sweep("0")


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "does not exist"),
    (["RUNS/ar", "--sweep", "4,many"], "whole number"),
    (["RUNS/ar", "--length", "999"], "longer than the context"),
])
def test_cli_errors_are_one_line(runs, tmp_path, capsys, args, message):
    args = [a.replace("RUNS", str(runs)) for a in args]
    assert main(["compare", *args, "--out", str(tmp_path / "o"), "--no-progress", "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and "\n" not in err


def test_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_thinned_trajectory_keeps_ends_and_recounts_changes():
    tok = CharTokenizer.from_text("abcd")
    rec = TrajectoryRecorder(tok, keep_states=True)
    state = torch.full((1, 8), tok.mask_id)
    rec(0, state.clone(), {"t": 1.0})
    for i in range(8):  # unmask one position per step
        state[0, i] = tok.encode("abcd"[i % 4])[0]
        rec(i + 1, state.clone(), {"t": 1 - (i + 1) / 8})
    frames = rec.thinned(4)
    assert [f["step"] for f in frames] == [0, 3, 5, 8]
    assert [f["changed"][0] for f in frames] == [0, 3, 2, 3]  # against the previous *kept* frame
    assert frames[-1]["texts"][0] == "abcdabcd" and frames[0]["masked"][0] == list(range(8))
    assert rec.thinned(100) == rec.frames


# ---- the page in a real browser ------------------------------------------------------------------------
def test_report_renders_in_chromium(report, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import ink_fraction

    browser.get((report / "report.html").as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert browser.execute_script("return window.TD && TD.players.length") == 2  # ar and masked
    # the table: one row per text run, sortable by clicking a header
    rows = browser.find_elements("css selector", "#text-table tbody tr")
    assert len(rows) == 2
    header = browser.find_element("xpath", "//table[@id='text-table']//th[normalize-space()='params']")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    tags = {t.text for t in browser.find_elements("css selector", "#text-table .tag")}
    assert tags == {"exact", "bound"}
    # plots: every figure drew its series from the embedded data
    for fig_id in ("plot-val-step", "plot-val-time", "plot-loss-step", "plot-quality-steps", "plot-quality-speed",
                   "plot-bpd-step"):
        fig = browser.find_element("id", fig_id)
        assert int(fig.get_attribute("data-points")) > 0, fig_id
        assert fig.find_elements("css selector", "svg path, svg circle")
    # the animation plays by itself once in view: the masked run's frame index moves forward
    slot = browser.find_element("css selector", ".td-player-slot[data-run='1']")
    browser.execute_script("arguments[0].scrollIntoView()", slot)
    WebDriverWait(browser, 10).until(lambda d: int(slot.get_attribute("data-frame") or 0) > 3)
    assert "still masked" in slot.find_element("class name", "td-status").text or \
        int(slot.get_attribute("data-frame")) == int(slot.get_attribute("data-frames")) - 1
    # the image run's pictures are inline and decoded
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('.images img')).map(i => i.naturalWidth)")
    assert len(widths) == 3 and min(widths) > 0
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.1)
    assert ink_fraction(browser.get_screenshot_as_png()) > 0.02


def test_interrupted_run_takes_val_from_the_last_evaluation(runs, tmp_path):
    import shutil

    run = tmp_path / "stopped"
    shutil.copytree(runs / "masked", run)
    (run / "final.json").unlink()  # as after Ctrl-C before the final evaluation
    (run / "sweep.json").unlink(missing_ok=True)
    record = compare_module.read_run(run)
    assert record.val.source == "metrics.jsonl (step 20)" and record.val.kind == "bound"
    assert record.step == 20


def test_masked_positions_are_character_positions_for_multi_character_tokens(shakespeare):
    tok = BPETokenizer.train(shakespeare[:30_000], 300)
    ids = tok.encode("ROMEO: the king")
    ids[2] = ids[-1] = tok.mask_id
    text, masked = decode_masked(tok, ids, "_")
    assert [text[i] for i in masked] == ["_", "_"] and masked[-1] == len(text) - 1
    rec = TrajectoryRecorder(tok)
    rec(0, torch.tensor([ids]), {})
    assert rec.frames[0]["masked"] == [masked] and rec.frames[0]["texts"] == [text]
