// Selectable thumbnail grid (cluster, more-like-this and search pages): mouse and keyboard
// selection feeding the bulk action. Keys: arrows move, Space toggles, Shift+arrows extend a
// range, a selects all (again: none), Esc clears, 1-9 apply that tag, Enter accepts each
// image's suggestion, u undoes the last bulk action. Click toggles, Shift+click a range.
import { bulkApply, bulkUndo, canUndo, config, isTyping, tagName, escapeHTML, toast } from "./common.js";

const grid = document.getElementById("grid");
if (grid) init(grid);

function init(grid) {
  const tiles = [...grid.querySelectorAll(".x-tile")];
  const selected = new Set(); // tile indices
  let focus = 0;
  let anchor = 0;
  const count = document.getElementById("sel-count");
  const undoBtn = document.getElementById("bulk-undo");
  const actionButtons = [...document.querySelectorAll("#bulk-tags [data-tag], #bulk-accept")];

  function render() {
    tiles.forEach((t, i) => {
      t.setAttribute("aria-selected", selected.has(i) ? "true" : "false");
      t.classList.toggle("is-focus", i === focus);
    });
    count.textContent = selected.size;
    actionButtons.forEach((b) => { b.disabled = selected.size === 0; });
    if (undoBtn) undoBtn.hidden = !canUndo();
    tiles[focus]?.scrollIntoView({ block: "nearest" });
  }

  function columns() {
    if (!tiles.length) return 1;
    const top = tiles[0].offsetTop;
    const n = tiles.findIndex((t) => t.offsetTop !== top);
    return n === -1 ? tiles.length : n;
  }

  function range(a, b) {
    for (let i = Math.min(a, b); i <= Math.max(a, b); i++) selected.add(i);
  }

  function toggle(i) {
    if (selected.has(i)) selected.delete(i); else selected.add(i);
    anchor = i;
  }

  grid.addEventListener("click", (e) => {
    if (e.target.closest(".x-more")) return; // the "more like this" link
    const tile = e.target.closest(".x-tile");
    if (!tile) return;
    e.preventDefault();
    const i = tiles.indexOf(tile);
    if (e.shiftKey) range(anchor, i); else toggle(i);
    focus = i;
    grid.focus({ preventScroll: true });
    render();
  });

  async function apply(tagId) {
    if (!config.canLabel) return;
    if (!selected.size) {
      toast("Select images first: click them, Space, or a for all.");
      return;
    }
    const picked = [...selected].sort((a, b) => a - b);
    try {
      const data = await bulkApply(picked.map((i) => Number(tiles[i].dataset.asset)), tagId);
      if (!data) return; // the previous action is still being saved
      for (const i of picked) {
        const tile = tiles[i];
        const stored = data.labels[tile.dataset.asset];
        if (stored == null) continue; // no suggestion to accept: stays open
        markLabeled(tile, stored);
      }
      selected.clear();
      render();
    } catch (err) {
      toast(escapeHTML(err.message || err), "error");
    }
  }

  async function undo() {
    try {
      const data = await bulkUndo();
      if (!data) return;
      const undone = new Set(data.assets.map(String));
      tiles.filter((t) => undone.has(t.dataset.asset)).forEach(unmark);
      render();
    } catch (err) {
      toast(escapeHTML(err.message || err), "error");
    }
  }

  document.querySelectorAll("#bulk-tags [data-tag]").forEach((b) =>
    b.addEventListener("click", () => apply(Number(b.dataset.tag))));
  document.getElementById("bulk-accept")?.addEventListener("click", () => apply(null));
  undoBtn?.addEventListener("click", undo);

  document.addEventListener("keydown", (e) => {
    if (isTyping(e) || e.ctrlKey || e.metaKey || e.altKey || !tiles.length) return;
    if (e.repeat && !e.key.startsWith("Arrow")) return; // holding a key must not label (or undo) twice
    // Tabbed onto a link or button (All clusters, a tag button, ≈): Enter/Space activate it,
    // they must not accept or toggle tiles behind the user's back.
    if ((e.key === "Enter" || e.key === " ") && e.target.closest?.("a, button")) return;
    const cols = columns();
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols };
    if (e.key in moves) {
      e.preventDefault();
      const next = Math.max(0, Math.min(tiles.length - 1, focus + moves[e.key]));
      if (e.shiftKey) {
        if (!selected.size) anchor = focus;
        range(anchor, next);
      }
      focus = next;
    } else if (e.key === " ") {
      e.preventDefault();
      toggle(focus);
    } else if (e.key === "a") {
      if (selected.size === tiles.length) selected.clear(); else tiles.forEach((_, i) => selected.add(i));
    } else if (e.key === "Escape") {
      selected.clear();
    } else if (e.key === "Enter") {
      e.preventDefault();
      apply(null);
      return;
    } else if (e.key === "u") {
      undo();
      return;
    } else if (/^[1-9]$/.test(e.key)) {
      const tag = config.tags.find((t) => t.key === e.key);
      if (tag) apply(tag.id);
      return;
    } else {
      return;
    }
    render();
  });
  render();
  grid.dataset.ready = "1"; // keys are handled from now on (tests wait for it)
}

function markLabeled(tile, tagIds) {
  const badge = tile.querySelector(".x-badge");
  if (!("original" in badge.dataset)) badge.dataset.original = badge.innerHTML;
  badge.innerHTML = "";
  const span = document.createElement("span");
  span.className = "x-label";
  span.textContent = `✓ ${tagIds.map(tagName).join(", ")}`;
  badge.append(span);
  tile.classList.add("is-labeled", "just-labeled");
}

function unmark(tile) {
  const badge = tile.querySelector(".x-badge");
  if ("original" in badge.dataset) badge.innerHTML = badge.dataset.original;
  delete badge.dataset.original;
  tile.classList.remove("just-labeled");
  tile.classList.toggle("is-labeled", !!badge.querySelector(".x-label"));
}
