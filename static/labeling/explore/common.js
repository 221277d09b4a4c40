// Shared by the explore pages: config from json_script, JSON calls, the toast, and the one
// bulk action (apply a tag / accept each suggestion) with its undo.
import { csrfToken } from "../dom.js";

export const config = JSON.parse(document.getElementById("explore-config").textContent);

export async function postJSON(url, body) {
  const res = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

/** Text made safe to put into innerHTML: tag names and server messages are user data. */
export function escapeHTML(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

let toastTimer = null;
/** Show `html` for a few seconds; callers escape any user data in it with escapeHTML. */
export function toast(html, kind = "") {
  const el = document.getElementById("toast");
  el.innerHTML = html;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

export const tagName = (id) => (config.tags.find((t) => t.id === id) || { name: "?" }).name;

// The undo stack of this page: bulk action ids, newest last.
const done = [];
// One bulk request at a time: a second apply (a key pressed twice, a double-click) while one is
// under way is dropped, and an undo waits for it, so "u" always undoes the action it was shown.
let inFlight = null;

async function exclusive(work) {
  inFlight = work();
  try {
    return await inFlight;
  } finally {
    inFlight = null;
  }
}

/** Apply `tagId` (or each asset's suggestion when tagId is null) to `assets`.
 *  Resolves to {action, n_labels, labels: {asset: [tag ids]}}, or null when another bulk
 *  request was still under way (nothing sent). */
export async function bulkApply(assets, tagId) {
  if (inFlight) {
    toast("Still saving the last action…");
    return null;
  }
  return exclusive(async () => {
    const body = tagId == null ? { assets, accept: true } : { assets, tags: [tagId] };
    const data = await postJSON(config.bulkUrl, body);
    done.push(data.action);
    const what = tagId == null ? "their suggestions" : escapeHTML(tagName(tagId));
    const open = assets.length - data.n_labels - data.kept;
    const kept = data.kept ? ` · ${data.kept} already labeled kept their labels` : "";
    toast(`Labeled ${data.n_labels} as ${what}${kept}${open ? ` · ${open} without a suggestion left open` : ""} · <kbd>u</kbd> undo`, "ok");
    return data;
  });
}

/** Undo the newest bulk action of this page; resolves to {assets} it unlabeled, or null. */
export async function bulkUndo() {
  if (inFlight) await inFlight.catch(() => null);
  if (inFlight) return null; // a second undo pressed meanwhile: this one is already queued
  return exclusive(async () => {
    const action = done.pop();
    if (action == null) return null;
    const data = await postJSON(config.undoUrl, { action });
    toast(`Undone: ${data.undone} label${data.undone === 1 ? "" : "s"} restored to what they were`);
    return data;
  });
}

export const canUndo = () => done.length > 0;

export function isTyping(e) {
  const t = e.target;
  return t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
}
