// embedstack map: a canvas scatter of the corpus (no libraries, no network). All corpus text reaches the page as
// JSON data and the DOM only through textContent, never as HTML. window.embedstackMap is the page's state.
(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("map-data").textContent);
  const n = D.ids.length;
  const X = Float64Array.from(D.x), Y = Float64Array.from(D.y), C = Int32Array.from(D.c);
  const haystack = D.ids.map((id, i) => (id + "\n" + D.texts[i]).toLowerCase());
  const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
  const plot = document.getElementById("plot"), tip = document.getElementById("tip");
  const search = document.getElementById("search"), count = document.getElementById("count");
  const legend = document.getElementById("legend");
  const PAD = 28, HIT = 8;
  let W = 0, H = 0, base = 1, k = 1, tx = 0, ty = 0;  // screen x = tx + X * base * k; y = ty + (1 - Y) * base * k
  let match = null, hovered = -1, focusCluster = -1;
  const state = {
    ready: false, points: n, total: D.total, method: D.method, clusters: D.clusters.length,
    drawn: 0, highlighted: 0, query: "", scale: 1, hovered: null, frames: 0,
    screenOf: (i) => [tx + X[i] * base * k, ty + (1 - Y[i]) * base * k],
  };
  window.embedstackMap = state;

  const sx = (i) => tx + X[i] * base * k;
  const sy = (i) => ty + (1 - Y[i]) * base * k;
  const radius = () => Math.max(1.5, Math.min(6, 2.2 * Math.sqrt(k) * (n > 5000 ? 0.7 : 1)));
  const labelOf = (c) => D.clusters[c].label.join(" · ");

  function fit() {
    base = Math.max(1, Math.min(W, H) - 2 * PAD);
    k = 1;
    tx = (W - base) / 2;
    ty = (H - base) / 2;
  }

  function resize() {
    const r = plot.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    const first = W === 0;
    W = Math.max(1, r.width);
    H = Math.max(1, r.height);
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (first) fit(); else { const keep = k; const cx = (W / 2 - tx) / (base * k), cy = (H / 2 - ty) / (base * k); fit(); k = keep; tx = W / 2 - cx * base * k; ty = H / 2 - cy * base * k; }
    draw();
  }

  function dot(i, r) {
    ctx.moveTo(sx(i) + r, sy(i));
    ctx.arc(sx(i), sy(i), r, 0, 2 * Math.PI);
  }

  function visible(i, r) {
    const x = sx(i), y = sy(i);
    return x >= -r && x <= W + r && y >= -r && y <= H + r;
  }

  function draw() {
    ctx.clearRect(0, 0, W, H);
    const r = radius();
    let drawn = 0;
    ctx.globalAlpha = match ? 0.18 : 0.85;
    for (let c = 0; c < D.clusters.length; c++) {  // one path per colour: fast for tens of thousands of points
      ctx.beginPath();
      ctx.fillStyle = D.clusters[c].color;
      for (let i = 0; i < n; i++) {
        if (C[i] !== c || !visible(i, r) || (match && match[i])) continue;
        dot(i, r);
        drawn++;
      }
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    if (match) {  // matches on top: larger, outlined
      for (let c = 0; c < D.clusters.length; c++) {
        ctx.beginPath();
        ctx.fillStyle = D.clusters[c].color;
        for (let i = 0; i < n; i++) {
          if (C[i] !== c || !match[i] || !visible(i, r + 2)) continue;
          dot(i, r + 2);
          drawn++;
        }
        ctx.fill();
        ctx.lineWidth = 1.2;
        ctx.strokeStyle = "#111";
        ctx.stroke();
      }
    }
    if (hovered >= 0) {
      ctx.beginPath();
      dot(hovered, r + 4);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.lineJoin = "round";
    for (const cl of D.clusters) {
      const x = tx + cl.x * base * k, y = ty + (1 - cl.y) * base * k, text = cl.label.join(" · ");
      if (x < -200 || x > W + 200 || y < -20 || y > H + 20) continue;
      ctx.lineWidth = 4;
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.strokeText(text, x, y);
      ctx.fillStyle = "#111";
      ctx.fillText(text, x, y);
    }
    state.drawn = drawn;
    state.scale = k;
    state.frames++;
  }

  function nearest(mx, my) {
    let best = -1, bestD = HIT * HIT;
    for (let i = 0; i < n; i++) {
      const dx = sx(i) - mx, dy = sy(i) - my, d = dx * dx + dy * dy;
      if (d <= bestD && (!match || match[i] || best < 0 || !match[best])) { best = i; bestD = d; }
    }
    return best;
  }

  function showTip(i, mx, my) {
    if (i < 0) { tip.hidden = true; return; }
    const id = document.createElement("span"), cl = document.createElement("span"), body = document.createElement("span");
    id.className = "id";
    id.textContent = D.ids[i];
    cl.className = "cluster";
    cl.textContent = "cluster " + (C[i] + 1) + ": " + labelOf(C[i]);
    const t = D.texts[i].replace(/\s+/g, " ").trim();
    body.textContent = t.length > 240 ? t.slice(0, 240) + "…" : t;
    tip.replaceChildren(id, cl, body);
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(mx + 14, W - w - 4)) + "px";
    tip.style.top = Math.max(4, my + 14 + h > H ? my - h - 10 : my + 14) + "px";
  }

  function setMatch(m, label) {
    match = m;
    let hits = 0;
    if (m) for (let i = 0; i < n; i++) hits += m[i];
    state.highlighted = m ? hits : 0;
    count.textContent = m ? `${hits.toLocaleString("en")} ${hits === 1 ? "match" : "matches"}${label}` : `${n.toLocaleString("en")} points`;
    draw();
  }

  function runSearch() {
    const q = search.value.trim().toLowerCase();
    state.query = q;
    focusCluster = -1;
    for (const li of legend.children) li.classList.remove("on");
    if (!q) { setMatch(null, ""); return; }
    const m = new Uint8Array(n);
    for (let i = 0; i < n; i++) m[i] = haystack[i].includes(q) ? 1 : 0;
    setMatch(m, "");
  }

  function zoomAt(f, mx, my) {
    const nk = Math.max(0.2, Math.min(400, k * f));
    f = nk / k;
    tx = mx - (mx - tx) * f;
    ty = my - (my - ty) * f;
    k = nk;
    draw();
  }

  D.clusters.forEach((cl, c) => {
    const li = document.createElement("li"), sw = document.createElement("span");
    const name = document.createElement("span"), size = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = cl.color;
    name.textContent = labelOf(c);
    size.className = "size";
    size.textContent = cl.size.toLocaleString("en");
    li.append(sw, name, size);
    li.addEventListener("click", () => {
      search.value = "";
      state.query = "";
      for (const other of legend.children) other.classList.remove("on");
      if (focusCluster === c) { focusCluster = -1; setMatch(null, ""); return; }
      focusCluster = c;
      li.classList.add("on");
      setMatch(Uint8Array.from(C, (v) => (v === c ? 1 : 0)), ` in cluster ${c + 1}`);
    });
    legend.append(li);
  });

  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
      if (dx || dy) { drag.moved = true; canvas.classList.add("dragging"); tip.hidden = true; }
      tx += dx; ty += dy; drag.x = e.offsetX; drag.y = e.offsetY;
      draw();
      return;
    }
    const i = nearest(e.offsetX, e.offsetY);
    if (i !== hovered) { hovered = i; state.hovered = i < 0 ? null : D.ids[i]; draw(); }
    showTip(i, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("pointerup", () => { drag = null; canvas.classList.remove("dragging"); });
  canvas.addEventListener("pointerleave", () => { if (!drag) { hovered = -1; state.hovered = null; tip.hidden = true; draw(); } });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoomAt(Math.exp(-e.deltaY * 0.0015), e.offsetX, e.offsetY); }, { passive: false });
  canvas.addEventListener("dblclick", () => { fit(); draw(); });
  document.getElementById("zoom-in").addEventListener("click", () => zoomAt(1.5, W / 2, H / 2));
  document.getElementById("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, W / 2, H / 2));
  document.getElementById("reset").addEventListener("click", () => { fit(); draw(); });
  search.addEventListener("input", runSearch);
  window.addEventListener("resize", resize);

  const shown = n < D.total ? `${n.toLocaleString("en")} of ${D.total.toLocaleString("en")} rows` : `${n.toLocaleString("en")} rows`;
  document.getElementById("info").textContent = `${shown} · ${D.method.toUpperCase()} · ${D.clusters.length} clusters`;
  count.textContent = `${n.toLocaleString("en")} points`;
  resize();
  if (search.value) runSearch();  // a query kept by the browser on reload
  state.ready = true;
  document.documentElement.dataset.ready = "true";
})();
