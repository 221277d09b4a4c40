// The review loop. Keyboard first: the operator should never need the mouse, and the next
// image should already be in the browser's cache when the current one is labeled.
//
// Saves are optimistic (the next image shows at once) but serialised through one promise
// chain, so an undo always runs after every save it could be undoing.
import { clicked, csrfToken } from "./dom.js";
import { initialOrder, markOrder, nextOrder, renderDone, renderSuggestionHead } from "./review_audit.js";
import { bindFilter, bindShortcuts } from "./review_keys.js";
import { renderStatus, startPolling } from "./review_status.js";
import { renderTags as renderTagList, renderUpNext as renderUpNextList, rows as tagRows } from "./review_tags.js";

(() => {
  const root = document.getElementById("review");
  if (!root) return;
  const config = JSON.parse(document.getElementById("review-config").textContent);
  const urls = {
    queue: root.dataset.queueUrl,
    label: root.dataset.labelUrl,
    undo: root.dataset.undoUrl,
    status: root.dataset.statusUrl,
  };
  const BUFFER = 5;          // items held client-side, all preloaded
  const $ = (id) => document.getElementById(id);
  const el = {
    img: $("current-img"), loading: $("loading"), name: $("cur-name"), meta: $("cur-meta"),
    tags: $("tag-list"), filter: $("filter"), uncBar: $("unc-bar"), uncText: $("unc-text"),
    stage: $("stage"), done: $("done"), upnext: $("upnext"), toast: $("toast"), help: $("help"),
    model: $("st-model"), retrain: $("st-retrain"), unlabeled: $("st-unlabeled"),
    run: $("st-run"), runText: $("st-run-text"), runWhy: $("st-run-why"), runBar: $("st-run-bar"),
  };
  const ORDER_KEY = `tagloop-order:${location.pathname}`; // this tab's choice, per taxonomy

  const state = {
    order: initialOrder(ORDER_KEY), // kept over Back
    tags: [],                // [{id, name, key}] active tags of the taxonomy
    tagById: new Map(),
    buffer: [],              // queue items; buffer[0] is on screen
    skipped: new Set(),      // asset ids skipped this session (left out of every fetch)
    pending: new Set(),      // asset ids whose save is in flight (not yet off the queue)
    history: [],             // items labeled this session, newest last, so undo can show them
    undoBefore: null,        // a label a colleague changed: the next undo goes past it
    selected: new Set(),     // multi-label: tags chosen for the current item
    highlight: 0,            // type-ahead: index into the filtered rows
    fetching: null,
    exhausted: false,
    liveVersion: undefined,
  };
  const preloaded = new Map(); // asset id -> Image, so the browser keeps the bytes
  let saves = Promise.resolve();
  let toastTimer = 0;

  function setTags(tags) {
    state.tags = tags;
    state.tagById = new Map(tags.map((t) => [t.id, t]));
  }

  // --- server ------------------------------------------------------------------------

  async function api(url, body) {
    const opts = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRFToken"] = csrfToken();
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    if (res.status === 401) {
      // Session expired: back to the login page, then here again.
      window.location.href = `${root.dataset.loginUrl}?next=${encodeURIComponent(window.location.pathname)}`;
      throw new Error("login required");
    }
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(data.error || `HTTP ${res.status}`);
      err.status = res.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  // What this page holds: buffered items and saves in flight. The server renews this user's
  // leases on them (refill, poll), so nobody else is shown them; skipped ones are left to lapse.
  function held() {
    return [...state.buffer.map((i) => i.asset), ...state.pending];
  }

  function refill() {
    if (state.fetching || state.exhausted) return state.fetching;
    const need = BUFFER - state.buffer.length;
    if (need <= 0) return null;
    // exclude: held (and renewed); skipped: left out too, but a colleague may take them.
    const q = new URLSearchParams({
      order: state.order, limit: String(need), exclude: held().join(","), skipped: [...state.skipped].join(","),
    });
    const order = state.order;
    let added = 0;
    const fetching = api(`${urls.queue}?${q}`)
      .then((data) => {
        if (order !== state.order) return; // the order changed meanwhile; that fetch is on its way
        setTags(data.tags);
        const have = new Set(state.buffer.map((i) => i.asset));
        const fresh = data.items.filter((i) => !have.has(i.asset) && !state.skipped.has(i.asset) && !state.pending.has(i.asset));
        fresh.forEach(preload);
        const wasEmpty = state.buffer.length === 0;
        state.buffer.push(...fresh);
        added = fresh.length;
        state.exhausted = data.items.length < need;
        updateStatus(data.status);
        wasEmpty ? renderCurrent() : renderUpNext();
      })
      .catch((err) => toast(`Could not load the queue: ${err.message}`, "error"))
      .finally(() => {
        if (state.fetching === fetching) state.fetching = null; // not a newer fetch's
        if (state.buffer.length === 0) renderCurrent();
        // Labeled faster than the fetch came back: top up again (not after an empty answer).
        else if (added > 0 && state.buffer.length < BUFFER) refill();
      });
    state.fetching = fetching;
    return fetching;
  }

  function preload(item) {
    if (preloaded.has(item.asset)) return;
    const im = new Image();
    im.decoding = "async";
    im.src = item.image;
    preloaded.set(item.asset, im);
  }

  // --- actions -----------------------------------------------------------------------

  function current() {
    return state.buffer[0] || null;
  }

  function tagNames(ids) {
    return ids.map((id) => (state.tagById.get(id) || { name: `#${id}` }).name).join(", ") || "no tag";
  }

  function readOnly() {
    if (config.canLabel) return false;
    toast("Read-only: your role can view but not label.", "error");
    return true;
  }

  function submit(tagIds) {
    const item = current();
    if (!item || readOnly()) return;
    state.buffer.shift();
    state.pending.add(item.asset);
    state.history.push(item);
    state.undoBefore = null; // a new label: undo starts from it again
    renderCurrent();
    refill();
    saves = saves
      // base_label: the label this page saw, so a colleague's label given meanwhile is a 409
      // instead of being overwritten.
      // audit: served in the audit order, blind (the server checks its lease, and compares the tags with the suggestion)
      .then(() => api(urls.label, { asset: item.asset, tags: tagIds, base_label: item.label ?? null, audit: !!item.audit }))
      .then((res) => {
        toast(`Saved: ${tagNames(res.tags)} (${res.audit ? "audit answer" : res.source})`, "ok"); // blind: not "corrected"
        updateStatus(res.status);
      })
      .catch((err) => {
        state.history = state.history.filter((i) => i !== item);
        if (err.status === 409) {
          // Their label stands; the page has already moved on to the next image.
          toast(`Not saved: ${item.name} was labeled by someone else meanwhile.`, "error");
          updateStatus(err.data.status);
          return;
        }
        if (err.status !== 404) putBack(item); // a vanished asset is not worth retrying
        toast(`Not saved: ${err.message}`, "error");
      })
      .finally(() => state.pending.delete(item.asset));
  }

  function putBack(item) {
    state.buffer = [item, ...state.buffer.filter((i) => i.asset !== item.asset)];
    state.skipped.delete(item.asset);
    preload(item);
    renderCurrent();
  }

  function accept() {
    const item = current();
    if (!item || readOnly()) return;
    const tags = config.multilabel ? [...state.selected] : item.suggested;
    if (tags.length === 0) {
      toast(config.multilabel ? "Select tags (1–9), or press 0 if none applies." : `${item.audit ? "Blind audit" : "No suggestion yet"}: pick a tag with 1–9.`, "error");
      return;
    }
    submit(tags);
  }

  // Multi-label: "none of these tags applies" is an answer (a negative for every tag).
  const noneApplies = () => current() && !readOnly() && submit([]);

  function pickTag(id) {
    if (!current() || readOnly()) return;
    if (!config.multilabel) return submit([id]);
    state.selected.has(id) ? state.selected.delete(id) : state.selected.add(id);
    renderTags();
  }

  function skip() {
    const item = current();
    if (!item) return;
    state.buffer.shift();
    state.skipped.add(item.asset);
    toast(`Skipped ${item.name}${item.audit ? ": unanswered in the audit" : ""}`);
    renderCurrent();
    refill();
  }

  function undo() {
    if (readOnly()) return;
    saves = saves
      .then(() => api(urls.undo, state.undoBefore ? { before: state.undoBefore } : {}))
      .then((res) => {
        state.undoBefore = null;
        updateStatus(res.status);
        if (res.undone === null) return toast("Nothing to undo.");
        const idx = state.history.map((i) => i.asset).lastIndexOf(res.undone);
        if (idx >= 0) {
          const [item] = state.history.splice(idx, 1);
          putBack({ ...item, label: res.label }); // the label now current (null: unlabeled again)
          toast(`Undone: ${item.name}`, "ok");
        } else if (res.item) {
          // Labeled in an earlier session: the server sends it back to the front of the queue.
          putBack(res.item);
          toast(`Undone: ${res.item.name}`, "ok");
        } else {
          toast("Undone: an older label of that image is current again.", "ok");
        }
      })
      .catch((err) => {
        // 409: a colleague changed that label since; the server's message says so, and the
        // next undo goes on to the user's older labels instead of hitting the same one again.
        if (err.status === 409 && err.data && err.data.refused) state.undoBefore = err.data.refused;
        const msg = err.message;
        toast(err.status === 409 ? `${msg[0].toUpperCase()}${msg.slice(1)}.` : `Undo failed: ${msg}`, "error");
      });
  }

  function setOrder(order) {
    if (order === state.order) return;
    state.order = order;
    sessionStorage.setItem(ORDER_KEY, order);
    markOrder(order);
    state.buffer = [];
    state.exhausted = false;
    state.fetching = null;
    renderCurrent();
    refill();
  }

  // --- rendering ---------------------------------------------------------------------

  function renderCurrent() {
    const item = current();
    const empty = !item && !state.fetching;
    el.done.hidden = !empty;
    if (empty) renderDone(state.order, state.liveVersion);
    el.stage.hidden = empty;
    el.upnext.parentElement.hidden = empty;
    el.stage.setAttribute("aria-busy", String(!item));
    root.dataset.asset = item ? item.asset : "";
    el.filter.value = "";
    state.highlight = 0;
    if (!item) {
      el.img.hidden = true;
      el.loading.hidden = false;
      el.name.textContent = "";
      el.meta.textContent = "";
      el.tags.replaceChildren();
      renderUpNext();
      return;
    }
    state.selected = new Set(config.multilabel ? item.suggested : []);
    const buffered = new Set(state.buffer.map((i) => i.asset));
    for (const id of preloaded.keys()) if (!buffered.has(id)) preloaded.delete(id); // the HTTP cache keeps them
    el.img.alt = item.name;
    el.img.src = item.image;
    // Preloaded, so normally complete at once; otherwise show "Loading" rather than the
    // previous image next to this one's tags.
    const ready = el.img.complete && el.img.naturalWidth > 0;
    el.img.hidden = !ready;
    el.loading.hidden = ready;
    el.loading.textContent = "Loading…";
    el.name.textContent = item.name;
    el.meta.textContent = `${item.width}×${item.height}`;
    renderSuggestionHead(el, item, config.multilabel); // blind in the audit order
    renderTags();
    renderUpNext();
  }

  el.img.addEventListener("load", () => {
    el.img.hidden = false;
    el.loading.hidden = true;
  });
  el.img.addEventListener("error", () => {
    el.loading.hidden = false;
    el.loading.textContent = "Image could not be loaded.";
  });

  // The tag rows for the current item and filter (the type-ahead indexes into these).
  function rows() {
    return tagRows(state.tags, current(), el.filter.value, state.selected);
  }

  function renderTags() {
    const list = rows();
    state.highlight = Math.min(state.highlight, Math.max(0, list.length - 1));
    const highlight = el.filter.value !== "" ? state.highlight : -1; // no highlight without a filter
    renderTagList(el.tags, list, {
      item: current(), selected: state.selected, highlight, multilabel: config.multilabel, canLabel: config.canLabel,
      hidden: el.filter.value === "" ? state.tags.length - list.length : 0,
    });
  }

  function renderUpNext() {
    renderUpNextList(el.upnext, state.buffer.slice(1));
  }

  function updateStatus(s) {
    if (!s) return;
    renderStatus(el, s);
    if (state.liveVersion !== undefined && s.live_version !== state.liveVersion) {
      // Buffered suggestions came from the old model: keep what is on screen, refetch the rest.
      toast(`Model v${s.live_version} is live: suggestions refreshed.`, "ok");
      state.buffer = state.buffer.slice(0, 1);
      state.exhausted = false;
      refill();
    } else if (!current() && state.exhausted && s.unlabeled > state.skipped.size + state.pending.size) {
      state.exhausted = false; // new images arrived (an import) while the queue looked empty
      refill();
    }
    state.liveVersion = s.live_version;
  }

  function toast(text, kind = "") {
    el.toast.textContent = text;
    el.toast.className = `toast ${kind}`;
    el.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.toast.hidden = true; }, kind === "error" ? 4000 : 2200);
  }

  // --- input -------------------------------------------------------------------------

  el.tags.addEventListener("click", (e) => {
    const b = e.target.closest("button.tag");
    // The second click of a double-click would label the next image, unseen (see dom.clicked).
    if (!b || e.detail > 1) return;
    if (e.detail > 0) b.blur();
    pickTag(Number(b.dataset.tag));
  });
  $("accept-btn").addEventListener("click", clicked(accept));
  $("skip-btn").addEventListener("click", clicked(skip));
  $("undo-btn").addEventListener("click", clicked(undo));
  if (config.multilabel) $("none-btn").addEventListener("click", clicked(noneApplies));
  $("help-btn").addEventListener("click", clicked(() => el.help.showModal()));
  $("reload-btn").addEventListener("click", () => { state.skipped.clear(); state.exhausted = false; refill(); renderCurrent(); });
  document.querySelectorAll(".seg").forEach((b) => b.addEventListener("click", clicked(() => setOrder(b.dataset.order))));

  el.filter.addEventListener("input", () => { state.highlight = 0; renderTags(); });
  bindFilter({
    filter: el.filter, accept, pick: pickTag, render: renderTags,
    highlighted: () => rows()[state.highlight] || null,
    move: (step) => {
      const n = rows().length;
      state.highlight = (state.highlight + step + n) % Math.max(1, n);
      renderTags();
    },
    miss: (text) => toast(`No tag matches “${text}”: Esc clears the filter.`, "error"),
  });

  bindShortcuts({
    help: el.help, filter: el.filter, accept, skip, undo, none: config.multilabel ? noneApplies : null,
    order: () => setOrder(nextOrder(state.order)),
    pickKey: (key) => {
      const tag = state.tags.find((x) => x.key === key);
      if (tag) pickTag(tag.id);
      else toast(`No tag on key ${key}: this taxonomy has ${state.tags.filter((x) => x.key).length}.`, "error");
    },
  });

  // The status poll also renews this page's leases on what it holds (hold=), so the images
  // buffered behind the one the operator is looking at are not served to a colleague.
  startPolling({
    held: () => (config.canLabel ? held() : []),
    poll: (hold) => api(`${urls.status}?${new URLSearchParams({ hold: hold.join(",") })}`)
      .then(updateStatus).catch(() => {}), // a missed poll is retried next tick
  });

  setTags(config.tags);
  markOrder(state.order);
  renderCurrent();
  refill();
})();
