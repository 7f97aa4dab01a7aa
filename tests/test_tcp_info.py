"""TCP_INFO: the offsets against a struct packed by hand, a short struct giving absent
fields (not zeros), and the kernel's own numbers on real loopback sockets."""

from __future__ import annotations

import socket
import struct
import sys

import pytest

from server.engine import tcp_info

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")


def test_each_field_is_read_at_its_offset_in_struct_tcp_info() -> None:
    data = bytearray(tcp_info.ASK_BYTES)
    for number, (_, offset) in enumerate(tcp_info.FIELDS, start=1):
        struct.pack_into("=I", data, offset, 1000 + number)
    data[2] = 0xEE  # tcpi_retransmits (the u8 of the current episode) is not what we show
    info = tcp_info.parse(bytes(data))
    assert (info.rtt_us, info.rttvar_us, info.snd_mss, info.rcv_mss) == (1001, 1002, 1003, 1004)
    assert (info.pmtu, info.retransmits) == (1005, 1006)


def test_a_short_struct_leaves_the_missing_fields_absent_not_zero() -> None:
    info = tcp_info.parse(bytes(64))  # through tcpi_pmtu only
    assert info.snd_mss == 0 and info.pmtu == 0
    assert info.rtt_us is None and info.retransmits is None
    assert info.as_dict() == {"snd_mss": 0, "rcv_mss": 0, "pmtu": 0}
    assert tcp_info.parse(b"").as_dict() == {}


@linux_only
def test_loopback_has_a_measured_rtt_and_the_clients_mss_bounds_ours() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)  # advertised in the SYN
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            info = tcp_info.read(accepted)
    assert info is not None
    assert info.rtt_us is not None and info.rtt_us > 0
    assert info.snd_mss is not None and 0 < info.snd_mss <= 1000
    assert info.pmtu is not None and info.pmtu > 1000 and info.retransmits == 0


@pytest.mark.skipif(sys.platform != "linux", reason="Linux")
def test_no_tcp_info_where_there_is_no_tcp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_info.read(udp) is None
    closed = socket.socket()
    closed.close()
    assert tcp_info.read(closed) is None
