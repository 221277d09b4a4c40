// Dashboard plots (plotly.js from the installed Python package) and live job progress.
// Data comes from json_script tags; nothing is fetched for the plots themselves.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  // Multi-label models store other scores (services.dashboard): micro-F1 decides promotion there.
  const ML = data.multilabel;
  const ACCENT = "#4f46e5", OK = "#12805c", WARN = "#c2410c", MUTED = "#98a2b3", INK = "#101828";
  // An x-axis title takes the row below the ticks: the legend then goes one row lower.
  const layout = (extra) => Object.assign({
    margin: { l: 48, r: 12, t: 8, b: 40 }, font: { family: "system-ui, sans-serif", size: 12 },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", showlegend: true,
    legend: { orientation: "h", y: extra && extra.xaxis && extra.xaxis.title ? -0.32 : -0.2 },
  }, extra || {});
  const config = { displaylogo: false, responsive: true };

  function plot(id, traces, extra) {
    const el = document.getElementById(id);
    if (!el) return;
    if (!traces.length || traces.every((t) => !(t.x || t.z || []).length)) {
      // Still draw empty axes: an empty plot says "no data yet" more clearly than a gap.
      extra = Object.assign({ annotations: [{ text: "no data yet", showarrow: false, font: { color: MUTED } }] }, extra);
    }
    Plotly.newPlot(el, traces, layout(extra), config);
  }

  // errors bars from [lo, hi] intervals around each value
  const ci = (vals, cis) => ({
    type: "data", symmetric: false, visible: true,
    array: vals.map((v, i) => (cis[i] && v != null ? cis[i][1] - v : 0)),
    arrayminus: vals.map((v, i) => (cis[i] && v != null ? v - cis[i][0] : 0)),
  });

  const t = data.over_time;
  plot("plot-time", Object.entries(t.series).map(([who, ys]) => ({ type: "bar", name: who, x: t.days, y: ys })),
    // one bar per day: with every label on one day plotly would otherwise zoom into milliseconds
    { barmode: "stack", yaxis: { title: { text: "labels" } }, xaxis: { type: "date", tickformat: "%b %d", dtick: 86400000 } });

  const ops = data.by_operator;
  plot("plot-operators", ["accepted", "corrected", "manual", "imported"].map((src) => ({
    type: "bar", name: src, x: ops.map((o) => o.user), y: ops.map((o) => o[src] || 0),
  })), { barmode: "stack" });

  const cov = data.coverage;
  plot("plot-coverage", [
    { type: "bar", name: "labeled", x: cov.per_tag.map((r) => r.tag), y: cov.per_tag.map((r) => r.n), marker: { color: ACCENT } },
  ], { showlegend: false, yaxis: { title: { text: "images" } } });

  const ag = data.agreement;
  document.getElementById("agreement-text").textContent = ag.rate == null
    ? "No reviewed suggestions yet."
    : `${Math.round(ag.rate * 100)}% of ${ag.reviewed} reviewed suggestions were accepted as is.`;
  plot("plot-agreement", [{
    type: "scatter", mode: "lines+markers", name: "accepted", x: ag.by_version.map((v) => "v" + v.version),
    y: ag.by_version.map((v) => v.rate), marker: { color: OK },
  }], { showlegend: false, xaxis: { type: "category" }, yaxis: { range: [0, 1], tickformat: ".0%" } });

  const vs = data.versions;
  const vx = vs.map((v) => "v" + v.version + (v.live ? " (live)" : ""));
  // ciKey null: no interval is stored for that score (multi-label F1s)
  const metric = (key, ciKey, name, color) => {
    const ys = vs.map((v) => v[key]);
    const trace = { type: "scatter", mode: "lines+markers", name, x: vx, y: ys, marker: { color } };
    if (ciKey) trace.error_y = ci(ys, vs.map((v) => v[ciKey]));
    return trace;
  };
  // with three tags or fewer the right tag is always among the top 3: a flat line at 100 %
  const manyTags = ((data.live && data.live.labels) || []).length > 3;
  const scores = ML ? [
    metric("micro_f1", null, "micro-F1 (decides promotion)", ACCENT),
    metric("macro_f1", null, "macro-F1", WARN),
    metric("subset_accuracy", "subset_accuracy_ci95", "subset accuracy (every tag right)", OK),
  ] : [
    metric("accuracy", "accuracy_ci95", "accuracy", ACCENT),
    ...(manyTags ? [metric("top3_accuracy", "top3_ci95", "top-3 accuracy", OK)] : []),
    metric("macro_f1", "macro_f1_ci95", "macro-F1", WARN),
  ];
  plot("plot-versions", scores.concat(vs.some((v) => v.accuracy_without_matching != null) ? [{
    // local matching on: what the CNN head alone scored on the same held-out labels
    type: "scatter", mode: "lines+markers", name: "accuracy without matching", x: vx,
    y: vs.map((v) => v.accuracy_without_matching), line: { dash: "dot" }, marker: { color: MUTED },
  }] : []), { yaxis: { range: [0, 1.05], tickformat: ".0%" } });

  // the score promotion compares, against the labels each version learned from
  const [lkey, lname] = ML ? ["micro_f1", "held-out micro-F1"] : ["accuracy", "held-out accuracy"];
  const learn = vs.filter((v) => v[lkey] != null);
  const ly = learn.map((v) => v[lkey]);
  plot("plot-learning", [{
    type: "scatter", mode: "lines+markers", name: lname, x: learn.map((v) => v.n_labels), y: ly,
    text: learn.map((v) => "v" + v.version), marker: { color: ACCENT },
    ...(ML ? {} : { error_y: ci(ly, learn.map((v) => v.accuracy_ci95)) }),
  }], { xaxis: { title: { text: "labels" }, rangemode: "tozero" }, yaxis: { range: [0, 1.05], tickformat: ".0%" }, showlegend: false });

  // Label savings: same labels, labelling order vs random orders (ml.savings, run at training)
  const sv = data.live && data.live.savings;
  const band = sv ? sv.labels.concat(sv.labels.slice().reverse()) : [];
  plot("plot-savings", sv ? [
    { type: "scatter", mode: "lines", name: "random orders (range)", x: band,
      y: sv.random_max.concat(sv.random_min.slice().reverse()), fill: "toself",
      line: { width: 0 }, fillcolor: "rgba(152,162,179,0.25)", hoverinfo: "skip" },
    { type: "scatter", mode: "lines+markers", name: "random order (mean)", x: sv.labels, y: sv.random, line: { color: MUTED, dash: "dot" } },
    { type: "scatter", mode: "lines+markers", name: "your labelling order", x: sv.labels, y: sv.queue, line: { color: ACCENT } },
    { type: "scatter", mode: "lines", name: "95% of the final score", x: [sv.labels[0], sv.labels[sv.labels.length - 1]],
      y: [sv.target, sv.target], line: { color: WARN, dash: "dash", width: 1 } },
  ] : [], { xaxis: { title: { text: "labels" }, type: "log" }, yaxis: { range: [0, 1.05], tickformat: ".0%" } });
  const svText = document.getElementById("savings-text");
  if (svText) {
    const reach = sv && sv.queue_to_95pct != null ? `Your order reached 95% of the final score after ${sv.queue_to_95pct} labels; ` : "";
    svText.textContent = !sv ? "Shown once a model is evaluated on enough held-out labels."
      : !reach ? "Not enough labels yet to compare orders."
        : sv.labels_saved_pct > 0 ? `${reach}random orders needed ${sv.random_to_95pct}: ${sv.labels_saved_pct}% fewer labels.`
          : `${reach}random orders needed ${sv.random_to_95pct}: no saving on these labels.`;
  }

  const live = data.live;
  const caption = document.getElementById("confusion-caption"); // single-label only
  if (live && caption) {
    caption.textContent = `live v${live.version}, ${live.n_holdout} held-out labels`;
  }
  const labels = live ? live.labels : [];
  plot("plot-confusion", live && live.confusion.length ? [{
    type: "heatmap", x: labels, y: labels, z: live.confusion, colorscale: "Blues", reversescale: true, hoverongaps: false,
    texttemplate: "%{z}", hovertemplate: "true %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
  }] : [], { xaxis: { title: { text: "predicted" }, automargin: true }, yaxis: { title: { text: "true" }, autorange: "reversed", automargin: true }, showlegend: false });

  const pc = live ? live.per_class : [];
  plot("plot-prf", [
    { type: "bar", name: "precision", x: pc.map((r) => r.tag), y: pc.map((r) => r.precision), marker: { color: ACCENT } },
    { type: "bar", name: "recall", x: pc.map((r) => r.tag), y: pc.map((r) => r.recall), marker: { color: OK } },
    // multi-label: the probability each tag is said yes at, tuned per tag at training
    ...(ML ? [{ type: "scatter", mode: "markers", name: "threshold", x: pc.map((r) => r.tag), y: pc.map((r) => r.threshold),
      marker: { color: INK, symbol: "line-ew-open", size: 26, line: { width: 3 } },
      hovertemplate: "%{x}: yes at p ≥ %{y:.2f}<extra></extra>" }] : []),
  ], { barmode: "group", yaxis: { range: [0, 1.05], tickformat: ".0%" } });

  // --- live progress of long jobs: poll while something runs -------------------------------
  const box = document.getElementById("progress");
  function showProgress(p) {
    const run = p.run;
    document.getElementById("run-text").textContent = run
      ? `run #${run.id}: ${run.state}${run.message ? " · " + run.message : ""}` : "no run yet";
    document.getElementById("run-bar").style.width = run ? Math.round(run.progress * 100) + "%" : "0%";
    const busy = Boolean(run && run.active);
    const button = document.getElementById("retrain"); // one run at a time: pressed again, it only queued a copy
    if (button) button.disabled = busy;
    // a version that can't go live (its file is gone, ...) stays disabled, with its reason as title
    for (const b of document.querySelectorAll(".make-live")) if (!b.title) b.disabled = busy;
    const imports = document.getElementById("import-progress");
    imports.replaceChildren(...p.imports.map((j) => {
      const row = document.createElement("div");
      row.className = "dash-progress-row";
      row.innerHTML = '<span class="stat-label">Import</span><span class="muted"></span><div class="meter"><span></span></div>';
      row.children[1].textContent = `#${j.id} ${j.state}: ${j.processed} / ${j.total}`;
      row.querySelector(".meter span").style.width = j.percent + "%";
      return row;
    }));
    return p.active;
  }
  let timer = null;
  let reloadWhenDone = false; // after "Make live": the table, header and plots are the page's own render
  async function poll() {
    try {
      const r = await fetch(box.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok && showProgress(await r.json())) { timer = setTimeout(poll, 2000); return; }
    } catch (e) { /* network blip: try again a little later */ timer = setTimeout(poll, 5000); return; }
    timer = null;
    if (reloadWhenDone) window.location.reload();
  }
  if (showProgress(JSON.parse(document.getElementById("progress-data").textContent))) poll();

  // POST a job (retrain, make a version live); the progress poll follows it. false: not started.
  async function startJob(button) {
    const token = (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "";
    button.disabled = true; // until the run has finished (showProgress)
    const r = await fetch(button.dataset.url, { method: "POST", headers: { "X-CSRFToken": token, Accept: "application/json" }, credentials: "same-origin" });
    const body = await r.json().catch(() => ({}));
    if (r.ok || (r.status === 409 && body.id)) { if (!timer) poll(); return r.ok; } // started, or one is running
    button.disabled = false; // not started: say why (labels of one tag only, the version's file is gone, ...)
    document.getElementById("run-text").textContent = body.detail || `not started (HTTP ${r.status})`;
    return false;
  }

  const retrain = document.getElementById("retrain");
  if (retrain) retrain.addEventListener("click", () => startJob(retrain));
  for (const button of document.querySelectorAll(".make-live")) {
    button.addEventListener("click", async () => {
      const v = "v" + button.dataset.version;
      if (!window.confirm(`Make ${v} live? Every image gets ${v}'s suggestions, and the next retrain is compared with ${v}.`)) return;
      reloadWhenDone = await startJob(button);
    });
  }
})();
