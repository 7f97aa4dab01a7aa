"""The --tls-alpn setting: the ALPN protocols the TLS listener offers, comma-separated,
most preferred first; off (None) by default. ``parse_alpn`` and ``check_alpn`` are the
setting's parser and check (config.py), ``alpn_protocols`` the list for
``SSLContext.set_alpn_protocols`` (engine/tls.py). Pure functions; any thread.
"""

from __future__ import annotations

ALPN_MAX_PROTOCOLS = 16
ALPN_MAX_NAME_BYTES = 255  # one length byte on the wire (RFC 7301)


def parse_alpn(text: str) -> str | None:
    """The setting's text, each name stripped; empty means off (None)."""
    return ",".join(item.strip() for item in text.split(",")) if text.strip() else None


def alpn_protocols(value: str | None) -> list[str]:
    """The checked setting -> the protocol list (empty: off)."""
    return value.split(",") if value else []


def check_alpn(value: object) -> str | None:
    """Why ``value`` is not a usable protocol list, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"expected text, got {value!r}"
    protocols = value.split(",")
    if len(protocols) > ALPN_MAX_PROTOCOLS:
        return f"at most {ALPN_MAX_PROTOCOLS} protocols, got {len(protocols)}"
    for protocol in protocols:
        if not protocol:
            return "an empty protocol name; expected NAME[,NAME...] such as x-echo,h2"
        if not protocol.isascii() or not protocol.isprintable() or " " in protocol:
            return f"protocol names are printable ASCII without spaces, got {protocol!r}"
        if len(protocol) > ALPN_MAX_NAME_BYTES:
            return f"a protocol name is at most {ALPN_MAX_NAME_BYTES} bytes"
    return None
