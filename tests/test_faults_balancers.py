"""docs/faults.md's "Testing your load balancer" recipes, each run against the real
balancer on loopback: three ``--faults on`` replicas behind HAProxy or nginx, rendered
from deploy/ as tests/test_balancers.py does (whose harness this reuses).

- HAProxy, reset=100% on one replica: with the health check on the echo port (the
  recipe's change to the repo's config), HAProxy marks it DOWN within fall x inter, and
  UP again after DELETE /faults; clients fail only on connections sent to it before it
  was marked down (no retry can save a connection reset after it was established).
- nginx, refuse on one replica: nginx's connect to it times out, it tries the next
  replica (proxy_next_upstream) and leaves the refusing one out (max_fails): 0 failed.
- HAProxy checking /readyz (the repo's config), unready for 3 s on one replica: marked
  DOWN, no new connection reaches it until it is UP again, its open ones keep echoing.
- HAProxy, hang for one client: HAProxy's ``timeout server`` fires and the client gets
  what the config promises (its connection closed, ``sD`` in HAProxy's log).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_balancers import (
    HAPROXY,
    NGINX,
    Balancer,
    Kind,
    Replica,
    bench_with_victim,
    nginx_module,
    ping,
    read_banner,
    render_haproxy,
    report,
    start_replica,
)

pytestmark = pytest.mark.slow

# The health check that sees a reset: on the echo port itself, a PROXY header first (as
# for traffic), then an echo. The repo's config checks /readyz on the admin port instead.
ECHO_PORT_CHECK = """    option tcp-check
    tcp-check connect default
    tcp-check send "check\\n"
    tcp-check expect string check
"""


def faults_request(replica: Replica, method: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(*replica.admin, timeout=5)
    try:
        connection.request(method, "/faults", None if body is None else json.dumps(body).encode())
        response = connection.getresponse()
        text = response.read().decode()
        return response.status, json.loads(text) if response.status == 200 else text
    finally:
        connection.close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(3):
            started.append(start_replica("--faults=on", "--faults-seed=1"))
        yield started
    finally:
        for replica in started:
            replica.process.stop()


def render_haproxy_echo_check(port: int, replicas: list[Replica], workdir: Path) -> str:
    text = render_haproxy(port, replicas, workdir)
    for number, replica in enumerate(replicas, 1):  # checks to the echo port, PROXY header included
        text = text.replace(
            f"    server echo-{number} {replica.local} port {replica.admin[1]}\n",
            f"    server echo-{number} {replica.local} port {replica.address[1]} check-send-proxy\n",
        )
    old = "    option httpchk GET /readyz\n    http-check expect status 200\n"
    assert old in text
    return text.replace(old, ECHO_PORT_CHECK)


def render_haproxy_timeout_server(seconds: float) -> Callable[[int, list[Replica], Path], str]:
    def render(port: int, replicas: list[Replica], workdir: Path) -> str:
        text = render_haproxy(port, replicas, workdir)
        assert "    timeout server 310s\n" in text and "local0 info" in text  # info: the tcplog lines
        return text.replace("    timeout server 310s\n", f"    timeout server {seconds:g}s\n")

    return render


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def run_balancer(kind: Kind, replicas: list[Replica], workdir: Path) -> Balancer:
    if shutil.which(kind.name) is None:
        pytest.skip(f"{kind.name} is not installed (Debian: apt-get install {kind.name})")
    if kind.name == "nginx" and nginx_module() is None:
        pytest.skip("nginx's stream module is not installed (Debian: apt-get install libnginx-mod-stream)")
    return Balancer(kind, replicas, workdir)


def test_haproxy_marks_a_resetting_replica_down_and_up_again(
    replicas: list[Replica], workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    balancer = run_balancer(dataclasses.replace(HAPROXY, render=render_haproxy_echo_check), replicas, workdir)
    try:
        with bench_with_victim(balancer, replicas) as (bench, held, number, victim):
            before_reset = balancer.mark()
            set_at = time.monotonic()
            assert faults_request(victim, "PUT", [{"kind": "reset"}])[0] == 200
            balancer.wait_for(f"echo-{number} is DOWN", 10, after=before_reset)
            down_s = time.monotonic() - set_at
            down_at = time.monotonic()
            bench.wait_for_more(200)
            served_while_down = bench.served(victim.local)
            before_clear = balancer.mark()
            cleared_at = time.monotonic()
            assert faults_request(victim, "DELETE")[0] == 200
            balancer.wait_for(f"echo-{number} is UP", 10, after=before_clear)
            up_s = time.monotonic() - cleared_at
            # leastconn sends new connections to the replica with the fewest: while the
            # victim holds more of the held ones than another replica, it gets next to none.
            for sock, _ in held:
                sock.close()
            served_again = bench.wait_until_served(victim.local, served_while_down)
        report(record_property, "reset_down_up", balancer, bench)
        print(f"HAProxy: DOWN {down_s:.2f} s after PUT reset=100%, UP {up_s:.2f} s after DELETE")
        record_property("haproxy_down_s", round(down_s, 2))
        record_property("haproxy_up_s", round(up_s, 2))
        assert down_s < 2 * 1.0 + 2.0 + 1.0  # fall 2 x inter 1 s, timeout check 2 s, a margin
        assert up_s < 2 * 1.0 + 2.0 + 1.0  # rise 2 x inter 1 s
        assert served_again, f"{victim.local} served nothing after it was UP again: {bench.served_by}"
        # Only connections sent to the victim before HAProxy marked it down failed, and
        # those it already had in flight at that moment.
        assert len(bench.failed_since(down_at)) <= bench.threads, bench.failed_since(down_at)[:5]
        assert all("reset" in why or "closed before" in why for _, why in bench.failures), bench.failures[:5]
    finally:
        balancer.stop()


def test_nginx_skips_a_refusing_replica_without_failing_a_client(
    replicas: list[Replica], workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    balancer = run_balancer(NGINX, replicas, workdir)
    try:
        with bench_with_victim(balancer, replicas) as (bench, held, _, victim):
            assert faults_request(victim, "PUT", [{"kind": "refuse", "for_s": 6}])[0] == 200
            served_at_refuse = bench.served(victim.local)
            bench.wait_for_more(150)
            served_during = bench.served(victim.local) - served_at_refuse
            for sock, replica in held:  # open connections to the refusing replica keep echoing
                assert ping(sock), replica
        report(record_property, "refuse", balancer, bench)
        assert served_during <= bench.threads  # only those already in flight
        assert bench.failed == 0, bench.failures[:5]
        balancer.wait_for("upstream timed out", 10)  # the documented retry: connect timeout, next replica
    finally:
        balancer.stop()


def test_haproxy_readiness_flip_sends_no_new_connection_while_open_ones_echo(
    replicas: list[Replica], workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    balancer = run_balancer(HAPROXY, replicas, workdir)
    try:
        with bench_with_victim(balancer, replicas) as (bench, held, number, victim):
            before_fault = balancer.mark()
            assert faults_request(victim, "PUT", [{"kind": "unready", "for_s": 3}])[0] == 200
            assert victim.readyz() == 503
            balancer.wait_for(f"echo-{number} is DOWN", 10, after=before_fault)
            down_served = bench.served(victim.local)
            for sock, replica in held:  # meanwhile its open connections keep echoing
                assert ping(sock, b"still here"), replica
            balancer.wait_for(f"echo-{number} is UP", 10, after=before_fault)
            # Nothing new reached it while DOWN: at most those in flight at the DOWN finished there.
            assert bench.served(victim.local) <= down_served + bench.threads
            bench.wait_for_more(100)
        report(record_property, "unready", balancer, bench)
        assert bench.failed == 0, bench.failures[:5]
        assert bench.served(victim.local) > down_served  # and it is used again after
    finally:
        balancer.stop()


def test_haproxy_timeout_server_ends_a_hung_connection_as_configured(replicas: list[Replica], workdir: Path) -> None:
    kind = dataclasses.replace(HAPROXY, render=render_haproxy_timeout_server(1.0))
    balancer = run_balancer(kind, replicas, workdir)
    try:
        client = "127.3.0.1"
        for replica in replicas:  # whichever replica HAProxy picks hangs for this client only
            rule = {"kind": "hang", "mode": "no_read", "from": f"{client}/32"}
            assert faults_request(replica, "PUT", [rule])[0] == 200
        # From before the connect: HAProxy's timer may start as it accepts, and it counts
        # in whole milliseconds, so a clock started later can read a hair under 1.0 s.
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", balancer.port), timeout=10, source_address=(client, 0)) as sock:
            sock.sendall(b"anyone there?")
            assert read_banner(sock) is None  # no banner, no echo: closed by HAProxy
            waited = time.monotonic() - began
        line = balancer.wait_for(rf"{client}:\d+ .* sD", 10)  # tcplog: server timeout, in the data phase
        print(f"hang: HAProxy closed the client after {waited:.2f} s; log: {line.strip()}")
        assert 1.0 <= waited < 3.0
        with socket.create_connection(("127.0.0.1", balancer.port), timeout=10, source_address=("127.3.0.2", 0)) as ok:
            assert read_banner(ok) is not None and ping(ok)  # another client is served
    finally:
        balancer.stop()
