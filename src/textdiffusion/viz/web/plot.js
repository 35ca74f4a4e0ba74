/* Small dependency-free SVG line/scatter plots for the report (no CDN: the page must open offline).
 *
 *   TD.plot(figureElement, {
 *     title, xLabel, yLabel, logX, logY,
 *     series: [{name, color, points: [[x, y, note?, label?], ...], markers: true, line: true}],
 *     refs: [{y, label}],            // dashed horizontal reference lines (e.g. real text)
 *   })
 * A point's label (e.g. its guidance scale) is written beside it. Hovering shows the nearest point; clicking a
 * legend entry hides or shows its series.
 */
(function () {
  "use strict";
  const TD = (window.TD = window.TD || {});
  const W = 560, H = 330, M = {l: 62, r: 14, t: 30, b: 44};
  TD.PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#e67700", "#5c940d",
                "#364fc7", "#a61e4d", "#495057", "#087f5b"];

  function niceStep(span, n) {
    const raw = span / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  }

  function ticks(lo, hi, log) {
    if (log) {
      const out = [];
      for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
        for (const m of [1, 2, 5]) {
          const v = m * Math.pow(10, e);
          if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
        }
      }
      if (out.length >= 3) return out;
      return ticks(lo, hi, false).filter((v) => v > 0);  // a narrow range: evenly spaced ticks read better
    }
    const step = niceStep(hi - lo, 5);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4) return v.toExponential(0).replace("e+", "e");
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return +v.toFixed(2) + "";
    return +v.toPrecision(2) + "";
  }
  TD.fmt = fmt;

  function extent(values, log, pad) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (log) {
      lo = Math.max(lo, 1e-12);
      if (lo === hi) { lo /= 2; hi *= 2; }
      return [lo / Math.pow(hi / lo, pad), hi * Math.pow(hi / lo, pad)];
    }
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
    const p = (hi - lo) * pad;
    return [lo - p, hi + p];
  }

  TD.plot = function (fig, spec) {
    const S = TD.svg;
    fig.classList.add("td-plot");
    fig.innerHTML = "";
    const series = spec.series.filter((s) => s.points.some((p) => isFinite(p[0]) && isFinite(p[1])));
    const ok = (p) => isFinite(p[0]) && isFinite(p[1]) && (!spec.logX || p[0] > 0) && (!spec.logY || p[1] > 0);
    const xs = [], ys = [];
    for (const s of series) for (const p of s.points) if (ok(p)) { xs.push(p[0]); ys.push(p[1]); }
    for (const r of spec.refs || []) if (isFinite(r.y)) ys.push(r.y);
    const svg = S("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title || ""});
    fig.appendChild(svg);
    if (spec.title) svg.appendChild(S("text", {x: M.l, y: 18, class: "label", "font-weight": 600}, spec.title));
    if (!xs.length) {
      svg.appendChild(S("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "label"}, "no data"));
      fig.dataset.points = 0;
      return;
    }
    const [x0, x1] = extent(xs, spec.logX, 0.03);
    const [y0, y1] = extent(ys, spec.logY, 0.06);
    const tx = (v) => spec.logX ? Math.log(v / x0) / Math.log(x1 / x0) : (v - x0) / (x1 - x0);
    const ty = (v) => spec.logY ? Math.log(v / y0) / Math.log(y1 / y0) : (v - y0) / (y1 - y0);
    const X = (v) => M.l + tx(v) * (W - M.l - M.r);
    const Y = (v) => H - M.b - ty(v) * (H - M.t - M.b);

    const grid = S("g", {class: "grid"}), axis = S("g", {class: "axis"});
    for (const v of ticks(x0, x1, spec.logX)) {
      grid.appendChild(S("line", {x1: X(v), x2: X(v), y1: M.t, y2: H - M.b}));
      axis.appendChild(S("text", {x: X(v), y: H - M.b + 15, "text-anchor": "middle"}, fmt(v)));
    }
    for (const v of ticks(y0, y1, spec.logY)) {
      grid.appendChild(S("line", {x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v)}));
      axis.appendChild(S("text", {x: M.l - 6, y: Y(v) + 4, "text-anchor": "end"}, fmt(v)));
    }
    axis.appendChild(S("path", {d: `M${M.l},${M.t}V${H - M.b}H${W - M.r}`, fill: "none"}));
    svg.append(grid, axis);
    svg.appendChild(S("text", {x: (M.l + W - M.r) / 2, y: H - 8, "text-anchor": "middle", class: "label"},
                      spec.xLabel + (spec.logX ? " (log)" : "")));
    svg.appendChild(S("text", {x: 14, y: (M.t + H - M.b) / 2, "text-anchor": "middle", class: "label",
                               transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})`},
                      spec.yLabel + (spec.logY ? " (log)" : "")));
    for (const r of spec.refs || []) {
      if (!isFinite(r.y) || r.y < y0 || r.y > y1) continue;
      const g = S("g", {class: "ref"});
      g.appendChild(S("line", {x1: M.l, x2: W - M.r, y1: Y(r.y), y2: Y(r.y)}));
      g.appendChild(S("text", {x: W - M.r - 4, y: Y(r.y) - 4, "text-anchor": "end"}, r.label));
      svg.appendChild(g);
    }

    const hits = [];
    const legend = TD.el("div", "td-legend");
    let npoints = 0;
    series.forEach((s, i) => {
      const color = s.color || TD.PALETTE[i % TD.PALETTE.length];
      const g = S("g", {class: "series", "data-name": s.name});
      const pts = s.points.filter(ok);
      npoints += pts.length;
      if (s.line !== false && pts.length > 1) {
        g.appendChild(S("path", {d: pts.map((p, k) => `${k ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(""),
                                 stroke: color, "stroke-dasharray": s.dash || ""}));
      }
      if (s.markers || pts.length === 1) {
        for (const p of pts) g.appendChild(S("circle", {cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: color}));
      }
      for (const p of pts) {
        if (p[3] !== undefined) {
          g.appendChild(S("text", {x: X(p[0]) + 5, y: Y(p[1]) - 5, class: "point-label", fill: color}, p[3]));
        }
        hits.push({x: X(p[0]), y: Y(p[1]), p, s, g});
      }
      svg.appendChild(g);
      const item = TD.el("button", "td-legend-item");
      item.type = "button";
      item.title = "show or hide this run";
      const swatch = TD.el("span", "td-swatch");
      swatch.style.background = color;
      item.append(swatch, document.createTextNode(s.name));
      item.addEventListener("click", () => {
        const off = g.style.display !== "none";
        g.style.display = off ? "none" : "";
        item.classList.toggle("off", off);
      });
      legend.appendChild(item);
    });
    fig.appendChild(legend);
    fig.dataset.points = npoints;
    fig.dataset.series = series.length;

    let tip = document.querySelector(".td-tip");
    if (!tip) { tip = TD.el("div", "td-tip"); document.body.appendChild(tip); }
    svg.addEventListener("mousemove", (ev) => {
      const box = svg.getBoundingClientRect();
      const mx = ((ev.clientX - box.left) / box.width) * W, my = ((ev.clientY - box.top) / box.height) * H;
      let best = null, bd = 400;
      for (const h of hits) {
        if (h.g.style.display === "none") continue;
        const d = (h.x - mx) ** 2 + (h.y - my) ** 2;
        if (d < bd) { bd = d; best = h; }
      }
      if (!best) { tip.style.display = "none"; return; }
      tip.textContent = `${best.s.name}\n${spec.xLabel}: ${fmt(best.p[0])}\n${spec.yLabel}: ${fmt(best.p[1])}` +
                        (best.p[2] ? `\n${best.p[2]}` : "");
      tip.style.display = "block";
      tip.style.left = ev.clientX + 12 + "px";
      tip.style.top = ev.clientY + 12 + "px";
    });
    svg.addEventListener("mouseleave", () => (tip.style.display = "none"));
  };
})();
