"""PROXY v2 TLVs decoded (HAProxy's proxy-protocol.txt, section 2.2): what the balancer
said about the connection beyond its addresses. Bytes in, a ProxyTlvs or a
TlvError out; no socket, clock or log.

Known types: ALPN (0x01), AUTHORITY (0x02, the SNI or Host the balancer saw), CRC32C
(0x03, checked over the whole header with its own value zeroed), NOOP (0x04, skipped),
UNIQUE_ID (0x05, at most 128 bytes per the spec), SSL (0x20: client flags, verify result
and sub-TLVs VERSION 0x21, CN 0x22, CIPHER 0x23, SIG_ALG 0x24, KEY_ALG 0x25) and NETNS
(0x30). Any other type, a repeated known type and an unknown SSL sub-type are kept as
(type, bytes) in ``other``: at most OTHER_MAX_ITEMS of them, each cut to
OTHER_MAX_BYTES (``size`` keeps the real length), so what a header can make us hold and
reflect stays small whatever it declares.

Values are kept as the bytes that arrived, each cut to VALUE_MAX_BYTES: they are text
from the network, escaped only where they are shown (reflection.py). Lengths are strict
as before: TLVs must exactly fill their space and a CRC32C value is 4 bytes (as HAProxy
checks), else a TlvError (a "malformed" header to proxy_protocol), whose message never
quotes the bytes. An SSL TLV whose inside does not add up (a fixed part under 5 bytes,
sub-TLVs that do not fill it) is only shown as hex in ``other``: it informs, and a
connection accepted before TLVs were decoded is not refused for it now.

Any thread may call anything here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

TYPE_ALPN = 0x01
TYPE_AUTHORITY = 0x02
TYPE_CRC32C = 0x03
TYPE_NOOP = 0x04
TYPE_UNIQUE_ID = 0x05
TYPE_SSL = 0x20
TYPE_NETNS = 0x30
SSL_SUBTYPES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}
SSL_CLIENT_FLAGS = {0x01: "ssl", 0x02: "cert_conn", 0x04: "cert_sess"}

VALUE_MAX_BYTES = 255  # a host name's limit; the spec bounds UNIQUE_ID to 128
OTHER_MAX_ITEMS = 8
OTHER_MAX_BYTES = 64

_HEAD = struct.Struct("!BH")
_SSL_FIXED = struct.Struct("!BI")
_CRC32C_VALUE = struct.Struct("!I")


class TlvError(ValueError):
    """The TLVs' lengths do not add up; proxy_protocol reports it as a malformed header."""


@dataclass(frozen=True, slots=True)
class OtherTlv:
    """A TLV shown as type and (the first OTHER_MAX_BYTES of its) value; ``size`` is its
    declared length."""

    type: int
    value: bytes
    size: int


@dataclass(frozen=True, slots=True)
class SslTlv:
    """PP2_TYPE_SSL: ``client`` flags (names from SSL_CLIENT_FLAGS), ``verify`` (0: the
    client presented a certificate that verified), and the sub-TLVs that came."""

    client: tuple[str, ...]
    verify: int
    version: bytes | None = None
    cn: bytes | None = None
    cipher: bytes | None = None
    sig_alg: bytes | None = None
    key_alg: bytes | None = None


@dataclass(frozen=True, slots=True)
class ProxyTlvs:
    """The decoded TLVs of one v2 header; each field None when its TLV did not come.
    ``crc32c_ok`` is None without a CRC32C TLV, else whether the checksum matched."""

    alpn: bytes | None = None
    authority: bytes | None = None
    unique_id: bytes | None = None
    crc32c_ok: bool | None = None
    ssl: SslTlv | None = None
    netns: bytes | None = None
    other: tuple[OtherTlv, ...] = field(default=())


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, as iSCSI and the PROXY protocol use it) of ``data``."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # the reflected polynomial
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _entries(space: memoryview, what: str) -> list[tuple[int, int, memoryview]]:
    """(type, offset of the value in ``space``, value) for TLVs that exactly fill ``space``."""
    entries = []
    offset = 0
    while offset < len(space):
        if len(space) - offset < _HEAD.size:
            raise TlvError(f"v2: a truncated {what}")
        kind, size = _HEAD.unpack_from(space, offset)
        start = offset + _HEAD.size
        offset = start + size
        if offset > len(space):
            raise TlvError(f"v2: a {what} longer than the header")
        entries.append((kind, start, space[start:offset]))
    return entries


def decode(header: bytes, tlv_start: int) -> ProxyTlvs | None:
    """The TLVs in ``header[tlv_start:]`` (``header`` is the whole v2 header, needed for
    CRC32C); None if there are none. Raises TlvError on a bad length."""
    space = memoryview(header)[tlv_start:]
    if not space:
        return None
    known: dict[int, bytes] = {}
    ssl: SslTlv | None = None
    ssl_seen = False
    crc32c_ok: bool | None = None
    other: list[OtherTlv] = []
    for kind, start, value in _entries(space, "TLV"):
        if kind == TYPE_NOOP:
            continue
        if kind in known or (kind == TYPE_SSL and ssl_seen) or (kind == TYPE_CRC32C and crc32c_ok is not None):
            _keep_other(other, kind, value)  # a repeat: shown, not believed
        elif kind == TYPE_CRC32C:
            crc32c_ok = _check_crc32c(header, tlv_start + start, value)
        elif kind == TYPE_SSL:
            ssl, ssl_seen = _decode_ssl(value, other), True
        elif kind in (TYPE_ALPN, TYPE_AUTHORITY, TYPE_UNIQUE_ID, TYPE_NETNS):
            known[kind] = bytes(value[:VALUE_MAX_BYTES])
        else:
            _keep_other(other, kind, value)
    return ProxyTlvs(
        alpn=known.get(TYPE_ALPN),
        authority=known.get(TYPE_AUTHORITY),
        unique_id=known.get(TYPE_UNIQUE_ID),
        crc32c_ok=crc32c_ok,
        ssl=ssl,
        netns=known.get(TYPE_NETNS),
        other=tuple(other),
    )


def _keep_other(other: list[OtherTlv], kind: int, value: memoryview) -> None:
    if len(other) < OTHER_MAX_ITEMS:
        other.append(OtherTlv(kind, bytes(value[:OTHER_MAX_BYTES]), len(value)))


def _check_crc32c(header: bytes, value_at: int, value: memoryview) -> bool:
    if len(value) != _CRC32C_VALUE.size:
        raise TlvError("v2: a CRC32C TLV that is not 4 bytes")
    (expected,) = _CRC32C_VALUE.unpack(value)
    crc = crc32c(memoryview(header)[:value_at])
    crc = crc32c(b"\0\0\0\0", crc)
    crc = crc32c(memoryview(header)[value_at + _CRC32C_VALUE.size :], crc)
    return bool(crc == expected)


def _decode_ssl(value: memoryview, other: list[OtherTlv]) -> SslTlv | None:
    """The SSL TLV, or None (and the TLV shown as hex) when its inside does not add up:
    it only informs, so unlike a bad CRC32C length it does not cost the connection."""
    if len(value) < _SSL_FIXED.size:
        _keep_other(other, TYPE_SSL, value)
        return None
    client, verify = _SSL_FIXED.unpack_from(value)
    try:
        entries = _entries(value[_SSL_FIXED.size :], "SSL sub-TLV")
    except TlvError:
        _keep_other(other, TYPE_SSL, value)
        return None
    found: dict[str, bytes] = {}
    for kind, _, sub in entries:
        name = SSL_SUBTYPES.get(kind)
        if name is None or name in found:
            _keep_other(other, kind, sub)
        else:
            found[name] = bytes(sub[:VALUE_MAX_BYTES])
    flags = tuple(name for bit, name in SSL_CLIENT_FLAGS.items() if client & bit)
    return SslTlv(
        flags,
        verify,
        version=found.get("version"),
        cn=found.get("cn"),
        cipher=found.get("cipher"),
        sig_alg=found.get("sig_alg"),
        key_alg=found.get("key_alg"),
    )
