// The review page's status panel: live model, labels until the next retrain, unlabeled
// images, and the training run in progress. Only writes to the elements it is given.

const RUN_TEXT = { queued: "queued", running: "running", promoted: "new model live", rejected: "kept the live model", failed: "failed" };

/** Show status `s` (as the API sends it) in `panel`: {model, retrain, unlabeled, run, runText, runWhy, runBar}. */
export function renderStatus(panel, s) {
  const acc = s.live_accuracy == null ? "" : ` · ${Math.round(s.live_accuracy * 100)}% acc.`;
  panel.model.textContent = s.live_version == null ? "none yet" : `v${s.live_version}${acc}`;
  panel.retrain.textContent = `${s.labels_until_retrain} label${s.labels_until_retrain === 1 ? "" : "s"}`;
  panel.unlabeled.textContent = String(s.unlabeled);
  const run = s.run;
  panel.run.hidden = !run;
  if (run) {
    const active = run.state === "queued" || run.state === "running";
    panel.runText.textContent = (RUN_TEXT[run.state] || run.state) + (active ? ` ${Math.round(run.progress * 100)}%` : "");
    panel.run.title = run.message || "";
    // a retrain that kept the live model: the dashboard's versions table says why, in full
    panel.runWhy.hidden = run.state !== "rejected";
    panel.run.classList.toggle("active", active);
    panel.runBar.style.width = `${Math.round(run.progress * 100)}%`;
    panel.runBar.parentElement.hidden = !active;
  }
}
