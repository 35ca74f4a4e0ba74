/* TextDiffusion live page: the form, the request and the stream (served by `textdiffusion serve`).
 *
 * The request is a POST to /api/sample read with fetch rather than an EventSource: fetch can read the JSON
 * of a refused request (HTTP 400/503 {"error": ...}) and can be aborted by the Stop button, which also
 * stops the sampling on the server. The body is server-sent events: start, frame..., done | error.
 * Every user-supplied text goes into the page with textContent only.
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const form = $("form"), runSel = $("run"), runInfo = $("run-info"), text = $("text"), textLabel = $("text-label");
  const samplerSel = $("sampler"), steps = $("steps"), length = $("length"), temperature = $("temperature");
  const seed = $("seed"), pace = $("pace"), sampleBtn = $("sample"), stopBtn = $("stop");
  const status = $("status"), message = $("message"), playerRoot = $("player"), result = $("result"), stats = $("stats");
  const modePrompt = $("mode-prompt"), modeInfill = $("mode-infill");
  const speaker = $("speaker"), speakerRow = $("speaker-row"), speakerLabel = $("speaker-label");
  const guidance = $("guidance"), guidanceValue = $("guidance-value");

  // each mode's example text: the field holds it (not just as a placeholder), so Sample works at once
  const EXAMPLES = {prompt: "ROMEO:", infill: "ROMEO:\nO ____ art thou"};
  let runs = [];
  let controller = null;
  let player = null;

  function setState(state, line) {
    document.body.dataset.state = state;
    if (line !== undefined) status.textContent = line;
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function current() {
    return runs.find((r) => r.name === runSel.value) || runs[0];
  }

  function mode() {
    return modeInfill.checked ? "infill" : "prompt";
  }

  function compact(n) {
    return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
  }

  function describe(run) {
    const parts = [run.method, `step ${run.step}`, `${compact(run.parameters)} params`, `${run.preset} preset`,
                   `${run.tokenizer} tokenizer`, `context ${run.context}`];
    if (run.val_bpc !== null && run.val_bpc !== undefined) {
      parts.push(`val ${(+run.val_bpc).toFixed(3)} bits/char${run.val_kind ? ` (${run.val_kind})` : ""}`);
    }
    if (run.exact_bpc !== null && run.exact_bpc !== undefined) {
      parts.push(`exact ${(+run.exact_bpc).toFixed(3)} bits/char (of the ${run.exact_sampler} sampler)`);
    }
    return parts.join(" · ");
  }

  function onRunChange() {
    const run = current();
    if (!run) return;
    runInfo.textContent = describe(run);
    samplerSel.replaceChildren(...run.samplers.map((s) => {
      const o = TD.el("option", "", s);
      o.value = s;
      o.selected = s === run.sampler;
      return o;
    }));
    steps.max = run.max_steps;
    steps.value = run.steps_fixed ? "" : run.steps;
    onSamplerChange();
    length.max = run.max_length;
    length.value = run.length;
    temperature.value = run.temperature;
    // a run trained on speaker labels: whose voice, and how hard to steer toward it
    const labels = run.labels || [];
    speakerRow.hidden = speakerLabel.hidden = labels.length === 0;
    // classifier-free guidance (a run trained on the labels) or a noisy classifier beside a plain run
    speakerLabel.textContent = run.guidance_rule === "classifier" ? "Speaker (classifier guidance)" : "Speaker";
    speaker.replaceChildren(TD.el("option", "", "anyone (unconditional)"), ...labels.map((name) => {
      const o = TD.el("option", "", name);
      o.value = name;
      return o;
    }));
    speaker.firstChild.value = "";
    guidance.max = run.max_guidance || 20;
    onSpeakerChange();
    modeInfill.disabled = !run.infill;
    if (!run.infill) modePrompt.checked = true;
    onModeChange();
  }

  // steps apply to a sampler that takes a number of them; one that writes a token per step takes none
  function onSamplerChange() {
    const run = current();
    if (!run) return;
    const perToken = !run.steps_fixed && (run.one_per_token || []).includes(samplerSel.value);
    const was = steps.disabled;
    steps.disabled = run.steps_fixed || perToken;
    if (steps.disabled) steps.value = "";
    else if (was) steps.value = run.steps;  // back from a sampler that took none: the run's default
    steps.title = run.steps_fixed ? "an ar model writes one character per step"
      : perToken ? `the ${samplerSel.value} sampler writes one character per step` : `1 to ${run.max_steps}`;
  }

  function onSpeakerChange() {
    guidance.disabled = speaker.value === "";
    guidanceValue.textContent = guidance.value;
  }

  function onModeChange() {
    const infill = mode() === "infill";
    textLabel.textContent = infill ? "Text with blanks" : "Prompt";
    // the other mode's example (or nothing) gives way to this mode's; a text the user wrote stays
    if (text.value === "" || Object.values(EXAMPLES).includes(text.value)) text.value = EXAMPLES[mode()];
    text.placeholder = EXAMPLES[mode()];
    length.disabled = infill; // an infill's length is its text's
    if (infill) length.value = "";
    else if (length.value === "") length.value = current().length;
    length.placeholder = infill ? "= text" : "";
    precheck();
  }

  /* Instant feedback while typing; the server checks again and is the authority. */
  function precheck() {
    const run = current();
    if (!run) return;
    const value = text.value;
    let problem = "";
    if (value.length > run.max_chars) {
      problem = `the text has ${value.length} characters but run ${run.name} takes at most ${run.max_chars}; shorten it`;
    } else if (run.alphabet !== null && run.alphabet !== undefined) {
      const known = new Set(Array.from(run.alphabet));
      const blank = mode() === "infill" ? run.placeholder : null;
      const unknown = [...new Set(Array.from(value).filter((c) => c !== blank && !known.has(c)))];
      if (unknown.length) {
        const shown = unknown.slice(0, 5).map((c) => JSON.stringify(c)).join(", ");
        problem = `run ${run.name} never saw ${unknown.length === 1 ? "the character" : "the characters"} ${shown} ` +
                  `in training; remove or replace ${unknown.length === 1 ? "it" : "them"}`;
      }
    }
    showMessage(problem);
  }

  function params() {
    const run = current();
    const p = {run: run.name, sampler: samplerSel.value, temperature: temperature.value, pace: pace.value};
    p[mode()] = text.value;
    if (!steps.disabled && steps.value !== "") p.steps = steps.value;
    if (!length.disabled && length.value !== "") p.length = length.value;
    if (seed.value !== "") p.seed = seed.value;
    if (!speakerRow.hidden && speaker.value !== "") {
      p.label = speaker.value;
      p.guidance = guidance.value;
    }
    // number inputs give "" for text they cannot parse: send what was typed so the server can name it
    for (const [name, input] of [["steps", steps], ["length", length], ["seed", seed], ["temperature", temperature],
                                 ["pace", pace]]) {
      if (!input.disabled && input.value === "" && input.validity && input.validity.badInput) p[name] = "not a number";
    }
    return p;
  }

  function busy(on) {
    sampleBtn.disabled = on;
    stopBtn.disabled = !on;
    runSel.disabled = on;
  }

  function handle(event, data, expected) {
    if (event === "start") {
      // while frames stream the player's button stops the sampling, like Stop; then it replays the frames
      player = new TD.Player(playerRoot, {frames: [], fixed: data.fixed, maskChar: data.mask_char, live: true,
                                          onStop: () => controller && controller.abort()});
      expected.steps = data.steps;
      setState("running", `sampling with ${data.sampler}, ${data.steps} steps, seed ${data.seed}…`);
    } else if (event === "frame") {
      player.push(data);
      setState("running", `step ${data.step} / ${expected.steps}`);
    } else if (event === "done") {
      result.textContent = data.text;
      stats.textContent = `${(+data.seconds).toFixed(2)} s · ${(+data.nfe).toFixed(0)} network evaluations · ` +
                          `${data.steps} steps · sampler ${data.sampler} · seed ${data.seed}`;
      setState("done", "done");
      return true;
    } else if (event === "error") {
      showMessage(data.error);
      setState("error", "failed");
      return true;
    }
    return false;
  }

  /* Parse server-sent events from the response body: blocks separated by a blank line. */
  async function readEvents(response, expected) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return false;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length && handle(event, JSON.parse(data.join("\n")), expected)) return true;
      }
    }
  }

  async function sample(ev) {
    ev.preventDefault();
    if (!current() || controller) return;
    showMessage("");
    result.textContent = "";
    stats.textContent = "";
    player = null;
    playerRoot.replaceChildren(); // no frames of the previous sampling may pass for this one's
    playerRoot.className = "";
    delete playerRoot.dataset.frames;
    delete playerRoot.dataset.frame;
    controller = new AbortController();
    busy(true);
    setState("running", "starting…");
    try {
      const response = await fetch("/api/sample", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(params()),
        signal: controller.signal,
      });
      if (!response.ok) {
        let error = `the server answered ${response.status} ${response.statusText}`;
        try { error = (await response.json()).error || error; } catch (e) { /* not JSON */ }
        showMessage(error);
        setState("error", "refused");
        return;
      }
      if (!(await readEvents(response, {steps: 0}))) {
        showMessage("the connection closed before the sampling finished; is the server still running?");
        setState("error", "connection lost");
      }
    } catch (e) {
      if (e.name === "AbortError") {
        setState("stopped", "stopped");
      } else {
        showMessage(`cannot reach the server (${e.message}); is \`textdiffusion serve\` still running?`);
        setState("error", "connection failed");
      }
    } finally {
      controller = null;
      if (player) player.finish();
      busy(false);
    }
  }

  async function loadRuns() {
    try {
      const response = await fetch("/api/runs");
      runs = await response.json();
    } catch (e) {
      showMessage(`cannot load the runs (${e.message}); is \`textdiffusion serve\` still running?`);
      setState("error", "no runs");
      return;
    }
    runSel.replaceChildren(...runs.map((r) => {
      const o = TD.el("option", "", `${r.name} (${r.method})`);
      o.value = r.name;
      return o;
    }));
    onRunChange();
    setState("idle", `${runs.length} run${runs.length === 1 ? "" : "s"} loaded`);
  }

  runSel.addEventListener("change", onRunChange);
  samplerSel.addEventListener("change", onSamplerChange);
  speaker.addEventListener("change", onSpeakerChange);
  guidance.addEventListener("input", onSpeakerChange);
  modePrompt.addEventListener("change", onModeChange);
  modeInfill.addEventListener("change", onModeChange);
  text.addEventListener("input", precheck);
  form.addEventListener("submit", sample);
  stopBtn.addEventListener("click", () => controller && controller.abort());
  setState("loading");
  loadRuns();
})();
