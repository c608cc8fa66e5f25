// fibrosis review: keyboard shortcuts, window/level, zoom, the Grad-CAM toggle and label POSTs.
// Served as a file (the Content-Security-Policy allows no inline script); the page passes what
// this needs in data- attributes of <body>.
"use strict";
(function () {
  const d = document.body.dataset;
  const $ = (id) => document.getElementById(id);
  const typing = (e) => e.target && ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName);

  function reader() {
    const box = $("reader");
    const value = (box && box.value.trim()) || d.reader || "";
    if (box && value) localStorage.setItem("fibrosis-review-reader", value);
    return value;
  }
  const box = $("reader");
  if (box && !box.value) box.value = localStorage.getItem("fibrosis-review-reader") || "";

  if (d.page === "worklist") {
    const rows = Array.from(document.querySelectorAll("#worklist tbody tr"));
    let at = -1;
    const select = (i) => {
      if (!rows.length) return;
      if (at >= 0) rows[at].classList.remove("selected");
      at = Math.max(0, Math.min(rows.length - 1, i));
      rows[at].classList.add("selected");
      rows[at].scrollIntoView({ block: "nearest" });
    };
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "j" || e.key === "ArrowDown") { select(at + 1); e.preventDefault(); }
      else if (e.key === "k" || e.key === "ArrowUp") { select(at - 1); e.preventDefault(); }
      else if (e.key === "Enter" && at >= 0) { rows[at].querySelector("a.open").click(); }
      else if (e.key === "n" && $("next-page")) { $("next-page").click(); }
      else if (e.key === "b" && $("prev-page")) { $("prev-page").click(); }
    });
    return;
  }
  if (d.page !== "study") return;

  const base = $("base"), heat = $("heat"), zoomBox = $("zoom");
  const center = $("wl-center"), width = $("wl-width");
  let scale = 1, timer = null, busy = false;
  function redraw() {
    if (!base) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      base.src = "/image/" + encodeURIComponent(d.image) + ".png?center=" + center.value + "&width=" + width.value;
    }, 60);
  }
  function zoom(f) {
    if (!zoomBox) return;
    scale = f === 0 ? 1 : Math.max(1, Math.min(8, scale * f));
    zoomBox.style.transform = "scale(" + scale + ")";
  }
  function overlay() {
    if (!heat) return;
    heat.hidden = !heat.hidden;
    $("overlay-toggle").setAttribute("aria-pressed", String(!heat.hidden));
  }
  function reset() { if (center) { center.value = 0.5; width.value = 1; redraw(); } zoom(0); }
  if (center) { center.addEventListener("input", redraw); width.addEventListener("input", redraw); }
  if ($("zoom-in")) { $("zoom-in").addEventListener("click", () => zoom(1.25)); $("zoom-out").addEventListener("click", () => zoom(0.8)); }
  if ($("reset")) $("reset").addEventListener("click", reset);
  if ($("overlay-toggle")) $("overlay-toggle").addEventListener("click", overlay);

  async function label(call) {
    if (d.readonly === "1" || busy) return;
    const status = $("save-status");
    const who = reader();
    if (!who) { status.textContent = "enter your initials or code (reader) first"; if (box) box.focus(); return; }
    busy = true;
    status.textContent = "saving…";
    try {
      const res = await fetch("/label", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": d.csrf },
        body: JSON.stringify({ level: d.level, key: d.key, call: call, reader: who }),
      });
      if (!res.ok) { status.textContent = "not saved: " + (await res.text()); busy = false; return; }
      const got = await res.json();
      status.textContent = "saved: " + got.call + " (" + got.reader + ")";
      $("current-label").dataset.call = got.call;
      if (d.blinded === "1" || !d.next) { location.reload(); } else { location.href = d.next; }
    } catch (err) {
      status.textContent = "not saved: " + err;
      busy = false;
    }
  }
  document.querySelectorAll("button.call").forEach((b) => b.addEventListener("click", () => label(b.dataset.call)));

  document.addEventListener("keydown", (e) => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const go = (href) => { if (href) location.href = href; };
    switch (e.key) {
      case "p": label("present"); break;
      case "a": label("absent"); break;
      case "u": label("uncertain"); break;
      case "n": case "j": go(d.next); break;
      case "b": case "k": go(d.prev); break;
      case "o": overlay(); break;
      case "+": case "=": zoom(1.25); break;
      case "-": zoom(0.8); break;
      case "0": reset(); break;
      case "Escape": go(d.back); break;
      default: return;
    }
    e.preventDefault();
  });
})();
