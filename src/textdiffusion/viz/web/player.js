/* TextDiffusion trajectory player: shared by the static report and the live page.
 *
 * A trajectory is a list of frames {step, t?, nfe?, text, masked: [positions], changed: count}.
 * Each frame's text is drawn with still-masked positions greyed, positions the user fixed (prompt or
 * infill) underlined, and positions that differ from the previous frame highlighted, so characters are
 * seen appearing (masked, AR) or sharpening (continuous methods, which rewrite everything every step).
 *
 *   const p = new TD.Player(element, {frames, fixed: [...], maskChar: "_", live: false});
 *   p.play(); p.show(i); p.push(frame)  // push: live streaming, the view follows the newest frame
 *
 * A live player (live: true) starts streaming: its button reads "stop" and calls opts.onStop (the page
 * cancels the sampling) until finish() is called, when it becomes the play button for the frames received.
 */
(function () {
  "use strict";
  const TD = (window.TD = window.TD || {});

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  TD.el = el;

  const SPEEDS = [["0.25x", 400], ["0.5x", 200], ["1x", 100], ["2x", 50], ["4x", 25], ["8x", 12]];

  class Player {
    constructor(root, opts) {
      this.root = root;
      this.frames = [];
      this.fixed = new Set(opts.fixed || []);
      this.maskChar = opts.maskChar || "_";
      this.live = !!opts.live;
      this.streaming = this.live;
      this.onStop = opts.onStop || null;
      this.index = -1;
      this.timer = null;
      this.delay = opts.delay || 100;
      root.classList.add("td-player");
      root.innerHTML = "";
      const bar = el("div", "td-controls");
      this.button = el("button", "td-play", this.streaming ? "■ stop" : "▶ play");
      this.button.type = "button";
      this.button.title = this.streaming ? "frames are streaming in: stop the sampling" : "";
      this.button.addEventListener("click", () => {
        if (this.streaming) { if (this.onStop) this.onStop(); } else if (this.timer) this.pause(); else this.play();
      });
      this.slider = el("input", "td-slider");
      this.slider.type = "range";
      this.slider.min = 0;
      this.slider.value = 0;
      this.slider.setAttribute("aria-label", "denoising step");
      this.slider.addEventListener("input", () => { this.pause(); this.show(+this.slider.value); });
      this.speed = el("select", "td-speed");
      this.speed.setAttribute("aria-label", "playback speed");
      for (const [label, ms] of SPEEDS) {
        const o = el("option", "", label);
        o.value = ms;
        if (ms === 100) o.selected = true;
        this.speed.appendChild(o);
      }
      this.speed.addEventListener("change", () => {
        this.delay = +this.speed.value;
        if (this.timer) { this.pause(); this.play(); }
      });
      this.status = el("span", "td-status");
      bar.append(this.button, this.slider, this.speed, this.status);
      this.text = el("pre", "td-text");
      this.spark = el("div", "td-spark");
      this.spark.title = "positions changed at each step";
      root.append(bar, this.text, this.spark);
      for (const f of opts.frames || []) this.frames.push(f);
      this.slider.max = Math.max(0, this.frames.length - 1);
      if (this.frames.length) this.show(this.live ? this.frames.length - 1 : 0);
      this.drawSpark();
    }

    push(frame) {
      this.frames.push(frame);
      this.slider.max = this.frames.length - 1;
      if (!this.timer) this.show(this.frames.length - 1);
      this.drawSpark();
    }

    /* The stream ended (done, stopped or failed): the button now plays back what arrived. */
    finish() {
      if (!this.streaming) return;
      this.streaming = false;
      this.button.textContent = "▶ play";
      this.button.title = "";
    }

    play() {
      if (this.streaming || this.frames.length < 2) return;
      if (this.index >= this.frames.length - 1) this.show(0);
      this.button.textContent = "❚❚ pause";
      this.root.classList.add("td-playing");
      this.timer = setInterval(() => {
        if (this.index >= this.frames.length - 1) return this.pause();
        this.show(this.index + 1);
      }, this.delay);
    }

    pause() {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      if (!this.streaming) this.button.textContent = "▶ play";
      this.root.classList.remove("td-playing");
    }

    show(i) {
      if (!this.frames.length) return;
      i = Math.max(0, Math.min(i, this.frames.length - 1));
      const f = this.frames[i];
      const prev = i > 0 ? this.frames[i - 1] : null;
      this.index = i;
      this.slider.value = i;
      this.root.dataset.frame = i;
      this.root.dataset.frames = this.frames.length;
      const masked = new Set(f.masked || []);
      const diff = prev && prev.text.length === f.text.length;
      const frag = document.createDocumentFragment();
      let run = "", cls = null;
      const flush = () => {
        if (!run) return;
        frag.appendChild(cls ? el("span", cls, run) : document.createTextNode(run));
        run = "";
      };
      const chars = Array.from(f.text);
      chars.forEach((ch, k) => {
        let c = null;
        if (masked.has(k)) c = "m";
        else if (this.fixed.has(k)) c = "f";
        else if (diff && prev.text[k] !== ch) c = "c";
        if (c !== cls) { flush(); cls = c; }
        run += ch;
      });
      flush();
      this.text.replaceChildren(frag);
      const parts = [`step ${f.step} / ${this.frames[this.frames.length - 1].step}`];
      if (f.t !== undefined && f.t !== null) parts.push(`t = ${(+f.t).toFixed(3)}`);
      if (f.nfe !== undefined) parts.push(`${(+f.nfe).toFixed(0)} network evals`);
      parts.push(`${f.changed || 0} position${f.changed === 1 ? "" : "s"} changed`);
      if (masked.size) parts.push(`${masked.size} still masked`);
      this.status.textContent = parts.join(" · ");
      this.markSpark();
    }

    drawSpark() {
      const n = this.frames.length;
      const w = 600, h = 36;
      const max = Math.max(1, ...this.frames.map((f) => f.changed || 0));
      const svg = TD.svg("svg", {viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", class: "td-spark-svg"});
      const pts = this.frames.map((f, i) => `${(n > 1 ? i / (n - 1) : 0) * w},${h - ((f.changed || 0) / max) * (h - 2)}`);
      if (n > 1) svg.appendChild(TD.svg("polyline", {points: pts.join(" "), class: "td-spark-line"}));
      this.cursor = TD.svg("line", {y1: 0, y2: h, class: "td-spark-cursor"});
      svg.appendChild(this.cursor);
      this.spark.replaceChildren(svg);
      this.markSpark();
    }

    markSpark() {
      if (!this.cursor) return;
      const n = this.frames.length;
      const x = n > 1 ? (this.index / (n - 1)) * 600 : 0;
      this.cursor.setAttribute("x1", x);
      this.cursor.setAttribute("x2", x);
    }
  }

  TD.svg = function (tag, attrs, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  TD.Player = Player;
})();
