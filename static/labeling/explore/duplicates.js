// Duplicates page: "Label the other N as X" applies the group's agreed label to the rest,
// through the same bulk action (undoable with u).
import { bulkApply, bulkUndo, escapeHTML, toast } from "./common.js";

document.querySelectorAll(".x-dup-apply").forEach((btn) => btn.addEventListener("click", async () => {
  const assets = btn.dataset.assets.split(",").map(Number);
  const tag = Number(btn.dataset.tags.split(",")[0]);
  btn.disabled = true;
  try {
    if (await bulkApply(assets, tag)) btn.textContent = "Labeled";
    else btn.disabled = false; // another action was still being saved: nothing sent
  } catch (err) {
    btn.disabled = false;
    toast(escapeHTML(err.message || err), "error");
  }
}));
document.addEventListener("keydown", (e) => {
  if (e.key === "u" && !e.repeat && !e.ctrlKey && !e.metaKey) bulkUndo().then((d) => d && window.location.reload());
});
