"""The live dashboard of the admin endpoint: one self-contained page and its JSON feed.

    GET /dashboard         PAGE: HTML with inline CSS and JavaScript, no external asset
    GET /dashboard.json    feed(): the Stats snapshot, listeners, version, and the events
                           after ``?since=SEQ`` (at most FEED_EVENTS of them)

The page polls the feed about once a second (the next request only after the previous
answer), computes rates itself (over its last three snapshots: the bytes of open
connections reach the counters once a second), and keeps at most
HISTORY_POINTS points per chart and EVENT_ROWS rows of events: a page left open for
hours costs the browser bounded memory and the server one small request a second on an
ordinary admin connection, under the admin endpoint's limits (a viewer that does not
take its answer is dropped after RESPONSE_TIMEOUT_S like any admin client).

Events for the page come from one ``EventRing`` per Exchange, shared by every viewer: a
deque of the last RING_SIZE events, attached to the Exchange on the first feed request
and kept for the life of the Exchange. Its ``send`` runs on whichever thread publishes
(it takes one short lock, never blocks otherwise); ``since`` and ``feed`` run on admin
handler threads. Nothing here mutates server state. Payload bytes are never in an event,
so never in the feed; the page inserts event fields as text, never as markup.
"""

from __future__ import annotations

import json
import platform
import threading
import weakref
from collections import deque
from typing import Any

from server import __version__
from server.lib.net import format_address
from server.observe.admin import ServerView
from server.observe.events import Event
from server.observe.exchange import Exchange
from server.observe.faults_api import policy_of
from server.observe.metrics import CLOSE_REASONS, REJECT_REASONS
from server.observe.stats import TIMEOUT_REASONS

RING_SIZE = 256  # events kept for all viewers together
FEED_EVENTS = 50  # events in one feed answer at most (a viewer that fell behind skips the rest)
HISTORY_POINTS = 300  # chart points a page keeps: five minutes at one a second
EVENT_ROWS = 100  # event rows a page keeps
POLL_MS = 1000

# Served with the page: nothing may be loaded from anywhere, scripts and styles are inline.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
FEED_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class EventRing:
    """The latest events, one bounded deque for every viewer (see the module docstring)."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._lock = threading.Lock()
        self._events: deque[tuple[int, Event]] = deque(maxlen=size)
        self._seq = 0

    def send(self, item: Any) -> None:
        """Exchange subscriber: any publishing thread; O(1), never blocks on a viewer."""
        if isinstance(item, Event):
            with self._lock:
                self._seq += 1
                self._events.append((self._seq, item))

    def since(self, seq: int, limit: int = FEED_EVENTS) -> tuple[int, int, list[dict[str, Any]]]:
        """(last sequence number, events skipped, the newest ``limit`` events after ``seq``).
        A ``seq`` from the future (another server, a restart) counts as 0."""
        with self._lock:
            last = self._seq
            kept = list(self._events)
        if seq > last:
            seq = 0
        newer = [(n, e) for n, e in kept if n > seq][-limit:] if limit > 0 else []
        skipped = (last - seq - len(newer)) if seq > 0 else 0
        return last, skipped, [{"seq": n, **e.as_dict()} for n, e in newer]


_rings: weakref.WeakKeyDictionary[Exchange, EventRing] = weakref.WeakKeyDictionary()
_rings_lock = threading.Lock()


def ring_for(exchange: Exchange) -> EventRing:
    """The EventRing of ``exchange``, attached on first use (any thread)."""
    with _rings_lock:
        ring = _rings.get(exchange)
        if ring is None:
            ring = _rings[exchange] = EventRing()
            exchange.attach(ring)
        return ring


def parse_since(query: str) -> int | None:
    """The ``since`` of a feed query string (0 if absent); None if it is not a number."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "since":
            return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
    return 0


def _with_every(counts: dict[str, int], names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """``counts`` with every known name present (0 until it happens), known names first."""
    return {name: counts.get(name, 0) for name in names} | counts


def feed(view: ServerView, admin_address: Any, since: int) -> str:
    """The feed document (JSON text) for one poll; ``view`` is the admin's ServerView
    (an EchoServer, or a supervisor whose snapshot adds ``workers`` rows)."""
    snapshot = view.snapshot().as_dict()
    snapshot["closed_by_reason"] = _with_every(snapshot["closed_by_reason"], CLOSE_REASONS)
    snapshot["rejected"] = _with_every(snapshot["rejected"], REJECT_REASONS)
    snapshot["timed_out"] = _with_every(snapshot["timed_out"], sorted(TIMEOUT_REASONS))
    listeners = []
    for name, key, attribute in (
        ("TCP", "tcp", "server_address"),
        ("TLS", "tls", "tls_address"),
        ("UDP", "udp", "udp_address"),
    ):
        address = getattr(view, attribute, None)
        if isinstance(address, tuple) and len(address) >= 2:
            listeners.append({"name": name, "key": key, "address": format_address(address)})
    if isinstance(admin_address, tuple) and len(admin_address) >= 2:
        listeners.append({"name": "admin", "key": "", "address": format_address(admin_address)})
    last, skipped, events = ring_for(view.exchange).since(since)
    document = {
        "version": __version__,
        "python": platform.python_version(),
        "ready": view.is_ready() and not view.draining,
        "draining": view.draining,
        "listeners": listeners,
        "stats": snapshot,
        "seq": last,
        "skipped": skipped,
        "events": events,
    }
    if (faults := policy_of(view)) is not None:  # --faults on: the active policy
        document["faults"] = faults.snapshot()
    return json.dumps(document, separators=(",", ":"))


PAGE = (
    """<!doctype html>
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
#events li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;border-bottom:1px solid var(--line)}
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
<section class="card"><h2>Latest events <span class="dim" id="event-note"></span></h2><ol id="events"></ol></section>
<script>
"use strict";
const HISTORY = __HISTORY__, ROWS = __ROWS__, POLL_MS = __POLL__, FEED = __FEED__, RATE_POLLS = 3;
const CHARTS = [["active", "Connections active", "active", null], ["accepts", "Accepted / s", "accepted", null],
  ["bytes", "Bytes / s", "in", "out"], ["rejects", "Rejected and timed out / s", "rejected", "timed_out"]];
const state = {updates: 0, seq: 0, skipped: 0, window: [], failures: 0, history: {}};
window.dashboard = state;
for (const k of ["active", "accepted", "in", "out", "rejected", "timed_out"]) state.history[k] = [];
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
function drawCharts() {
  for (const [id, , a, b] of CHARTS) {
    const keys = b ? [a, b] : [a];
    const top = Math.max(1, ...keys.flatMap((k) => state.history[k]));
    for (const line of $("chart-" + id).querySelectorAll("polyline")) {
      const series = state.history[line.dataset.series], start = HISTORY - series.length;
      line.setAttribute("points", series.map((v, i) =>
        ((start + i) * 300 / (HISTORY - 1)).toFixed(1) + "," + (99 - v * 97 / top).toFixed(1)).join(" "));
    }
    const legend = $("legend-" + id), fmt = id === "bytes" ? bytes : num;
    legend.replaceChildren(el("span", null, "max " + fmt(top) + " over " + Math.round(HISTORY * POLL_MS / 60000)
      + " min" + (b ? " \\u00b7 " : "")));
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
// Rates over the last RATE_POLLS snapshots (about 3 s): the bytes of open connections reach
// the counters once a second, so a one-poll rate would alias against that.
function rates(cur) {
  const last = state.window[state.window.length - 1];
  if (last && (cur.uptime_s < last.uptime_s || cur.accepted < last.accepted)) state.window = [];  // a restart
  const prev = state.window[0], dt = prev ? cur.uptime_s - prev.uptime_s : 0;
  if (!prev || dt <= 0) return null;
  return (f) => Math.max(0, (f(cur) - f(prev)) / dt);
}
function render(doc) {
  const s = doc.stats, r = rates(s);
  const rate = r || (() => 0);
  const accepted = rate((x) => x.accepted), bin = rate((x) => x.bytes_received), bout = rate((x) => x.bytes_sent);
  const rejected = rate((x) => sum(x.rejected)), timedOut = rate((x) => sum(x.timed_out));
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
  if (r) {
    const point = {active: s.active, accepted, in: bin, out: bout, rejected, timed_out: timedOut};
    for (const [k, v] of Object.entries(point)) {
      const series = state.history[k];
      series.push(v);
      if (series.length > HISTORY) series.shift();
    }
  }
  const byReason = (field) => Object.entries(s[field]).map(([k, v]) => [k, num(rate((x) => x[field][k] || 0)), num(v)]);
  table("closed-table", byReason("closed_by_reason"));
  table("limits-table", [...byReason("rejected").map((row) => ["rejected: " + row[0], row[1], row[2]]),
    ...byReason("timed_out").map((row) => ["timed out: " + row[0], row[1], row[2]]),
    ...Object.entries((s.udp || {}).dropped || {}).map(([k, v]) => ["UDP dropped: " + k,
      num(rate((x) => ((x.udp || {}).dropped || {})[k] || 0)), num(v)])]);
  const per = (key, field) => (x) => ((x.listeners || {})[key] || {})[field] || 0;
  table("listeners", doc.listeners.map((l) => !l.key ? [[l.name, l.address]] : [[l.name, l.address],
    num(rate(per(l.key, "accepted"))), bytes(rate(per(l.key, "bytes_received"))) + "/s",
    bytes(rate(per(l.key, "bytes_sent"))) + "/s"]));
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
  state.window.push(s);
  if (state.window.length > RATE_POLLS) state.window.shift();
  state.updates++;
  document.body.dataset.updates = String(state.updates);
  dispatchEvent(new Event("dashboard-update"));
}
const DETAILS = ["worker", "reason", "count", "bytes_in", "bytes_out", "duration_s", "address", "admin_address",
  "errno", "dropped", "active", "accepted", "message"];
function addEvents(doc) {
  const list = $("events");
  for (const e of doc.events) {
    const parts = [e.ts.slice(11, 23), e.event];
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
    const answer = await fetch("/dashboard.json?since=" + state.seq, {cache: "no-store"});
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
makeCharts();
poll();
</script></body></html>
""".replace("__HISTORY__", str(HISTORY_POINTS))
    .replace("__ROWS__", str(EVENT_ROWS))
    .replace("__POLL__", str(POLL_MS))
    .replace("__FEED__", str(FEED_EVENTS))
)
