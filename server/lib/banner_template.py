"""The --banner template as a setting: its fields, its parser and its check.

config.py validates the template at startup with ``check_template`` (a bad one is a
one-line error naming --banner, exit 2); engine/banner.py renders it per connection.
Pure functions; any thread may call them.

Fields: {hostname} (this host's name), {peer} (the client's address as the server sees
it, after the PROXY header if there is one), {local} (the server socket's own address),
{conn} (the connection's id, as in events), {listener} (the listener's name: tcp, tls...)
and {version} (the server's version); and what the server saw (engine/reflection.py),
each empty when not applicable: {worker}, {proxy_version}, {proxy_src}, {proxy_dst},
{proxy_authority}, {proxy_unique_id}, {tls_version}, {tls_cipher}, {sni}, {alpn},
{client_cert_subject}, {client_cert_serial}, {mss}, {rtt_us}, and {json}: all of it as
one JSON object on one line. Nothing else: no attribute or index lookups. ``\\n``,
``\\r``, ``\\t`` and ``\\\\`` in the text are escapes (a shell or an environment
variable passes them literally).

Size, checked with every field at its longest: the text and the fields above the
reflection ones render to at most MAX_LINE_CHARS (1,024) characters, and each reflection
field a template uses adds the longest it can be: REFLECTION_TEXT_CHARS (256, a text
field cut to that many escaped characters) or REFLECTION_JSON_CHARS for {json} (11,868:
engine/reflection.py computes it from the worst case of every field, and a test keeps
the two equal). So no banner line exceeds MAX_BANNER_CHARS, whatever arrives.
"""

from __future__ import annotations

import re
import string

MAX_TEMPLATE_CHARS = 512
MAX_LINE_CHARS = 1024  # a field's width ({conn:>5000000}) must not make each line megabytes
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nrt\\])")
_LONGEST_ADDRESS = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
# The longest each field can be: what a template renders to with these bounds every line.
LONGEST: dict[str, object] = {
    "hostname": "h" * 64,  # a host name is at most 64 bytes on Linux
    "peer": _LONGEST_ADDRESS,
    "local": _LONGEST_ADDRESS,
    "conn": 10**18,
    "listener": "l" * 32,
    "version": "v" * 32,
}
REFLECTION_TEXT_CHARS = 256  # a network text, JSON-escaped, is cut to this many characters
REFLECTION_JSON_CHARS = 11_868  # the longest {json} object (engine/reflection.py MAX_JSON_CHARS)
_TEXT = "t" * REFLECTION_TEXT_CHARS
_U32 = str(2**32 - 1)
REFLECTION_LONGEST: dict[str, str] = {
    "worker": str(10**6),
    "proxy_version": "2",
    "proxy_src": _LONGEST_ADDRESS,
    "proxy_dst": _LONGEST_ADDRESS,
    "proxy_authority": _TEXT,
    "proxy_unique_id": _TEXT,
    "tls_version": _TEXT,
    "tls_cipher": _TEXT,
    "sni": _TEXT,
    "alpn": _TEXT,
    "client_cert_subject": _TEXT,
    "client_cert_serial": _TEXT,
    "mss": _U32,
    "rtt_us": _U32,
    "json": "j" * REFLECTION_JSON_CHARS,
}
LONGEST.update(REFLECTION_LONGEST)
FIELDS = tuple(LONGEST)
MAX_BANNER_CHARS = MAX_LINE_CHARS + sum(len(value) for value in REFLECTION_LONGEST.values())


def parse_template(text: str) -> str | None:
    """The setting's text -> template (escapes decoded); empty means off (None)."""
    if not text:
        return None
    return _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], text)


def fields_used(template: str) -> frozenset[str]:
    """The names of the fields ``template`` renders."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


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
            if spec and _too_wide(spec):
                return f"the width of {{{name}}} may be at most {MAX_LINE_CHARS}"
            if name in REFLECTION_LONGEST:
                reflected.add(name)
        longest = len(value.format_map(LONGEST))
    except (ValueError, TypeError, OverflowError, MemoryError) as error:  # "{" alone, a bad spec
        return f"not a valid template: {error}"
    limit = MAX_LINE_CHARS + sum(len(REFLECTION_LONGEST[name]) for name in reflected)
    if longest > limit:
        return f"renders to up to {longest} characters; at most {limit}"
    return None


def _too_wide(spec: str) -> bool:
    """A width or precision past MAX_LINE_CHARS, checked before rendering tries it."""
    return any(int(digits) > MAX_LINE_CHARS for digits in re.findall(r"\d+", spec))
