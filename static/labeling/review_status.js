// The review page's status panel: live model, labels until the next retrain, unlabeled
// images, and the training run in progress. Only writes to the elements it is given.
// Also the poll that keeps it fresh, which renews the page's leases as it goes.

const POLL_MS = 4000;
// A hidden tab polls less often, but well inside the server's 120 s lease (and browsers run a
// hidden tab's timers at most once a minute), so a look at another tab gives no images away.
const HIDDEN_POLL_MS = 30000;
// No key or click for this long: the operator has walked away, and the poll stops renewing the
// leases, so the images this tab holds go back to the colleagues' queues.
const IDLE_MS = 10 * 60 * 1000;

const RUN_TEXT = { queued: "queued", running: "running", promoted: "new model live", rejected: "kept the live model", failed: "failed" };

/** Show status `s` (as the API sends it) in `panel`: {model, retrain, unlabeled, run, runText, runWhy, runBar}. */
export function renderStatus(panel, s) {
  const acc = s.live_score == null ? "" : ` · ${Math.round(s.live_score * 100)}% ${s.live_score_name}`;
  panel.model.textContent = s.live_version == null ? "none yet" : `v${s.live_version}${acc}`;
  panel.retrain.textContent = `${s.labels_until_retrain} label${s.labels_until_retrain === 1 ? "" : "s"}`;
  panel.unlabeled.textContent = String(s.unlabeled);
  const run = s.run;
  panel.run.hidden = !run;
  if (run) {
    const active = run.state === "queued" || run.state === "running";
    panel.runText.textContent = (RUN_TEXT[run.state] || run.state) + (active ? ` ${Math.round(run.progress * 100)}%` : "")
      + (run.state === "failed" && run.message ? `: ${run.message}` : ""); // why, in view: not only on hover
    panel.run.title = run.message || "";
    // a retrain that kept the live model: the dashboard's versions table says why, in full
    panel.runWhy.hidden = run.state !== "rejected";
    panel.run.classList.toggle("active", active);
    panel.runBar.style.width = `${Math.round(run.progress * 100)}%`;
    panel.runBar.parentElement.hidden = !active;
  }
}

/** Call `poll(hold)` every POLL_MS (HIDDEN_POLL_MS while the tab is hidden). `hold` is
 *  `held()`, the asset ids whose leases the server should renew, while the operator is at
 *  the page, and empty once idle: a closed or abandoned tab lets its leases lapse. */
export function startPolling({ poll, held }) {
  let lastPoll = 0;
  let lastInput = Date.now();
  for (const type of ["keydown", "pointerdown"]) {
    document.addEventListener(type, () => { lastInput = Date.now(); }, { capture: true, passive: true });
  }
  setInterval(() => {
    const now = Date.now();
    if (document.hidden && now - lastPoll < HIDDEN_POLL_MS) return;
    lastPoll = now;
    poll(now - lastInput < IDLE_MS ? held() : []);
  }, POLL_MS);
}
