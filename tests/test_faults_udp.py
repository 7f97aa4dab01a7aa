"""UDP faults: drop, delay and reorder never amplify. UdpFaults with a fake clock (what
is held, when it comes out, the bound), then a flood through a real server on loopback,
counted at the client: every datagram it gets back is one it sent, once."""

from __future__ import annotations

import itertools
import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from server.faults.draw import FaultDraw
from server.faults.policy import FaultPolicy
from server.faults.rules import parse_flag
from server.faults.udp import DROPPED, ECHO, HELD, HELD_FULL, MAX_HELD, REORDER_HOLD_S, UdpFaults
from server.observe.events import Event
from tests.conftest import ServerFactory

PEER = ("127.0.0.1", 9)


def udp_faults(*flags: str, publish: Callable[[Event], None] = lambda event: None) -> UdpFaults:
    return UdpFaults(FaultDraw(FaultPolicy([parse_flag(f) for f in flags], seed=5), publish))


def test_delay_holds_a_datagram_until_it_is_due() -> None:
    faults = udp_faults("delay:delay_ms=100")
    assert faults.decide("127.0.0.1", PEER, memoryview(b"abc"), now=10.0) == HELD
    assert faults.next_due() == pytest.approx(10.1)
    assert faults.due(10.05) == []
    assert faults.due(10.1) == [(b"abc", PEER)] and faults.next_due() is None


def test_reorder_sends_the_held_datagram_right_after_the_next_echo() -> None:
    faults = udp_faults("reorder:count=1")
    assert faults.decide("127.0.0.1", PEER, memoryview(b"first"), now=0.0) == HELD
    assert faults.decide("127.0.0.1", PEER, memoryview(b"second"), now=0.001) == ECHO  # the rule is spent
    assert faults.due(0.001, echoed=True) == [(b"first", PEER)]  # after "second": swapped
    assert faults.decide("127.0.0.1", PEER, memoryview(b"third"), now=0.002) == ECHO


def test_a_reordered_datagram_with_no_successor_still_goes_out_once() -> None:
    faults = udp_faults("reorder:count=1")
    faults.decide("127.0.0.1", PEER, memoryview(b"alone"), now=0.0)
    assert faults.due(REORDER_HOLD_S) == [(b"alone", PEER)]
    assert faults.due(100.0, everything=True) == []


def test_drop_and_the_held_bound() -> None:
    assert udp_faults("drop").decide("127.0.0.1", PEER, memoryview(b"x"), now=0.0) == DROPPED
    faults = udp_faults("delay:delay_ms=1000")
    verdicts = Counter(faults.decide("127.0.0.1", PEER, memoryview(b"x"), now=0.0) for _ in range(MAX_HELD + 10))
    assert verdicts == {HELD: MAX_HELD, HELD_FULL: 10}
    assert len(faults.due(0.0, everything=True)) == MAX_HELD  # the stop sends what is held, once


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_a_flood_through_drop_delay_and_reorder_never_amplifies(
    make_server: ServerFactory, client: socket.socket
) -> None:
    rules = tuple(
        parse_flag(flag)
        for flag in ("drop:probability=0.2", "reorder:probability=0.2", "delay:delay_ms=2,jitter_ms=2,probability=0.3")
    )
    server, recorder = make_server(
        udp_port=0, faults="on", faults_rules=rules, faults_seed=9, udp_rate=1_000_000, udp_global_rate=1_000_000
    )
    assert server.udp_address is not None
    target = (server.udp_address[0], server.udp_address[1])
    sent: Counter[bytes] = Counter()
    received: Counter[bytes] = Counter()
    order: list[int] = []
    # Batches of 50, each read back until the line goes quiet for longer than anything is
    # held (REORDER_HOLD_S), so no kernel buffer overflows and only the faults drop.
    client.settimeout(REORDER_HOLD_S * 4)
    for batch in range(40):
        for i in range(50):
            payload = b"%06d" % (batch * 50 + i) + b"." * (i % 7) * 100
            client.sendto(payload, target)
            sent[payload] += 1
        while True:
            try:
                data, source = client.recvfrom(70_000)
            except TimeoutError:
                break
            assert source == target
            received[data] += 1
            order.append(int(data[:6]))
    assert max(received.values()) == 1  # never duplicated
    assert set(received) <= set(sent)  # never anything that was not sent
    assert sum(len(d) for d in received) <= sum(len(d) for d in sent)
    assert 0.7 * 2000 <= sum(received.values()) <= 0.9 * 2000  # about 20 % dropped
    assert any(later < earlier for earlier, later in itertools.pairwise(order))  # reordered
    assert recorder.named("fault")
