"""The banner: one line the server sends first on each admitted connection (``--banner``).

It is how a load-balancer test tells replicas apart and sees which client address
arrived: ``--banner '{hostname} {peer}\\n'``. With a banner the stream is no longer pure
RFC 862 (the client receives bytes it did not send), so it is off by default.

Fields: {hostname} (this host's name), {peer} (the client's address as the server sees
it, after the PROXY header if there is one), {local} (the server socket's own address),
{conn} (the connection's id, as in events) and {version} (the server's version); and
what the server saw (reflection.py), each empty when not applicable: {listener},
{worker}, {proxy_version}, {proxy_src}, {proxy_dst}, {proxy_authority},
{proxy_unique_id}, {tls_version}, {tls_cipher}, {sni}, {alpn}, {client_cert_subject},
{client_cert_serial}, {mss}, {rtt_us}, and {json}: all of it as one JSON object. Nothing
else: no attribute or index lookups. ``\\n``, ``\\r``, ``\\t`` and ``\\\\`` in the text are
escapes (a shell or an environment variable passes them literally); a newline is
appended if the template does not end with one.

Size, checked at startup with every field at its longest: the basic fields and the text
render to at most MAX_LINE_CHARS (1,024) characters, and each reflection field the
template uses adds the longest it can be (REFLECTION_FIELD_CHARS: 256 for a text field,
reflection.MAX_JSON_CHARS for {json}); so no banner line is longer than
MAX_BANNER_CHARS, all fields together. Values from the network are escaped as in a JSON
string, so none can end or split the line.

``parts`` says which facts the template needs gathered (empty: none; the caller then
passes no facts and nothing is read from the socket).

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
from server.engine.reflection import FIELD_PARTS, flat_fields, to_json, worst_case

BASIC_FIELDS = ("hostname", "peer", "local", "conn", "version")
FIELDS = BASIC_FIELDS + tuple(FIELD_PARTS)
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
    **flat_fields(worst_case()),
    "json": to_json(worst_case()),
}
# What each reflection field may add to a line: its longest value (a text field's escape
# budget, the whole object for {json}); and the longest line any template can render.
REFLECTION_FIELD_CHARS = {name: len(str(_SAMPLE[name])) for name in FIELD_PARTS}
MAX_BANNER_CHARS = MAX_LINE_CHARS + sum(REFLECTION_FIELD_CHARS.values())


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
    reflected: set[str] = set()
    try:
        for _, name, spec, _ in string.Formatter().parse(value):
            if name is None:
                continue
            if name not in FIELDS:
                return f"unknown field {{{name}}}; the fields are {', '.join('{' + f + '}' for f in FIELDS)}"
            if spec and "{" in spec:
                return f"the format of {{{name}}} may not hold another field"
            if name in FIELD_PARTS:
                reflected.add(name)
        # The longest values a field can take: what this renders to bounds every line.
        longest = len(value.format_map(_SAMPLE))
    except (ValueError, TypeError) as error:  # "{" alone, a bad format spec
        return f"not a valid template: {error}"
    limit = MAX_LINE_CHARS + sum(REFLECTION_FIELD_CHARS[name] for name in reflected)
    if longest > limit:
        return f"renders to up to {longest} characters; at most {limit}"
    return None


class Banner:
    """A checked template, rendered per connection."""

    __slots__ = ("_needs_local", "_template", "_uses_json", "_values", "hostname", "parts", "reflects")

    def __init__(self, template: str, hostname: str | None = None) -> None:
        problem = check_template(template)
        if problem:
            raise ValueError(problem)
        self._template = template if template.endswith("\n") else template + "\n"
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        self._needs_local = "local" in names
        self._uses_json = "json" in names
        # Does the template use a reflection field (then render wants ``facts``), and
        # which facts must be gathered for it (none for {listener} and {worker} alone).
        self.reflects = bool(names & set(FIELD_PARTS))
        self.parts: frozenset[str] = frozenset().union(*(FIELD_PARTS[name] for name in names if name in FIELD_PARTS))
        if self.reflects and self._needs_local:
            self.parts |= {"local"}
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._values: dict[str, object] = {"hostname": self.hostname, "version": server.__version__}

    def render(
        self, conn_id: int, peer: str, local: Callable[[], str], facts: dict[str, object] | None = None
    ) -> bytes:
        """The line for one connection; ``local()`` is only called if {local} is used.
        ``facts`` (reflection.reflect, with ``parts``) fill the reflection fields."""
        values = dict(self._values, conn=conn_id, peer=peer)
        if facts is not None:
            values.update(flat_fields(facts))
            values["local"] = facts.get("local") or (local() if self._needs_local else "")
            values["json"] = to_json(facts) if self._uses_json else ""
        else:
            values.update(_EMPTY_REFLECTION)
            values["local"] = local() if self._needs_local else ""
        return self._template.format_map(values).encode("utf-8", "replace")


_EMPTY_REFLECTION = dict.fromkeys(FIELD_PARTS, "")


def local_address(sock: socket.socket) -> str:
    """The socket's own address as text, or "" if the socket is gone."""
    from server.engine.listener import format_address  # here: listener imports config, which imports us

    try:
        return format_address(sock.getsockname())
    except OSError:
        return ""
