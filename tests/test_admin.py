"""The admin HTTP endpoint over real HTTP: probes, metrics, stats, events, abuse."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from server.core import EchoServer
from server.observe import admin as admin_module
from tests.conftest import ServerFactory
from tests.helpers import echo_round_trip, read_exactly, read_until_eof, run_cli


def admin_of(server: EchoServer) -> tuple[str, int]:
    assert server.admin is not None
    host, port = server.admin.address[:2]
    return str(host), int(port)


def get(
    server: EchoServer,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*admin_of(server), timeout=10)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_probes_and_index(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/readyz")[0] == 200
    status, headers, body = get(server, "/")
    assert status == 200 and b"/metrics" in body and headers["Content-Type"].startswith("text/plain")


def test_metrics_count_what_the_test_did(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0)
    sizes = [100, 2000, 30_000]
    for size in sizes:
        echo_round_trip(server.server_address, os.urandom(size))
    recorder.wait_for(lambda e: len(recorder.named("closed")) == len(sizes))
    status, headers, body = get(server, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert metric(text, "echo_connections_accepted_total") == len(sizes)
    assert metric(text, "echo_connections_active") == 0
    assert metric(text, "echo_received_bytes_total") == sum(sizes)
    assert metric(text, "echo_sent_bytes_total") == sum(sizes)
    assert metric(text, 'echo_connections_closed_total{reason="eof"}') == len(sizes)
    assert metric(text, 'echo_connections_rejected_total{reason="max_connections"}') == 0
    assert metric(text, "echo_connection_duration_seconds_count") == len(sizes)
    assert metric(text, "echo_connection_bytes_sum") == 2 * sum(sizes)
    assert metric(text, 'echo_connection_bytes_bucket{le="+Inf"}') == len(sizes)
    assert metric(text, "process_open_fds") > 0
    assert metric(text, "process_resident_memory_bytes") > 1_000_000
    assert re.search(r'^echo_build_info\{version="[^"]+",python_version="3\.\d+\.\d+"\} 1$', text, re.MULTILINE)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_metrics_pass_promtool(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0, max_connections=1)
    with socket.create_connection(server.server_address[:2], timeout=10) as held:
        held.sendall(b"x")
        read_exactly(held, 1)
        with socket.create_connection(server.server_address[:2], timeout=10) as rejected:
            assert read_until_eof(rejected) == b""
        body = get(server, "/metrics")[2]
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b'echo_connections_rejected_total{reason="max_connections"} 1' in body


def test_stats_is_the_snapshot_as_json(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0)
    echo_round_trip(server.server_address, b"12345")
    recorder.wait_for(lambda e: e.name == "closed")
    status, headers, body = get(server, "/stats")
    document = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert document["accepted"] == 1 and document["bytes_received"] == 5 and document["ready"] is True


def test_errors_are_404_405_400_without_a_traceback(
    make_server: ServerFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    server, _ = make_server(admin_port=0)
    assert get(server, "/nope")[0] == 404
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(server, "/healthz", method="DELETE")[0] == 405
    for raw in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(admin_of(server), timeout=10) as sock:
            sock.sendall(raw)
            assert read_until_eof(sock).split(b" ", 2)[1] == b"400"
    assert "Traceback" not in capfd.readouterr().err


def test_readyz_is_503_while_draining(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0, shutdown_timeout=30)
    with socket.create_connection(server.server_address[:2], timeout=10) as held:
        held.sendall(b"hold")
        read_exactly(held, 4)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        recorder.wait_for(lambda e: e.name == "stopping")
        status, _, body = get(server, "/readyz")
        assert status == 503 and body == b"not ready\n"
        assert get(server, "/healthz")[0] == 200
        assert "echo_draining 1" in get(server, "/metrics")[2].decode()
        held.shutdown(socket.SHUT_WR)  # the client finishes: the drain ends early
        assert read_until_eof(held) == b""
    stopper.join(10)
    assert server.stopped.is_set()


def test_events_stream_shows_a_connection_and_ends_at_shutdown(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    connection = http.client.HTTPConnection(*admin_of(server), timeout=10)
    connection.request("GET", "/events")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    echo_round_trip(server.server_address, b"watch me")
    opened = json.loads(response.readline())
    closed = json.loads(response.readline())
    assert (opened["event"], closed["event"]) == ("opened", "closed")
    assert opened["conn"] == closed["conn"] and closed["bytes_in"] == 8
    assert "watch me" not in json.dumps(closed)
    server.shutdown()
    rest = [json.loads(line) for line in response.read().splitlines()]
    assert rest[-1]["event"] == "stopped"
    connection.close()


def test_a_stalled_admin_client_is_timed_out(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_module, "REQUEST_DEADLINE_S", 0.3)
    server, _ = make_server(admin_port=0)
    with socket.create_connection(admin_of(server), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never finishes the request
        assert read_until_eof(sock) == b""


def test_an_http09_request_is_400_at_once(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    for raw in (b"GET /\r\n", b"GET /healthz\r\n\r\n", b"GET / FTP/1.0\r\n\r\n"):
        with socket.create_connection(admin_of(server), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(raw)  # the connection stays open: only the server can end this
            answer = read_until_eof(sock)
            assert answer.startswith(b"HTTP/1.1 400 ") and time.monotonic() - started < 2.0, answer


def test_head_answers_like_get_without_a_body(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    for path in ("/healthz", "/readyz", "/metrics", "/stats", "/", "/nope"):
        get_status, get_headers, get_body = get(server, path)
        head_status, head_headers, head_body = get(server, path, method="HEAD")
        assert (head_status, head_body) == (get_status, b""), path
        assert head_headers["Content-Type"] == get_headers["Content-Type"], path
        if path not in ("/metrics", "/stats"):  # these change between two requests
            assert head_headers["Content-Length"] == str(len(get_body)), path
    with socket.create_connection(admin_of(server), timeout=10) as sock:  # keep-alive goes on after HEAD
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = read_until_eof(sock)
        assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.endswith(b"\r\n\r\nok\n")
    status, headers, body = get(server, "/events", method="HEAD")
    assert (status, body, headers["Content-Type"]) == (200, b"", "application/x-ndjson")


def test_healthcheck_subcommand(make_server: ServerFactory) -> None:
    server, _ = make_server(admin_port=0)
    probe = ["healthcheck", "--admin-port", str(admin_of(server)[1])]
    ok = run_cli(probe)
    assert ok.returncode == 0, ok.stderr
    server.shutdown()
    down = run_cli(probe)
    assert down.returncode == 1 and "healthz" in down.stderr


def test_admin_connections_are_capped(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only when streams hold every slot (MAX_STREAMS >= MAX_CLIENTS) is a newcomer refused."""
    monkeypatch.setattr(admin_module, "MAX_CLIENTS", 2)
    monkeypatch.setattr(admin_module, "MAX_STREAMS", 2)
    server, _ = make_server(admin_port=0)
    streams = []
    for _ in range(2):  # each /events reader holds a handler thread once its headers arrive
        stream = http.client.HTTPConnection(*admin_of(server), timeout=10)
        stream.request("GET", "/events")
        assert stream.getresponse().status == 200
        streams.append(stream)
    with socket.create_connection(admin_of(server), timeout=10) as third:
        assert read_until_eof(third) == b""  # closed on arrival, unanswered
    for stream in streams:
        stream.close()
    server.shutdown()  # ends the streams; the capped endpoint stopped cleanly


def test_a_proxy_protocol_rejection_is_counted_in_the_metrics(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0, proxy_protocol="v1")
    status, _, body = get(server, "/metrics")
    assert status == 200
    assert metric(body.decode(), 'echo_connections_rejected_total{reason="proxy_protocol"}') == 0
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"HELLO, not a PROXY header\r\n")
        sock.settimeout(10)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    recorder.wait_for(lambda e: e.name == "rejected" and e.data.get("reason") == "proxy_protocol")
    _, _, body = get(server, "/metrics")
    assert metric(body.decode(), 'echo_connections_rejected_total{reason="proxy_protocol"}') == 1


def test_an_answer_is_one_write_so_keep_alive_requests_wait_for_no_delayed_ack(make_server: ServerFactory) -> None:
    # Headers and body in two writes made Nagle hold the body until the client's delayed
    # ACK (40 ms on Linux): every keep-alive poll of the dashboard took 40 ms more.
    server, _ = make_server(admin_port=0)
    with socket.create_connection(admin_of(server), timeout=10) as sock:
        for _ in range(5):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)  # one segment: the whole answer, or the headers only
            assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"\r\n\r\nok\n"), first
