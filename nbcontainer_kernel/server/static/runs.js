// The runs page and a run's page, filled from /nbcontainer/api/. Everything a run wrote
// (names, parameters, values, log lines) goes into the page as text (textContent, never
// markup); its executed notebook is shown in a sandboxed frame the server also serves
// with a sandboxing policy. Paging and filtering happen in the server.
"use strict";

(function () {
  const body = document.body;
  const BASE = body.dataset.baseUrl || "/";
  const API = BASE + "nbcontainer/api/";
  const RUN_ID = body.dataset.runId;
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function xsrf() {
    const m = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.method && opts.method !== "GET") opts.headers["X-XSRFToken"] = xsrf();
    const res = await fetch(API + path, opts);
    const doc = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((doc.error || res.status) + ": " + (doc.reason || res.statusText));
    return doc;
  }

  function showError(err) {
    const p = $("error");
    p.textContent = String(err && err.message ? err.message : err);
    p.hidden = false;
  }

  function pairs(obj) {
    return Object.entries(obj || {})
      .map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v)))
      .join(" ");
  }

  function lastMetrics(metrics) {
    const out = {};
    for (const [k, v] of Object.entries(metrics || {})) {
      out[k] = v && typeof v === "object" && "last" in v ? v.last : v;
    }
    return out;
  }

  function seconds(s) {
    if (s === null || s === undefined) return "";
    return s < 90 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
  }

  function when(t) {
    return new Date(t * 1000).toLocaleString();
  }

  function statusBadge(status) {
    return el("span", status, "status " + status);
  }

  function runLink(id) {
    const a = el("a", id);
    a.href = BASE + "nbcontainer/runs/" + encodeURIComponent(id);
    return a;
  }

  // ------------------------------------------------------------- the runs table
  const list = {
    rows: [],
    next: null,
    open: new Set(),
    children: new Map(),
    timer: null,
  };

  function query(extra) {
    const q = new URLSearchParams({ parent: "none", limit: "50" });
    for (const id of ["q", "status", "kind", "backend"]) {
      const v = $(id).value;
      if (v) q.set(id, v);
    }
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return "runs?" + q.toString();
  }

  function rowCells(tr, r, child) {
    const toggle = el("td");
    if (!child && r.children) {
      const b = el("button", list.open.has(r.id) ? "▾" : "▸", "toggle");
      b.type = "button";
      b.title = "children";
      b.addEventListener("click", () => toggleChildren(r.id));
      toggle.appendChild(b);
    }
    if (!child) tr.appendChild(toggle);
    const name = el("td");
    name.appendChild(runLink(r.id));
    if (r.children) {
      const counts = Object.entries(r.children).map(([s, n]) => n + " " + s.toLowerCase());
      name.appendChild(el("div", counts.join(", "), "muted"));
    }
    tr.appendChild(name);
    const st = el("td");
    st.appendChild(statusBadge(r.status));
    tr.appendChild(st);
    tr.appendChild(el("td", pairs(r.params), "params"));
    tr.appendChild(el("td", pairs(lastMetrics(r.metrics)), "metrics"));
    tr.appendChild(el("td", pairs(r.recorded), "recorded"));
    tr.appendChild(el("td", seconds(r.duration)));
    if (!child) {
      tr.appendChild(el("td", r.backend));
      tr.appendChild(el("td", r.kind));
      tr.appendChild(el("td", when(r.created)));
    }
  }

  function renderList() {
    const tbody = $("runs").querySelector("tbody");
    tbody.replaceChildren();
    for (const r of list.rows) {
      const tr = el("tr");
      tr.dataset.run = r.id;
      rowCells(tr, r, false);
      tbody.appendChild(tr);
      if (list.open.has(r.id)) {
        for (const c of list.children.get(r.id) || []) {
          const ctr = el("tr", null, "child");
          ctr.dataset.run = c.id;
          ctr.appendChild(el("td"));
          rowCells(ctr, c, true);
          for (let i = 0; i < 3; i++) ctr.appendChild(el("td"));
          tbody.appendChild(ctr);
        }
      }
    }
    $("empty").hidden = list.rows.length > 0;
    $("more").hidden = !list.next;
  }

  async function loadChildren(id) {
    const doc = await api("runs?" + new URLSearchParams({ parent: id, limit: "500" }));
    list.children.set(id, doc.runs.slice().reverse());
  }

  async function toggleChildren(id) {
    if (list.open.has(id)) list.open.delete(id);
    else {
      list.open.add(id);
      await loadChildren(id).catch(showError);
    }
    renderList();
  }

  function active(rows) {
    return rows.some((r) => !TERMINAL.has(r.status));
  }

  async function refreshList() {
    // The pages loaded so far, again from the first (the newest may be new runs).
    const shown = Math.max(50, list.rows.length);
    const doc = await api(query({ limit: String(Math.min(500, shown)) }));
    list.rows = doc.runs;
    list.next = doc.next;
    for (const id of list.open) await loadChildren(id).catch(() => {});
    renderList();
    schedule(active(list.rows) || [...list.children.values()].some(active));
  }

  function schedule(live) {
    clearTimeout(list.timer);
    $("live").hidden = !live;
    if (live) list.timer = setTimeout(() => refreshList().catch(showError), POLL_MS);
  }

  async function moreRuns() {
    const doc = await api(query({ cursor: list.next }));
    list.rows = list.rows.concat(doc.runs);
    list.next = doc.next;
    renderList();
  }

  async function startList() {
    $("list").hidden = false;
    document.title = "nbcontainer runs";
    // The backends' names fill their filter meanwhile: the first rows wait for nothing.
    api("backends")
      .then((doc) => doc.backends.forEach((b) => $("backend").appendChild(el("option", b))))
      .catch(() => {});
    let typing = null;
    $("filters").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        list.rows = [];
        refreshList().catch(showError);
      }, 250);
    });
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("more").addEventListener("click", () => moreRuns().catch(showError));
    await refreshList();
  }

  // --------------------------------------------------------------- a run's page
  const one = { doc: null, timer: null, source: null, logAt: 0 };

  function kvTable(table, obj) {
    table.replaceChildren();
    const entries = Object.entries(obj || {});
    if (!entries.length) table.appendChild(el("tr")).appendChild(el("td", "none"));
    for (const [k, v] of entries) {
      const tr = el("tr");
      tr.appendChild(el("td", k));
      tr.appendChild(el("td", typeof v === "string" ? v : JSON.stringify(v)));
      table.appendChild(tr);
    }
  }

  function timeline(doc) {
    const box = $("timeline");
    box.replaceChildren();
    const phases = doc.phases || [];
    const end = TERMINAL.has(doc.status) ? null : Date.now() / 1000;
    const spans = [];
    for (let i = 0; i < phases.length; i++) {
      const next = i + 1 < phases.length ? phases[i + 1].at : end;
      if (next === null) break;
      spans.push([phases[i].phase, Math.max(0, next - phases[i].at)]);
    }
    const total = spans.reduce((s, [, d]) => s + d, 0) || 1;
    for (const [phase, d] of spans) {
      const span = el("span", phase.toLowerCase() + " " + seconds(d), phase);
      span.style.flexGrow = String(d / total);
      span.title = phase + ": " + seconds(d);
      box.appendChild(span);
    }
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function charts(history) {
    const box = $("charts");
    box.replaceChildren();
    const names = Object.keys(history || {});
    if (!names.length) box.appendChild(el("p", "none", "muted"));
    for (const name of names) {
      const pts = history[name].filter((p) => typeof p.value === "number");
      const W = 320, H = 120, P = 24;
      const chart = svg("svg", { width: W, height: H, class: "chart", role: "img" });
      const title = svg("title");
      title.textContent = name;
      chart.appendChild(title);
      const xs = pts.map((p, i) => (p.step === null ? i : p.step));
      const ys = pts.map((p) => p.value);
      const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
      const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
      const sx = (x) => P + ((x - x0) / (x1 - x0 || 1)) * (W - 2 * P);
      const sy = (y) => H - P - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * P);
      chart.appendChild(svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P }));
      const line = svg("polyline", {
        points: pts.map((p, i) => sx(xs[i]) + "," + sy(ys[i])).join(" "),
      });
      chart.appendChild(line);
      const label = svg("text", { x: P, y: 12 });
      label.textContent = name + (ys.length ? " (last " + ys[ys.length - 1] + ")" : "");
      chart.appendChild(label);
      const range = svg("text", { x: W - P, y: H - 6, "text-anchor": "end" });
      range.textContent = pts.length ? "step " + x0 + "–" + x1 : "";
      chart.appendChild(range);
      box.appendChild(chart);
    }
  }

  function renderRun(doc) {
    document.title = doc.id + " · nbcontainer";
    $("run-title").textContent = doc.id;
    $("run-status").replaceWith(Object.assign(statusBadge(doc.status), { id: "run-status" }));
    $("cancel").hidden = TERMINAL.has(doc.status);
    const facts = [doc.kind + " run", "on " + doc.backend, "created " + when(doc.created)];
    if (doc.duration !== null) facts.push("took " + seconds(doc.duration));
    if (doc.image) facts.push("image " + doc.image);
    if (doc.verdict) facts.push("outputs " + doc.verdict);
    if (doc.parent) facts.push("child of " + doc.parent);
    $("run-facts").textContent = facts.join(" · ");
    $("run-failure").hidden = !doc.failure;
    $("run-failure").textContent = doc.failure || "";
    timeline(doc);
    kvTable($("run-params"), doc.params);
    kvTable($("run-recorded"), doc.recorded);
    charts(doc.metric_history);
    const outs = $("outputs");
    outs.replaceChildren();
    for (const f of doc.outputs) outs.appendChild(el("li", f));
    if (!doc.outputs.length) outs.appendChild(el("li", "none yet"));
    if (doc.notebooks.length && $("notebook-box").hidden) {
      const src = API + "runs/" + encodeURIComponent(doc.id) + "/notebook";
      $("notebook").src = src;
      $("notebook-link").href = src;
      $("notebook-box").hidden = false;
    }
  }

  async function renderChildren(doc) {
    if (!doc.children) return;
    const kids = await api("runs?" + new URLSearchParams({ parent: doc.id, limit: "500" }));
    $("children-box").hidden = false;
    const tbody = $("children").querySelector("tbody");
    tbody.replaceChildren();
    for (const c of kids.runs.slice().reverse()) {
      const tr = el("tr");
      tr.dataset.run = c.id;
      rowCells(tr, c, true);
      tbody.appendChild(tr);
    }
  }

  function followLog(id) {
    const pre = $("log");
    const url = API + "runs/" + encodeURIComponent(id) + "/logs?follow=1&since=" + one.logAt;
    const source = new EventSource(url, { withCredentials: true });
    one.source = source;
    $("log-state").textContent = "following";
    source.onmessage = (e) => {
      pre.appendChild(document.createTextNode(JSON.parse(e.data) + "\n"));
      one.logAt = Number(e.lastEventId) + 1;
      pre.scrollTop = pre.scrollHeight;
    };
    source.addEventListener("end", () => {
      source.close();
      $("log-state").textContent = "";
      refreshRun().catch(showError);
    });
    source.onerror = () => {
      $("log-state").textContent = "reconnecting";
    };
  }

  async function readLog(id) {
    const doc = await api("runs/" + encodeURIComponent(id) + "/logs");
    $("log").textContent = doc.lines.join("\n");
    one.logAt = doc.next;
  }

  async function refreshRun() {
    const doc = await api("runs/" + encodeURIComponent(RUN_ID));
    one.doc = doc;
    renderRun(doc);
    await renderChildren(doc);
    clearTimeout(one.timer);
    const live = !TERMINAL.has(doc.status) || (doc.children && !sweepDone(doc.children));
    $("live").hidden = !live;
    if (live) one.timer = setTimeout(() => refreshRun().catch(showError), POLL_MS);
  }

  function sweepDone(children) {
    return Object.keys(children).every((s) => TERMINAL.has(s));
  }

  async function cancelRun() {
    $("cancel").disabled = true;
    try {
      await api("runs/" + encodeURIComponent(RUN_ID) + "/cancel", { method: "POST" });
    } catch (err) {
      showError(err);
    }
    await refreshRun().catch(showError);
    $("cancel").disabled = false;
  }

  async function startRun() {
    $("run").hidden = false;
    $("cancel").addEventListener("click", cancelRun);
    await refreshRun();
    if (TERMINAL.has(one.doc.status)) await readLog(RUN_ID);
    else followLog(RUN_ID);
  }

  (RUN_ID ? startRun() : startList()).catch(showError);
})();
