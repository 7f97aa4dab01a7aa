"""The admin HTTP endpoint: probes, metrics, stats and a live event stream.

    GET /          a plain-text index        GET /metrics  Prometheus text
    GET /healthz   200 while serving         GET /stats    the Stats snapshot as JSON
    GET /readyz    200 ready, 503 draining   GET /events   live events, JSON lines (chunked)

It runs on its own thread (plus one short-lived thread per request, from
``http.server.ThreadingHTTPServer``) and only reads server state: ``Stats.snapshot()``,
the ready/draining flags, and the events Exchange, to which each /events watcher
subscribes with a bounded queue. A watcher that falls behind is disconnected; nothing
here can make the echo path wait. Admin clients that stall are timed out after
REQUEST_TIMEOUT_S.

At most MAX_CLIENTS admin connections are served at once (each has a thread); more
are closed on arrival, with a warning at most once a second.

Threads: ``start`` and ``close`` from the thread that owns the server's lifecycle;
handlers on their own threads.
"""

from __future__ import annotations

import http.server
import json
import logging
import queue
import selectors
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from server import metrics
from server.events import Event
from server.exchange import Exchange
from server.listener import open_listener
from server.stats import StatsSnapshot
from server.throttle import Throttle

log = logging.getLogger("echo.admin")

REQUEST_TIMEOUT_S = 10.0
MAX_CLIENTS = 64  # admin connections served at once (each is a thread); more are closed
WATCHER_QUEUE = 1000  # events an /events reader may fall behind before it is cut off
MAX_REQUEST_LINE = 8192
INDEX = """echo-service admin endpoint
GET /healthz  200 while the process is serving
GET /readyz   200 when accepting, 503 while draining or not yet listening
GET /metrics  Prometheus text exposition
GET /stats    connection statistics as JSON
GET /events   live server events, one JSON object per line (curl -N)
"""
_END = object()


class ServerView(Protocol):
    """What the admin endpoint may see of the echo server (read-only)."""

    exchange: Exchange

    @property
    def draining(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def snapshot(self) -> StatsSnapshot: ...


class _Watcher:
    """One /events reader: an Exchange subscriber with a bounded queue (any thread)."""

    def __init__(self) -> None:
        self.items: queue.Queue[Any] = queue.Queue(WATCHER_QUEUE)
        self.overflowed = False
        self.ended = False

    def send(self, item: Event) -> None:
        try:
            self.items.put_nowait(item)
        except queue.Full:
            self.overflowed = True

    def end(self) -> None:
        self.ended = True
        try:
            self.items.put_nowait(_END)
        except queue.Full:
            pass  # the handler sees ``ended`` after its next item


class AdminServer:
    def __init__(self, view: ServerView, host: str, port: int) -> None:
        self._view = view
        self._watchers: set[_Watcher] = set()
        self._watchers_lock = threading.Lock()
        listener = open_listener(host, port, backlog=128)
        self._httpd = _HTTPServer(listener, _make_handler(self))
        self.address = listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="admin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """End every /events stream (after what it has queued), stop, and join."""
        with self._watchers_lock:
            for watcher in self._watchers:
                watcher.end()
        self._wake_w.send(b"\0")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._httpd.server_close()
        self._httpd.join_handlers(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    self._httpd.handle_request()

    # --- handler threads --------------------------------------------------------------

    def watch(self, subscribed: Callable[[], None], deliver: Callable[[bytes], None]) -> None:
        """Stream events to ``deliver`` until the server stops or the reader falls behind.
        ``subscribed`` runs once the watcher is attached: no event after it is missed."""
        watcher = _Watcher()
        with self._watchers_lock:
            self._watchers.add(watcher)
        try:
            with self._view.exchange.subscribed(watcher):
                subscribed()
                while not watcher.ended:
                    item = watcher.items.get()
                    if item is _END or watcher.overflowed:
                        return
                    deliver(json.dumps(item.as_dict(), separators=(",", ":")).encode() + b"\n")
        finally:
            with self._watchers_lock:
                self._watchers.discard(watcher)

    @property
    def view(self) -> ServerView:
        return self._view


class _HTTPServer(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer on a socket we opened (no reverse-DNS lookup at bind)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, listener: socket.socket, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(listener.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_name, self.server_port = str(listener.getsockname()[0]), listener.getsockname()[1]
        self._handler_threads: list[threading.Thread] = []
        self._refusals = Throttle()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
        if len(self._handler_threads) >= MAX_CLIENTS:
            self.shutdown_request(request)  # closed at once: a finite number of threads
            held_back = self._refusals.allow()
            if held_back is not None:
                log.warning(
                    "admin: %d clients already connected; refusing more (%d more refused since last said)",
                    MAX_CLIENTS,
                    held_back,
                )
            return
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="admin-request", daemon=True
        )
        self._handler_threads.append(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("admin client %s: %s", client_address, error)
        else:
            log.error("admin request from %s failed", client_address, exc_info=error)

    def join_handlers(self, timeout: float) -> None:
        for thread in self._handler_threads:
            thread.join(timeout)


def _make_handler(admin: AdminServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_AdminHandler):
        pass

    Handler.admin = admin
    return Handler


class _AdminHandler(http.server.BaseHTTPRequestHandler):
    admin: AdminServer
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "echo-service-admin"
    # No HTTP/0.9: a malformed one-word request still gets a status line.
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def handle_one_request(self) -> None:
        try:
            self._handle_one_request()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # a stalled or vanished admin client

    def _handle_one_request(self) -> None:
        # Cap the request line ourselves, so an oversized one is a plain 400.
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(line) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self.send_error(400, "request line too long")
            self.close_connection = True
            return
        self.raw_requestline = line
        if not line:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self._send(405, "method not allowed\n", extra={"Allow": "GET"})
            return
        method()
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers some oversized requests with 414/431; we promise 400.
        super().send_error(400 if code in (414, 431) else code, message, explain)

    def do_GET(self) -> None:
        view = self.admin.view
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(200, INDEX)
        elif path == "/healthz":
            self._send(200, "ok\n")
        elif path == "/readyz":
            ready = view.is_ready() and not view.draining
            self._send(200 if ready else 503, "ready\n" if ready else "not ready\n")
        elif path == "/metrics":
            body = metrics.render(view.snapshot(), ready=view.is_ready(), draining=view.draining)
            self._send(200, body, content_type=metrics.CONTENT_TYPE)
        elif path == "/stats":
            document = {**view.snapshot().as_dict(), "ready": view.is_ready(), "draining": view.draining}
            self._send(200, json.dumps(document, indent=2) + "\n", content_type="application/json")
        elif path == "/events":
            self._stream_events()
        else:
            self._send(404, "not found; GET / lists the endpoints\n")

    def _stream_events(self) -> None:
        def send_headers() -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.flush()

        def deliver(line: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        try:
            self.admin.watch(send_headers, deliver)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass  # the reader went away or stalled past the timeout
        self.close_connection = True

    def _send(
        self,
        status: int,
        body: str,
        *,
        content_type: str = "text/plain; charset=utf-8",
        extra: dict[str, str] | None = None,
    ) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin %s %s", self.address_string(), format % args)
