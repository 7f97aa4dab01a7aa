"""The PROXY protocol header (HAProxy's proxy-protocol.txt, v1 text and v2 binary), parsed
without a kernel: bytes in, a ProxyHeader or a ProxyProtocolError out.

A balancer that speaks it sends one header at the very start of the connection, before
any client byte: the client's address and port (and the balancer's frontend address).
This module owns the rules of that header; it never touches a socket, a clock or a log.
The socket side (bounded reads, the deadline, admission) is proxy_step.read_proxy_header.

How a reader uses it, so that no echo payload is ever consumed into the header:

    data = b""
    while True:
        scan = examine(data, accept)          # raises ProxyProtocolError when data cannot
        if scan.end is not None: break        # begin a valid header (or grew too long)
        peeked = recv(scan.room, MSG_PEEK)    # at most what can still be header
        end = examine(data + peeked, accept).end
        data += recv(len(peeked) if end is None else end - len(data))
    header = parse(data)

Limits: a v1 line is at most V1_MAX_LENGTH (107) bytes including its CRLF, as the spec
says; a v2 header is 16 bytes plus its declared length, which we cap at V2_MAX_LENGTH in
all: the spec allows 64 KiB of TLVs, no balancer we know of sends more than a few hundred
bytes, and a cap keeps the memory one unauthenticated connection may hold small.

Strictness, per the spec: v1 must end in CRLF (a lone CR or LF is malformed), numbers have
no leading zeros, the family matches the addresses; v2 must be version 2, command LOCAL or
PROXY, a known family and protocol, an address block that fits the declared length, and
TLVs that exactly fill what is left (decoded by proxy_tlv.py and kept on the header, for
reflection). v2 LOCAL, v1 UNKNOWN and v2 families we do not use (UNSPEC, UNIX, DGRAM)
mean "use the real endpoints": the header is accepted with ``local`` set, no addresses
and no TLVs (their bytes are not looked at, as before).

Errors never quote the received bytes. Any thread may call anything here.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import Literal

from server.engine.proxy_tlv import ProxyTlvs, TlvError, decode

Accept = Literal["v1", "v2", "any"]
ACCEPT_CHOICES: tuple[str, ...] = ("v1", "v2", "any")

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN <39> <39> 65535 65535\r\n", the spec's worst case
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/protocol, length
V2_MAX_LENGTH = 4096  # the whole v2 header, fixed part included (see the module docstring)

_V2_FIXED = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid header. ``kind`` is malformed, oversized or truncated."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(problem)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``local``: use the connection's real endpoints (v2 LOCAL, v1
    UNKNOWN, or a family we do not use); then ``source``/``destination`` are None.
    ``command`` (PROXY or LOCAL) and ``family`` (TCP4, TCP6, UNKNOWN, UNSPEC, UNIX...)
    are as sent, for reflection; ``tlvs`` are a v2 PROXY header's decoded TLVs, if any."""

    version: int
    local: bool
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    tlvs: ProxyTlvs | None = None
    command: str = field(default="PROXY", compare=False)
    family: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Scan:
    """How far a header has arrived: ``end`` is its full length once ``data`` holds all
    of it (else None); ``room`` is how many more bytes may still belong to it."""

    end: int | None
    room: int


def examine(data: bytes, accept: Accept) -> Scan:
    """Where the header that ``data`` begins ends, or how much more may come.

    Raises ProxyProtocolError as soon as ``data`` cannot begin a header ``accept`` allows,
    or has grown past the header's size limit without ending.
    """
    if not data:
        return Scan(None, V1_MAX_LENGTH if accept != "v2" else V2_FIXED_LENGTH)
    if accept != "v2" and _is_prefix(data, V1_PREFIX):
        return _examine_v1(data)
    if accept != "v1" and _is_prefix(data, V2_SIGNATURE):
        return _examine_v2(data)
    wanted = {"v1": "a PROXY v1 header", "v2": "a PROXY v2 header", "any": "a PROXY header"}[accept]
    raise ProxyProtocolError("malformed", f"the connection does not begin with {wanted}")


def parse(data: bytes) -> ProxyHeader:
    """Parse exactly one complete header (``examine(data).end == len(data)``)."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX) and data.endswith(b"\r\n"):
        return _parse_v1(data[:-2])
    raise ProxyProtocolError("malformed", "not a complete PROXY header")


def _is_prefix(data: bytes, signature: bytes) -> bool:
    """``data`` starts with ``signature``, or is the start of it."""
    size = min(len(data), len(signature))
    return data[:size] == signature[:size]


# --- v1 ---------------------------------------------------------------------------------


def _examine_v1(data: bytes) -> Scan:
    for index, byte in enumerate(data[:V1_MAX_LENGTH]):
        if byte == 0x0A:  # LF without CR before it
            raise ProxyProtocolError("malformed", "v1: a line feed without a carriage return")
        if byte == 0x0D:
            if index + 1 == len(data):
                break  # the LF may be next
            if data[index + 1] != 0x0A:
                raise ProxyProtocolError("malformed", "v1: a carriage return without a line feed")
            if index + 2 > V1_MAX_LENGTH:
                break
            return Scan(index + 2, 0)
    if len(data) >= V1_MAX_LENGTH:
        raise ProxyProtocolError("oversized", f"v1: no CRLF within {V1_MAX_LENGTH} bytes")
    return Scan(None, V1_MAX_LENGTH - len(data))


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("malformed", "v1: not US-ASCII") from None
    parts = text.split(" ")
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProxyProtocolError("malformed", "v1: no protocol family")
    family = parts[1]
    if family == "UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, local=True, family="UNKNOWN")
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed", "v1: unknown protocol family")
    if len(parts) != 6:
        raise ProxyProtocolError("malformed", "v1: expected source and destination addresses and ports")
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(parts[2], version), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], version), _v1_port(parts[5]))
    return ProxyHeader(1, local=False, source=source, destination=destination, family=family)


def _v1_address(text: str, version: int) -> str:
    if "%" in text:  # ipaddress accepts IPv6 scope ids; the protocol has none
        raise ProxyProtocolError("malformed", "v1: an address with a scope id")
    try:
        address = ipaddress.ip_address(text)  # rejects IPv4 with leading zeros
    except ValueError:
        raise ProxyProtocolError("malformed", "v1: an invalid address") from None
    if address.version != version:
        raise ProxyProtocolError("malformed", "v1: an address of the wrong family")
    return str(address)


def _v1_port(text: str) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError("malformed", "v1: an invalid port")
    return int(text)


# --- v2 ---------------------------------------------------------------------------------


def _examine_v2(data: bytes) -> Scan:
    if len(data) < V2_FIXED_LENGTH:
        return Scan(None, V2_FIXED_LENGTH - len(data))
    _, version_command, family_protocol, length = _V2_FIXED.unpack_from(data)
    _check_v2_fixed(version_command, family_protocol)
    end = V2_FIXED_LENGTH + length
    if end > V2_MAX_LENGTH:
        raise ProxyProtocolError("oversized", f"v2: a {end}-byte header; the limit is {V2_MAX_LENGTH}")
    if len(data) >= end:
        return Scan(end, 0)
    return Scan(None, end - len(data))


def _check_v2_fixed(version_command: int, family_protocol: int) -> None:
    if version_command >> 4 != 2:
        raise ProxyProtocolError("malformed", "v2: unsupported version")
    if version_command & 0x0F > 1:
        raise ProxyProtocolError("malformed", "v2: unknown command")
    if family_protocol >> 4 > 3 or family_protocol & 0x0F > 2:
        raise ProxyProtocolError("malformed", "v2: unknown address family or protocol")


def _parse_v2(data: bytes) -> ProxyHeader:
    if len(data) < V2_FIXED_LENGTH:
        raise ProxyProtocolError("truncated", "v2: incomplete header")
    _, version_command, family_protocol, length = _V2_FIXED.unpack_from(data)
    _check_v2_fixed(version_command, family_protocol)
    if len(data) != V2_FIXED_LENGTH + length:
        raise ProxyProtocolError("malformed", "v2: the length does not match the header")
    block = memoryview(data)[V2_FIXED_LENGTH:]
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    name = _v2_family_name(family, protocol)
    if version_command & 0x0F == 0:  # LOCAL: the address block is ignored, whatever it holds
        return ProxyHeader(2, local=True, command="LOCAL", family=name)
    if protocol != 1 or family not in (1, 2):  # UNSPEC, DGRAM or UNIX: use the real endpoints
        return ProxyHeader(2, local=True, family=name)
    layout = _V2_INET if family == 1 else _V2_INET6
    if len(block) < layout.size:
        raise ProxyProtocolError("malformed", "v2: the address block is shorter than its family needs")
    src, dst, src_port, dst_port = layout.unpack_from(block)
    try:
        tlvs = decode(data, V2_FIXED_LENGTH + layout.size)
    except TlvError as error:
        raise ProxyProtocolError("malformed", str(error)) from None
    make = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    source, destination = (str(make(src)), src_port), (str(make(dst)), dst_port)
    return ProxyHeader(2, local=False, source=source, destination=destination, tlvs=tlvs, family=name)


def _v2_family_name(family: int, protocol: int) -> str:
    """The spec's name for the family and protocol byte: TCP4, UDP6, UNIX_STREAM, UNSPEC."""
    if family == 0 or protocol == 0:
        return "UNSPEC"
    if family == 3:
        return "UNIX_STREAM" if protocol == 1 else "UNIX_DGRAM"
    return ("TCP" if protocol == 1 else "UDP") + ("4" if family == 1 else "6")
