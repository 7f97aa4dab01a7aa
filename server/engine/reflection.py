"""Reflection: what the server saw of one connection, as one JSON object ("{json}" in the
banner, ``GET /connections/ID`` on the admin port).

    facts = reflect(sock, conn, worker=None, hostname=..., parts=PARTS)
    line = to_json(facts)                  # one line of ASCII, always valid JSON

The object (the names are a contract: add, never rename):

    peer, local, listener, worker, conn, hostname     always (worker: null without --workers)
    via                                               the balancer's address, behind PROXY
    proxy     version, command, family, src, dst, tlvs (alpn, authority, unique_id,
              crc32c_ok, ssl {client, verify, version, cn, cipher, sig_alg, key_alg},
              netns, other [{type, hex, size}]) -- null where not sent
    tls       version, cipher, sni, alpn, resumed, client_cert {subject, issuer, serial,
              san, not_after}
    tcp_info  rtt_us, rttvar_us, snd_mss, rcv_mss, pmtu, retransmits (those the kernel gave)

Only the ``parts`` asked for are gathered (PARTS: local, proxy, tls, tcp_info), so a
banner with no reflection field costs nothing, and ``{mss}`` costs one getsockopt.

Escaping and size: bytes from the network are decoded as UTF-8 with invalid bytes kept
as ``\\xNN`` text; the encoder escapes quotes, backslashes, control characters and every
non-ASCII character, so the line is ASCII, one line, and valid JSON whatever arrived.
Every string is then cut so that its escaped form is at most TEXT_BUDGET characters;
with the lists bounded too (proxy_tlv.py, tls_facts.py), MAX_JSON_CHARS is the longest
line there can be: computed below from the worst case of every field, not guessed (the
banner's template check states it as lib/banner_template.REFLECTION_JSON_CHARS).

The PROXY header is the one the connection's PROXY step kept (``conn.proxy``); TLS facts
come from the socket when it is an SSLSocket past its handshake; TCP_INFO is read now.

``reflect`` reads the socket (getsockname, TCP_INFO, the TLS state): it runs on the
thread that owns the socket. Everything else may run on any thread.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Collection, Mapping
from typing import Any

from server.engine import tcp_info
from server.engine.connection import Connection
from server.engine.proxy_protocol import ProxyHeader
from server.engine.proxy_tlv import OTHER_MAX_BYTES, OTHER_MAX_ITEMS, VALUE_MAX_BYTES, OtherTlv, ProxyTlvs, SslTlv
from server.engine.tls_facts import SAN_MAX_ITEMS, tls_facts
from server.lib.banner_template import REFLECTION_TEXT_CHARS
from server.lib.net import format_address

PARTS = frozenset({"local", "proxy", "tls", "tcp_info"})
TEXT_BUDGET = REFLECTION_TEXT_CHARS  # escaped characters per string, at most


def reflect(
    sock: socket.socket, conn: Connection, *, worker: int | None, hostname: str, parts: Collection[str] = PARTS
) -> dict[str, Any]:
    """The connection's facts (see the module docstring), bounded, ready for to_json."""
    facts: dict[str, Any] = {
        "peer": conn.peer,
        "local": local_address(sock) if "local" in parts else "",
        "listener": conn.listener,
        "worker": worker,
        "conn": conn.id,
        "hostname": hostname,
    }
    if conn.via:
        facts["via"] = conn.via
    if conn.proxy is not None and "proxy" in parts:
        facts["proxy"] = proxy_object(conn.proxy)
    if "tls" in parts and isinstance(sock, ssl.SSLSocket) and sock.cipher() is not None:
        facts["tls"] = tls_facts(sock)
    if "tcp_info" in parts and (info := tcp_info.read(sock)) is not None:
        facts["tcp_info"] = info.as_dict()
    return bounded_object(facts)


def local_address(sock: socket.socket) -> str:
    """The socket's own address as text, or "" if the socket is gone."""
    try:
        return format_address(sock.getsockname())
    except OSError:
        return ""


def to_json(facts: Mapping[str, Any]) -> str:
    """One line of ASCII JSON."""
    return json.dumps(facts, ensure_ascii=True, separators=(",", ":"))


def proxy_object(header: ProxyHeader) -> dict[str, Any]:
    return {
        "version": header.version,
        "command": header.command,
        "family": header.family,
        "src": _address(header.source),
        "dst": _address(header.destination),
        "tlvs": None if header.tlvs is None else _tlvs_object(header.tlvs),
    }


def _tlvs_object(tlvs: ProxyTlvs) -> dict[str, Any]:
    return {
        "alpn": text_of(tlvs.alpn),
        "authority": text_of(tlvs.authority),
        "unique_id": text_of(tlvs.unique_id),
        "crc32c_ok": tlvs.crc32c_ok,
        "ssl": None if tlvs.ssl is None else _ssl_object(tlvs.ssl),
        "netns": text_of(tlvs.netns),
        "other": [{"type": item.type, "hex": item.value.hex(), "size": item.size} for item in tlvs.other],
    }


def _ssl_object(ssl_tlv: SslTlv) -> dict[str, Any]:
    return {
        "client": list(ssl_tlv.client),
        "verify": ssl_tlv.verify,
        "version": text_of(ssl_tlv.version),
        "cn": text_of(ssl_tlv.cn),
        "cipher": text_of(ssl_tlv.cipher),
        "sig_alg": text_of(ssl_tlv.sig_alg),
        "key_alg": text_of(ssl_tlv.key_alg),
    }


def _address(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def text_of(value: bytes | None) -> str | None:
    """Network bytes as text: UTF-8, invalid bytes as ``\\xNN``."""
    return None if value is None else value.decode("utf-8", "backslashreplace")


# --- bounding ------------------------------------------------------------------------------


def bounded(value: Any) -> Any:
    """``value`` with every string cut to TEXT_BUDGET escaped characters (dicts and lists
    walked; other values as they are)."""
    if isinstance(value, str):
        return bounded_text(value)
    if isinstance(value, dict):
        return {key: bounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(item) for item in value]
    return value


def bounded_object(facts: Mapping[str, Any]) -> dict[str, Any]:
    """``bounded`` for the top-level object."""
    return {key: bounded(value) for key, value in facts.items()}


def bounded_text(text: str, budget: int = TEXT_BUDGET) -> str:
    """The longest prefix of ``text`` whose JSON-escaped (ASCII) form fits ``budget``."""
    if len(text) <= budget and text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text  # escapes to itself
    used = 0
    for index, char in enumerate(text):
        used += escaped_length(char)
        if used > budget:
            return text[:index]
    return text


def escaped_length(char: str) -> int:
    """How many characters ``json.dumps(..., ensure_ascii=True)`` writes for ``char``."""
    code = ord(char)
    if char in '"\\\n\r\t\b\f':
        return 2
    if code < 0x20 or code == 0x7F:
        return 6  # \u00XX: json escapes all but printable ASCII
    if code < 0x80:
        return 1
    return 6 if code < 0x10000 else 12  # \uXXXX, or a surrogate pair


# --- the longest line --------------------------------------------------------------------------


def worst_case() -> dict[str, Any]:
    """Every field at its longest: each string at the escape budget, each number at its
    largest, each list full. MAX_JSON_CHARS is its length."""
    text = "\\" * TEXT_BUDGET  # every character escapes to two
    raw = b"\\" * VALUE_MAX_BYTES
    other = tuple(OtherTlv(0xFF, b"\xff" * OTHER_MAX_BYTES, 0xFFFF) for _ in range(OTHER_MAX_ITEMS))
    ssl_tlv = SslTlv(("ssl", "cert_conn", "cert_sess"), 0xFFFFFFFF, raw, raw, raw, raw, raw)
    tlvs = ProxyTlvs(raw, raw, raw, False, ssl_tlv, raw, other)
    longest_ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    header = ProxyHeader(2, False, (longest_ip, 65535), (longest_ip, 65535), tlvs, "PROXY", "UNIX_STREAM")
    cert = {"subject": text, "issuer": text, "serial": text, "san": [text] * SAN_MAX_ITEMS, "not_after": text}
    facts: dict[str, Any] = {
        "peer": text,
        "local": text,
        "listener": text,
        "worker": 10**6,
        "conn": 10**15,
        "hostname": text,
        "via": text,
        "proxy": proxy_object(header),
        "tls": {"version": text, "cipher": text, "sni": text, "alpn": text, "resumed": False, "client_cert": cert},
        "tcp_info": dict.fromkeys((name for name, _ in tcp_info.FIELDS), 0xFFFFFFFF),
    }
    return bounded_object(facts)


MAX_JSON_CHARS = len(to_json(worst_case()))


# --- the banner's flat fields ------------------------------------------------------------------

# Which part of the facts each banner reflection field needs gathered (the fields of
# lib/banner_template.REFLECTION_LONGEST).
FIELD_PARTS: dict[str, frozenset[str]] = {
    "worker": frozenset(),
    "proxy_version": frozenset({"proxy"}),
    "proxy_src": frozenset({"proxy"}),
    "proxy_dst": frozenset({"proxy"}),
    "proxy_authority": frozenset({"proxy"}),
    "proxy_unique_id": frozenset({"proxy"}),
    "tls_version": frozenset({"tls"}),
    "tls_cipher": frozenset({"tls"}),
    "sni": frozenset({"tls"}),
    "alpn": frozenset({"tls"}),
    "client_cert_subject": frozenset({"tls"}),
    "client_cert_serial": frozenset({"tls"}),
    "mss": frozenset({"tcp_info"}),
    "rtt_us": frozenset({"tcp_info"}),
    "json": PARTS,
}


def flat_fields(facts: Mapping[str, Any]) -> dict[str, str]:
    """The banner's one-value fields, each "" when not applicable, escaped as inside a
    JSON string (so a value from the network cannot end or split the banner line)."""
    proxy = facts.get("proxy") or {}
    tlvs = proxy.get("tlvs") or {}
    tls = facts.get("tls") or {}
    cert = tls.get("client_cert") or {}
    info = facts.get("tcp_info") or {}
    values = {
        "worker": facts.get("worker"),
        "proxy_version": proxy.get("version"),
        "proxy_src": proxy.get("src"),
        "proxy_dst": proxy.get("dst"),
        "proxy_authority": tlvs.get("authority"),
        "proxy_unique_id": tlvs.get("unique_id"),
        "tls_version": tls.get("version"),
        "tls_cipher": tls.get("cipher"),
        "sni": tls.get("sni"),
        "alpn": tls.get("alpn"),
        "client_cert_subject": cert.get("subject"),
        "client_cert_serial": cert.get("serial"),
        "mss": info.get("snd_mss"),
        "rtt_us": info.get("rtt_us"),
    }
    return {name: _flat(value) for name, value in values.items()}


def _flat(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)[1:-1]
    return str(value)
