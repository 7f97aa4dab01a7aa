"""The banner: one line the server sends first on each admitted connection (``--banner``).

It is how a load-balancer test tells replicas apart and sees which client address
arrived: ``--banner '{hostname} {peer}\\n'``. With a banner the stream is no longer pure
RFC 862 (the client receives bytes it did not send), so it is off by default. The
fields and the template's rules are lib/banner_template.py's (config.py checks them at
startup); a newline is appended if the template does not end with one.

A Banner is immutable: ``render`` may be called from any thread (each connection's
scheduler thread calls it once, from the pipeline's banner step, after admission and
after the TLS handshake on a TLS listener).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Generator

from server.engine.connection import CloseConnection, Connection
from server.engine.echo import flush
from server.engine.pipeline import EchoWaits, Step
from server.engine.scheduler import Sleep, Wait
from server.lib.banner_template import check_template, fields_used
from server.lib.net import format_address


class Banner:
    """A checked template, rendered per connection."""

    __slots__ = ("_needs_local", "_template", "_values")

    def __init__(self, template: str, version: str, hostname: str | None = None) -> None:
        problem = check_template(template)
        if problem:
            raise ValueError(problem)
        self._template = template if template.endswith("\n") else template + "\n"
        self._needs_local = "local" in fields_used(template)
        self._values: dict[str, object] = {
            "hostname": hostname if hostname is not None else socket.gethostname(),
            "version": version,
        }

    def render(self, conn: Connection, sock: socket.socket) -> bytes:
        """The line for one connection; the socket's own address only if {local} is used."""
        values = dict(self._values, conn=conn.id, peer=conn.peer, listener=conn.listener)
        values["local"] = local_address(sock) if self._needs_local else ""
        return self._template.format_map(values).encode("utf-8", "replace")


def local_address(sock: socket.socket) -> str:
    """The socket's own address as text, or "" if the socket is gone."""
    try:
        return format_address(sock.getsockname())
    except OSError:
        return ""


def banner_step(banner: Banner, waits: EchoWaits) -> Step:
    """The pipeline step that writes the banner (over TLS on a TLS listener, after the
    handshake); a client that takes none of it for write_stall_timeout is reset."""

    def greet(sock: socket.socket, conn: Connection) -> Generator[Wait | Sleep, None, None]:
        line = banner.render(conn, sock)
        try:
            sent = sock.send(line)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        if sent != len(line) and not (yield from flush(sock, line[sent:], waits, conn)):
            raise CloseConnection("write_stall", reset=True)

    return greet
