// The review page's keys: single-key shortcuts on the whole document, and the tag filter's
// own keys. The actions come in from review.js; this module only decides which key means
// what, when a key is not ours, and where the keyboard focus goes.

/** Bind the shortcuts: Enter/Space accept, / filter, s skip, u/Backspace undo, ? help,
 *  1–9 pick the tag with that key (`pickKey` gets the digit), 0 "none applies" (`none`,
 *  multi-label only: null elsewhere), o the next queue order (`order`). */
export function bindShortcuts({ help, filter, accept, skip, undo, pickKey, none, order }) {
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    if (help.open) {
      if (e.key === "?") { help.close(); e.preventDefault(); }
      return; // the dialog handles Esc itself
    }
    const t = e.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t.isContentEditable) return;
    // Tabbed onto a button or link: Enter/Space activate it, as everywhere else.
    if ((e.key === "Enter" || e.key === " ") && t.closest && t.closest("button, a")) return;
    if (e.repeat) return; // holding a key must not label a whole batch
    if (e.key === "Enter" || e.key === " ") accept();
    else if (e.key === "/") filter.focus();
    else if (e.key === "s") skip();
    else if (e.key === "o") order();
    else if (e.key === "u" || e.key === "Backspace") undo();
    else if (e.key === "?") help.showModal();
    else if (/^[1-9]$/.test(e.key)) pickKey(e.key);
    else if (e.key === "0" && none) none();
    else return;
    e.preventDefault();
  });
}

/** The type-ahead filter: arrows move the highlight (`move` gets +1/-1), Enter picks the
 *  highlighted tag (`highlighted()`, null when nothing matches: `miss` gets the text) or,
 *  with an empty filter, accepts; Esc clears. `render` redraws the tag list. */
export function bindFilter({ filter, highlighted, move, pick, accept, miss, render }) {
  // Clear the filter and hand the keyboard back to the page: left focused, the next digit
  // would be typed into the filter ("No tag matches") and the next Enter do nothing, when
  // after a pick the operator means "pick another" (multi-label) or "save".
  const leave = () => { filter.value = ""; filter.blur(); };
  filter.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { leave(); render(); }
    else if (e.key === "ArrowDown" || e.key === "ArrowUp") move(e.key === "ArrowDown" ? 1 : -1);
    else if (e.key === "Enter" && filter.value.trim() === "") { leave(); accept(); }
    else if (e.key === "Enter") {
      const tag = highlighted();
      if (!tag) miss(filter.value.trim()); // focus stays, to correct the text
      else { leave(); pick(tag.id); render(); }
    } else return;
    e.preventDefault();
  });
}
