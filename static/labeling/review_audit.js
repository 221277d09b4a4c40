// The review page's queue orders: which one is chosen, the `o` key that goes to the next, and
// what the page says in the audit order (a random sample of the unlabeled library that the
// dashboard's audit estimate is made from; services/audit.py), whose items are blind: sent
// without the model's suggestion. review.js keeps the queue.

export const ORDERS = ["uncertain", "confident", "audit"];

/** The order to start in: ?order= (the dashboard's link to the audit; then dropped from the
 *  address and kept like a choice), else this tab's last choice (`key` in sessionStorage). */
export function initialOrder(key) {
  const asked = new URLSearchParams(window.location.search).get("order");
  if (ORDERS.includes(asked)) {
    sessionStorage.setItem(key, asked);
    window.history.replaceState(null, "", window.location.pathname);
  }
  const kept = sessionStorage.getItem(key);
  return ORDERS.includes(kept) ? kept : "uncertain";
}

export const nextOrder = (order) => ORDERS[(ORDERS.indexOf(order) + 1) % ORDERS.length];

/** Press the chosen order's button; the audit's note shows in the audit order only. */
export function markOrder(order) {
  document.querySelectorAll(".seg").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.order === order)));
  document.getElementById("audit-note").hidden = order !== "audit";
}

/** The "nothing left" card, for `order` with live model `liveVersion` (null: none yet). The
 *  audit checks the live model's suggestions: without one it has nothing to serve. */
export function renderDone(order, liveVersion) {
  const noModel = order === "audit" && liveVersion == null;
  document.getElementById("done-title").textContent = noModel ? "Nothing to audit yet" : "All done";
  document.getElementById("done-mark").hidden = noModel;
  document.getElementById("done-text").textContent = noModel
    ? "The audit checks the live model's suggestions on a random sample of unlabeled images: train a model first."
    : order === "audit"
      ? "Every unlabeled image the live model scored is labeled or on a colleague's screen. Skipped images show up again after a reload."
      : "Nothing left to review in this order. New imports and skipped images show up again after a reload.";
}

/** The tag panel's head for `item`: its uncertainty; or, for an audit item (blind: the server
 *  sent no suggestion, probabilities nor uncertainty), the line saying so, and no "Accept
 *  suggestion" button in a single-label taxonomy (1–9 pick; multi-label saves a selection). */
export function renderSuggestionHead(el, item, multilabel) {
  const blind = !!item.audit;
  const unc = item.uncertainty;
  el.uncBar.style.width = unc === null ? "0" : `${Math.round(unc * 100)}%`;
  el.uncText.textContent = unc === null ? "no model yet" : `${Math.round(unc * 100)}%`;
  document.getElementById("uncertainty").hidden = blind;
  document.getElementById("blind-note").hidden = !blind;
  document.getElementById("panel-title").textContent = blind ? "Your answer" : "Suggestion";
  document.getElementById("accept-btn").hidden = blind && !multilabel;
}
