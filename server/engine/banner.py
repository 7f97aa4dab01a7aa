"""The banner: one line the server sends first on each admitted connection (``--banner``).

It is how a load-balancer test tells replicas apart and sees which client address
arrived: ``--banner '{hostname} {peer}\\n'``. With a banner the stream is no longer pure
RFC 862 (the client receives bytes it did not send), so it is off by default.

Fields: {hostname} (this host's name), {peer} (the client's address as the server sees
it, after the PROXY header if there is one), {local} (the server socket's own address),
{conn} (the connection's id, as in events) and {version} (the server's version). Nothing
else: no attribute or index lookups. ``\\n``, ``\\r``, ``\\t`` and ``\\\\`` in the text are
escapes (a shell or an environment variable passes them literally); a newline is
appended if the template does not end with one.

``parse_template`` and ``check_template`` are the setting's parser and check (config.py
validates at startup, so a bad template is a one-line error naming --banner, exit 2).
A Banner is immutable: ``render`` may be called from any thread (each connection's
scheduler thread calls it once, right after admission).
"""

from __future__ import annotations

import re
import socket
import string
from collections.abc import Callable

import server

FIELDS = ("hostname", "peer", "local", "conn", "version")
MAX_TEMPLATE_CHARS = 512
MAX_LINE_CHARS = 1024  # a field's width ({conn:>5000000}) must not make each line megabytes
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nrt\\])")
_LONGEST_ADDRESS = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
_SAMPLE = {  # the longest each field can be (a host name is at most 64 bytes on Linux)
    "hostname": "h" * 64,
    "peer": _LONGEST_ADDRESS,
    "local": _LONGEST_ADDRESS,
    "conn": 10**12,
    "version": server.__version__,
}


def parse_template(text: str) -> str | None:
    """The setting's text -> template (escapes decoded); empty means off (None)."""
    if not text:
        return None
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], text)


def check_template(value: object) -> str | None:
    """Why ``value`` is not a usable template, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"expected text, got {value!r}"
    if len(value) > MAX_TEMPLATE_CHARS:
        return f"at most {MAX_TEMPLATE_CHARS} characters, got {len(value)}"
    try:
        for _, name, spec, _ in string.Formatter().parse(value):
            if name is None:
                continue
            if name not in FIELDS:
                return f"unknown field {{{name}}}; the fields are {', '.join('{' + f + '}' for f in FIELDS)}"
            if spec and "{" in spec:
                return f"the format of {{{name}}} may not hold another field"
        # The longest values a field can take: what this renders to bounds every line.
        longest = len(value.format_map(_SAMPLE))
    except (ValueError, TypeError) as error:  # "{" alone, a bad format spec
        return f"not a valid template: {error}"
    if longest > MAX_LINE_CHARS:
        return f"renders to up to {longest} characters; at most {MAX_LINE_CHARS}"
    return None


class Banner:
    """A checked template, rendered per connection."""

    __slots__ = ("_needs_local", "_template", "_values")

    def __init__(self, template: str, hostname: str | None = None) -> None:
        problem = check_template(template)
        if problem:
            raise ValueError(problem)
        self._template = template if template.endswith("\n") else template + "\n"
        self._needs_local = any(name == "local" for _, name, _, _ in string.Formatter().parse(template))
        self._values: dict[str, object] = {
            "hostname": hostname if hostname is not None else socket.gethostname(),
            "version": server.__version__,
        }

    def render(self, conn_id: int, peer: str, local: Callable[[], str]) -> bytes:
        """The line for one connection; ``local()`` is only called if {local} is used."""
        values = dict(self._values, conn=conn_id, peer=peer)
        values["local"] = local() if self._needs_local else ""
        return self._template.format_map(values).encode("utf-8", "replace")


def local_address(sock: socket.socket) -> str:
    """The socket's own address as text, or "" if the socket is gone."""
    from server.engine.listener import format_address  # here: listener imports config, which imports us

    try:
        return format_address(sock.getsockname())
    except OSError:
        return ""
