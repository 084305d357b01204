// weir's rollout dashboard: a snapshot on (re)connect, then a frame each second and each
// event as it happens, over one server-sent-events stream. Every name from the config is
// put in the page as text (textContent), never as markup.
"use strict";

const KEEP = 300; // points per version: five minutes at one a second
const state = { services: new Map(), order: [], history: {}, events: [], planes: null, focus: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function bar(versions, big) {
  const b = el("div", { class: big ? "bar big" : "bar", role: "img" });
  const label = versions.map((v) => `${v.name} ${v.weight}%`).join(", ");
  b.setAttribute("aria-label", label);
  b.title = label;
  for (const v of versions) {
    const s = el("span", {}, big && v.weight >= 8 ? `${v.name} ${v.weight}%` : "");
    s.style.width = `${Math.max(0, Math.min(100, v.weight))}%`;
    b.append(s);
  }
  return b;
}

function canaryWeight(s) {
  return s.versions.length > 1 ? s.versions.slice(1).reduce((a, v) => a + v.weight, 0) : 0;
}

// ---- the list ----

function row(s) {
  const tr = el("tr", { "data-service": s.name },
    el("td", {}, s.name),
    el("td", { class: `phase ${s.phase}` }, s.phase),
    el("td", {}, bar(s.versions, false)),
    el("td", {}, s.threshold ? `${s.failedChecks}/${s.threshold}` : "-"));
  tr.addEventListener("click", () => { state.focus = s.name; renderList(); renderDetail(); });
  if (state.focus === s.name) tr.className = "focused";
  return tr;
}

function renderList() {
  const f = $("filter").value.trim().toLowerCase();
  const rows = $("rows");
  const shown = state.order.filter((n) => !f || n.toLowerCase().includes(f));
  rows.replaceChildren(...shown.map((n) => row(state.services.get(n))));
  $("count").textContent = f ? `${shown.length} of ${state.order.length}` : `${state.order.length} services`;
}

// ---- the focused service ----

function chart(title, series, pick, unit) {
  const w = 300, h = 80;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  let max = 0, t0 = Infinity, t1 = -Infinity, last = [];
  for (const [, pts] of series) for (const p of pts) {
    const y = pick(p);
    if (y !== null) max = Math.max(max, y);
    t0 = Math.min(t0, p[0]); t1 = Math.max(t1, p[0]);
  }
  if (max === 0) max = 1;
  const span = Math.max(t1 - t0, 60);
  series.forEach(([name, pts], i) => {
    let d = "";
    for (const p of pts) {
      const y = pick(p);
      if (y === null) continue;
      const x = ((p[0] - (t1 - span)) / span) * w;
      d += `${d ? "L" : "M"}${x.toFixed(1)},${(h - 2 - (y / max) * (h - 6)).toFixed(1)}`;
    }
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    path.setAttribute("class", i === 0 ? "primary" : i === 1 ? "canary" : "other");
    svg.append(path);
    const latest = pts.length ? pick(pts[pts.length - 1]) : null;
    last.push(`${name} ${latest === null ? "-" : latest.toFixed(1)}${unit}`);
  });
  return el("div", { class: "chart" }, el("div", {}, title), svg, el("div", { class: "legend" }, last.join("  ·  ")));
}

function fact(name, value, cls) {
  return el("div", {}, el("b", {}, name), el("span", cls ? { class: cls } : {}, value));
}

function renderDetail() {
  const box = $("detail");
  const s = state.services.get(state.focus);
  if (!s) { box.replaceChildren(el("p", { class: "empty" }, "No service yet.")); return; }
  const hist = state.history[s.name] || {};
  const series = s.versions.map((v) => [v.name, hist[v.name] || []]);
  const facts = el("div", { class: "facts" },
    fact("Phase", s.phase, `phase ${s.phase}`),
    fact("Canary weight", `${canaryWeight(s)}%` + (s.maxWeight ? ` of ${s.maxWeight}%` : "")),
    fact("Failed checks", s.threshold ? `${s.failedChecks} / ${s.threshold}` : "-"),
    fact("Revisions", `${s.primaryRevision || "-"} → ${s.canaryRevision || "-"}`),
    s.iterations ? fact("Iterations", String(s.iterations)) : null,
    s.mirrored ? fact("Mirroring", "on") : null,
    s.paused ? fact("Paused", "yes") : null,
    s.waitingGate ? fact("Waiting for", s.waitingGate) : null,
    s.replicas ? fact("Replicas in sync", `${s.replicas.synced} / ${s.replicas.live}`) : null);
  const parts = [
    el("h2", {}, s.name, el("span", { class: "muted" }, `  ${s.namespace}`)),
    bar(s.versions, true),
    facts,
    el("p", { class: "message" }, s.message || ""),
  ];
  if (s.lastEvent) parts.push(el("p", { class: "last-event" }, el("b", {}, "Last event: "), s.lastEvent));
  if (s.guard) {
    const frac = Math.min(1, Math.log10(1 + s.guard.evidence) / Math.log10(1 + s.guard.bound));
    const m = el("div", { class: "meter", title: `evidence ${s.guard.evidence} of ${s.guard.bound}` }, el("span"));
    m.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
    parts.push(el("div", { class: "guard" }, el("b", {}, "Fast-fail guard: "),
      `evidence ${s.guard.evidence} (rolls back at ${s.guard.bound})`, m));
  }
  parts.push(el("div", { class: "charts" },
    chart("Requests / s", series, (p) => p[1], ""),
    chart("Success rate", series, (p) => p[2], "%"),
    chart("p99 latency", series, (p) => p[3], " ms")));
  if (s.checks.length) {
    const t = el("table", {}, el("thead", {}, el("tr", {},
      el("th", {}, "Check"), el("th", {}, "Verdict"), el("th", {}, "Value"), el("th", {}, "Threshold"), el("th", {}, "Detail"))));
    const body = el("tbody");
    for (const c of s.checks) {
      body.append(el("tr", {}, el("td", {}, c.name), el("td", { class: `verdict ${c.verdict}` }, c.verdict),
        el("td", {}, c.value === null ? "-" : String(c.value)), el("td", {}, c.threshold), el("td", {}, c.detail)));
    }
    t.append(body);
    parts.push(t);
  }
  box.replaceChildren(...parts);
}

// ---- planes and events ----

function renderPlanes() {
  const p = state.planes;
  if (!p || !p.planes.length) { $("planes").replaceChildren(el("p", { class: "empty" }, "This process serves the traffic itself.")); return; }
  const t = el("table", {}, el("thead", {}, el("tr", {},
    el("th", {}, "Kind"), el("th", {}, "Name"), el("th", {}, "State"), el("th", {}, "Version"), el("th", {}, "req/s"))));
  const body = el("tbody");
  for (const d of p.planes) {
    body.append(el("tr", {}, el("td", {}, d.kind), el("td", {}, d.name), el("td", {}, d.state + (d.error ? `: ${d.error}` : "")),
      el("td", {}, `${d.version} / ${p.version}`), el("td", {}, String(d.rps))));
  }
  t.append(body);
  $("planes").replaceChildren(t);
}

function eventLine(e) {
  const at = new Date(e.timestampMs).toLocaleTimeString();
  return el("li", e.warning ? { class: "warning" } : {}, `${at} ${e.service}: ${e.message}`);
}

function renderEvents() {
  $("events").replaceChildren(...state.events.slice(0, 200).map(eventLine));
}

// ---- the stream ----

function putService(s) {
  if (!state.services.has(s.name)) state.order.push(s.name);
  state.services.set(s.name, s);
}

function pickFocus() {
  if (state.focus && state.services.has(state.focus)) return;
  const busy = state.order.find((n) => !["Static", "Initialized", "Succeeded"].includes(state.services.get(n).phase));
  state.focus = busy || state.order[0] || null;
}

function onSnapshot(data) {
  state.services.clear();
  state.order = [];
  data.services.forEach(putService);
  state.history = data.history || {};
  state.events = (data.events || []).slice().reverse();
  state.planes = data.planes;
  pickFocus();
  renderList(); renderDetail(); renderPlanes(); renderEvents();
}

function onFrame(data) {
  data.services.forEach(putService);
  for (const [svc, versions] of Object.entries(data.traffic || {})) {
    const h = (state.history[svc] = state.history[svc] || {});
    for (const [v, p] of Object.entries(versions)) {
      const pts = (h[v] = h[v] || []);
      pts.push(p);
      if (pts.length > KEEP) pts.splice(0, pts.length - KEEP);
    }
  }
  state.planes = data.planes;
  pickFocus();
  if (data.services.length) renderList();
  renderDetail(); renderPlanes();
}

function onEvent(e) {
  state.events.unshift(e);
  if (state.events.length > 200) state.events.length = 200;
  renderEvents();
}

function connect() {
  const src = new EventSource("/ui/events");
  const link = $("link");
  src.addEventListener("open", () => {
    link.textContent = "live";
    link.className = "link live";
    console.info("weir dashboard: live");
  });
  src.addEventListener("error", () => { link.textContent = "reconnecting"; link.className = "link"; });
  src.addEventListener("snapshot", (m) => onSnapshot(JSON.parse(m.data)));
  src.addEventListener("frame", (m) => onFrame(JSON.parse(m.data)));
  src.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
}

// ---- theme ----

function applyTheme(t) {
  const root = document.documentElement;
  root.classList.toggle("dark", t === "dark");
  root.classList.toggle("light", t === "light");
  $("theme").textContent = t;
}

function start() {
  let theme = "auto";
  try { theme = localStorage.getItem("weir-theme") || "auto"; } catch (_) { /* storage off */ }
  const asked = new URLSearchParams(location.search).get("theme");
  if (asked) theme = asked;
  applyTheme(theme);
  $("theme").addEventListener("click", () => {
    const next = { auto: "light", light: "dark", dark: "auto" }[$("theme").textContent] || "auto";
    applyTheme(next);
    try { localStorage.setItem("weir-theme", next); } catch (_) { /* storage off */ }
  });
  $("filter").addEventListener("input", renderList);
  const asked_focus = new URLSearchParams(location.search).get("service");
  if (asked_focus) state.focus = asked_focus;
  connect();
}

start();
