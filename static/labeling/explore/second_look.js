// Second look: one key per decision. k keeps the label (confirmed, leaves the list), f fixes
// it to the tag the row shows (data-fix), 1-9 to that tag; arrows move. A decision moves on at
// once; a row already decided (or being saved) takes no second one.
import { config, isTyping, postJSON, tagName, escapeHTML, toast } from "./common.js";

const list = document.getElementById("second");
if (list) {
  const rows = [...list.querySelectorAll(".x-row")];
  let at = 0;
  const show = () => rows.forEach((r, i) => r.classList.toggle("is-focus", i === at));
  const next = () => { at = Math.min(rows.length - 1, at + 1); show(); rows[at].scrollIntoView({ block: "nearest" }); };

  async function decide(row, tagId) {
    if (row.dataset.busy || row.classList.contains("is-done")) return;
    const asset = Number(row.dataset.asset);
    const state = row.querySelector(".x-row-state");
    row.dataset.busy = "1";
    state.textContent = "saving…";
    next();
    try {
      if (tagId == null) {
        await postJSON(config.keepUrl, { asset });
        state.textContent = "kept";
      } else {
        await postJSON(config.labelUrl, { asset, tags: [tagId] });
        row.querySelector(".x-given").textContent = tagName(tagId);
        row.querySelector(".x-row-fix")?.remove(); // it named the fix now made
        state.textContent = "fixed";
      }
      row.classList.add("is-done");
    } catch (err) {
      state.textContent = "";
      toast(escapeHTML(err.message || err), "error");
    } finally {
      delete row.dataset.busy;
    }
  }

  rows.forEach((r, i) => r.addEventListener("click", () => { at = i; show(); }));
  document.addEventListener("keydown", (e) => {
    if (isTyping(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.repeat && !e.key.startsWith("Arrow")) return; // a held key decides once
    const row = rows[at];
    if (e.key === "ArrowDown" || e.key === "j") { e.preventDefault(); next(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); at = Math.max(0, at - 1); show(); rows[at].scrollIntoView({ block: "nearest" }); }
    else if (!config.canLabel) return;
    else if (e.key === "k") decide(row, null);
    else if (e.key === "f" && row.dataset.fix) decide(row, Number(row.dataset.fix));
    else if (/^[1-9]$/.test(e.key)) {
      const tag = config.tags.find((t) => t.key === e.key);
      if (tag) decide(row, tag.id);
    }
  });
  show();
}

// Scores of a large taxonomy are computed by a worker: the "scoring N labels" card reloads the
// page until they are there (a page with rows never reloads under the operator's keys).
if (!list && document.getElementById("second-pending")) setTimeout(() => location.reload(), 10000);
