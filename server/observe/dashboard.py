"""The live dashboard of the admin endpoint: one self-contained page and its JSON feed.

    GET /dashboard         PAGE: HTML with inline CSS and JavaScript, no external asset
                           (its text and script: server.observe.dashboard_page)
    GET /dashboard.json    feed(): the Stats snapshot, listeners, version, the events
                           after ``?since=SEQ`` (at most FEED_EVENTS of them), and the
                           history's samples after ``&samples=SEQ`` (all of them at first)

The charts and every rate on the page come from the server's history
(server.observe.history: one sample a second for the last five minutes, per listener,
kept by the admin endpoint whether or not anyone watches), so a tab opened now shows the
last five minutes, and each rate is the difference of two samples over their uptimes:
what /stats counted in that time. Connections, rejections and timeouts are counted as
they happen, so their rates are per second (the newest at most a second behind /stats);
bytes of open connections reach the counters once a second, so byte rates are taken over
three seconds, or a steady stream would alias to 0 and double. The page's first poll asks for the
whole history; each later one for the samples it has not seen. Rates by reason and by
worker come from the page's last two polls (about a second apart) of the same snapshot.

The page polls the feed about once a second (the next request only after the previous
answer) and keeps at most HISTORY_POINTS + 1 samples and EVENT_ROWS rows of events: a
page left open for hours costs the browser bounded memory and the server one small
request a second (and one CONN_ROWS-row GET /connections every CONN_POLL_MS) on an
ordinary admin connection, under the admin endpoint's limits (a
viewer that does not take its answer is dropped after RESPONSE_TIMEOUT_S like any admin
client).

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
from server.observe import dashboard_page
from server.observe.admin import ServerView
from server.observe.events import Event
from server.observe.exchange import Exchange
from server.observe.faults_api import policy_of
from server.observe.history import HISTORY_SAMPLES, SAMPLE_INTERVAL_S, History
from server.observe.metrics import CLOSE_REASONS, REJECT_REASONS
from server.observe.stats import TIMEOUT_REASONS

RING_SIZE = 256  # events kept for all viewers together
FEED_EVENTS = 50  # events in one feed answer at most (a viewer that fell behind skips the rest)
HISTORY_POINTS = HISTORY_SAMPLES - 1  # chart points: the rates between neighbouring samples
EVENT_ROWS = 100  # event rows a page keeps
POLL_MS = 1000
CONN_ROWS = 20  # the connections table: the top 20 by age or by bytes (GET /connections)
CONN_POLL_MS = 2000

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


def parse_since(query: str, parameter: str = "since") -> int | None:
    """A sequence number of a feed query string (``since``, or ``samples``): 0 if
    absent, None if it is not a non-negative integer."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == parameter:
            return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
    return 0


def _with_every(counts: dict[str, int], names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """``counts`` with every known name present (0 until it happens), known names first."""
    return {name: counts.get(name, 0) for name in names} | counts


def feed(view: ServerView, admin_address: Any, since: int, history: History | None = None, samples: int = 0) -> str:
    """The feed document (JSON text) for one poll; ``view`` is the admin's ServerView
    (an EchoServer, or a supervisor whose snapshot adds ``workers`` rows), ``history``
    the admin endpoint's, whose samples after ``samples`` are included."""
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
        "samples": history.since(samples) if history is not None else [],
    }
    if (faults := policy_of(view)) is not None:  # --faults on: the active policy
        document["faults"] = faults.snapshot()
    return json.dumps(document, separators=(",", ":"))


PAGE = dashboard_page.render(
    HISTORY_POINTS, EVENT_ROWS, POLL_MS, FEED_EVENTS, HISTORY_POINTS * SAMPLE_INTERVAL_S, CONN_ROWS, CONN_POLL_MS
)
