// Second look: one key per decision. k keeps the label (confirmed, leaves the list), f fixes
// it to the model's tag, 1-9 to that tag; arrows move.
import { config, isTyping, postJSON, tagName, escapeHTML, toast } from "./common.js";

const list = document.getElementById("second");
if (list) {
  const rows = [...list.querySelectorAll(".x-row")];
  let at = 0;
  const show = () => rows.forEach((r, i) => r.classList.toggle("is-focus", i === at));
  const next = () => { at = Math.min(rows.length - 1, at + 1); show(); rows[at].scrollIntoView({ block: "nearest" }); };

  async function decide(row, tagId) {
    const asset = Number(row.dataset.asset);
    try {
      if (tagId == null) {
        await postJSON(config.keepUrl, { asset });
        row.querySelector(".x-row-state").textContent = "kept";
      } else {
        await postJSON(config.labelUrl, { asset, tags: [tagId] });
        row.querySelector(".x-given").textContent = tagName(tagId);
        row.querySelector(".x-row-state").textContent = "fixed";
      }
      row.classList.add("is-done");
      next();
    } catch (err) {
      toast(escapeHTML(err.message || err), "error");
    }
  }

  rows.forEach((r, i) => r.addEventListener("click", () => { at = i; show(); }));
  document.addEventListener("keydown", (e) => {
    if (isTyping(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const row = rows[at];
    if (e.key === "ArrowDown" || e.key === "j") { e.preventDefault(); next(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); at = Math.max(0, at - 1); show(); rows[at].scrollIntoView({ block: "nearest" }); }
    else if (!config.canLabel) return;
    else if (e.key === "k") decide(row, null);
    else if (e.key === "f" && row.dataset.suggested) decide(row, Number(row.dataset.suggested));
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
