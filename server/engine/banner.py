"""The banner: one line the server sends first on each admitted connection (``--banner``).

It is how a load-balancer test tells replicas apart and sees which client address
arrived: ``--banner '{hostname} {peer}\\n'``. With a banner the stream is no longer pure
RFC 862 (the client receives bytes it did not send), so it is off by default. The
fields and the template's rules are lib/banner_template.py's (config.py checks them at
startup); a newline is appended if the template does not end with one.

Reflection fields ({sni}, {mss}, {json}...): the banner step is where the pipeline
reflects what the earlier steps saw (the PROXY header the PROXY step kept, the TLS
handshake's facts) and TCP_INFO at that moment, after admission. Only the parts the
template's fields need are gathered (``parts``): a template without reflection fields
reads nothing more than before, and a server without --banner has no step at all.

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
from server.engine.reflection import FIELD_PARTS, flat_fields, local_address, reflect, to_json
from server.engine.waits import Sleep, Wait
from server.lib.banner_template import check_template, fields_used

_NOTHING_SEEN = dict.fromkeys(FIELD_PARTS, "")


class Banner:
    """A checked template, rendered per connection."""

    __slots__ = ("_needs_local", "_reflected", "_template", "_uses_json", "_values", "_worker", "parts")

    def __init__(self, template: str, version: str, hostname: str | None = None, worker: int | None = None) -> None:
        problem = check_template(template)
        if problem:
            raise ValueError(problem)
        self._template = template if template.endswith("\n") else template + "\n"
        used = fields_used(template)
        self._needs_local = "local" in used
        self._reflected = bool(used & FIELD_PARTS.keys())
        self._uses_json = "json" in used
        # The facts the template's reflection fields need gathered (none for {worker} alone).
        self.parts: frozenset[str] = frozenset().union(*(FIELD_PARTS[name] for name in used if name in FIELD_PARTS))
        self._worker = worker
        self._values: dict[str, object] = {
            "hostname": hostname if hostname is not None else socket.gethostname(),
            "version": version,
        }

    def render(self, conn: Connection, sock: socket.socket) -> bytes:
        """The line for one connection; the socket's own address only if {local} is used,
        the reflection's facts only if a reflection field is."""
        values = dict(self._values, conn=conn.id, peer=conn.peer, listener=conn.listener)
        values["local"] = local_address(sock) if self._needs_local else ""
        if self._reflected:
            hostname = str(self._values["hostname"])
            facts = reflect(sock, conn, worker=self._worker, hostname=hostname, parts=self.parts)
            values.update(flat_fields(facts))
            values["json"] = to_json(facts) if self._uses_json else ""
        else:
            values.update(_NOTHING_SEEN)
        return self._template.format_map(values).encode("utf-8", "replace")


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
