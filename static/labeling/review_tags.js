// Rendering for the review page's tag list and up-next strip. Pure functions of what they
// are given: the page's state stays in review.js.
import { h } from "./dom.js";

const SHOWN_TAGS = 12; // rows in the tag list without a filter; the filter reaches all

// Rows: the model's ranking first (most probable on top), then the tags it has no
// probability for, in taxonomy order; narrowed by the type-ahead filter. Without a filter,
// `selected` tags (multi-label) are listed past the first SHOWN_TAGS too: one picked through
// the filter must still show as picked once the filter is cleared.
export function rows(tags, item, filter, selected = new Set()) {
  const probs = new Map((item ? item.tags : []).map((t) => [t.tag, t.prob]));
  const ranked = [...tags].sort((a, b) => (probs.get(b.id) ?? -1) - (probs.get(a.id) ?? -1));
  const q = filter.trim().toLowerCase();
  const list = q
    ? ranked.filter((t) => t.name.toLowerCase().includes(q))
    : ranked.filter((t, i) => i < SHOWN_TAGS || selected.has(t.id));
  return list.map((t) => ({ ...t, prob: probs.get(t.id) }));
}

/** Fill `ul` with one button per row of `list`. `highlight` is the row index marked for
 *  the type-ahead (-1: none); `selected` the multi-label choice for the current item. */
export function renderTags(ul, list, { item, selected, highlight, multilabel, canLabel, hidden = 0 }) {
  const suggested = new Set(item ? item.suggested : []);
  const opts = { selected, multilabel, canLabel };
  ul.replaceChildren(...list.map((t, i) => tagRow(t, suggested.has(t.id), i === highlight, opts)));
  if (list.length === 0) ul.append(h("li", { className: "muted small", textContent: "No tag matches." }));
  // the least probable tags are not listed without a filter: say that they exist, and how to reach them
  if (hidden > 0) ul.append(h("li", { className: "muted small tag-more", textContent: `${hidden} more tag${hidden === 1 ? "" : "s"}: press / and type to find ${hidden === 1 ? "it" : "them"}` }));
}

function tagRow(t, isSuggested, highlighted, { selected, multilabel, canLabel }) {
  const pct = t.prob === undefined ? "" : `${Math.round(t.prob * 100)}%`;
  const b = h("button", { type: "button", className: "tag" + (isSuggested ? " suggested" : "") + (highlighted ? " hl" : "") },
    h("kbd", { textContent: t.key || "" }),
    h("span", { className: "tag-name", textContent: t.name }),
    // Multi-label rows are narrow with several suggestions: a check mark says the same.
    ...(isSuggested ? [h("span", { className: "chip", title: "suggested by the model", textContent: multilabel ? "✓" : "suggested" })] : []),
    h("span", { className: "meter" }, h("span", { style: `width: ${t.prob === undefined ? 0 : (t.prob * 100).toFixed(1)}%` })),
    h("span", { className: "pct", textContent: pct }));
  b.dataset.tag = t.id;
  if (multilabel) b.setAttribute("aria-pressed", String(selected.has(t.id)));
  if (!canLabel) b.setAttribute("aria-disabled", "true");
  if (t.key) b.setAttribute("aria-keyshortcuts", t.key);
  return h("li", {}, b);
}

/** Thumbnails of the buffered items after the one on screen. */
export function renderUpNext(ul, items) {
  ul.replaceChildren(...items.map((item) => h("li", {}, h("img", { src: item.thumb, alt: "", title: item.name }))));
}
