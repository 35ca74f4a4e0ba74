"""Turning a comparison (see :mod:`textdiffusion.apps.compare`) into ``report.html`` and ``comparison.md``.

The HTML page is one file with everything inline: the style sheet and scripts from ``viz/web`` and the image
runs' pictures as data URIs, so it opens from ``file://`` on a machine with no network. The tables are written
here, in HTML, so they read even with scripts off; the scripts add sorting, draw the plots from the embedded
JSON and play the denoising trajectories.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from textdiffusion.viz import web_asset

WEB_ASSETS = ("player.js", "plot.js", "report.js")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _val_text(val: dict[str, Any] | None) -> str:
    if not val:
        return "—"
    err = f" ± {val['stderr']:.3f}" if val.get("stderr") else ""
    return f"{val['value']:.3f}{err}"


def _val_title(val: dict[str, Any] | None) -> str:
    if not val:
        return "no validation number recorded"
    parts = [val["what"], f"from {val['source']}"]
    if val.get("windows"):
        parts.append(f"{val['windows']:,} windows" if val["unit"] == "bits/char" else f"{val['windows']:,} images")
    if val.get("time_samples"):
        parts.append(f"{val['time_samples']} time samples each")
    if val.get("stderr"):
        parts.append("± one standard error of the Monte-Carlo estimate")
    return "; ".join(parts)


def quality_of(run: dict[str, Any]) -> dict[str, Any] | None:
    """The sample-quality numbers the tables show: the comparison's own measurement at the method's default
    step count, so every run is scored with the same samples, length, seed and judge. (An ``eval.json`` may
    have used other settings or sampling overrides; it is quoted in the run's card instead.)"""
    default = next((p for p in run.get("sweep", []) if p.get("default")), None)
    if default is None:
        return None
    return {**default, "source": "compare (default steps)", "reference": run.get("reference")}


def eval_summary(run: dict[str, Any]) -> str | None:
    """One line quoting a text run's ``eval.json`` (its own sample count and settings)."""
    ev = run.get("eval")
    if not ev or "quality" not in ev:
        return None
    s, q = ev["samples"], ev["quality"]
    extra = f", overrides {' '.join(s['overrides'])}" if s.get("overrides") else ""
    return (f"eval.json ({s['n']} samples × 1 seed of {s.get('length')} characters, sampler {s.get('sampler')}"
            f"{extra}): judge ppl {_fmt(q.get('judge_ppl'))}, word validity {_fmt(q.get('word_validity'))}, "
            f"distinct-2 {_fmt(q.get('distinct_2'))}, {_fmt(ev['speed'].get('sample_chars_per_s'), 0)} sample chars/s")


def _length(data: dict[str, Any]) -> str:
    """The common sample length in its unit: tokens stand for several characters with BPE or WordPiece."""
    n = data["settings"]["length"]
    kinds = {r.get("tokenizer") for r in data["runs"] if r["kind"] == "text"}
    return f"{n} characters" if kinds <= {"char", None} else f"{n} tokens (characters for char-tokenizer runs)"


# ---- tables (shared by the page and the markdown) --------------------------------------------------------
TEXT_COLUMNS = [
    # key, header, tooltip, better
    ("run", "run", "run directory", None),
    ("method", "method", "corruption process + loss + sampler", None),
    ("preset", "preset", "model/trainer size", None),
    ("parameters", "params", "trainable parameters", None),
    ("step", "train steps", "optimizer steps of the checkpoint", None),
    ("val", "val bits/char", "validation bits per character: exact for ar, an upper bound (NELBO) for diffusion; "
                             "lower is better", "low"),
    ("judge_ppl", "judge ppl", "per-character perplexity of the samples under a character 5-gram judge fitted on "
                               "the training split (an estimate); lower is better", "low"),
    ("word_validity", "word validity", "share of generated words found in the training split; higher is better",
     "high"),
    ("distinct_2", "distinct-2", "distinct word bigrams / all word bigrams (diversity)", "high"),
    ("repetition", "repetition", "within-sample repeated word bigrams (loops); lower is better", "low"),
    ("nfe", "NFE", "network evaluations per sample at the method's default step count (the quality columns)",
     "low"),
    ("train_speed", "train chars/s", "training throughput recorded by the trainer", "high"),
    ("sample_speed", "sample chars/s", "generated characters per second, measured with the quality columns", "high"),
    ("provenance", "samples × seeds", "how many samples and seeds the quality columns average over", None),
]

IMAGE_COLUMNS = [
    ("run", "run", "run directory", None),
    ("preset", "preset", "model/trainer size", None),
    ("parameters", "params", "trainable parameters", None),
    ("step", "train steps", "optimizer steps of the checkpoint", None),
    ("val", "val bits/dim", "VDM variational bound on the 8-bit pixels (an upper bound); lower is better", "low"),
    ("fid", "FID", "Fréchet distance in the evaluation classifier's features (eval.json; an estimate)", "low"),
    ("class_accuracy", "class accuracy", "share of samples the classifier assigns the requested digit", "high"),
    ("eval_sampler", "eval sampler", "sampler and steps of the FID row", None),
    ("train_speed", "train images/s", "training throughput recorded by the trainer", "high"),
    ("sample_speed", "sample ms/image", "from eval.json", "low"),
    ("provenance", "samples × seeds", "samples and seeds behind FID and accuracy", None),
]


def text_row(run: dict[str, Any]) -> dict[str, tuple[str, Any, str]]:
    """column key -> (shown text, sort value, tooltip)."""
    q = quality_of(run) or {}
    val = run.get("val")
    prov = f"{q['n']} × {q['seeds']}" if q else "—"
    prov_title = (f"{q['source']}: {q['n']} samples of {q.get('length')} characters, {q['seeds']} seed"
                  if q else run.get("eval_note") or "")
    row = {
        "run": (run["name"], run["name"], run["path"]),
        "method": (run["method"], run["method"], ""),
        "preset": (run["preset"], run["preset"], ""),
        "parameters": (f"{run['parameters']:,}" if run.get("parameters") else "—", run.get("parameters"), ""),
        "step": (f"{run['step']:,}", run["step"], f"of {run.get('train_steps')} configured"),
        "val": (_val_text(val), val["value"] if val else None, _val_title(val)),
        "val_kind": ("", (val or {}).get("kind"), ""),  # not a column: the exact/bound tag beside val
        "nfe": (_fmt(q.get("nfe"), 1), q.get("nfe"),
                f"sampler {q.get('sampler')}, {q.get('steps')} steps" if q else ""),
        "train_speed": (_fmt(run["train_speed"]["value"], 0), run["train_speed"]["value"], ""),
        "sample_speed": (_fmt(q.get("sample_chars_per_s"), 0), q.get("sample_chars_per_s"),
                         f"batch of {q.get('n')} on {run.get('device_measured', '?')}"),
        "provenance": (prov, q.get("n"), prov_title),
    }
    for key in ("judge_ppl", "word_validity", "distinct_2", "repetition"):
        ref = (q.get("reference") or {}).get(key)
        row[key] = (_fmt(q.get(key)), q.get(key), f"real text: {_fmt(ref)}" if ref is not None else "")
    return row


def image_row(run: dict[str, Any]) -> dict[str, tuple[str, Any, str]]:
    ev = run.get("eval") or {}
    val = run.get("val")
    spi = ev.get("seconds_per_image")
    return {
        "run": (run["name"], run["name"], run["path"]),
        "preset": (run["preset"], run["preset"], ""),
        "parameters": (f"{run['parameters']:,}" if run.get("parameters") else "—", run.get("parameters"), ""),
        "step": (f"{run['step']:,}", run["step"], ""),
        "val": (_val_text(val), val["value"] if val else None, _val_title(val)),
        "val_kind": ("", (val or {}).get("kind"), ""),  # not a column: the exact/bound tag beside val
        "fid": (_fmt(ev.get("fid")), ev.get("fid"), run.get("eval_note") or "eval.json"),
        "class_accuracy": (_fmt(ev.get("class_accuracy")), ev.get("class_accuracy"), ""),
        "eval_sampler": (f"{ev.get('sampler', '—')} {ev.get('steps', '')}".strip() if ev else "—",
                         ev.get("steps"), f"eta {ev.get('eta')}, guidance {ev.get('guidance')}" if ev else ""),
        "train_speed": (_fmt(run["train_speed"]["value"], 0), run["train_speed"]["value"], ""),
        "sample_speed": (_fmt(spi * 1000 if spi else None, 1), spi * 1000 if spi else None, ""),
        "provenance": (f"{ev['samples']} × 1" if ev else "—", ev.get("samples"), ""),
    }


# ---- markdown ---------------------------------------------------------------------------------------------
def _md_table(columns, rows) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _, _ in columns) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = []
        for key, *_ in columns:
            text = row[key][0]
            if key == "val" and row["val_kind"][1]:
                text += f" ({row['val_kind'][1]})"
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    runs = data["runs"]
    text = [r for r in runs if r["kind"] == "text"]
    images = [r for r in runs if r["kind"] == "image"]
    s = data["settings"]
    out = [f"# Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}", "",
           f"Written by `textdiffusion compare` on {data['created']} (textdiffusion "
           f"{data['versions']['textdiffusion']}, torch {data['versions']['torch']}). The page with plots and "
           "animations is `report.html` beside this file.",
           "", "**How to read the numbers.** *exact*: the model's true negative log-likelihood (`ar`). *bound*: an "
           "upper bound on it (the diffusion NELBO), a Monte-Carlo estimate shown ± one standard error; the true "
           "bits/char can only be lower. Judge perplexity, word validity, distinct-2 and repetition are *estimates* "
           "from the stated number of samples and seeds; lower judge perplexity is better, real text scores "
           "shown as `real text` below. Speeds depend on the device.", ""]
    if text:
        out += ["## Text runs", "", *_md_table(TEXT_COLUMNS, [text_row(r) for r in text])]
        refs = {json.dumps((quality_of(r) or {}).get("reference"), sort_keys=True) for r in text}
        ref = (quality_of(text[0]) or {}).get("reference")
        if ref and len(refs) == 1:
            out += ["", f"Real text (validation windows of the same length): judge ppl {_fmt(ref['judge_ppl'])}, "
                        f"word validity {_fmt(ref['word_validity'])}, distinct-2 {_fmt(ref['distinct_2'])}, "
                        f"repetition {_fmt(ref['repetition'])}."]
        out += ["", "### Quality vs sampling steps", "",
                f"{s['samples']} samples × {s['seeds']} seed (seed {s['seed']}) of {_length(data)} per "
                f"point; `ar` has one point (one network evaluation per character).", "",
                "| run | steps | NFE | judge ppl | word validity | distinct-2 | sample chars/s |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in text:
            for p in r.get("sweep", []):
                mark = " (default)" if p.get("default") else ""
                out.append(f"| {r['name']} | {p['steps']}{mark} | {_fmt(p['nfe'], 1)} | {_fmt(p['judge_ppl'])} | "
                           f"{_fmt(p['word_validity'])} | {_fmt(p['distinct_2'])} | "
                           f"{_fmt(p['sample_chars_per_s'], 0)} |")
            for sk in r.get("sweep_skipped", []):
                out.append(f"| {r['name']} | {sk['steps']} | — | skipped: {sk['why']} | | | |")
    if images:
        out += ["", "## Image runs", "", *_md_table(IMAGE_COLUMNS, [image_row(r) for r in images])]
    out += ["", "## Runs", ""]
    for r in runs:
        out += [f"### {r['name']}", "", f"`{r['path']}` — {r['method']}, preset {r['preset']}, step {r['step']:,}"
                + (f", {r['parameters']:,} parameters" if r.get("parameters") else "") + ".", ""]
        if r.get("eval_note"):
            out += [f"Note: {r['eval_note']}.", ""]
        if eval_summary(r):
            out += [f"{eval_summary(r)}.", ""]
        if r["kind"] == "text" and r.get("samples"):
            sm = r["samples"]
            out += [f"Samples ({sm['sampler']}, {sm['steps']} steps, seed {sm['seed']}):", ""]
            for t in sm["texts"]:
                out += ["```text", t, "```", ""]
            tr = r.get("trajectory")
            if tr:
                out += [f"Denoising trajectory: {tr['steps_total']} steps ({tr['frames_kept']} frames kept), "
                        "played in `report.html`.", ""]
        if r["kind"] == "image" and r.get("images"):
            im = r["images"]
            out += [f"![samples of {r['name']}]({im['files']['grid']})", "",
                    f"![denoising strip of {r['name']}]({im['files']['strip']})", "",
                    f"{im['n']} images, {im['sampler']} {im['steps']} steps, seed {im['seed']}.", ""]
    out += ["## Settings", "", f"- sweep step counts: {', '.join(map(str, s['sweep'])) or 'none'} (plus each "
            f"method's default)", f"- samples per point: {s['samples']}, seeds: {s['seeds']} (seed {s['seed']}), "
            f"length {_length(data)}", f"- judge: {data['judge']['kind']}, fitted on the training split of "
            f"{', '.join(data['judge']['corpora']) or '—'}",
            f"- image runs: {s['image_sampler']['sampler']} {s['image_sampler']['steps']} steps for the grids",
            f"- measured in {s['seconds']:.1f} s", ""]
    return "\n".join(out)


# ---- html -------------------------------------------------------------------------------------------------
def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_table(table_id: str, columns, rows, run_ids: list[int], caption: str) -> str:
    head = "".join(
        f'<th scope="col" class="{"text" if i < 3 else ""}" title="{_e(tip)}" data-better="{better or ""}">'
        f"{_e(h)}</th>" for i, (_, h, tip, better) in enumerate(columns))
    body = []
    for row, rid in zip(rows, run_ids, strict=True):
        cells = []
        for i, (key, *_rest) in enumerate(columns):
            text, value, tip = row[key]
            cls = ["text"] if i < 3 else []
            if text == "—":
                cls.append("na")
            sort = value if isinstance(value, (int, float)) and math.isfinite(value) else ""
            if isinstance(value, str):
                sort = value
            shown = _e(text)
            if key == "run":
                shown = f'<a href="#run-{rid}">{shown}</a>'
            if key == "val" and row["val_kind"][1]:
                kind = row["val_kind"][1]
                shown += f'<span class="tag {kind}">{kind}</span>'
            cells.append(f'<td class="{" ".join(cls)}" data-v="{_e(sort)}" title="{_e(tip)}">{shown}</td>')
        body.append(f'<tr data-run="{rid}">{"".join(cells)}</tr>')
    return (f'<div class="table-wrap"><table class="td-table sortable" id="{table_id}"><caption class="muted">'
            f"{_e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _run_card(i: int, r: dict[str, Any], out: Path) -> str:
    head = (f'<section class="run-card" id="run-{i}" data-kind="{r["kind"]}" data-method="{_e(r["method"])}">'
            f'<h3>{_e(r["name"])} '
            f'<span class="tag">{_e(r["method"])}</span><span class="tag">{_e(r["preset"])}</span></h3>'
            f'<p class="muted mono">{_e(r["path"])} · step {r["step"]:,}'
            + (f" · {r['parameters']:,} parameters" if r.get("parameters") else "")
            + (f" · seed {r['seed']}" if r.get("seed") is not None else "") + "</p>")
    body = []
    if r.get("eval_note"):
        body.append(f'<p class="muted">Note: {_e(r["eval_note"])}.</p>')
    if eval_summary(r):
        body.append(f'<p class="muted">{_e(eval_summary(r))}.</p>')
    if r["kind"] == "text":
        sm = r.get("samples") or {}
        body.append(f'<div class="samples"><h4>Samples <span class="muted">({_e(sm.get("sampler"))}, '
                    f'{_e(sm.get("steps"))} steps, seed {_e(sm.get("seed"))})</span></h4>'
                    + "".join(f"<pre>{_e(t)}</pre>" for t in sm.get("texts", [])) + "</div>")
        tr = r.get("trajectory")
        if tr:
            grow = "left-to-right growth, one character per network evaluation" if r["method"] == "ar" else (
                "masked positions (grey) fill in" if tr["frames"][0]["masked"] else
                "the decoded text at every step: everything is rewritten, highlighted characters changed")
            body.append(f'<h4>Denoising <span class="muted">({_e(tr["sampler"])}, {tr["steps_total"]} steps, '
                        f'{tr["frames_kept"]} frames shown; {grow})</span></h4>'
                        f'<div class="td-player-slot" data-run="{i}"></div>')
    elif r.get("images"):
        im = r["images"]
        pics = []
        for key, caption in (("grid", "samples" + (", a row per digit" if im.get("conditional") else "")),
                             ("strip", "denoising: x_t from noise (left) to the sample (right)"),
                             ("gif", "the reverse process, animated")):
            if key in im["files"]:
                src = _data_uri(out / im["files"][key])
                pics.append(f'<figure><img alt="{_e(caption)}" data-asset="{key}" src="{src}">'
                            f"<figcaption>{_e(caption)}</figcaption></figure>")
        body.append(f'<div class="images"><p class="muted">{im["n"]} images, {_e(im["sampler"])} {im["steps"]} '
                    f'steps, seed {im["seed"]}, {im["seconds_per_image"] * 1000:.0f} ms per image.</p>'
                    + '<div class="pics">' + "".join(pics) + "</div></div>")
    return head + "".join(body) + "</section>"


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no '</' that could close the tag, no HTML comment openers."""
    return json.dumps(obj, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def _page_data(data: dict[str, Any]) -> dict[str, Any]:
    """What the scripts need: curves, sweeps and trajectories (not the pictures, which are inline already)."""
    runs = []
    for i, r in enumerate(data["runs"]):
        runs.append({"id": i, "name": r["name"], "kind": r["kind"], "method": r["method"],
                     "val_kind": (r.get("val") or {}).get("kind"), "curves": r["curves"],
                     "curve_val_key": r["curve_val_key"], "sweep": r.get("sweep", []),
                     "reference": r.get("reference"), "trajectory": r.get("trajectory")})
    return {"runs": runs, "settings": data["settings"]}


def render_html(data: dict[str, Any], out: Path) -> str:
    runs = data["runs"]
    s = data["settings"]
    text_ids = [i for i, r in enumerate(runs) if r["kind"] == "text"]
    image_ids = [i for i, r in enumerate(runs) if r["kind"] == "image"]
    v = data["versions"]
    sections = []
    legend = (
        '<div class="note" id="how-to-read"><b>How to read the numbers.</b> '
        '<span class="tag exact">exact</span> the model\'s true negative log-likelihood (<code>ar</code>). '
        '<span class="tag bound">bound</span> an upper bound on it (the diffusion NELBO), a Monte-Carlo '
        "estimate shown ± one standard error: the true bits/char can only be lower. Judge perplexity, word "
        "validity, distinct-2 and repetition are <i>estimates</i> from the samples × seeds in the last column "
        f"(the sweep uses {s['samples']} samples × {s['seeds']} seed of {_length(data)} per point). "
        "Hover a header or a cell for what it is and where it comes from; click a header to sort.</div>")
    if text_ids:
        q0 = quality_of(runs[text_ids[0]]) or {}
        ref = q0.get("reference") or {}
        cap = ("Text runs. Real validation text of the same length scores judge ppl "
               f"{_fmt(ref.get('judge_ppl'))}, word validity {_fmt(ref.get('word_validity'))}, distinct-2 "
               f"{_fmt(ref.get('distinct_2'))}." if ref else "Text runs.")
        sections.append("<h3>Text</h3>" + _html_table("text-table", TEXT_COLUMNS,
                                                      [text_row(runs[i]) for i in text_ids], text_ids, cap))
    if image_ids:
        sections.append("<h3>Images</h3>" + _html_table(
            "image-table", IMAGE_COLUMNS, [image_row(runs[i]) for i in image_ids], image_ids,
            "Image runs. FID and class accuracy come from eval.json (`textdiffusion mnist eval`); FID is computed "
            "in the project's classifier features, comparable only within this project."))
    curves = ('<h2 id="curves">Training curves</h2><p class="muted">Validation numbers are bits per character '
              "(exact for ar, upper bounds for diffusion) on shared axes; training losses are each method's own "
              "objective, so their levels compare only within a method. Click a legend entry to hide a run.</p>"
              '<div class="plots"><figure id="plot-val-step"></figure><figure id="plot-val-time"></figure>'
              '<figure id="plot-loss-step"></figure><figure id="plot-loss-time"></figure>'
              + ('<figure id="plot-bpd-step"></figure>' if image_ids else "") + "</div>")
    speed = ""
    if text_ids:
        speed = ('<h2 id="quality-speed">Quality vs speed</h2><p class="muted">Judge perplexity (lower is better) '
                 f"of {s['samples']} samples × {s['seeds']} seed at each sampler step count "
                 f"({', '.join(map(str, s['sweep'])) or 'defaults only'}, plus each method's default); "
                 "ar samples one character per network evaluation, so it is one point. The dashed line is real "
                 'text.</p><div class="plots"><figure id="plot-quality-steps"></figure>'
                 '<figure id="plot-quality-speed"></figure></div>')
    cards = "".join(_run_card(i, r, out) for i, r in enumerate(runs))
    body = (
        f"<header><h1>Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>"
        f'<p class="lede">Written by <code>textdiffusion compare</code> on {_e(data["created"])} · textdiffusion '
        f"{_e(v['textdiffusion'])} · torch {_e(v['torch'])} · measured in {s['seconds']:.0f} s</p>"
        '<nav class="muted"><a href="#results">results</a> · <a href="#curves">training curves</a>'
        + (' · <a href="#quality-speed">quality vs speed</a>' if text_ids else "")
        + ' · <a href="#runs">runs and denoising</a> · <a href="#settings">settings</a></nav></header>'
        + legend + '<h2 id="results">Results</h2>' + "".join(sections) + curves + speed
        + '<h2 id="runs">Runs and denoising</h2>' + cards
        + '<h2 id="settings">Settings</h2><ul class="muted">'
        + f"<li>judge: {_e(data['judge']['kind'])}, fitted on the training split of "
          f"{_e(', '.join(data['judge']['corpora']) or '—')}</li>"
        + f"<li>samples per sweep point: {s['samples']}, seeds: {s['seeds']} (seed {s['seed']}), length "
          f"{_length(data)}; device {_e(s['device'])}</li>"
        + f"<li>image grids: {_e(s['image_sampler']['sampler'])} {s['image_sampler']['steps']} steps</li>"
        + f"<li>versions: {_e(', '.join(f'{k} {val}' for k, val in v.items()))}</li></ul>"
    )
    scripts = "".join(f"<script>\n{web_asset(name)}\n</script>" for name in WEB_ASSETS)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>TextDiffusion comparison — {len(runs)} runs</title><style>\n{web_asset('td.css')}\n</style></head>"
            f"<body>{body}<script type=\"application/json\" id=\"td-data\">{_script_json(_page_data(data))}</script>"
            f"{scripts}</body></html>\n")
