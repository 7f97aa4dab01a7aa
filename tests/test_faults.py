"""Faults on demand, end to end: an in-process server with --faults on, real loopback
sockets, and what a client sees (ECONNRESET, EOF after N bytes, the first byte late,
a trickle, silence), joined with the server's closed events and its admin port."""

from __future__ import annotations

import json
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from server.core import EchoServer
from server.faults.rules import parse_flag
from server.observe.faults_api import MAX_BODY
from tests.conftest import ServerFactory
from tests.helpers import ROOT, EventRecorder, read_exactly, read_until_eof, run_cli, wait_readable
from tests.test_admin import get, metric
from tests.test_dashboard import Browser, admin_url, browser, wait_page
from tests.test_faults_policy import CHI2_1DOF_P001

TOKEN = "s3cret-token"
__all__ = ["browser"]  # the fixture, from test_dashboard


def faulty(make_server: ServerFactory, *flags: str, **settings: Any) -> tuple[EchoServer, EventRecorder]:
    rules = tuple(parse_flag(flag) for flag in flags)
    return make_server(faults="on", faults_rules=rules or None, faults_seed=1, **settings)


def address(server: EchoServer) -> tuple[str, int]:
    return str(server.server_address[0]), int(server.server_address[1])


def closed(recorder: EventRecorder, reason: str, timeout: float = 10.0) -> Any:
    return recorder.wait_for(lambda e: e.name == "closed" and e.data.get("reason") == reason, timeout)


def assert_reset(server: EchoServer, source: str = "") -> None:
    """The client sees ECONNRESET: at its first read, or already at connect (loopback is
    fast enough for the RST to beat connect()'s return)."""
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection(address(server), timeout=5, source_address=(source, 0)) as sock,
    ):
        assert wait_readable(sock, 5)
        sock.recv(1)


def test_reset_at_accept_is_econnreset_for_the_client(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "reset")
    assert_reset(server)
    event = closed(recorder, "fault_reset")
    assert event.data["bytes_in"] == 0
    fault = recorder.wait_for(lambda e: e.name == "fault")
    assert (fault.data["kind"], fault.data["rule"], fault.conn_id) == ("reset", 1, event.conn_id)
    assert fault.data["spec"] == "reset" and fault.peer == event.peer


def test_reset_after_n_bytes_echoes_them_then_resets(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "reset:after_bytes=5")
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(b"hello, world")
        assert read_exactly(sock, 5) == b"hello"
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert closed(recorder, "fault_reset").data["bytes_out"] == 5


def test_close_after_exactly_n_echoed_bytes_is_a_fin(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "close:after_bytes=1000")
    payload = bytes(range(256)) * 40
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(payload)
        assert read_until_eof(sock) == payload[:1000]  # an EOF, not a reset
    event = closed(recorder, "fault_close")
    assert event.data["bytes_out"] == 1000


def test_close_after_t_seconds(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "close:after_s=0.3")
    with socket.create_connection(address(server), timeout=5) as sock:
        began = time.monotonic()
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        assert read_until_eof(sock) == b""
        assert 0.3 <= time.monotonic() - began < 2.0
    closed(recorder, "fault_close")


def test_delay_holds_the_first_byte_for_at_least_d_over_200_connections(make_server: ServerFactory) -> None:
    delay_s, bound_s = 0.1, 0.2
    server, _ = faulty(make_server, f"delay:delay_ms={delay_s * 1000:g}")
    socks = [socket.create_connection(address(server), timeout=10) for _ in range(200)]
    try:
        sent_at: dict[socket.socket, float] = {}
        for sock in socks:
            sent_at[sock] = time.monotonic()  # before the send: the server cannot have read it earlier
            sock.sendall(b"x")
        waiting, latency = set(socks), []
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(list(waiting), [], [], deadline - time.monotonic())
            now = time.monotonic()
            for sock in readable:
                assert sock.recv(1) == b"x"
                latency.append(now - sent_at[sock])
                waiting.discard(sock)
        assert not waiting, f"{len(waiting)} connections got no echo"
        assert min(latency) >= delay_s
        assert max(latency) < delay_s + bound_s, f"p50 {statistics.median(latency):.3f} s, max {max(latency):.3f} s"
    finally:
        for sock in socks:
            sock.close()


def test_bandwidth_is_within_ten_percent(make_server: ServerFactory) -> None:
    rate = 200_000
    server, _ = faulty(make_server, f"bandwidth:bytes_per_s={rate}")
    payload = b"b" * (rate * 2)
    with socket.create_connection(address(server), timeout=10) as sock:

        def write() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        first = sock.recv(1 << 20)
        first_at = last_at = time.monotonic()
        total = len(first)
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
            last_at = time.monotonic()
        writer.join(10)
    assert total == len(payload)
    measured = (total - len(first)) / (last_at - first_at)
    assert rate * 0.9 <= measured <= rate * 1.1, measured


@pytest.mark.parametrize("mode", ["no_read", "no_echo"])
def test_hang_sends_nothing_and_is_still_bounded_by_the_idle_timeout(make_server: ServerFactory, mode: str) -> None:
    server, recorder = faulty(make_server, f"hang:mode={mode}", idle_timeout=1.0)
    with socket.create_connection(address(server), timeout=5) as sock:
        began = time.monotonic()
        sock.sendall(b"anyone there?")
        assert not wait_readable(sock, 0.5)  # nothing within T
        event = closed(recorder, "fault_hang")
        assert time.monotonic() - began >= 0.9
        assert wait_readable(sock, 5)  # and the client hears the close
    assert event.data["bytes_out"] == 0
    assert event.data["bytes_in"] == (13 if mode == "no_echo" else 0)
    assert event.data["duration_s"] >= 1.0


def test_a_cidr_targets_one_client_address_and_not_another(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "reset:from=127.0.0.2/32")
    with socket.create_connection(address(server), timeout=5, source_address=("127.0.0.3", 0)) as sock:
        sock.sendall(b"fine")
        assert read_exactly(sock, 4) == b"fine"
    assert_reset(server, source="127.0.0.2")
    assert closed(recorder, "fault_reset").peer.startswith("127.0.0.2:")


def test_next_n_fires_exactly_n_times_then_the_rule_is_spent(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "close:count=3", admin_port=0)
    for _ in range(6):
        with socket.create_connection(address(server), timeout=5) as sock:
            sock.sendall(b"x")
            sock.shutdown(socket.SHUT_WR)
            read_until_eof(sock)
    recorder.wait_for(lambda e: len(recorder.named("closed")) >= 6)
    reasons = sorted(e.data["reason"] for e in recorder.named("closed"))
    assert reasons == ["eof"] * 3 + ["fault_close"] * 3
    status, _, body = get(server, "/faults")
    assert status == 200 and json.loads(body)["fired"] == [3] and json.loads(body)["left"] == [0]


def test_metrics_count_faults_and_events_are_rate_limited(make_server: ServerFactory) -> None:
    server, recorder = faulty(make_server, "reset", admin_port=0)
    for _ in range(20):
        assert_reset(server)
    recorder.wait_for(lambda e: len(recorder.named("closed")) >= 20)
    _, _, body = get(server, "/metrics")
    assert metric(body.decode(), 'echo_faults_injected_total{kind="reset",listener="tcp"}') == 20
    assert metric(body.decode(), 'echo_faults_injected_total{kind="hang",listener="tls"}') == 0
    faults = recorder.named("fault")
    assert 1 <= len(faults) < 20 and faults[0].data["count"] == 1


# --- the admin API --------------------------------------------------------------------------


def test_the_admin_api_sets_reads_and_clears_the_policy(make_server: ServerFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server, recorder = faulty(make_server, admin_port=0, admin_token_file=str(token_file))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    policy = [{"kind": "reset", "probability": 0.5, "from": "127.0.0.2/32"}, {"kind": "hang", "mode": "no_echo"}]

    status, _, body = get(server, "/faults", "PUT", json.dumps(policy).encode(), auth)
    assert status == 200 and json.loads(body)["rules"] == policy
    assert json.loads(get(server, "/faults")[2]) == {
        "rules": policy,
        "fired": [0, 0],
        "left": [None, None],
        "active": [],
    }
    assert recorder.wait_for(lambda e: e.name == "faults_changed").data["rules"] == 2

    status, _, body = get(server, "/faults", "DELETE", None, auth)
    assert status == 200 and json.loads(body)["rules"] == []
    with socket.create_connection(address(server), timeout=5) as sock:  # and nothing is applied any more
        sock.sendall(b"ok")
        assert read_exactly(sock, 2) == b"ok"


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"[{", {}, 400, "not JSON"),
        (b'[{"kind": "explode"}]', {}, 400, "rule 1: unknown kind 'explode'"),
        (b'{"kind": "reset"}', {}, 400, "expected a JSON list of rules"),
        (b'[{"kind": "reset", "probability": 7}]', {}, 400, "rule 1: probability: must be between 0 and 1"),
        (b"[" + b" " * MAX_BODY + b"]", {}, 413, f"larger than {MAX_BODY} bytes"),
        (b"\xff\xfe", {}, 400, "not UTF-8"),
        (b'[{"kind": "reset"}]', {"Authorization": "Bearer wrong"}, 401, "bearer token is required"),
        (b'[{"kind": "reset"}]', {"Authorization": ""}, 401, "bearer token is required"),
    ],
)
def test_a_bad_request_is_a_clear_error_and_changes_nothing(
    make_server: ServerFactory, tmp_path: Path, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server, _ = faulty(make_server, "delay:delay_ms=1", admin_port=0, admin_token_file=str(token_file))
    before = get(server, "/faults")[2]
    answer = get(server, "/faults", "PUT", body, {"Authorization": f"Bearer {TOKEN}", **headers})
    assert answer[0] == status and says in answer[2].decode() and b"Traceback" not in answer[2]
    assert get(server, "/faults")[2] == before
    if status == 401:
        assert get(server, "/faults", "DELETE", None, headers)[0] == 401
        assert get(server, "/faults")[2] == before


def test_without_a_token_file_a_loopback_admin_needs_no_token(make_server: ServerFactory) -> None:
    server, _ = faulty(make_server, admin_port=0)
    assert get(server, "/faults", "PUT", b'[{"kind": "unready", "for_s": 60}]')[0] == 200
    assert get(server, "/readyz")[0] == 503


def test_with_faults_off_the_endpoints_are_404_and_a_flood_changes_nothing(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0)
    shaped = json.dumps([{"kind": "reset"}, {"kind": "unready", "for_s": 60}]).encode()
    for method in ("GET", "PUT", "DELETE") * 50:
        status, _, body = get(server, "/faults", method, shaped if method == "PUT" else None)
        assert status == 404 and b"faults are off" in body
    assert get(server, "/readyz")[0] == 200 and get(server, "/healthz")[0] == 200
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(b"still echoing")
        assert read_exactly(sock, 13) == b"still echoing"
    assert b"echo_faults" not in get(server, "/metrics")[2]
    assert not recorder.named("fault") and not recorder.named("faults_changed")
    assert server.faults is None


# --- the states: they start when set and end by themselves ------------------------------------------


def _first_200(server: EchoServer, path: str, deadline_s: float) -> float:
    """When ``path`` first answers 200 (a probe, as a balancer's health check would)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if get(server, path)[0] == 200:
            return time.monotonic()
        select.select([], [], [], 0.02)  # a probe interval, as a balancer's checks have
    raise AssertionError(f"{path} stayed 503 for {deadline_s} s")


@pytest.mark.parametrize(
    ("kind", "probe", "other"), [("unready", "/readyz", "/healthz"), ("unhealthy", "/healthz", "/readyz")]
)
def test_a_probe_flips_for_for_s_while_connections_keep_echoing(
    make_server: ServerFactory, kind: str, probe: str, other: str
) -> None:
    server, _ = faulty(make_server, admin_port=0)
    with socket.create_connection(address(server), timeout=5) as open_before:
        set_at = time.monotonic()
        assert get(server, "/faults", "PUT", json.dumps([{"kind": kind, "for_s": 1}]).encode())[0] == 200
        assert get(server, probe)[0] == 503 and get(server, other)[0] == 200
        open_before.sendall(b"still here")
        assert read_exactly(open_before, 10) == b"still here"
        with socket.create_connection(address(server), timeout=5) as opened_during:  # new ones are served too
            opened_during.sendall(b"new")
            assert read_exactly(opened_during, 3) == b"new"
        flipped_back = _first_200(server, probe, 5) - set_at
    assert 1.0 <= flipped_back < 1.5


def test_refuse_completes_no_handshake_for_for_s_then_accepts_again(make_server: ServerFactory) -> None:
    server, _ = faulty(make_server, admin_port=0)
    with socket.create_connection(address(server), timeout=5) as open_before:
        set_at = time.monotonic()
        assert get(server, "/faults", "PUT", b'[{"kind": "refuse", "for_s": 1}]')[0] == 200
        probe = socket.socket()
        probe.settimeout(0.3)
        with probe, pytest.raises(TimeoutError):
            probe.connect(address(server))  # the SYN goes unanswered
        open_before.sendall(b"still here")
        assert read_exactly(open_before, 10) == b"still here"
        assert get(server, "/faults")[2].count(b'"refuse"') == 2  # in the rules and the active states
    deadline = set_at + 5
    while True:  # a balancer's connect attempts, 50 ms apart
        try:
            with socket.create_connection(address(server), timeout=0.05) as sock:
                sock.sendall(b"back")
                assert read_exactly(sock, 4) == b"back"
                break
        except TimeoutError:
            assert time.monotonic() < deadline, "still refusing"
    assert 1.0 <= time.monotonic() - set_at < 2.0


REFUSE_A_MINUTE = b'[{"kind": "refuse", "for_s": 60}]'


def test_a_put_refuse_answers_only_once_the_listener_refuses(make_server: ServerFactory) -> None:
    # The filter goes on in the acceptor's thread. Hold that thread: the PUT must not
    # answer until it has run there, else a client connecting right after a 200 gets in.
    server, _ = faulty(make_server, admin_port=0)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(30)

    acceptor_loop = server._acceptor_loop
    assert acceptor_loop is not None
    acceptor_loop.call_soon_threadsafe(hold)
    answers: list[int] = []
    put = threading.Thread(target=lambda: answers.append(get(server, "/faults", "PUT", REFUSE_A_MINUTE)[0]))
    try:
        assert entered.wait(10)
        put.start()
        put.join(0.3)
        assert put.is_alive() and not answers, f"PUT /faults answered ({answers}) before the acceptor's thread ran"
    finally:
        release.set()
    put.join(10)
    assert answers == [200]
    probe = socket.socket()
    probe.settimeout(0.3)
    with probe, pytest.raises(TimeoutError):
        probe.connect(address(server))  # refused from the moment of the answer: the SYN goes unanswered
    assert get(server, "/faults", "DELETE")[0] == 200
    with socket.create_connection(address(server), timeout=5) as sock:  # and DELETE's answer lifts it
        sock.sendall(b"back")
        assert read_exactly(sock, 4) == b"back"


def test_the_dashboard_feed_shows_the_active_policy(make_server: ServerFactory) -> None:
    server, _ = faulty(make_server, "reset:count=2", admin_port=0)
    assert get(server, "/faults", "PUT", b'[{"kind": "reset", "count": 2}, {"kind": "unready", "for_s": 60}]')[0] == 200
    feed = json.loads(get(server, "/dashboard.json")[2])
    assert feed["faults"]["rules"] == [{"kind": "reset", "count": 2}, {"kind": "unready", "for_s": 60}]
    assert [state["kind"] for state in feed["faults"]["active"]] == ["unready"]
    plain, _ = make_server(admin_port=0)
    assert "faults" not in json.loads(get(plain, "/dashboard.json")[2])


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--faults", "on", "--fault", "reset:probability=2"], {}, "--fault: 'reset:probability=2': probability:"),
        (["--faults", "on", "--fault", "explode"], {}, "--fault: 'explode': unknown kind 'explode'"),
        (["--fault", "reset"], {}, "--fault: fault rules need --faults on"),
        (["--faults", "maybe"], {}, "--faults: must be one of on, off"),
        (["--faults-seed", "x"], {}, "--faults-seed: expected a whole number"),
        (
            [],
            {"ECHO_FAULTS": "on", "ECHO_FAULTS_RULES": '[{"kind": "hang", "mode": "x"}]'},
            "ECHO_FAULTS_RULES: rule 1",
        ),
        (
            ["--faults", "on", "--admin-host", "0.0.0.0"],
            {},
            "--admin-token-file: required with --faults on: the admin host 0.0.0.0 is not loopback",
        ),
        (["--faults", "on", "--admin-token-file", "/nonexistent/token"], {}, "--admin-token-file: cannot read"),
    ],
)
def test_a_bad_fault_setting_is_one_line_and_exit_2(args: list[str], env: dict[str, str], says: str) -> None:
    result = run_cli(["--port", "0", "--admin-port", "0", *args], env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_over_10000_connections_the_reset_fraction_passes_a_chi_square_test(make_server: ServerFactory) -> None:
    probability, connections = 0.3, 10_000
    server, _ = faulty(
        make_server, f"reset:probability={probability}", admin_port=0, max_connections_per_ip=connections
    )
    reset = 0
    for number in range(connections):
        source = f"127.0.{number // 250 % 40 + 10}.{number % 250 + 1}"  # spread over addresses: no port runs out
        try:
            with socket.create_connection(address(server), timeout=5, source_address=(source, 0)) as sock:
                sock.sendall(b"?")
                if sock.recv(1) != b"?":
                    raise AssertionError("an unfaulted connection did not echo")
        except ConnectionResetError:
            reset += 1
    expected = connections * probability
    chi2 = (reset - expected) ** 2 / expected + (reset - expected) ** 2 / (connections - expected)
    print(f"\n{reset} of {connections} connections reset (expected {expected:.0f}): chi-square {chi2:.3f}, 1 dof")
    assert chi2 < CHI2_1DOF_P001
    assert json.loads(get(server, "/faults")[2])["fired"] == [reset]  # the server's count is the client's


def test_the_dashboard_page_shows_the_policy_in_a_browser(make_server: ServerFactory, browser: Browser) -> None:
    server, _ = faulty(make_server, "reset:count=2", admin_port=0)
    assert get(server, "/faults", "PUT", b'[{"kind": "reset", "count": 2}, {"kind": "unready", "for_s": 60}]')[0] == 200
    session = browser.open(admin_url(server, "/dashboard"))
    wait_page(browser, session, "(v) => v.updates >= 1")
    shown = browser.call(
        "Runtime.evaluate",
        {
            "expression": "[document.getElementById('faults-card').hidden,"
            " document.querySelector('#faults tbody').textContent,"
            " document.getElementById('faults-active').textContent]",
            "returnByValue": True,
        },
        session,
    )["result"]["value"]
    hidden, rows, active = shown
    assert not hidden and '{"kind":"reset","count":2}' in rows and re.fullmatch(r"unready \d+\.\d s", active)


def test_with_faults_off_no_fault_module_is_even_loaded() -> None:
    program = (
        "import sys\n"
        "from server.cli import main\n"
        "from server.config import Config\n"
        "from server.core import EchoServer\n"
        "import server.workers.supervisor, server.workers.worker, server.observe.admin_http\n"
        "with EchoServer(Config(port=0, admin_port=0, udp_port=0, stats_interval=0)) as server:\n"
        "    assert server.ready.wait(10)\n"
        "print(sorted(name for name in sys.modules if name.startswith('server.faults')))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
