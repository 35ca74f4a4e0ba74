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
from textdiffusion.apps.compare import compare_runs, parse_guidance, parse_sweep, parse_temperatures
from textdiffusion.config import ConfigError
from textdiffusion.data.tokenizer import BPETokenizer, CharTokenizer
from textdiffusion.methods.configs import make_config
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
    # the digits run is class-conditional: its guidance curve is measured in test_guidance_* (guided_report)
    compare_runs([str(runs / "ar"), str(runs / "masked"), str(runs / "digits")], out, samples=4, sweep=SWEEP,
                 progress=False, guidance="none")
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
    (["RUNS/ar", "--guidance", "0,strong"], "'strong' is not a number"),
    (["RUNS/ar", "--guidance", "0,-1"], "--guidance scales must each be a number from 0 to 100"),
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


# ---- guidance: accuracy vs fluency over w for runs trained with labels -------------------------------------
GUIDANCE = "0,2"


@pytest.fixture(scope="module")
def labelled(runs, shakespeare) -> Path:
    """A tiny ar run trained on 4 speakers' speeches (a quarter of Tiny Shakespeare holds enough of them)."""
    corpus = runs / "plays.txt"
    corpus.write_text(shakespeare[: len(shakespeare) // 4], encoding="utf-8")
    train_tiny("ar", corpus, runs / "speakers", steps=20, **{"data.labels": "speaker", "data.label_top": 4})
    return runs / "speakers"


@pytest.fixture(scope="module")
def classifier_cache(runs, tmp_path_factory):
    """A quickly trained evaluation classifier for the digits, in a cache of the module's own (the full one
    takes 1,500 steps the first time)."""
    from textdiffusion.data.images import load_images
    from textdiffusion.image_evaluation import _data_key
    from textdiffusion.image_metrics import classifier_for, train_classifier

    cache = tmp_path_factory.mktemp("cache")
    data = load_images("digits")
    quick = lambda: train_classifier(data.x_train, data.y_train, data.x_test, data.y_test,  # noqa: E731
                                     steps=20, batch_size=64, progress=False)
    classifier_for(_data_key(data), quick, cache / "classifiers", {"note": "test"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTDIFFUSION_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def guided_report(runs, labelled, classifier_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guided")
    compare_runs([str(labelled), str(runs / "masked"), str(runs / "digits")], out, samples=4, sweep="",
                 guidance=GUIDANCE, progress=False)
    return out


def test_guidance_curve_of_a_labelled_text_run(guided_report, labelled):
    data = json.loads((guided_report / "comparison.json").read_text())
    assert data["settings"]["guidance"] == [0.0, 2.0]
    run = data["runs"][0]
    (curve,) = run["guidance"]
    assert curve["kind"] == "text" and curve["rule"] == "free" and len(curve["labels"]) == 4
    assert curve["chance"] == 0.25 and 0 < curve["reference_accuracy"] <= 1
    assert "held-out real speeches cut to 32 characters" in curve["reference_what"]
    assert [p["w"] for p in curve["points"]] == [0.0, 2.0]
    for p in curve["points"]:
        assert p["rule"] == "free" and p["samples"] == 4 and p["length"] == 32  # one sample per speaker
        assert 0 <= p["accuracy"] <= 1 and p["judge_ppl"] > 1 and 0 <= p["word_validity"] <= 1
        assert p["distinct_2"] >= 0 and p["chars_per_s"] > 0 and "fid" not in p
    # w = 0 draws from the unconditional model (each speaker under its own seed), w = 2 steers: other texts
    assert curve["points"][0]["example"] != curve["points"][1]["example"]
    cache = json.loads((labelled / "guidance.json").read_text())
    assert cache["format"] == "textdiffusion-guidance/1" and cache["step"] == run["step"]
    assert {e["key"].get("w") for e in cache["points"]} >= {0.0, 2.0}


def test_guidance_curve_of_a_class_conditional_image_run(guided_report, runs):
    data = json.loads((guided_report / "comparison.json").read_text())
    image = next(r for r in data["runs"] if r["kind"] == "image")
    (curve,) = image["guidance"]
    assert curve["kind"] == "image" and curve["chance"] == 0.1 and 0 < curve["reference_accuracy"] <= 1
    for p in curve["points"]:
        assert p["fid"] > 0 and 0 <= p["accuracy"] <= 1 and p["samples"] == 4 and p["sampler"] == "ddim"
        assert "judge_ppl" not in p
    assert (runs / "digits" / "guidance.json").exists()


def test_unlabelled_runs_get_no_curve(guided_report, runs):
    data = json.loads((guided_report / "comparison.json").read_text())
    masked = next(r for r in data["runs"] if r["method"] == "masked")
    assert "guidance" not in masked and not (runs / "masked" / "guidance.json").exists()


def test_guidance_tables_and_charts(guided_report):
    md = (guided_report / "comparison.md").read_text()
    assert "## Guidance: accuracy vs fluency" in md
    assert "| w | speaker accuracy | judge ppl | ppl / w=0 | word validity | distinct-2 | chars/s | samples |" in md
    assert "| w | class accuracy | FID | images/s | samples |" in md
    assert re.search(r"\n\| 0 \| [\d.]+ \| [\d.,]+ \| 1\.00 \|", md)  # w = 0 is its own fluency baseline
    page = (guided_report / "report.html").read_text()
    assert 'id="plot-guidance-text"' in page and 'id="plot-guidance-image"' in page and 'href="#guidance"' in page
    data = re.search(r'<script type="application/json" id="td-data">(.*?)</script>', page, re.S).group(1)
    assert [len(r["guidance"]) for r in json.loads(data)["runs"]] == [1, 0, 1]


def test_guidance_is_cached_and_reused(guided_report, runs, labelled, tmp_path, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("the cached guidance curve should have been reused")

    monkeypatch.setattr(compare_module, "_text_guidance_point", no_sampling)
    monkeypatch.setattr(compare_module, "_image_guidance_point", no_sampling)
    compare_runs([str(labelled), str(runs / "digits")], tmp_path, samples=4, sweep="", guidance=GUIDANCE,
                 progress=False)
    first = {r["name"]: r["guidance"] for r in json.loads((guided_report / "comparison.json").read_text())["runs"]
             if "guidance" in r}
    again = {r["name"]: r["guidance"] for r in json.loads((tmp_path / "comparison.json").read_text())["runs"]}
    assert again == first
    # a new scale is a new point: measured, not reused; none at all draws nothing
    with pytest.raises(AssertionError, match="cached guidance"):
        compare_runs([str(labelled)], tmp_path, samples=4, sweep="", guidance="0,3", progress=False)
    compare_runs([str(labelled)], tmp_path, samples=4, sweep="", guidance="none", progress=False)
    assert "guidance" not in json.loads((tmp_path / "comparison.json").read_text())["runs"][0]


def test_parse_guidance():
    assert parse_guidance("5, 0,1,1,") == [0.0, 1.0, 5.0] and parse_guidance("2.5") == [2.5]
    assert parse_guidance("") == parse_guidance(" none ") == []
    with pytest.raises(ConfigError, match="'x' is not a number"):
        parse_guidance("1,x")
    for bad in ("nan", "inf", "101", "-0.5"):
        with pytest.raises(ConfigError, match="from 0 to 100"):
            parse_guidance(bad)


def test_guidance_charts_in_chromium(guided_report, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((guided_report / "report.html").as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for kind in ("text", "image"):
        fig = browser.find_element("id", f"plot-guidance-{kind}")
        assert int(fig.get_attribute("data-points")) == 2 and int(fig.get_attribute("data-series")) == 1
        labels = [t.get_attribute("textContent") for t in fig.find_elements("css selector", "svg text.point-label")]
        assert labels == ["w=0", "w=2"]
        assert fig.find_elements("css selector", "svg .ref line")  # the real-data accuracy, dashed
    assert len(browser.find_elements("css selector", "#guidance ~ .table-wrap table")) == 2


# ---- eval on a labelled run says what is conditional --------------------------------------------------------
def test_eval_of_a_labelled_run_says_samples_are_unconditional(labelled, tmp_path, capsys):
    import shutil

    run = tmp_path / "speakers"
    shutil.copytree(labelled, run)
    final = json.loads((run / "final.json").read_text())
    assert main(["eval", str(run), "--samples", "2", "--val-windows", str(final["val_windows"]),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "eval.json").read_text())
    labels = ev["labels"]
    assert labels["samples"] == "unconditional (no label)" and len(labels["names"]) == 4
    assert "conditional NLL on the held-out speeches" in labels["val"]
    assert f"labels: 4 ({', '.join(labels['names'])})" in out
    assert "samples: unconditional (no label); val: conditional NLL on the held-out speeches" in out
    # the validation number is training's: the same held-out speeches under their labels (ar: exact)
    assert ev["val"]["windows"] == final["val_windows"]
    assert ev["val"]["bpc"] == pytest.approx(final["val_bpc"], abs=1e-5)


def test_eval_of_a_plain_run_says_nothing_of_labels(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "ar"
    shutil.copytree(runs / "ar", run)
    assert main(["eval", str(run), "--samples", "2", "--no-progress"]) == 0
    assert "labels:" not in capsys.readouterr().out
    assert "labels" not in json.loads((run / "eval.json").read_text())


# ---- the n-gram distance and the frontier over temperature --------------------------------------------------
def test_every_sweep_point_has_the_ngram_distance_beside_its_floor(report):
    data = json.loads((report / "comparison.json").read_text())
    text = [r for r in data["runs"] if r["kind"] == "text"]
    for r in text:
        for p in r["sweep"]:
            d = p["distance"]
            assert d["texts"] == 4 and 0 < d["floor_bits"] < d["js_bits"] <= 1  # 20 steps write far from real text
    md = (report / "comparison.md").read_text()
    assert "| n-gram JS | real floor |" in md and "| n-gram JS (floor) |" in md
    assert "frontier temperatures: none" in md and "## Frontier" not in md  # the frontier is opt-in


def test_a_sweep_point_cached_without_the_distance_is_measured_again(runs, report, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "ar"
    shutil.copytree(runs / "ar", run)
    cache = json.loads((run / "sweep.json").read_text())
    for p in cache["points"]:
        del p["result"]["distance"]  # as written before the distance was measured
    (run / "sweep.json").write_text(json.dumps(cache))
    measured = []
    real = compare_module._sweep_point
    monkeypatch.setattr(compare_module, "_sweep_point", lambda *a: measured.append(a[3]) or real(*a))
    compare_runs([str(run)], tmp_path / "out", samples=4, sweep="", progress=False, guidance="none")
    assert measured == [0]


@pytest.fixture(scope="module")
def frontier_report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frontier")
    compare_runs([str(runs / "ar"), str(runs / "masked")], out, samples=4, sweep="", progress=False,
                 guidance="none", temperatures="1,0.5")
    return out


def test_frontier_draws_each_temperature_and_real_text(frontier_report):
    data = json.loads((frontier_report / "comparison.json").read_text())
    assert data["settings"]["temperatures"] == [0.5, 1.0]
    for r in data["runs"]:
        points = r["frontier"]
        assert [p["temperature"] for p in points] == [0.5, 1.0] and all(p["n"] == 4 for p in points)
        cold, plain = (p["quality"] for p in points)
        assert cold["char_entropy"] < plain["char_entropy"]  # a colder draw writes fewer kinds of characters
        default = next(p for p in r["sweep"] if p.get("default"))
        assert plain["judge_ppl"] == default["judge_ppl"]  # T = 1 is the run's own draw, with the same seed
        assert points[1]["distance"] == default["distance"]
    md = (frontier_report / "comparison.md").read_text()
    assert "## Frontier: judge perplexity vs entropy over temperature" in md
    assert "| run | T | judge ppl | char entropy | word validity | n-gram JS | real floor | samples |" in md
    assert "| ar | 0.5 |" in md and "| masked | 1 |" in md and md.count("| real text | — |") == 1


def test_frontier_is_cached_and_reused(runs, frontier_report, tmp_path, monkeypatch):
    assert (runs / "masked" / "frontier.json").exists()
    monkeypatch.setattr(compare_module, "frontier_point", lambda *a: pytest.fail("the cached frontier is reused"))
    compare_runs([str(runs / "masked")], tmp_path, samples=4, sweep="", progress=False, guidance="none",
                 temperatures="0.5,1")
    again = json.loads((tmp_path / "comparison.json").read_text())["runs"][0]["frontier"]
    first = json.loads((frontier_report / "comparison.json").read_text())["runs"][1]["frontier"]
    assert again == first


def test_parse_temperatures():
    assert parse_temperatures("1, 0.6,0.6,") == [0.6, 1.0] and parse_temperatures("none") == []
    with pytest.raises(ConfigError, match="'hot' is not a number"):
        parse_temperatures("1,hot")
    with pytest.raises(ConfigError, match="--temperatures must each be"):
        parse_temperatures("0")
    with pytest.raises(ConfigError, match="at most 12"):
        parse_temperatures(",".join(str(0.1 * i) for i in range(1, 14)))


def test_temperatures_flag_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "ar"), "--out", str(tmp_path / "o"), "--no-progress", "--samples", "2",
                 "--temperatures", "0.8,warm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --temperatures") and "'warm' is not a number" in err and "\n" not in err


def test_frontier_chart_in_chromium(frontier_report, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((frontier_report / "report.html").as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    fig = browser.find_element("id", "plot-frontier")
    assert int(fig.get_attribute("data-series")) == 3  # ar, masked and real text
    assert int(fig.get_attribute("data-points")) == 5
    labels = [t.get_attribute("textContent") for t in fig.find_elements("css selector", "svg text.point-label")]
    assert labels.count("T=0.5") == 2 and labels.count("real") == 1
    assert len(browser.find_elements("css selector", "#frontier-table tbody tr")) == 5


@pytest.fixture(scope="module")
def nan_report(runs, tmp_path_factory) -> tuple[Path, str]:
    """A report of a run whose metrics.jsonl holds a bare NaN (as a diverged step or an older writer leaves
    it) in its first evaluation row, and what compare printed."""
    import shutil

    root = tmp_path_factory.mktemp("nan")
    run = root / "diverged"
    shutil.copytree(runs / "masked", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    first_eval = next(i for i, ln in enumerate(lines) if '"kind": "train"' not in ln)
    row = json.loads(lines[first_eval])
    row.update(train_loss=float("nan"), val_bpc=float("inf"))
    lines[first_eval] = json.dumps(row)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        compare_runs([str(run)], root / "out", samples=2, sweep="", progress=False)
    return root / "out", err.getvalue()


def _strict(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_in_the_metrics_is_written_as_null_and_said(nan_report):
    out, err = nan_report
    _strict((out / "comparison.json").read_text())
    page = (out / "report.html").read_text()
    data = _strict(re.search(r'<script type="application/json" id="td-data">(.*?)</script>', page, re.S).group(1))
    curves = data["runs"][0]["curves"]
    assert curves and all(isinstance(v, (int, float)) for point in curves for v in point.values())
    rows = (out.parent / "diverged" / "metrics.jsonl").read_text().splitlines()
    evaluations = sum('"kind": "train"' not in ln for ln in rows)
    assert sum("val_bpc" in p for p in curves) == evaluations - 1 > 0  # the infinite one skipped
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "metrics.jsonl holds non-finite values" in notes[0] and "first at step" in notes[0]


def test_a_report_with_a_nan_still_draws_its_charts(nan_report, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((nan_report[0] / "report.html").as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for fig_id in ("plot-val-step", "plot-loss-step"):
        assert int(browser.find_element("id", fig_id).get_attribute("data-points")) > 0, fig_id
