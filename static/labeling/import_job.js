// Poll once a second while the job runs; reload when it ends to show the full report.
(function () {
  const box = document.getElementById("import-status");
  if (!box || box.dataset.done === "1") return;
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  async function poll() {
    try {
      const r = await fetch(box.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok) {
        const s = await r.json();
        if (s.done) { location.reload(); return; }
        set("st-state", s.state); set("st-count", s.processed + " / " + s.total);
        document.getElementById("st-bar").style.width = s.percent + "%";
        document.getElementById("st-meter").setAttribute("aria-valuenow", s.percent);
        for (const k of ["created", "duplicates", "failed", "labeled"]) set("st-" + k, s[k]);
      }
    } catch (e) { /* network blip: try again next tick */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
