"""HTTP for one admin connection: read requests against their deadline, answer them.

``serve_connection(admin, conn)`` runs on the connection's handler thread (started by
``AdminServer``) and owns that socket until it returns; AdminServer may shut the socket
down from its own thread (eviction, a stream cut off, the stop), which ends the
blocking call in progress here.

Requests are read through ``_DeadlineReader``, which sets the socket timeout to what is
left of the connection's request deadline before every recv: a client trickling bytes
gets the same deadline as a silent one. A request line without an HTTP version
(HTTP/0.9) is answered 400 at once. GET and HEAD are served (HEAD without a body);
other methods get 405, unknown paths 404, malformed or oversized requests 400.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import time
from typing import Any

from server.observe import admin as limits
from server.observe import connections, dashboard, faults_api, metrics
from server.observe.admin import AdminServer
from server.observe.admin_conn import Conn
from server.observe.events import event

MAX_REQUEST_LINE = 8192
ALLOWED = "GET, HEAD"
LINGER_S = 0.5  # after an error answer, how long to wait for the client to finish sending
LINGER_READS = 16  # and at most this many reads of up to 64 KiB
INDEX = """echo-service admin endpoint
GET /healthz  200 while the process is serving, 503 once a server thread died or a loop stalled
GET /readyz   200 when accepting, 503 while draining or not yet listening
GET /metrics  Prometheus text exposition
GET /stats    connection statistics as JSON
GET /events   live server events, one JSON object per line (curl -N)
GET /dashboard       a live page for a browser: rates, charts, latest events
GET /dashboard.json  its feed: stats, listeners, the events after ?since=SEQ and the
                     history's samples after &samples=SEQ
GET /connections     live connections as JSON (?page= &per_page= &sort=age|bytes &peer= &listener=)
GET /connections/ID  everything the server saw of one connection, now
GET|PUT|DELETE /faults  the fault policy, with --faults on (docs/faults.md)
"""


def serve_connection(admin: AdminServer, conn: Conn) -> None:
    """Serve requests on ``conn`` until either side is done (the handler thread)."""
    _AdminHandler(conn, admin)


def _linger(sock: socket.socket) -> None:
    """Send FIN after an error answer, then drain what the client still sends for a
    moment, so that closing with unread input does not reset the answer away."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_S
        for _ in range(LINGER_READS):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            if not sock.recv(65536):
                return
    except OSError:
        pass


class _DeadlineReader(io.RawIOBase):
    """Socket reads that end at ``conn.deadline``, however the bytes trickle in."""

    def __init__(self, conn: Conn) -> None:
        super().__init__()
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._conn.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request deadline passed")
        self._conn.sock.settimeout(left)
        return self._conn.sock.recv_into(buffer)


class _SocketWriter(io.RawIOBase):
    """Whole writes (sendall) under the socket's current timeout."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class _AdminHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-service-admin"
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's, which typeshed leaves out; _send writes it

    def __init__(self, conn: Conn, admin: AdminServer) -> None:
        self.conn = conn
        self.admin = admin
        super().__init__(conn.sock, conn.peer, admin)  # type: ignore[arg-type]  # runs setup, handle, finish

    def setup(self) -> None:
        self._linger = False
        self.connection = self.request
        self.rfile = io.BufferedReader(_DeadlineReader(self.conn))
        self.wfile = _SocketWriter(self.conn.sock)  # type: ignore[assignment]

    def finish(self) -> None:
        self.rfile.close()
        if self._linger:
            _linger(self.conn.sock)

    def handle_one_request(self) -> None:
        self.close_connection = True
        if not self.admin.begin_wait(self.conn):
            return
        try:
            if not self._read_request():
                return
            self.admin.begin_busy(self.conn)
            self.conn.sock.settimeout(limits.RESPONSE_TIMEOUT_S)
            self._dispatch()
        except OSError:
            self.close_connection = True  # stalled past its deadline, gone, or shut down by the server

    def _read_request(self) -> bool:
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
        if not line:
            return False
        if len(line) > MAX_REQUEST_LINE:
            self.send_error(400, "request line too long")
            return False
        words = line.split()
        if words and (len(words) != 3 or not words[2].startswith(b"HTTP/")):
            self.requestline = line.decode("latin-1").rstrip("\r\n")
            self.send_error(400, "bad request line; expected METHOD PATH HTTP/1.x")
            return False
        self.raw_requestline = line
        if not self.parse_request():
            return False
        if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body we will not read: no next request on this connection
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers some oversized requests with 414/431; we promise 400.
        self._linger = True  # the client may still be sending what we refused
        super().send_error(400 if code in (414, 431) else code, message, explain)

    def _dispatch(self) -> None:
        if self.path.partition("?")[0] == "/faults":
            self._faults()
            return
        if self.command not in ("GET", "HEAD"):
            self._send(405, "method not allowed\n", extra={"Allow": ALLOWED})
            return
        view = self.admin.view
        path, _, query = self.path.partition("?")
        if path == "/":
            self._send(200, INDEX)
        elif path == "/healthz":
            healthy = view.healthy
            if healthy and (policy := faults_api.policy_of(view)) is not None and policy.unhealthy():
                self._send(503, "unhealthy: a fault rule says so (GET /faults)\n")
                return
            stalled = view.stalled() if healthy else None
            if not healthy:
                self._send(503, "failed: a server thread died\n")
            elif stalled is not None:
                self._send(503, f"stalled: {stalled}\n")
            else:
                self._send(200, "ok\n")
        elif path == "/readyz":
            ready = view.is_ready() and not view.draining
            if ready and (policy := faults_api.policy_of(view)) is not None and policy.unready():
                self._send(503, "not ready: a fault rule says so (GET /faults)\n")
                return
            self._send(200 if ready else 503, "ready\n" if ready else "not ready\n")
        elif path == "/metrics":
            body = metrics.render(view.snapshot(), ready=view.is_ready(), draining=view.draining)
            if (policy := faults_api.policy_of(view)) is not None:
                body += faults_api.render_metrics(policy)
            self._send(200, body, content_type=metrics.CONTENT_TYPE)
        elif path == "/stats":
            document = {**view.snapshot().as_dict(), "ready": view.is_ready(), "draining": view.draining}
            self._send(200, json.dumps(document, indent=2) + "\n", content_type="application/json")
        elif path == "/events":
            self._stream_events()
        elif path == "/dashboard":
            self._send(200, dashboard.PAGE, content_type="text/html; charset=utf-8", extra=dashboard.PAGE_HEADERS)
        elif path == "/dashboard.json":
            since, samples = dashboard.parse_since(query), dashboard.parse_since(query, "samples")
            if since is None or samples is None:
                self._send(400, f"{'since' if since is None else 'samples'}: expected a non-negative integer\n")
                return
            body = dashboard.feed(view, self.admin.address, since, self.admin.history, samples)
            self._send(200, body, content_type="application/json", extra=dashboard.FEED_HEADERS)
        elif path == "/connections" or path.startswith("/connections/"):
            self._connections(path, query)
        else:
            self._send(404, "not found; GET / lists the endpoints\n")

    def _faults(self) -> None:
        """/faults (faults_api.py): 404 with faults off, as for any unknown path."""
        view = self.admin.view
        policy = faults_api.policy_of(view)
        if policy is None:
            self._send(404, "not found; faults are off (--faults on)\n")
            return

        def publish(name: str, fields: dict[str, Any]) -> None:
            view.exchange.send(event(name, peer=self.address_string(), **fields))

        token = getattr(view, "admin_token", None)
        status, body, extra = faults_api.answer(
            policy, self.command, self.headers.get, self.rfile.read, token if isinstance(token, str) else None, publish
        )
        if status >= 400:
            self._linger = True  # the client may still be sending what we refused
        content_type = "application/json" if status == 200 else "text/plain; charset=utf-8"
        self._send(status, body, content_type=content_type, extra=extra)

    def _connections(self, path: str, query: str) -> None:
        """/connections and /connections/ID (observe/connections.py)."""
        source: connections.Source | None = getattr(self.admin.view, "connections", None)
        if source is None:
            self._send(404, "no connections here (the server has not started)\n")
            return
        try:
            if path == "/connections":
                document = connections.listing(source, connections.parse_query(query, source.listeners))
            else:
                conn_id = connections.parse_id(path.removeprefix("/connections/"))
                if conn_id is None:
                    self._send(400, "expected /connections/ID, ID a connection id\n")
                    return
                facts, unanswered = connections.detail(source, conn_id, connections.parse_worker(query))
                if facts is None:
                    body = {"error": f"no live connection {conn_id}", "unanswered": unanswered}
                    self._send(404, json.dumps(body) + "\n", content_type="application/json")
                    return
                document = {**facts, "unanswered": unanswered}
        except connections.QueryError as error:
            self._send(400, f"{error}\n")
            return
        except connections.Busy:
            self._send(503, "busy: other /connections requests are running\n", extra={"Retry-After": "1"})
            return
        self._send(200, json.dumps(document) + "\n", content_type="application/json")

    def _stream_events(self) -> None:
        self.close_connection = True
        if not self.admin.begin_stream(self.conn):
            body = f"too many /events readers (at most {limits.MAX_STREAMS}); try again later\n"
            self._send(503, body, extra={"Connection": "close", "Retry-After": "5"})
            return
        sock = self.conn.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.STREAM_SNDBUF)
        sock.settimeout(limits.STREAM_SEND_TIMEOUT_S)

        def send_headers() -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()

        if self.command == "HEAD":
            send_headers()
            return

        def deliver(lines: bytes) -> None:  # one chunk of whole lines
            self.wfile.write(b"%x\r\n%s\r\n" % (len(lines), lines))

        self.admin.watch(self.conn, send_headers, deliver)
        self.wfile.write(b"0\r\n\r\n")

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
        # Headers and body in one write (end_headers would send the headers alone): with
        # two, Nagle holds the body until the client's delayed ACK, 40 ms on every
        # keep-alive request such as the dashboard's polls.
        head = b""
        if self.request_version != "HTTP/0.9":  # as end_headers does: 0.9 has no headers
            head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
        self.wfile.write(head if self.command == "HEAD" else head + data)

    def log_message(self, format: str, *args: Any) -> None:
        limits.log.debug("admin %s %s", self.address_string(), format % args)
