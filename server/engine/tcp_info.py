"""Linux ``TCP_INFO``: the kernel's view of one TCP connection (``struct tcp_info`` in
include/uapi/linux/tcp.h), read with one getsockopt and parsed at fixed offsets.

What is kept, in the kernel's units (``ss -ti`` shows the same numbers):

    rtt_us       smoothed round-trip time        tcpi_rtt          u32 at offset 68
    rttvar_us    its variation                   tcpi_rttvar       u32 at 72
    snd_mss      the MSS we send with            tcpi_snd_mss      u32 at 16
    rcv_mss      the MSS we estimate the peer's  tcpi_rcv_mss      u32 at 20
    pmtu         the path MTU                    tcpi_pmtu         u32 at 60
    retransmits  segments retransmitted in all   tcpi_total_retrans u32 at 100

The struct only grows: the kernel copies min(asked, its size) bytes, and a field beyond
what it copied is absent (None), never a made-up zero. Where there is no TCP_INFO at all
(another OS, a socket that is not TCP, a closed socket) ``read`` returns None.

Costs one system call; nothing calls it per message (reflection reads it once at
admission, /connections once per listed connection). Any thread may call ``parse``;
``read`` belongs to the thread that owns the socket (its scheduler thread).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# (name, offset) of each u32 kept; the struct is native-endian.
FIELDS = (
    ("rtt_us", 68),
    ("rttvar_us", 72),
    ("snd_mss", 16),
    ("rcv_mss", 20),
    ("pmtu", 60),
    ("retransmits", 100),
)
ASK_BYTES = 104  # through tcpi_total_retrans: every field above (the struct of Linux 2.6.x)
_U32 = struct.Struct("=I")
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The kept fields; None where the kernel did not give them."""

    rtt_us: int | None = None
    rttvar_us: int | None = None
    snd_mss: int | None = None
    rcv_mss: int | None = None
    pmtu: int | None = None
    retransmits: int | None = None

    def as_dict(self) -> dict[str, int]:
        """The fields the kernel gave, by name (absent ones left out)."""
        return {name: value for name, _ in FIELDS if (value := getattr(self, name)) is not None}


def parse(data: bytes) -> TcpInfo:
    """The kept fields of a ``struct tcp_info`` as the kernel returned it (maybe short)."""
    values = {name: _U32.unpack_from(data, offset)[0] for name, offset in FIELDS if offset + _U32.size <= len(data)}
    return TcpInfo(**values)


def read(sock: socket.socket) -> TcpInfo | None:
    """The socket's TCP_INFO now, or None where there is none."""
    if _TCP_INFO is None:
        return None
    try:
        data = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, ASK_BYTES)
    except (OSError, ValueError):  # not TCP, closed (fileno -1)
        return None
    return parse(data)
