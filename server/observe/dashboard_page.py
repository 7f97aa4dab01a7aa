"""The dashboard's page: one HTML document with inline CSS and JavaScript, loading
nothing from anywhere (server.observe.dashboard serves it with a Content-Security-Policy
that forbids it). ``render`` fills in the numbers that shape it; it runs once, at import
of server.observe.dashboard, and the result is a constant any thread may send.

What the script does: it polls the feed (server.observe.dashboard.feed) about once a
second, the next request only after the previous answer; keeps the server's history
samples (at most HISTORY + 1), the chart points derived from them and at most ROWS event
rows; derives every rate from the samples (see the feed's module docstring); and inserts
event fields as text, never as markup. Each redraw dispatches a ``dashboard-update``
event and counts itself in ``body[data-updates]``, which the browser tests wait on.
"""

from __future__ import annotations

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>echo-service dashboard</title>
<style>
:root{--bg:#f6f7f9;--card:#fff;--fg:#1b1f24;--dim:#5c6670;--line:#d8dde3;--a:#1f6feb;--b:#d9480f;--ok:#1a7f37;
--bad:#cf222e;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;--dim:#8b949e;--line:#30363d;
--a:#58a6ff;--b:#ffa657;--ok:#3fb950;--bad:#f85149}}
*{box-sizing:border-box}body{margin:0;padding:12px;background:var(--bg);color:var(--fg)}
header{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:baseline;margin-bottom:10px}
h1{font-size:18px;margin:0}h2{font-size:13px;margin:0 0 6px;color:var(--dim);font-weight:600}
.pill{padding:1px 8px;border-radius:9px;color:#fff;background:var(--dim);font-size:12px}
.pill.ok{background:var(--ok)}.pill.bad{background:var(--bad)}.dim{color:var(--dim)}
.grid{display:grid;gap:10px;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));margin-bottom:10px}
.wide{grid-template-columns:repeat(auto-fit,minmax(280px,1fr))}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px;min-width:0;
overflow-x:auto}
.big{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums;white-space:nowrap}.sub{font-size:12px;color:var(--dim)}
svg{width:100%;height:90px;display:block}svg .l1{stroke:var(--a)}svg .l2{stroke:var(--b);stroke-dasharray:4 3}
svg polyline{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}svg .axis{stroke:var(--line)}
.legend{font-size:12px;color:var(--dim)}.legend b{font-weight:600}.k1{color:var(--a)}.k2{color:var(--b)}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:2px 4px;text-align:right;border-bottom:1px solid var(--line)}
td:first-child,th:first-child{text-align:left}
#events{list-style:none;margin:0;padding:0;max-height:320px;overflow-y:auto;font:12px/1.5 ui-monospace,monospace}
#events li{overflow-wrap:anywhere;border-bottom:1px solid var(--line)}
td:first-child{overflow-wrap:anywhere}
#events .warning{color:var(--b)}#events .error{color:var(--bad)}
</style></head><body>
<header><h1>echo-service</h1><span id="status" class="pill">connecting</span>
<span class="dim">version <span id="version">?</span> &middot; Python <span id="python">?</span>
&middot; up <span id="uptime">?</span></span></header>
<section class="grid">
<div class="card"><h2>Connections active</h2><div class="big" id="active">0</div>
<div class="sub">peak <span id="peak">0</span></div></div>
<div class="card"><h2>Accepted per second</h2><div class="big" id="accept-rate">0</div>
<div class="sub"><span id="accepted">0</span> in all</div></div>
<div class="card"><h2>Bytes in per second</h2><div class="big" id="in-rate">0</div>
<div class="sub"><span id="bytes-in">0</span> in all</div></div>
<div class="card"><h2>Bytes out per second</h2><div class="big" id="out-rate">0</div>
<div class="sub"><span id="bytes-out">0</span> in all</div></div>
<div class="card"><h2>Rejected per second</h2><div class="big" id="reject-rate">0</div>
<div class="sub"><span id="rejected">0</span> in all</div></div>
<div class="card"><h2>Timeouts</h2><div class="big" id="timeouts">0</div>
<div class="sub"><span id="timeout-rate">0</span>/s now</div></div>
<div class="card"><h2>Log events dropped</h2><div class="big" id="log-dropped">0</div>
<div class="sub">errors <span id="errors">0</span>, accept errors <span id="accept-errors">0</span></div></div>
</section>
<section class="grid wide" id="charts"></section>
<section class="grid wide">
<div class="card"><h2>Closed, by reason</h2><table id="closed-table"><thead><tr><th>reason</th><th>per s</th>
<th>total</th></tr></thead><tbody></tbody></table></div>
<div class="card"><h2>Rejected and timed out, by reason</h2><table id="limits-table"><thead><tr><th>reason</th>
<th>per s</th><th>total</th></tr></thead><tbody></tbody></table></div>
<div class="card"><h2>Listeners</h2><table id="listeners"><thead><tr><th>listener</th>
<th>accepted/s</th><th>in/s</th><th>out/s</th></tr></thead><tbody></tbody></table></div>
<div class="card" id="workers-card" hidden><h2>Workers <span class="dim" id="restarts"></span></h2><table id="workers">
<thead><tr><th>slot</th><th>pid</th><th>gen</th><th>active</th><th>accepted/s</th><th>restarts</th></tr></thead>
<tbody></tbody></table></div>
<div class="card" id="faults-card" hidden><h2>Faults <span class="dim" id="faults-active"></span></h2>
<table id="faults"><thead><tr><th>rule</th><th>fired</th><th>left</th></tr></thead><tbody></tbody></table></div>
</section>
<section class="card"><h2>Connections <span class="dim" id="conn-total"></span>
<select id="conn-sort"><option value="age">oldest</option><option value="bytes">most bytes</option></select>
<a id="conn-json">JSON</a></h2><table id="connections"><thead><tr><th>conn</th>
<th>listener</th><th>worker</th><th>peer</th><th>age</th><th>in</th><th>out</th><th>rtt</th></tr></thead><tbody></tbody>
</table></section>
<section class="card"><h2>Latest events <span class="dim" id="event-note"></span></h2><ol id="events"></ol></section>
<script>
"use strict";
const HISTORY = __HISTORY__, ROWS = __ROWS__, POLL_MS = __POLL__, FEED = __FEED__, SPAN_S = __SPAN__;
const CONN_ROWS = __CONN_ROWS__, CONN_POLL_MS = __CONN_POLL__;
// [chart id, title, first series, second series, unit of its caption]
const CHARTS = [["active", "Connections active", "active", null, ""],
  ["accepts", "Accepted per second", "accepted", null, "/s"],
  ["bytes", "Bytes per second, in and out", "in", "out", "/s"],
  ["rejects", "Rejected and timed out per second", "rejected", "timed_out", "/s"]];
const SERIES = ["active", "accepted", "in", "out", "rejected", "timed_out"];
// Connections are counted when they happen, so their rates are per second. Bytes of open
// connections reach the counters once a second, on a clock that drifts against the
// sampler's: a one-second difference would show a steady stream as 0, then double. So
// byte rates are taken over the last BYTES_WINDOW samples (about three seconds).
const BYTES_WINDOW = 3, WINDOW = {in: BYTES_WINDOW, out: BYTES_WINDOW};
// samples: the server's history (one a second); history: the chart points derived from it.
const state = {updates: 0, seq: 0, sampleSeq: 0, skipped: 0, samples: [], times: [], prev: null, failures: 0,
  history: {}};
window.dashboard = state;
for (const k of SERIES) state.history[k] = [];
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = String(text);
  return node;
}
function num(n) {
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(a >= 10 ? 0 : 1);
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hms = new Date((s % 86400) * 1000).toISOString().slice(11, 19);
  return d ? d + "d " + hms : hms;
}
function span(s) {  // how much history the charts show, for their captions
  if (s >= SPAN_S - 1) return Math.round(SPAN_S / 60) + " min";
  return s < 120 ? Math.round(s) + " s" : Math.floor(s / 60) + " min";
}
function put(id, value, text) { const n = $(id); n.dataset.value = String(value); n.textContent = text; }
function sum(o) { return Object.values(o).reduce((a, b) => a + b, 0); }
function makeCharts() {
  for (const [id, title, a, b] of CHARTS) {
    const card = el("div", "card"), svg = document.createElementNS(SVG, "svg");
    card.append(el("h2", null, title));
    svg.setAttribute("viewBox", "0 0 300 100");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.id = "chart-" + id;
    const axis = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", 0], ["x2", 300], ["y1", 99.5], ["y2", 99.5], ["class", "axis"]]) {
      axis.setAttribute(k, v);
    }
    svg.append(axis);
    for (const [i, key] of [[1, a], [2, b]]) {
      if (!key) continue;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", "l" + i);
      line.dataset.series = key;
      svg.append(line);
    }
    const legend = el("div", "legend");
    legend.id = "legend-" + id;
    card.append(svg, legend);
    $("charts").append(card);
  }
}
// The server's samples after the last one seen; a sample older than the last (a restart,
// another server) starts the history again. At most HISTORY + 1 samples are kept.
function addSamples(list) {
  for (const sample of list) {
    const last = state.samples[state.samples.length - 1];
    if (last && (sample.t <= last.t || sample.seq <= last.seq)) state.samples = [];
    state.samples.push(sample);
  }
  if (state.samples.length > HISTORY + 1) state.samples.splice(0, state.samples.length - HISTORY - 1);
  if (state.samples.length) state.sampleSeq = state.samples[state.samples.length - 1].seq;
  const points = {}, times = [];
  for (const k of SERIES) points[k] = [];
  for (let i = 1; i < state.samples.length; i++) {
    const b = state.samples[i];
    times.push(b.t);
    points.active.push(b.active);
    for (const k of SERIES.slice(1)) {
      const a = state.samples[Math.max(0, i - (WINDOW[k] || 1))];
      points[k].push(Math.max(0, (b[k] - a[k]) / (b.t - a.t)));
    }
  }
  state.history = points;
  state.times = times;
}
// The rate of f over the newest `window` seconds of history: what /stats counted then.
function sampleRate(f, window = 1) {
  const n = state.samples.length, b = state.samples[n - 1], a = state.samples[Math.max(0, n - 1 - window)];
  return n > 1 && b.t > a.t ? Math.max(0, (f(b) - f(a)) / (b.t - a.t)) : 0;
}
function drawCharts() {
  const last = state.times[state.times.length - 1] || 0;
  const held = state.samples.length > 1 ? last - state.samples[0].t : 0;
  for (const [id, , a, b, unit] of CHARTS) {
    const keys = b ? [a, b] : [a];
    const highest = Math.max(0, ...keys.flatMap((k) => state.history[k])), top = Math.max(1, highest);
    for (const line of $("chart-" + id).querySelectorAll("polyline")) {
      const series = state.history[line.dataset.series];
      line.setAttribute("points", series.map((v, i) =>
        (300 - (last - state.times[i]) * 300 / SPAN_S).toFixed(1) + "," + (99 - v * 97 / top).toFixed(1)).join(" "));
    }
    const legend = $("legend-" + id), fmt = id === "bytes" ? bytes : num;
    legend.dataset.value = String(highest);
    legend.replaceChildren(el("span", null, "max " + fmt(highest) + unit + " over the last " + span(held)
      + (b ? " \u00b7 " : "")));
    if (b) legend.append(el("b", "k1", a), " / ", el("b", "k2", b));
  }
}
function table(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) {  // a cell is text, or [text, a smaller line under it]
      const td = el("td", null, Array.isArray(c) ? c[0] : c);
      if (Array.isArray(c)) td.append(el("div", "sub", c[1]));
      tr.append(td);
    }
    return tr;
  }));
}
function render(doc) {
  const s = doc.stats;
  addSamples(doc.samples || []);
  const accepted = sampleRate((x) => x.accepted);
  const bin = sampleRate((x) => x.in, BYTES_WINDOW), bout = sampleRate((x) => x.out, BYTES_WINDOW);
  const rejected = sampleRate((x) => x.rejected), timedOut = sampleRate((x) => x.timed_out);
  // By reason and by worker: over the last two polls of the snapshot (about a second).
  const prev = state.prev && s.uptime_s > state.prev.uptime_s && s.accepted >= state.prev.accepted ? state.prev : null;
  const rate = (f) => prev ? Math.max(0, (f(s) - f(prev)) / (s.uptime_s - prev.uptime_s)) : 0;
  put("version", doc.version, doc.version); put("python", doc.python, doc.python);
  put("uptime", s.uptime_s, duration(s.uptime_s));
  put("active", s.active, num(s.active)); put("peak", s.peak_active, num(s.peak_active));
  put("accepted", s.accepted, num(s.accepted)); put("accept-rate", accepted, num(accepted));
  put("bytes-in", s.bytes_received, bytes(s.bytes_received)); put("in-rate", bin, bytes(bin) + "/s");
  put("bytes-out", s.bytes_sent, bytes(s.bytes_sent)); put("out-rate", bout, bytes(bout) + "/s");
  put("rejected", sum(s.rejected), num(sum(s.rejected))); put("reject-rate", rejected, num(rejected));
  put("timeouts", sum(s.timed_out), num(sum(s.timed_out))); put("timeout-rate", timedOut, num(timedOut));
  put("log-dropped", s.log_events_dropped, num(s.log_events_dropped));
  put("errors", s.errors, num(s.errors)); put("accept-errors", s.accept_errors, num(s.accept_errors));
  const status = $("status");
  status.textContent = doc.draining ? "draining" : doc.ready ? "ready" : "not ready";
  status.className = "pill " + (doc.ready ? "ok" : "bad");
  const byReason = (field) => Object.entries(s[field]).map(([k, v]) => [k, num(rate((x) => x[field][k] || 0)), num(v)]);
  table("closed-table", byReason("closed_by_reason"));
  table("limits-table", [...byReason("rejected").map((row) => ["rejected: " + row[0], row[1], row[2]]),
    ...byReason("timed_out").map((row) => ["timed out: " + row[0], row[1], row[2]]),
    ...Object.entries((s.udp || {}).dropped || {}).map(([k, v]) => ["UDP dropped: " + k,
      num(rate((x) => ((x.udp || {}).dropped || {})[k] || 0)), num(v)])]);
  const per = (key, i) => (x) => ((x.listeners || {})[key] || [0, 0, 0])[i];
  table("listeners", doc.listeners.map((l) => !l.key ? [[l.name, l.address]] : [[l.name, l.address],
    num(sampleRate(per(l.key, 0))), bytes(sampleRate(per(l.key, 1), BYTES_WINDOW)) + "/s",
    bytes(sampleRate(per(l.key, 2), BYTES_WINDOW)) + "/s"]));
  const workers = s.workers || [];
  $("workers-card").hidden = workers.length === 0;
  if (workers.length) {
    const accepted = (w) => (x) => ((x.workers || []).find((o) => o.pid === w.pid) || w).accepted;
    table("workers", workers.map((w) => [w.worker, w.pid, w.generation, num(w.active), num(rate(accepted(w))),
      w.restarts]));
    $("restarts").textContent = "(" + (s.restarts || 0) + " restarts in all)";
  }
  const faults = doc.faults;
  $("faults-card").hidden = !faults;
  if (faults) {
    table("faults", faults.rules.map((rule, i) => [JSON.stringify(rule), num(faults.fired[i]),
      faults.left[i] === null ? "" : num(faults.left[i])]));
    $("faults-active").textContent = faults.active.map((a) => a.kind + (a.listener ? " " + a.listener : "") +
      " " + a.remaining_s.toFixed(1) + " s").join(", ");
  }
  addEvents(doc);
  drawCharts();
  state.prev = s;
  state.updates++;
  document.body.dataset.updates = String(state.updates);
  dispatchEvent(new Event("dashboard-update"));
}
// The close reason comes right after the event's name: on a phone the row wraps, but
// what matters most is read first.
const DETAILS = ["worker", "count", "bytes_in", "bytes_out", "duration_s", "address", "admin_address",
  "errno", "dropped", "active", "accepted", "message"];
function addEvents(doc) {
  const list = $("events");
  for (const e of doc.events) {
    const parts = [e.ts.slice(11, 23), e.event];
    if (e.reason !== undefined) parts.push("reason=" + e.reason);
    if (e.conn !== undefined) parts.push("#" + e.conn);
    if (e.peer) parts.push(e.peer);
    for (const k of DETAILS) if (e[k] !== undefined && typeof e[k] !== "object") parts.push(k + "=" + e[k]);
    const li = el("li", e.level, parts.join("  "));
    li.dataset.event = e.event;
    list.prepend(li);
  }
  while (list.children.length > ROWS) list.lastElementChild.remove();
  state.skipped += doc.skipped;
  if (state.skipped) {
    $("event-note").textContent = "(" + num(state.skipped) + " not shown: at most " + FEED + " per update)";
  }
  state.seq = doc.seq;
}
async function poll() {
  try {
    const query = "?since=" + state.seq + "&samples=" + state.sampleSeq;
    const answer = await fetch("/dashboard.json" + query, {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
  } catch (error) {
    state.failures++;
    $("status").textContent = "disconnected";
    $("status").className = "pill bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
// The top CONN_ROWS live connections (GET /connections), less often than the feed: a
// listing asks every scheduler, so the page costs the echo path little even at 10,000.
async function pollConnections() {
  try {
    const query = "/connections?per_page=" + CONN_ROWS + "&sort=" + $("conn-sort").value;
    $("conn-json").href = query;
    const answer = await fetch(query, {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const doc = await answer.json();
    $("conn-total").textContent = "(" + num(doc.total) + " open" + (doc.unanswered.length ? ", some not answering" : "")
      + ")";
    $("connections").tBodies[0].replaceChildren(...doc.connections.map((c) => {
      const link = el("a", null, "#" + c.conn), cell = el("td");
      link.href = "/connections/" + Number(c.conn) + (c.worker === null ? "" : "?worker=" + Number(c.worker));
      cell.append(link);
      const tr = el("tr");
      tr.append(cell, el("td", null, c.listener), el("td", null, c.worker === null ? "" : c.worker),
        el("td", null, c.peer), el("td", null, duration(c.age_s)), el("td", null, bytes(c.bytes_in)),
        el("td", null, bytes(c.bytes_out)), el("td", null, c.rtt_us === null ? "" : num(c.rtt_us) + " \u00b5s"));
      return tr;
    }));
    dispatchEvent(new Event("connections-update"));
  } catch (error) {
    $("conn-total").textContent = "(unavailable)";
  } finally {
    setTimeout(pollConnections, CONN_POLL_MS);
  }
}
makeCharts();
poll();
pollConnections();
</script></body></html>
"""


def render(
    history_points: int,
    event_rows: int,
    poll_ms: int,
    feed_events: int,
    span_s: float,
    conn_rows: int,
    conn_poll_ms: int,
) -> str:
    """The page, with its charts' points, event rows, poll interval, events per answer
    and the seconds one chart spans."""
    return (
        TEMPLATE.replace("__HISTORY__", str(history_points))
        .replace("__ROWS__", str(event_rows))
        .replace("__POLL__", str(poll_ms))
        .replace("__FEED__", str(feed_events))
        .replace("__SPAN__", f"{span_s:g}")
        .replace("__CONN_ROWS__", str(conn_rows))
        .replace("__CONN_POLL__", str(conn_poll_ms))
    )
