/* The comparison report: sortable tables, plots from the embedded JSON, one trajectory player per run. */
(function () {
  "use strict";
  const TD = window.TD;
  const data = JSON.parse(document.getElementById("td-data").textContent);
  const runs = data.runs;
  const color = (r) => TD.PALETTE[r.id % TD.PALETTE.length];

  /* ---- sortable tables: click a header; numbers sort numerically, blanks last ---- */
  for (const table of document.querySelectorAll("table.sortable")) {
    const headers = Array.from(table.tHead.rows[0].cells);
    headers.forEach((th, col) => {
      th.tabIndex = 0;
      const sort = () => {
        const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        headers.forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const key = (tr) => tr.cells[col].dataset.v;
        rows.sort((a, b) => {
          const x = key(a), y = key(b);
          if (x === "" || y === "") return x === y ? 0 : x === "" ? 1 : -1;
          const nx = Number(x), ny = Number(y);
          const cmp = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
          return dir * cmp;
        });
        body.append(...rows);
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    });
  }

  /* ---- training curves ---- */
  const text = runs.filter((r) => r.kind === "text");
  const images = runs.filter((r) => r.kind === "image");
  const curve = (rs, x, y) => rs.map((r) => ({
    name: r.name + (y === r.curve_val_key && r.val_kind ? ` (${r.val_kind})` : ""), color: color(r),
    markers: r.curves.filter((c) => c[y] != null).length < 3,
    points: r.curves.filter((c) => c[x] != null && c[y] != null).map((c) => [c[x], c[y], `step ${c.step}`]),
  }));
  const fig = (id) => document.getElementById(id);
  if (fig("plot-val-step")) {
    TD.plot(fig("plot-val-step"), {title: "validation bits/char vs step", xLabel: "step", yLabel: "bits/char",
                                   logY: true, series: curve(text, "step", "val_bpc")});
    TD.plot(fig("plot-val-time"), {title: "validation bits/char vs wall-clock time", xLabel: "seconds of training",
                                   yLabel: "bits/char", logY: true, series: curve(text, "elapsed", "val_bpc")});
    TD.plot(fig("plot-loss-step"), {title: "training loss vs step (each method's own objective)", xLabel: "step",
                                    yLabel: "loss", logY: true, series: curve(text, "step", "train_loss")});
    TD.plot(fig("plot-loss-time"), {title: "training loss vs wall-clock time", xLabel: "seconds of training",
                                    yLabel: "loss", logY: true, series: curve(text, "elapsed", "train_loss")});
  }
  if (fig("plot-bpd-step")) {
    TD.plot(fig("plot-bpd-step"), {title: "image runs: validation bits/dim (bound) vs step", xLabel: "step",
                                   yLabel: "bits/dim", series: curve(images, "step", "val_bpd")});
  }

  /* ---- quality vs speed ---- */
  if (fig("plot-quality-steps")) {
    const ref = text.map((r) => r.reference).find((x) => x);
    const refs = ref ? [{y: ref.judge_ppl, label: `real text ${TD.fmt(ref.judge_ppl)}`}] : [];
    const pts = (r, x) => r.sweep.map((p) => [p[x], p.judge_ppl,
      `${p.steps} steps${p.default ? " (default)" : ""}, ${p.n} samples × ${p.seeds} seed`]);
    const series = (x) => text.filter((r) => r.sweep.length).map((r) => ({
      name: r.name, color: color(r), markers: true, points: pts(r, x).sort((a, b) => a[0] - b[0])}));
    TD.plot(fig("plot-quality-steps"), {title: "judge perplexity vs sampling steps", xLabel: "network evaluations per sample",
                                        yLabel: "judge perplexity", logX: true, logY: true, refs, series: series("nfe")});
    TD.plot(fig("plot-quality-speed"), {title: "judge perplexity vs sampling speed", xLabel: "sample chars/s",
                                        yLabel: "judge perplexity", logX: true, logY: true, refs,
                                        series: series("sample_chars_per_s")});
  }

  /* ---- guidance: accuracy vs fluency over w, a polyline per run and rule in the order of w ---- */
  const axes = {text: {x: "judge_ppl", xLabel: "judge perplexity", yLabel: "speaker accuracy", logX: true},
                image: {x: "fid", xLabel: "FID", yLabel: "class accuracy", logX: false}};
  for (const [kind, a] of Object.entries(axes)) {
    if (!fig(`plot-guidance-${kind}`)) continue;
    const series = [], refs = [];
    for (const r of runs.filter((x) => x.kind === kind)) {
      for (const c of r.guidance || []) {
        const rules = r.guidance.length > 1 ? ` (${c.rule})` : "";
        series.push({name: r.name + rules, color: color(r), markers: true, dash: c.rule === "free" ? "" : "5 3",
                     points: c.points.map((p) => [p[a.x], p.accuracy, `w = ${p.w}, ${p.samples} samples`,
                                                  `w=${p.w}`])});
        const y = c.reference_accuracy;
        if (y !== null && isFinite(y) && !refs.some((ref) => ref.y === y)) {
          refs.push({y, label: `${kind === "text" ? "real speech" : "real images"} ${TD.fmt(y)}`});
        }
      }
    }
    TD.plot(fig(`plot-guidance-${kind}`), {title: `${kind}: accuracy vs fluency over the guidance scale w`,
                                           xLabel: a.xLabel, yLabel: a.yLabel, logX: a.logX, refs, series});
  }

  /* ---- frontier: judge perplexity against character entropy over temperature, real text as a point ---- */
  if (fig("plot-frontier")) {
    const series = text.filter((r) => r.frontier.length).map((r) => ({
      name: r.name, color: color(r), markers: true,
      points: r.frontier.map((p) => [p.quality.char_entropy, p.quality.judge_ppl,
                                     `T = ${p.temperature}, ${p.n} samples` +
                                     (p.distance ? `, n-gram JS ${TD.fmt(p.distance.js_bits)} (real ${TD.fmt(p.distance.floor_bits)})` : ""),
                                     `T=${p.temperature}`])}));
    const seen = new Set();
    for (const r of text.filter((x) => x.frontier.length && x.reference)) {
      const key = `${r.reference.char_entropy},${r.reference.judge_ppl}`;
      if (seen.has(key)) continue;
      seen.add(key);
      series.push({name: "real text", color: "#888", markers: true,
                   points: [[r.reference.char_entropy, r.reference.judge_ppl, `held-out windows of ${r.reference.chars} characters`, "real"]]});
    }
    TD.plot(fig("plot-frontier"), {title: "judge perplexity vs character entropy over temperature",
                                   xLabel: "character entropy (bits)", yLabel: "judge perplexity", logY: true, series});
  }

  /* ---- denoising players: start playing when scrolled into view, once ---- */
  const players = [];
  for (const slot of document.querySelectorAll(".td-player-slot")) {
    const r = runs[+slot.dataset.run];
    if (!r || !r.trajectory) continue;
    const p = new TD.Player(slot, {frames: r.trajectory.frames, maskChar: r.trajectory.mask_char});
    const n = r.trajectory.frames.length;
    p.delay = Math.max(12, Math.min(120, Math.round(6000 / Math.max(1, n))));  // about 6 s per trajectory
    players.push(p);
    if ("IntersectionObserver" in window) {
      const io = new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) { io.disconnect(); p.play(); }
      });
      io.observe(slot);
    } else {
      p.play();
    }
  }
  TD.players = players;
  document.body.dataset.ready = "1";
})();
