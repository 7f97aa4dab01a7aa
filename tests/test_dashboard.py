"""The /dashboard page and its feed: over HTTP, and in a real browser (headless Chromium).

The browser is driven with the DevTools protocol over ``--remote-debugging-pipe``
(NUL-separated JSON on file descriptors 3 and 4): standard library only, no debugging
port. The page signals each redraw with a ``dashboard-update`` DOM event; the test
waits for a redraw whose numbers satisfy a condition (a promise in the page, bounded),
never sleeps. Without Debian's ``chromium`` the browser tests skip with the reason
(``REQUIRE_BROWSER_TESTS=1`` makes that a failure). Screenshots are kept in
``results/`` (git-ignored) as CI artifacts: ``dashboard.png`` (laptop, light) and
``dashboard-phone-dark.png``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import EchoClient
from server.core import EchoServer
from server.observe import admin as admin_module
from server.observe import dashboard
from server.observe.events import event
from tests.conftest import ServerFactory
from tests.helpers import ROOT, ServerProcess, address_of
from tests.test_admin import admin_of, get

ARTIFACTS = ROOT / "results"
CHROMIUM = shutil.which("chromium")


def admin_url(server: EchoServer, path: str) -> str:
    host, port = admin_of(server)
    return f"http://{host}:{port}{path}"


def feed(server: EchoServer, since: int = 0) -> dict[str, Any]:
    status, headers, body = get(server, f"/dashboard.json?since={since}")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(body)
    return document


def echo_some(server: EchoServer, conns: int, size: int) -> None:
    host, port = server.server_address[:2]
    for _ in range(conns):
        with EchoClient(str(host), int(port)) as client:
            payload = os.urandom(size)
            assert client.echo(payload) == payload
            client.close_write()
            assert client.recv() == b""


# --- over HTTP ---------------------------------------------------------------------------


def test_page_is_self_contained_and_linked_from_the_index(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    status, headers, body = get(server, "/dashboard")
    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'none';")
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    for external in ("src=", "href=", "<link", "@import", "url(", "//cdn", "https://"):
        assert external not in page, f"the page must load nothing: found {external!r}"
    assert get(server, "/dashboard", "HEAD")[2] == b""
    assert b"/dashboard" in get(server, "/")[2]


def test_feed_counts_traffic_and_lists_listeners(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0)
    before = feed(server)
    assert before["stats"]["accepted"] == 0 and before["ready"] is True and before["events"] == []
    assert before["stats"]["rejected"] == {"max_connections": 0, "max_connections_per_ip": 0, "proxy_protocol": 0}
    assert set(before["stats"]["timed_out"]) == {"idle_timeout", "write_stall"}
    assert [item["name"] for item in before["listeners"]] == ["TCP", "admin"]
    assert before["listeners"][0]["address"].endswith(f":{server.server_address[1]}")
    echo_some(server, 3, 1000)
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 3)
    after = feed(server, before["seq"])
    assert after["stats"]["accepted"] == 3 and after["stats"]["bytes_received"] == 3000
    assert sorted(e["event"] for e in after["events"]) == ["closed"] * 3 + ["opened"] * 3
    assert [e["seq"] for e in after["events"]] == list(range(before["seq"] + 1, after["seq"] + 1))
    assert feed(server, after["seq"])["events"] == []
    assert get(server, "/dashboard.json?since=-1")[0] == 400
    assert get(server, "/dashboard.json?since=%C2%B2")[0] == 400


def test_feed_names_every_listener_and_counts_each(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0, udp_port=0)
    assert server.udp_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        udp.sendto(b"ping", server.udp_address[:2])
        assert udp.recvfrom(100)[0] == b"ping"
    echo_some(server, 1, 300)
    document = feed(server)
    assert [item["name"] for item in document["listeners"]] == ["TCP", "UDP", "admin"]
    assert document["listeners"][1]["address"].endswith(f":{server.udp_address[1]}")
    assert document["stats"]["listeners"]["tcp"]["bytes_received"] == 300  # (UDP's counts fold in once a second)


def test_feed_is_bounded_and_says_what_a_late_viewer_skipped(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    feed(server)  # the first viewer attaches the event ring
    server.exchange.send(event("stats", accepted=-1))
    first = feed(server)
    assert first["seq"] == 1 and first["skipped"] == 0
    for n in range(dashboard.RING_SIZE + 40):
        server.exchange.send(event("stats", accepted=n))
    late = feed(server, first["seq"])
    assert len(late["events"]) == dashboard.FEED_EVENTS
    assert late["events"][-1]["accepted"] == dashboard.RING_SIZE + 39
    assert late["skipped"] == dashboard.RING_SIZE + 40 - dashboard.FEED_EVENTS
    assert len(feed(server, 10**17)["events"]) == dashboard.FEED_EVENTS  # a seq from another server: start over


def test_a_viewer_that_stops_reading_is_dropped(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "RESPONSE_TIMEOUT_S", 0.5)
    server, _ = make_server(admin_port=0)
    feed(server)
    for _ in range(dashboard.FEED_EVENTS):
        server.exchange.send(event("log", message="x" * 1000))
    requests = 200  # 50 KB answers: 10 MB, more than the socket buffers hold (up to 4 MB)
    with socket.socket() as viewer:
        viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        viewer.settimeout(10)
        viewer.connect(admin_of(server))
        viewer.sendall(b"GET /dashboard.json?since=0 HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
        started = time.monotonic()
        assert get(server, "/healthz")[0] == 200  # others are served meanwhile
        hangup = select.poll()
        hangup.register(viewer, select.POLLRDHUP | select.POLLERR | select.POLLHUP)  # not POLLIN: answers wait unread
        assert hangup.poll(10_000), "the viewer was not dropped within 10 s"
        assert time.monotonic() - started >= 0.4
        taken = bytearray()
        try:
            while chunk := viewer.recv(65536):
                taken += chunk
        except ConnectionResetError:
            pass
    assert taken.count(b"HTTP/1.1 200 OK") < requests  # (what the client had not read may be lost to the reset)


def test_event_ring_keeps_the_latest() -> None:
    ring = dashboard.EventRing(size=5)
    for n in range(12):
        ring.send(event("closed", conn_id=n))
    ring.send("not an event")
    last, skipped, events = ring.since(0, limit=3)
    assert last == 12 and skipped == 0 and [e["conn"] for e in events] == [9, 10, 11]
    assert ring.since(10, limit=3) == (12, 0, events[1:])
    assert ring.since(2, limit=3)[1] == 7


# --- in a real browser -------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (test thread only)."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # Chromium reads commands on fd 3 and answers on fd 4; bash puts our pipe ends there (dash
        # cannot: it takes one-digit descriptors only).
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        with log.open("wb") as log_file:
            self._process = subprocess.Popen(
                ["bash", "-c", script, str(CHROMIUM), *flags],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(to_browser_r, from_browser_w),
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        answer = self._receive(lambda m: m.get("id") == self._next_id, method)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["result"]

    def _receive(self, wanted: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first message from the browser that is ``wanted``; the others are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} from the browser within {timeout:g} s"
            if select.select([self._from_browser], [], [], left)[0]:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, f"the browser exited while we waited for {what}"
                self._buffer += chunk

    def open(self, url: str) -> str:
        """A new tab showing ``url``, loaded; returns its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session: str = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self._receive(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session, "load")
        return session

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail("REQUIRE_BROWSER_TESTS=1 but there is no chromium (apt-get install -y chromium)")
        pytest.skip("no chromium: apt-get install -y chromium to run the browser tests")
    instance = Browser(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield instance
    finally:
        instance.close()


# Resolves, at a redraw, with the page's numbers once `until` holds for them; rejects after `ms`.
WAIT_JS = """new Promise((resolve, reject) => {
  const read = () => {
    const v = {updates: Number(document.body.dataset.updates || 0),
      events: [...document.querySelectorAll("#events li")].map((li) => li.dataset.event),
      history: window.dashboard ? window.dashboard.history : {}, status: document.getElementById("status").textContent};
    for (const node of document.querySelectorAll("[data-value]")) {
      const n = Number(node.dataset.value);
      v[node.id] = Number.isNaN(n) ? node.dataset.value : n;
    }
    return v;
  };
  const until = %s;
  const check = () => {
    const v = read();
    if (!until(v)) return;
    clearTimeout(timer); removeEventListener("dashboard-update", check); resolve(v);
  };
  const timer = setTimeout(() => {
    removeEventListener("dashboard-update", check);
    const v = read(); v.history = undefined;
    reject(new Error("timed out; the page shows " + JSON.stringify(v)));
  }, %d);
  addEventListener("dashboard-update", check);
  if (document.body && document.body.dataset.updates) check();
})"""


def wait_page(browser: Browser, session: str, until: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The page's numbers at the first redraw where the JS predicate ``until(v)`` holds."""
    expression = WAIT_JS % (until, int(timeout_s * 1000))
    result = browser.call(
        "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session
    )
    if "exceptionDetails" in result:
        raise AssertionError(f"{until}: {result['exceptionDetails'].get('exception', {}).get('description')}")
    values: dict[str, Any] = result["result"]["value"]
    return values


def screenshot(browser: Browser, session: str, name: str) -> Path:
    data = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)["data"]
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(data))
    return path


def test_dashboard_in_a_browser_follows_the_traffic(make_server: ServerFactory, browser: Browser) -> None:
    server, recorder = make_server(admin_port=0, max_connections=4, idle_timeout=5.0)
    host, port = server.server_address[:2]
    session = browser.open(admin_url(server, "/dashboard"))
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    first = wait_page(browser, session, "(v) => v.updates >= 1")
    assert first["accepted"] == 0 and first["active"] == 0 and first["status"] == "ready"

    # Traffic in five bursts, one per redraw: the totals are exact, the rates non-zero meanwhile.
    peak_accept_rate = peak_in_rate = 0.0
    for burst in range(1, 6):
        echo_some(server, 4, 10_000)
        seen = wait_page(browser, session, f"(v) => v.accepted >= {4 * burst}")
        peak_accept_rate = max(peak_accept_rate, seen["accept-rate"])
        peak_in_rate = max(peak_in_rate, seen["in-rate"])
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 20)
    settled = wait_page(browser, session, "(v) => v['bytes-out'] === 200000 && v['accept-rate'] === 0")
    assert settled["accepted"] == 20 and settled["bytes-in"] == 200_000 and settled["active"] == 0
    assert peak_accept_rate > 0 and peak_in_rate > 0
    assert max(settled["history"]["accepted"]) > 0 and max(settled["history"]["in"]) > 0
    assert {"opened", "closed"} <= set(settled["events"])

    # Four silent clients fill max_connections, three more are rejected; the four time out.
    held = [EchoClient(str(host), int(port)).connect() for _ in range(4)]
    try:
        recorder.wait_for(lambda e: len(recorder.named("opened")) == 24)
        refused = [EchoClient(str(host), int(port)).connect() for _ in range(3)]
        for client in refused:
            assert client.recv() == b""  # closed at once, no bytes
            client.close()
        limited = wait_page(browser, session, "(v) => v.rejected === 3")
        assert limited["accepted"] == 24
        # The totals are the snapshot's; the charts follow within a second (the next sample).
        timed_out = wait_page(
            browser,
            session,
            "(v) => v.timeouts === 4 && v.active === 0 && Math.max(...v.history.timed_out) > 0",
            timeout_s=15,
        )
        assert max(timed_out["history"]["active"]) == 4
        assert max(timed_out["history"]["rejected"]) > 0 and max(timed_out["history"]["timed_out"]) > 0
        assert "rejected" in timed_out["events"]
    finally:
        for client in held:
            client.close()
    rows = browser.call(
        "Runtime.evaluate",
        {"expression": "document.querySelectorAll('#events li').length", "returnByValue": True},
        session,
    )["result"]["value"]
    assert 0 < rows <= dashboard.EVENT_ROWS
    screenshot(browser, session, "dashboard.png")


STATE_JS = """(() => {
  const d = window.dashboard;
  return {samples: d.samples, history: d.history, stats: d.prev,
    captions: Object.fromEntries([...document.querySelectorAll(".legend")].map((n) => [n.id, n.textContent])),
    maxima: Object.fromEntries([...document.querySelectorAll(".legend")].map((n) => [n.id, Number(n.dataset.value)]))};
})()"""


def page_state(browser: Browser, session: str) -> dict[str, Any]:
    result = browser.call("Runtime.evaluate", {"expression": STATE_JS, "returnByValue": True}, session)
    state: dict[str, Any] = result["result"]["value"]
    return state


def test_a_new_tab_shows_the_servers_history_and_its_rates_add_up_to_stats(
    make_server: ServerFactory, browser: Browser
) -> None:
    """Traffic before any tab is open is in the charts of a tab opened afterwards. The
    samples are /stats's counters; connections per second are the difference of two
    neighbouring samples, so integrated over the history they give exactly what /stats
    counted, and the newest is at most a second behind /stats; bytes per second are taken
    over three samples."""
    server, recorder = make_server(admin_port=0)
    assert server.admin is not None
    blank = browser.open(admin_url(server, "/dashboard"))
    wait_page(browser, blank, "(v) => v.updates >= 1")
    quiet = page_state(browser, blank)
    assert quiet["maxima"]["legend-accepts"] == 0 and quiet["captions"]["legend-accepts"].startswith("max 0/s over")

    echo_some(server, 20, 10_000)
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 20)
    assert server.admin.history.wait_for(lambda s: s.accepted == 20 and s.bytes_sent == 200_000, timeout=5)

    session = browser.open(admin_url(server, "/dashboard"))
    wait_page(browser, session, "(v) => v.accepted === 20 && Math.max(...v.history.accepted) > 0")
    state = page_state(browser, session)
    stats = json.loads(get(server, "/stats")[2])
    samples, history = state["samples"], state["history"]
    assert 2 <= len(samples) <= dashboard.HISTORY_POINTS + 1
    steps = [later["t"] - earlier["t"] for earlier, later in itertools.pairwise(samples)]
    assert len(history["accepted"]) == len(steps)
    # The samples are /stats's counters; connections per second integrate to exactly what
    # /stats counted between the first and last sample.
    integral = sum(rate * step for rate, step in zip(history["accepted"], steps, strict=True))
    assert integral == pytest.approx(samples[-1]["accepted"] - samples[0]["accepted"], rel=1e-9)
    assert (samples[-1]["accepted"], samples[-1]["in"]) == (stats["accepted"], stats["bytes_received"]) == (20, 200_000)
    assert samples[-1]["listeners"]["tcp"][:2] == [20, 200_000]
    # Bytes per second: over the last three samples (they fold in once a second).
    for i, rate in enumerate(history["in"], start=1):
        earlier, later = samples[max(0, i - 3)], samples[i]
        assert rate == pytest.approx((later["in"] - earlier["in"]) / (later["t"] - earlier["t"]), rel=1e-9)
    assert max(history["in"]) > 0
    # The newest sample is at most a second older than the snapshot served with it (plus
    # the sampler's scheduling on a loaded machine), and so behind /stats.
    assert 0 <= state["stats"]["uptime_s"] - samples[-1]["t"] <= 1.5
    assert samples[-1]["t"] <= stats["uptime_s"]
    # The captions: the real maximum over the history held, with its unit.
    assert state["maxima"]["legend-accepts"] == max(history["accepted"]) > 0
    captions = state["captions"]
    assert captions["legend-accepts"].startswith("max ") and "/s over the last" in captions["legend-accepts"]
    assert state["maxima"]["legend-bytes"] == max(history["in"] + history["out"])
    assert "iB/s over the last" in captions["legend-bytes"]
    assert state["maxima"]["legend-active"] == max(history["active"])


def test_dashboard_fits_a_phone_and_follows_dark_mode(make_server: ServerFactory, browser: Browser) -> None:
    server, _ = make_server(admin_port=0)
    session = browser.open(admin_url(server, "/dashboard"))
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    browser.call("Emulation.setDeviceMetricsOverride", metrics, session)
    colours = {}
    for scheme in ("light", "dark"):
        browser.call(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}, session
        )
        wait_page(browser, session, "(v) => v.updates >= 2")
        probe = "[getComputedStyle(document.body).backgroundColor, document.documentElement.scrollWidth, innerWidth]"
        value = browser.call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)
        colour, scroll_width, width = value["result"]["value"]
        assert scroll_width <= width, f"{scheme}: the page is {scroll_width} px wide on a {width} px screen"
        cramped = "[...document.querySelectorAll('.card')].filter((c) => c.scrollWidth > c.clientWidth)"
        cramped += ".map((c) => c.querySelector('h2').textContent)"
        wide = browser.call("Runtime.evaluate", {"expression": cramped, "returnByValue": True}, session)
        assert wide["result"]["value"] == [], f"{scheme}: cards wider than the screen"
        colours[scheme] = colour
    assert colours == {"light": "rgb(246, 247, 249)", "dark": "rgb(13, 17, 23)"}
    # A closed event's row is long on a phone: it wraps, and its reason is not cut off.
    echo_some(server, 1, 100)
    wait_page(browser, session, "(v) => v.events.includes('closed')")
    rows = "[...document.querySelectorAll('#events li')].map((li) => [li.textContent, li.scrollWidth > li.clientWidth,"
    rows += " li.getBoundingClientRect().right <= innerWidth])"
    shown = browser.call("Runtime.evaluate", {"expression": rows, "returnByValue": True}, session)["result"]["value"]
    closed = [row for row in shown if " closed " in row[0]]
    assert len(closed) == 1 and "reason=eof" in closed[0][0] and len(closed[0][0]) > 60, shown
    assert all(not cut and inside for _, cut, inside in shown), shown
    screenshot(browser, session, "dashboard-phone-dark.png")


def test_dashboard_shows_each_worker(browser: Browser) -> None:
    server = ServerProcess("--workers", "2", "--port", "0", "--admin-port", "0")
    try:
        server.start()
        admin = address_of(server.wait_for("listening"), "admin_address")
        session = browser.open(f"http://{admin[0]}:{admin[1]}/dashboard")
        empty = wait_page(browser, session, "(v) => document.querySelectorAll('#workers tbody tr').length === 2")
        assert empty["active"] == 0
        held = [EchoClient(*server.address).connect() for _ in range(6)]
        try:
            for client in held:
                assert client.echo(b"x") == b"x"  # admitted and served by some worker
            # The supervisor keeps the history of the totals over all workers.
            seen = wait_page(
                browser, session, "(v) => v.active === 6 && v.accepted === 6 && Math.max(...v.history.active) === 6"
            )
            cells = "[...document.querySelectorAll('#workers tbody tr')].map((tr) => tr.cells[3].textContent)"
            rows = browser.call("Runtime.evaluate", {"expression": cells, "returnByValue": True}, session)
            rows = rows["result"]["value"]
            assert seen["status"] == "ready" and sum(int(cell) for cell in rows) == 6, rows
        finally:
            for client in held:
                client.close()
        server.signal()
        assert server.finish() == 0
    finally:
        server.stop()


BOUNDS_JS = """(async () => {
  const doc = await (await fetch("/dashboard.json?since=0")).json();
  const first = doc.samples[doc.samples.length - 1] || {seq: 0, t: 0, accepted: 0, in: 0};
  for (let i = 1; i <= %d; i++) {
    doc.stats.uptime_s += 1000; doc.stats.accepted += i; doc.stats.bytes_received += 1000 * i;
    doc.samples = [{...first, seq: first.seq + i, t: first.t + i, accepted: first.accepted + i,
      in: first.in + 1000 * i}];
    doc.seq += 3;
    doc.events = [0, 1, 2].map((k) => ({seq: doc.seq + k, ts: "2026-01-01T00:00:00.000Z", level: "info",
      event: "closed", conn: 3 * i + k, reason: "eof"}));
    render(structuredClone(doc));  // each answer is a new object, as from fetch
  }
  const h = window.dashboard.history;
  return {points: Object.values(h).map((series) => series.length), rows: document.querySelectorAll("#events li").length,
    samples: window.dashboard.samples.length,
    newest: document.querySelector("#events li").textContent};
})()"""


def test_a_page_left_open_keeps_bounded_state(make_server: ServerFactory, browser: Browser) -> None:
    """A thousand updates (17 minutes' worth of samples, fed to the page's own render
    function) leave at most HISTORY_POINTS points per chart and EVENT_ROWS event rows."""
    server, _ = make_server(admin_port=0)
    session = browser.open(admin_url(server, "/dashboard"))
    wait_page(browser, session, "(v) => v.updates >= 1")
    updates = 1000
    expression = BOUNDS_JS % updates
    result = browser.call(
        "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session
    )
    assert "exceptionDetails" not in result, result
    state = result["result"]["value"]
    assert state["points"] == [dashboard.HISTORY_POINTS] * 6 and state["samples"] == dashboard.HISTORY_POINTS + 1
    assert state["rows"] == dashboard.EVENT_ROWS
    assert f"#{3 * updates + 2}" in state["newest"]
