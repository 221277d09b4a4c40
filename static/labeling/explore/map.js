// The 2-D map (plotly.js): colour by label / suggestion / cluster / uncertainty, thumbnail on
// hover, click opens the image's neighbours, lasso or box selection feeds the bulk action
// (1-9 apply a tag, Enter accepts each suggestion, u undoes, Esc clears).
import { bulkApply, bulkUndo, canUndo, config, isTyping, tagName, escapeHTML, toast } from "./common.js";

const el = document.getElementById("map");
const hover = document.getElementById("map-hover");
const count = document.getElementById("sel-count");
const undoBtn = document.getElementById("bulk-undo");
const buttons = [...document.querySelectorAll("#bulk-tags [data-tag], #bulk-accept")];
const PALETTE = ["#4f46e5", "#12805c", "#c2410c", "#0e7490", "#be185d", "#a16207", "#6d28d9", "#15803d", "#b91c1c", "#1d4ed8"];
let points = [];
let colorBy = "label";
let selection = [];
let byId = new Map();

async function load() {
  const res = await fetch(config.mapUrl, { credentials: "same-origin" });
  if (!res.ok) throw new Error(`map: HTTP ${res.status}`);
  points = (await res.json()).points;
  byId = new Map(points.map((p) => [p.id, p]));
  draw();
}

function category(p) {
  if (colorBy === "cluster") return p.cluster == null ? "no cluster" : `cluster ${p.cluster + 1}`;
  const tag = colorBy === "label" ? p.label : p.suggested;
  return tag == null ? (colorBy === "label" ? "unlabeled" : "no suggestion") : tagName(tag);
}

function traces() {
  // SVG while small (crisp, works without WebGL); WebGL past a few thousand points.
  const base = { type: points.length > 5000 ? "scattergl" : "scatter", mode: "markers", hoverinfo: "text" };
  if (colorBy === "uncertainty") {
    return [{
      ...base, name: "uncertainty", x: points.map((p) => p.x), y: points.map((p) => p.y),
      customdata: points.map((p) => p.id), text: points.map((p) => `${p.name}<br>uncertainty ${p.uncertainty ?? "—"}`),
      marker: { size: 7, color: points.map((p) => p.uncertainty ?? 0), colorscale: "Viridis", cmin: 0, cmax: 1,
                colorbar: { title: { text: "uncertainty" }, thickness: 12 } },
    }];
  }
  const groups = new Map();
  for (const p of points) {
    const c = category(p);
    if (!groups.has(c)) groups.set(c, []);
    groups.get(c).push(p);
  }
  const names = [...groups.keys()].sort((a, b) => (a.startsWith("un") || a.startsWith("no")) - (b.startsWith("un") || b.startsWith("no")) || a.localeCompare(b, undefined, { numeric: true }));
  return names.map((name, i) => {
    const ps = groups.get(name);
    const open = name === "unlabeled" || name.startsWith("no ");
    return {
      ...base, name, x: ps.map((p) => p.x), y: ps.map((p) => p.y), customdata: ps.map((p) => p.id),
      text: ps.map((p) => `${p.name}<br>${name}`),
      marker: { size: 7, color: open ? "#98a2b3" : PALETTE[i % PALETTE.length], opacity: open ? 0.6 : 0.9 },
    };
  });
}

function draw() {
  el.querySelector(".x-map-loading")?.remove();
  const layout = {
    dragmode: "lasso", margin: { l: 10, r: 10, t: 10, b: 10 }, hovermode: "closest",
    xaxis: { visible: false }, yaxis: { visible: false, scaleanchor: "x" },
    legend: { orientation: "h", y: -0.02 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  };
  Plotly.react(el, traces(), layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage"] });
  if (!el.dataset.bound) bind();
}

function bind() {
  el.dataset.bound = "1";
  el.on("plotly_hover", (ev) => {
    const pt = ev.points[0];
    const p = byId.get(pt.customdata);
    if (!p) return;
    hover.src = p.thumb;
    const box = el.getBoundingClientRect();
    hover.style.left = `${Math.min(ev.event.clientX - box.left + 16, box.width - 150)}px`;
    hover.style.top = `${Math.max(ev.event.clientY - box.top - 150, 0)}px`;
    hover.hidden = false;
  });
  el.on("plotly_unhover", () => { hover.hidden = true; });
  el.on("plotly_click", (ev) => {
    if (selection.length) return; // a click ends a selection gesture, it does not navigate
    window.location = config.similarUrl.replace("{id}", ev.points[0].customdata);
  });
  el.on("plotly_selected", (ev) => setSelection(ev ? ev.points.map((p) => p.customdata) : []));
  el.on("plotly_deselect", () => setSelection([]));
}

function setSelection(ids) {
  selection = ids;
  count.textContent = ids.length;
  buttons.forEach((b) => { b.disabled = !ids.length; });
  if (undoBtn) undoBtn.hidden = !canUndo();
}

async function apply(tagId) {
  if (!config.canLabel || !selection.length) return;
  try {
    if (!(await bulkApply(selection, tagId))) return; // the previous action is still being saved
    setSelection([]);
    await load();
  } catch (err) {
    toast(escapeHTML(err.message || err), "error");
  }
}

async function undo() {
  try {
    if (await bulkUndo()) await load();
    setSelection(selection);
  } catch (err) {
    toast(escapeHTML(err.message || err), "error");
  }
}

document.querySelectorAll("#color-by [data-color]").forEach((b) => b.addEventListener("click", () => {
  colorBy = b.dataset.color;
  document.querySelectorAll("#color-by [data-color]").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
  draw();
}));
document.querySelectorAll("#bulk-tags [data-tag]").forEach((b) => b.addEventListener("click", () => apply(Number(b.dataset.tag))));
document.getElementById("bulk-accept")?.addEventListener("click", () => apply(null));
undoBtn?.addEventListener("click", undo);
document.addEventListener("keydown", (e) => {
  if (isTyping(e) || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  if (e.key === "Enter") { e.preventDefault(); apply(null); }
  else if (e.key === "u") undo();
  else if (e.key === "Escape") { Plotly.restyle(el, { selectedpoints: [null] }); setSelection([]); }
  else if (/^[1-9]$/.test(e.key)) {
    const tag = config.tags.find((t) => t.key === e.key);
    if (tag) apply(tag.id);
  }
});

load().catch((err) => toast(escapeHTML(err.message || err), "error"));
