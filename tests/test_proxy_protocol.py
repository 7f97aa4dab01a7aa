"""The PROXY protocol parser without a kernel: every rule of the spec as a millisecond test,
a reader model that must never consume payload, and random bytes that must only ever give
a ProxyProtocolError. (The socket side is in test_banner.py and test_balancers.py.)"""

from __future__ import annotations

import functools
import ipaddress
import random
import socket
import struct
import threading
import time
from typing import cast

import pytest

from server.core import EchoServer
from server.engine.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    Accept,
    ProxyHeader,
    ProxyProtocolError,
    examine,
    parse,
)
from server.engine.proxy_step import ProxyRejected, read_proxy_header
from server.engine.waits import Shutdown, Wait, WaitTimeout
from server.lib.networks import parse_networks, trusted
from server.observe.events import Event
from server.observe.stats import REJECT_PROXY_PROTOCOL, Stats
from tests.conftest import ServerFactory
from tests.helpers import read_exactly, read_until_eof, run_cli, wait_readable


def v2(command: int = 1, family: int = 1, protocol: int = 1, block: bytes | None = None, tlvs: bytes = b"") -> bytes:
    if block is None:
        if family == 1:
            block = ipaddress.IPv4Address("203.0.113.7").packed + ipaddress.IPv4Address("10.0.0.1").packed
            block += struct.pack("!HH", 40000, 7007)
        elif family == 2:
            block = ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed
            block += struct.pack("!HH", 40001, 7007)
        else:
            block = b""
    body = block + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family << 4 | protocol]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def whole(data: bytes, accept: Accept = "any") -> ProxyHeader:
    """Scan then parse, as the reader does, checking the scan ends exactly at the end."""
    assert examine(data, accept).end == len(data)
    return parse(data)


# --- v1 ---------------------------------------------------------------------------------


def test_v1_tcp4_and_tcp6_give_the_client_address() -> None:
    header = whole(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")
    assert header == ProxyHeader(1, False, ("192.0.2.1", 56324), ("198.51.100.2", 443))
    header = whole(b"PROXY TCP6 2001:DB8::1 2001:db8::2 1 65535\r\n", "v1")
    assert header.source == ("2001:db8::1", 1) and header.destination == ("2001:db8::2", 65535)


def test_v1_unknown_means_the_real_endpoints_and_the_rest_is_ignored() -> None:
    assert whole(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, local=True)
    assert whole(b"PROXY UNKNOWN anything at all here\r\n").local


def test_v1_the_longest_line_fits_and_one_byte_more_does_not() -> None:
    ff = ":".join(["ffff"] * 8)
    longest = f"PROXY UNKNOWN {ff} {ff} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_LENGTH
    assert whole(longest).local
    with pytest.raises(ProxyProtocolError) as error:
        examine(longest[:-2] + b"0\r\n", "v1")
    assert error.value.kind == "oversized"
    with pytest.raises(ProxyProtocolError, match="no CRLF"):
        examine(b"PROXY " + b"A" * 200, "any")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",  # LF alone
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\rX\n",  # CR alone
        b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n",  # leading zero in an address
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",  # leading zero in a port
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",  # port out of range
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 443\r\n",  # family mismatch
        b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 443\r\n",  # scope id
        b"PROXY TCP4  192.0.2.1 198.51.100.2 1 443\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443 x\r\n",  # a field too many
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 \xb2 443\r\n",  # not ASCII
        b"PROXY \r\n",
    ],
)
def test_v1_anything_not_exactly_the_protocol_is_malformed(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as error:
        scan = examine(line, "v1")
        assert scan.end is not None
        parse(line[: scan.end])
    assert error.value.kind == "malformed"
    assert "192" not in str(error.value)  # never quotes what was received


# --- v2 ---------------------------------------------------------------------------------


def test_v2_inet_and_inet6_with_tlvs_kept() -> None:
    tlvs = tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0xEA, b"vpce-0123456789abcdef0")
    header = whole(v2(tlvs=tlvs), "v2")
    assert (header.source, header.destination) == (("203.0.113.7", 40000), ("10.0.0.1", 7007))
    assert header.tlvs is not None and header.tlvs.alpn == b"h2"  # decoding: test_proxy_tlv.py
    assert whole(v2()) == ProxyHeader(2, False, ("203.0.113.7", 40000), ("10.0.0.1", 7007))
    assert whole(v2(family=2)).source == ("2001:db8::7", 40001)


def test_v2_local_is_accepted_whatever_its_block_holds() -> None:
    assert whole(v2(command=0, family=0, protocol=0)) == ProxyHeader(2, local=True)
    assert whole(v2(command=0, family=1, block=b"\xff" * 5)).local


@pytest.mark.parametrize(("family", "protocol"), [(0, 0), (1, 2), (2, 2), (3, 1), (1, 0)])
def test_v2_families_we_do_not_use_mean_the_real_endpoints(family: int, protocol: int) -> None:
    assert whole(v2(family=family, protocol=protocol, block=b"\0" * 216)).local


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\0" * 12, "version"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12, "command"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\0" * 12, "family"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\0" * 12, "family or protocol"),
        (v2(block=b"\0" * 11), "shorter"),
        (v2(tlvs=b"\x01\x00"), "truncated TLV"),
        (v2(tlvs=tlv(1, b"abc")[:-1]), "longer than the header"),
    ],
)
def test_v2_violations_are_malformed(header: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError, match=problem) as error:
        scan = examine(header, "v2")
        assert scan.end == len(header)
        parse(header)
    assert error.value.kind == "malformed"


def test_v2_a_declared_length_past_the_cap_is_oversized_before_it_is_read() -> None:
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH - 16 + 1)
    with pytest.raises(ProxyProtocolError) as error:
        examine(fixed, "any")
    assert error.value.kind == "oversized"
    at_cap = v2(tlvs=tlv(0xEE, b"x" * (V2_MAX_LENGTH - 16 - 12 - 3)))
    assert len(at_cap) == V2_MAX_LENGTH
    assert whole(at_cap).source is not None


# --- which version ------------------------------------------------------------------------


def test_the_accepted_version_is_enforced_from_the_first_byte() -> None:
    with pytest.raises(ProxyProtocolError, match="v1 header"):
        examine(b"\r", "v1")
    with pytest.raises(ProxyProtocolError, match="v2 header"):
        examine(b"P", "v2")
    with pytest.raises(ProxyProtocolError, match="PROXY header"):
        examine(b"hello", "any")
    with pytest.raises(ProxyProtocolError):
        examine(b"GET / HTTP/1.1\r\n", "any")
    assert examine(b"", "v2").room == 16
    assert examine(b"PROX", "any") == examine(b"PROX", "v1")
    assert examine(V2_SIGNATURE[:5], "any").room == 11


# --- the reader's contract: never a payload byte ----------------------------------------


def _read_like_a_socket(stream: bytes, accept: Accept, rng: random.Random) -> tuple[ProxyHeader, int]:
    """The reader of the module docstring over ``stream``, where each peek sees only a
    random part of what "has arrived". Returns the header and how many bytes it consumed."""
    data = b""
    arrived = 0
    while True:
        scan = examine(data, accept)
        if scan.end is not None:
            return parse(data), len(data)
        arrived = min(len(stream), arrived + rng.randint(1, 40))
        peeked = stream[len(data) : min(arrived, len(data) + scan.room)]
        assert peeked, "the reader asked for more than the stream holds"
        end = examine(data + peeked, accept).end
        take = len(peeked) if end is None else end - len(data)
        data += stream[len(data) : len(data) + take]


def _random_header(rng: random.Random) -> tuple[bytes, tuple[str, int] | None]:
    port = rng.randint(0, 65535)
    if rng.random() < 0.5:
        ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        return f"PROXY TCP4 {ip} 10.0.0.1 {port} 7007\r\n".encode(), (ip, port)
    ip = str(ipaddress.IPv6Address(rng.getrandbits(128)))
    packed = ipaddress.IPv6Address(ip).packed + bytes(16) + struct.pack("!HH", port, 7007)
    kinds = [kind for kind in range(256) if kind != 0x03]  # a CRC32C TLV must be 4 bytes: test_proxy_tlv.py
    tlvs = b"".join(tlv(rng.choice(kinds), rng.randbytes(rng.randint(0, 30))) for _ in range(rng.randint(0, 4)))
    return v2(family=2, block=packed, tlvs=tlvs), (ip, port)


def test_the_reader_takes_the_header_and_not_one_payload_byte_over_random_streams() -> None:
    rng = random.Random(862)
    for _ in range(2000):
        header, source = _random_header(rng)
        payload = rng.choice([b"", b"\r\n", V2_SIGNATURE, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", rng.randbytes(50)])
        parsed, consumed = _read_like_a_socket(header + payload, "any", rng)
        assert consumed == len(header)
        assert parsed.source == source


def test_random_bytes_only_ever_give_a_proxy_protocol_error() -> None:
    rng = random.Random(7)
    seeds = [v2(), v2(family=2, tlvs=tlv(1, b"x")), b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"]
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))]
        accept: Accept = rng.choice(["v1", "v2", "any"])
        try:
            scan = examine(bytes(data), accept)
            if scan.end is not None:
                parse(bytes(data[: scan.end]))
        except ProxyProtocolError as error:
            assert error.kind in ("malformed", "oversized")


# --- trust --------------------------------------------------------------------------------


def test_trusted_sources() -> None:
    assert parse_networks(" any ") is None and trusted("192.0.2.1", None)
    networks = parse_networks("127.0.0.0/8, 10.1.2.3, ::1/128")
    assert networks is not None
    assert trusted("127.0.0.2", networks) and trusted("10.1.2.3", networks) and trusted("::1", networks)
    assert not trusted("10.1.2.4", networks) and not trusted("::2", networks) and not trusted("bogus", networks)
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks("127.0.0.0/8,10.0.0.0/33")
    with pytest.raises(ValueError):
        parse_networks("")


# --- on real sockets: the preamble step of the server ---------------------------------------


def _connect(server: EchoServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=10)


def _closed_without_echo(sock: socket.socket) -> bool:
    """The server closed the connection (FIN or, with bytes left unread, RST), echoing nothing."""
    try:
        return read_until_eof(sock) == b""
    except ConnectionResetError:
        return True


def _is(name: str, peer: str, event: Event) -> bool:
    return event.name == name and event.peer == peer


def _settled(server: EchoServer) -> None:
    """Stats add up: nothing pending, every admitted connection open or closed once."""
    snap = server.stats.snapshot()
    assert server.stats.pending() == 0
    assert snap.active == snap.accepted - snap.closed


def test_v1_and_v2_the_header_is_not_echoed_and_names_the_peer_everywhere(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="any")
    v1_line = b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 7007\r\n"
    for header, peer in ((v1_line, "203.0.113.9:5555"), (v2(family=2), "[2001:db8::7]:40001")):
        with _connect(server) as sock:
            balancer = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.sendall(header + b"hello")  # one segment: the payload must not be lost
            sock.shutdown(socket.SHUT_WR)
            assert read_until_eof(sock) == b"hello"
        opened = events.wait_for(functools.partial(_is, "opened", peer))
        closed = events.wait_for(functools.partial(_is, "closed", peer))
        assert opened.data["via"] == balancer and closed.data["via"] == balancer
        assert closed.data["bytes_in"] == 5
    _settled(server)


def test_v2_local_is_a_plain_connection_from_the_balancer(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="v2")
    with _connect(server) as sock:
        sock.sendall(v2(command=0, family=0, protocol=0) + b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock) == b"ping"
        own = f"127.0.0.1:{sock.getsockname()[1]}"
    opened = events.wait_for(lambda e: e.name == "opened")
    assert opened.peer == own and "via" not in opened.data and opened.data["proxy"] == "local"


@pytest.mark.parametrize(
    ("mode", "sent", "detail"),
    [
        ("any", b"GET / HTTP/1.1\r\n\r\n", "malformed"),
        ("v2", b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 7007\r\n", "malformed"),
        ("v1", b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 7007\n", "malformed"),
        ("v1", b"PROXY UNKNOWN " + b"f" * 120, "oversized"),
        ("v2", V2_SIGNATURE + b"\x21\x11\xff\xff", "oversized"),
        ("any", b"PROXY TCP4 203.0.113.9", "truncated"),
        ("any", v2()[:20], "truncated"),
    ],
)
def test_a_bad_header_is_rejected_with_its_reason(
    make_server: ServerFactory, mode: str, sent: bytes, detail: str
) -> None:
    server, events = make_server(proxy_protocol=mode)
    with _connect(server) as sock:
        sock.sendall(sent)
        try:
            sock.shutdown(socket.SHUT_WR)  # "truncated": nothing more is coming
        except OSError:
            pass  # ENOTCONN: the server already reset it (a bad first byte needs no more)
        assert _closed_without_echo(sock)
    rejected = events.wait_for(lambda e: e.name == "rejected")
    assert rejected.data["reason"] == "proxy_protocol" and rejected.data["detail"] == detail
    assert not events.named("opened")
    assert server.stats.snapshot().rejected == {"proxy_protocol": 1}
    _settled(server)


def test_a_slow_header_is_late_however_it_trickles(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="v1", proxy_protocol_timeout=0.5)
    with _connect(server) as sock:
        started = time.monotonic()
        for byte in b"PROXY TCP4 ":  # one byte at a time, each well inside the timeout
            sock.sendall(bytes([byte]))
            if not wait_readable(sock, 0.06):
                continue
            break
        assert _closed_without_echo(sock)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3.0
    assert events.wait_for(lambda e: e.name == "rejected").data["detail"] == "late"
    _settled(server)


def test_a_source_outside_proxy_protocol_from_is_rejected_at_accept(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="any", proxy_protocol_from="10.0.0.0/8,::1")
    with _connect(server) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 7007\r\nhello")
        assert _closed_without_echo(sock)
    rejected = events.wait_for(lambda e: e.name == "rejected")
    assert rejected.data["detail"] == "untrusted" and rejected.peer.startswith("127.0.0.1:")
    assert server.stats.snapshot().rejected == {"proxy_protocol": 1}
    _settled(server)


def test_the_per_ip_limit_counts_the_headers_address(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="v1", max_connections_per_ip=1)

    def proxied(client: str) -> socket.socket:
        sock = _connect(server)
        sock.sendall(f"PROXY TCP4 {client} 10.0.0.1 4000 7007\r\n".encode())
        return sock

    with proxied("192.0.2.1") as first, proxied("192.0.2.2") as other:
        for sock in (first, other):  # both admitted: one each, though both come from 127.0.0.1
            sock.sendall(b"x")
            assert read_exactly(sock, 1) == b"x"
        with proxied("192.0.2.1") as again:
            assert _closed_without_echo(again)
        rejected = events.wait_for(lambda e: e.name == "rejected")
        assert rejected.data["reason"] == "max_connections_per_ip" and rejected.peer == "192.0.2.1:4000"
        assert rejected.data["via"].startswith("127.0.0.1:")
    snap = server.stats.snapshot()
    assert snap.rejected == {"max_connections_per_ip": 1}
    events.wait_for(lambda e: len(events.named("closed")) == 2)
    _settled(server)


def test_waiting_headers_hold_places_under_max_connections(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="v1", max_connections=2)
    with _connect(server) as one, _connect(server):
        with _connect(server) as three:  # accepted after the two: they hold both places
            assert _closed_without_echo(three)
        assert server.stats.snapshot().rejected == {"max_connections": 1}
        assert server.stats.pending() == 2
        one.sendall(b"PROXY UNKNOWN\r\nz")
        assert read_exactly(one, 1) == b"z"
        assert events.wait_for(lambda e: e.name == "opened").data["proxy"] == "local"
    events.wait_for(lambda e: e.name == "rejected" and e.data.get("detail") == "truncated")
    _settled(server)


def test_rejections_are_published_at_most_once_a_second_with_counts(make_server: ServerFactory) -> None:
    server, events = make_server(proxy_protocol="v2")
    for _ in range(20):
        with _connect(server) as sock:
            sock.sendall(b"nope")
            assert _closed_without_echo(sock)
    events.wait_for(lambda e: server.stats.snapshot().rejected.get("proxy_protocol") == 20)
    server.shutdown()
    published = events.named("rejected")
    assert 1 <= len(published) < 20
    assert sum(e.data["count"] for e in published) == 20


def test_connections_the_kernel_completed_before_the_stop_are_served_not_reset(make_server: ServerFactory) -> None:
    """A balancer cannot retry a connection it already made: closing the listener must not
    reset the backlog (found by test_balancers' drain test)."""
    server, events = make_server(proxy_protocol="v1", shutdown_timeout=5)
    holding, release = threading.Event(), threading.Event()

    def hold_the_acceptor() -> None:
        holding.set()
        release.wait(10)

    assert server._acceptor_loop is not None
    server._acceptor_loop.call_soon_threadsafe(hold_the_acceptor)
    assert holding.wait(5)
    clients = [_connect(server) for _ in range(3)]  # completed by the kernel, not accepted
    for sock in clients:
        sock.sendall(b"PROXY UNKNOWN\r\nabc")
        sock.shutdown(socket.SHUT_WR)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    events.wait_for(lambda e: e.name == "stopping")
    release.set()
    for sock in clients:
        with sock:
            assert read_until_eof(sock) == b"abc"
    stopper.join(15)
    assert len(events.named("closed")) == 3


def test_two_step_admission_keeps_stats_consistent_over_random_schedules() -> None:
    """The rule in stats.py's docstring, against a plain model: every connection is either
    rejected once or admitted and closed once; places and per-address counts add up."""
    for seed in range(200):
        rng = random.Random(seed)
        stats = Stats()
        max_total, max_per_ip = rng.randint(1, 6), rng.randint(1, 3)
        reserved: list[None] = []
        admitted: list[str] = []
        rejected = 0
        for _ in range(60):
            step = rng.random()
            if step < 0.35:
                if stats.reserve(max_total) is None:
                    reserved.append(None)
                else:
                    rejected += 1
            elif step < 0.55 and reserved:
                reserved.pop()
                ip = rng.choice(["192.0.2.1", "192.0.2.2"])
                if stats.admit_reserved(ip, max_per_ip) is None:
                    admitted.append(ip)
                else:
                    rejected += 1
            elif step < 0.65 and reserved:
                reserved.pop()
                stats.reject_reserved(REJECT_PROXY_PROTOCOL)
                rejected += 1
            elif step < 0.8:
                ip = rng.choice(["192.0.2.1", "192.0.2.3"])
                if stats.admit(ip, max_total, max_per_ip) is None:
                    admitted.append(ip)
                else:
                    rejected += 1
            elif admitted:
                stats.connection_closed(admitted.pop(rng.randrange(len(admitted))), "eof", 0, 0, 0, 0.0)
            snap = stats.snapshot()
            assert stats.pending() == len(reserved)
            assert snap.active == len(admitted) == snap.accepted - snap.closed
            assert snap.active + stats.pending() <= max_total
            assert snap.rejected_total == rejected
            for ip in set(admitted):
                assert admitted.count(ip) <= max_per_ip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy-protocol", "v3"], "--proxy-protocol: must be one of off, v1, v2, any; got 'v3'"),
        (
            ["--proxy-protocol-from", "10.0.0.0/8,nope"],
            "--proxy-protocol-from: expected 'any' or CIDR[,CIDR...], got 'nope'",
        ),
        (["--proxy-protocol-timeout", "0"], "--proxy-protocol-timeout: must be between 0.001 and 3600, got 0"),
    ],
)
def test_bad_proxy_settings_are_one_line_errors_naming_the_flag(args: list[str], message: str) -> None:
    result = run_cli([*args, "--port", "0", "--admin-port", "off"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"echo-server: error: {message}"]


# --- the preamble step without a kernel: a scripted socket ---------------------------------


class ScriptedSocket:
    """What has "arrived" so far, and errors to raise from the next recv calls."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.errors: list[OSError] = []
        self.peeks = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.errors:
            raise self.errors.pop(0)
        data = bytes(self.inbox[:size])
        if flags & socket.MSG_PEEK:
            self.peeks += 1
        else:
            del self.inbox[:size]
        return data


def _drive(sock: ScriptedSocket, pieces: list[bytes], accept: Accept = "any") -> ProxyHeader:
    """Run read_proxy_header as the scheduler does: each piece arrives, and the reader is
    woken while anything is unread (a level-triggered selector)."""
    reader = read_proxy_header(sock.recv, accept, 5.0, clock=lambda: 0.0)
    wait = next(reader)
    try:
        for piece in pieces:
            sock.inbox += piece
            wakes = 0
            while wakes == 0 or (sock.inbox and wakes < 4):
                assert isinstance(wait, Wait) and wait.timeout == 5.0
                wait = reader.send(None)
                wakes += 1
    except StopIteration as done:
        return cast(ProxyHeader, done.value)
    raise AssertionError("the reader wanted more than the script had")


def test_the_step_takes_the_header_byte_by_byte_and_leaves_the_payload() -> None:
    sock = ScriptedSocket()
    line = b"PROXY TCP4 192.0.2.1 10.0.0.1 4000 7007\r\n"
    pieces = [bytes([b]) for b in line[:-1]] + [line[-1:] + b"payload"]
    header = _drive(sock, pieces)
    assert header.source == ("192.0.2.1", 4000)
    assert bytes(sock.inbox) == b"payload"
    sock = ScriptedSocket()
    assert _drive(sock, [v2()[:7], v2()[7:] + V2_SIGNATURE], "v2").source == ("203.0.113.7", 40000)
    assert bytes(sock.inbox) == V2_SIGNATURE


def test_the_step_waits_again_on_eagain_and_rejects_on_reset_eof_and_time() -> None:
    sock = ScriptedSocket()
    sock.errors.append(BlockingIOError())
    assert _drive(sock, [b"", b"PROXY UNKNOWN\r\n"]).local

    sock = ScriptedSocket()
    sock.errors.append(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(ProxyRejected, match="reset") as rejected:
        _drive(sock, [b"PRO"])
    assert rejected.value.kind == "truncated"

    with pytest.raises(ProxyRejected) as rejected:
        _drive(ScriptedSocket(), [b"PROXY TCP4", b""])  # EOF
    assert rejected.value.kind == "truncated"

    for thrown in (WaitTimeout(5.0), Shutdown()):
        reader = read_proxy_header(ScriptedSocket().recv, "v1", 5.0, clock=lambda: 0.0)
        next(reader)
        with pytest.raises(ProxyRejected) as rejected:
            reader.throw(thrown)
        assert rejected.value.kind == "late"

    now = [0.0]
    trickle = ScriptedSocket()
    reader = read_proxy_header(trickle.recv, "v1", 5.0, clock=lambda: now[0])
    next(reader)
    trickle.inbox += b"P"
    now[0] = 5.0  # a trickle: each wake-up brings too little, and the one deadline passes
    with pytest.raises(ProxyRejected, match="within 5 s"):
        reader.send(None)
