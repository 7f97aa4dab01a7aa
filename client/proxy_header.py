"""The PROXY protocol header a client sends first when it plays the load balancer
(HAProxy's proxy-protocol.txt): ``--proxy-protocol v1|v2 --proxy-source ADDR:PORT``.

    header = encode("v2", source=("192.0.2.1", 4000), destination=("127.0.0.1", 7007))

Only what a balancer in front of a TCP service sends: v1 ``TCP4``/``TCP6`` lines and
v2 ``PROXY`` commands over TCP, no TLVs. The source and the destination must be IP
literals of one family (the header has one family field); nothing here resolves a
name or touches a socket. Any thread may call anything here.
"""

from __future__ import annotations

import ipaddress
import struct

VERSIONS = ("v1", "v2")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY_COMMAND = 0x21  # version 2, command PROXY
V2_TCP = {4: 0x11, 6: 0x21}  # AF_INET or AF_INET6, over STREAM
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")


def parse_endpoint(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv6 in brackets) -> (address, port); ValueError says why not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected ADDR:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address in ADDR:PORT, got {text!r}") from None
    if address.version == 6 and not bracketed:
        raise ValueError(f"write an IPv6 address in brackets, [ADDR]:PORT, got {text!r}")
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port 0-65535 in ADDR:PORT, got {text!r}")
    return str(address), port


def encode(version: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The header that says a client at ``source`` reached ``destination``. ValueError
    if the two are not IP addresses of one family."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(
            f"the source {src} is IPv{src.version} but the server's address {dst} is IPv{dst.version}: "
            "a PROXY header carries one family"
        )
    if version == "v1":
        return f"PROXY TCP{src.version} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")
    if version != "v2":
        raise ValueError(f"expected one of {', '.join(VERSIONS)}, got {version!r}")
    block = (_V2_INET if src.version == 4 else _V2_INET6).pack(src.packed, dst.packed, source[1], destination[1])
    return V2_SIGNATURE + bytes((V2_PROXY_COMMAND, V2_TCP[src.version])) + struct.pack("!H", len(block)) + block
