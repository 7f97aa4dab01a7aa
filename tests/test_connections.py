"""GET /connections and /connections/ID against real servers: live entries with growing
byte counts, closed ones gone, paging, sorting and filters, abuse answered 400, one
connection's facts, a scheduler that does not answer, and 10,000 idle connections."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from loadtest import connections_cost
from server import live_connections
from server.core import EchoServer
from server.engine.scheduler import Scheduler
from server.observe import connections
from tests.conftest import ServerFactory
from tests.helpers import read_exactly
from tests.test_admin import get


def listing(server: EchoServer, query: str = "") -> dict[str, Any]:
    status, headers, body = get(server, "/connections" + (f"?{query}" if query else ""))
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)  # type: ignore[no-any-return]


@contextmanager
def clients(address: tuple[str, int], count: int, first: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections, each having had ``first`` echoed (so each is admitted)."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(address, timeout=10))
            if first:
                sock.sendall(first)
                assert read_exactly(sock, len(first)) == first
            socks.append(sock)
        yield socks


def test_live_connections_are_listed_with_growing_byte_counts(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    with clients(server.server_address[:2], 3, b"ping") as socks:
        first = listing(server)
        assert first["total"] == 3 and len(first["connections"]) == 3 and first["unanswered"] == []
        entry = first["connections"][0]
        keys = {"conn", "listener", "worker", "peer", "via", "age_s", "bytes_in", "bytes_out", "state", "rtt_us"}
        assert keys <= set(entry)
        assert entry["listener"] == "tcp" and entry["worker"] is None and entry["state"] == "reading"
        assert entry["peer"].startswith("127.0.0.1:") and entry["rtt_us"] > 0
        assert all(row["bytes_in"] == row["bytes_out"] == 4 for row in first["connections"])
        ages = [row["age_s"] for row in first["connections"]]
        assert ages == sorted(ages, reverse=True)  # the oldest first
        for sock in socks:
            sock.sendall(b"pong!!")
            assert read_exactly(sock, 6) == b"pong!!"
        again = listing(server)
        assert all(row["bytes_in"] == row["bytes_out"] == 10 for row in again["connections"])


def test_a_closed_connection_is_gone_within_a_second(make_server: ServerFactory) -> None:
    server, events = make_server(admin_port=0)
    with clients(server.server_address[:2], 2, b"x") as socks:
        ids = {row["conn"] for row in listing(server)["connections"]}
        began = time.monotonic()
        socks[0].shutdown(socket.SHUT_WR)
        closed = events.wait_for(lambda e: e.name == "closed", timeout=1.0)
        left = {row["conn"] for row in listing(server)["connections"]}
        assert time.monotonic() - began < 1.0
        assert left == ids - {closed.conn_id} and len(left) == 1


def test_pages_sorting_and_filters(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    with clients(server.server_address[:2], 5, b"a") as socks:
        socks[3].sendall(b"b" * 1000)
        assert read_exactly(socks[3], 1000) == b"b" * 1000
        pages = [listing(server, f"per_page=2&page={n}") for n in (1, 2, 3, 4)]
        assert [len(page["connections"]) for page in pages] == [2, 2, 1, 0]
        assert all(page["total"] == 5 for page in pages)
        ids = [row["conn"] for page in pages for row in page["connections"]]
        assert len(set(ids)) == 5
        by_bytes = listing(server, "sort=bytes&per_page=1")["connections"]
        assert by_bytes[0]["bytes_in"] == 1001
        assert listing(server, "peer=127.0.0.1")["total"] == 5
        assert listing(server, "peer=127.0.0.0/8&listener=tcp")["total"] == 5
        assert listing(server, "peer=10.0.0.0/8")["total"] == 0
        assert listing(server, "peer=::1")["total"] == 0


def test_behind_proxy_the_filter_and_entries_use_the_headers_address(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0, proxy_protocol="v1")
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.7 10.0.0.1 4000 7007\r\nhi")
        assert read_exactly(sock, 2) == b"hi"
        (entry,) = listing(server, "peer=192.0.2.0/24")["connections"]
        assert entry["peer"] == "192.0.2.7:4000" and entry["via"].startswith("127.0.0.1:")


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=99999999999999999999",
        f"page={connections.MAX_PAGE + 1}",
        "page=11&per_page=1000",  # past MAX_WINDOW
        "per_page=1001",
        "per_page=-1",
        "per_page=1e3",
        "page=%31%00",
        "peer=not-an-address",
        "peer=10.0.0.0/33",
        "listener=tls",  # this server has no TLS listener
        "listener=%0a",
        "sort=size",
        "page=1&page=2",
        "limit=5",
        "a=1&b=2&c=3&d=4&e=5&f=6",
        "=&=",
        "%ZZ",
    ],
)
def test_abuse_is_a_400_naming_the_parameter(make_server: ServerFactory, query: str) -> None:
    server, _ = make_server(admin_port=0)
    status, _, body = get(server, f"/connections?{query}")
    assert status == 400, body
    assert b"Traceback" not in body and body.count(b"\n") == 1


def test_one_connection_shows_everything_reflection_does(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    with clients(server.server_address[:2], 1, b"hello") as (sock,):
        (entry,) = listing(server)["connections"]
        status, _, body = get(server, f"/connections/{entry['conn']}")
        assert status == 200
        facts = json.loads(body)
        assert facts["conn"] == entry["conn"] and facts["peer"] == entry["peer"] == f"127.0.0.1:{sock.getsockname()[1]}"
        assert facts["local"] == f"127.0.0.1:{server.server_address[1]}" and facts["listener"] == "tcp"
        assert facts["bytes_in"] == 5 and facts["tcp_info"]["rtt_us"] > 0 and facts["hostname"] == socket.gethostname()
        assert "proxy" not in facts and "tls" not in facts
    for path in ("/connections/999999", "/connections/abc", "/connections/", "/connections/1?x=1", "/connections/1/2"):
        status, _, body = get(server, path)
        assert status in (400, 404) and b"Traceback" not in body, path


def test_a_scheduler_that_does_not_answer_is_named_not_waited_for() -> None:
    running, stalled = Scheduler("loop-0"), Scheduler("loop-1")  # loop-1 never runs
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        began = time.monotonic()
        answers, unanswered = live_connections.ask([running, stalled], lambda loop: loop.name, timeout=0.3)
        assert answers == ["loop-0"] and unanswered == ["loop-1"]
        assert time.monotonic() - began < 2.0
    finally:
        running.request_stop(0, 0)
        thread.join(5)
        stalled.request_stop(0, 0)
        stalled.run()  # now it runs the cancelled question (a no-op), stops and closes


class _Stuck:
    listeners: tuple[str, ...] = ("tcp",)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def rows(self, query: connections.Query) -> connections.Rows:
        self.entered.release()
        self.release.wait(10)
        return connections.Rows(0, [], [])

    def rtts(self, keys: Collection[connections.Key]) -> tuple[dict[connections.Key, int | None], list[str]]:
        return {}, []

    def detail(self, conn_id: int, worker: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
        return None, []


def test_too_many_listings_at_once_are_told_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "ASK_TIMEOUT_S", 0.2)
    stuck = _Stuck()
    threads = [threading.Thread(target=connections.listing, args=(stuck, connections.Query())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert stuck.entered.acquire(timeout=5)
    try:
        with pytest.raises(connections.Busy):
            connections.listing(stuck, connections.Query())
    finally:
        stuck.release.set()
        for thread in threads:
            thread.join(5)
    assert connections.listing(stuck, connections.Query())["total"] == 0


def test_ten_thousand_idle_connections_the_first_page_in_bounded_time() -> None:
    with connections_cost.server(10_100) as (address, admin), ExitStack() as stack:
        connections_cost.open_idle(stack, address, 10_000)
        took, document = connections_cost.get_connections(admin)
        assert document["total"] == 10_000 and len(document["connections"]) == 100  # type: ignore[arg-type]
        assert document["unanswered"] == []
        assert took < 2.0, f"GET /connections took {took:.2f} s with 10,000 connections"
        took, last = connections_cost.get_connections(admin, "?per_page=1000&page=10&sort=bytes")
        assert len(last["connections"]) == 1000 and took < 2.0  # type: ignore[arg-type]
