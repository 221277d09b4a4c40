// The review page's single-key shortcuts, on the whole document. The actions come in from
// review.js; this module only decides which key means what, and when a key is not ours.

/** Bind the shortcuts: Enter/Space accept, / filter, s skip, u/Backspace undo, ? help,
 *  1–9 pick the tag with that key (`pickKey` gets the digit). */
export function bindShortcuts({ help, filter, accept, skip, undo, pickKey }) {
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
    else if (e.key === "u" || e.key === "Backspace") undo();
    else if (e.key === "?") help.showModal();
    else if (/^[1-9]$/.test(e.key)) pickKey(e.key);
    else return;
    e.preventDefault();
  });
}
