"""``echo-client watch`` against real servers, as a real subprocess.

- SIGSTOP the server for 2 s: exactly one gap per connection, 2 s +- 0.2 s, cause timeout;
- SIGHUP a ``--workers 2`` server mid-watch: 0 gaps (the project's reload promise);
- SIGTERM one replica behind the repo's HAProxy config (tests/test_balancers.py's
  replicas and balancer): its connections echo until its drain ends, then reconnect on
  another replica (``replica_after`` differs), and nothing else is disrupted;
- bad input and an unreachable server: one line, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faulty import FaultyServer
from tests.helpers import ServerProcess, closed_port
from tests.measuring import (
    echo_server,
    freeze,
    keep_running,
    read_so_far,
    run_client,
    start_client,
    wait_for_opened,
)
from tests.test_balancers import HAPROXY, Balancer, Replica, start_replica

pytestmark = pytest.mark.slow


def finish(watch: subprocess.Popen[str], *, interrupt: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The gap records and the summary of a ``watch --json`` run (SIGINT first if asked)."""
    if interrupt:
        watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    assert "Traceback" not in err, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records and records[-1].get("summary") is True, out
    summary = records.pop()
    assert err.strip() == f"echo-client watch: {summary['verdict']}", err
    assert watch.returncode == (0 if summary["verdict"] == "PASS" else 1)
    return records, summary


def test_a_two_second_freeze_is_one_timeout_gap_per_connection() -> None:
    with echo_server() as server:
        watch = start_client(
            "watch", *map(str, server.address), "--connections", "8", "--duration", "5s", "--json",
            "--max-gap", "3s", "--min-success", "0.9",
        )  # fmt: skip
        wait_for_opened(server, 1 + 8)
        keep_running(watch, 0.5)
        frozen = freeze(server.proc.pid, 2.0)
        gaps, summary = finish(watch)
    print(f"\nfrozen {frozen:.3f} s; gaps: {[g['duration_s'] for g in gaps]}; summary {summary}")
    assert sorted(gap["conn"] for gap in gaps) == list(range(8))
    for gap in gaps:
        assert gap["cause"] == "timeout"
        assert abs(gap["duration_s"] - frozen) <= 0.2, gap
        assert gap["replica_before"] is None and gap["replica_after"] is None
    assert summary["gaps"] == 8 and summary["gaps_by_cause"] == {"timeout": 8}
    assert 0.3 < summary["success_rate"] < 0.8
    # the gaps are within --max-gap 3s; the probes they cost are not within --min-success 0.9
    assert summary["verdict"] == f"FAIL: success rate {summary['success_rate']:.4%} < --min-success 90.0000%"


def test_a_reload_of_two_workers_shows_no_gap() -> None:
    server = ServerProcess(
        "--port", "0", "--admin-port", "off", "--workers", "2", "--shutdown-timeout", "30",
        "--banner", "{hostname} {local}",
    )  # fmt: skip
    try:
        server.start()
        watch = start_client(
            "watch", *map(str, server.address), "--connections", "8", "--reconnect", "--banner", "--json",
            "--max-latency", "1s",  # a reset or a close shows at once; a busy machine's 300 ms hiccup is no drop
        )  # fmt: skip
        wait_for_opened(server, 1 + 8)
        keep_running(watch, 0.5)
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", generation=2)
        keep_running(watch, 1.5)  # probes on the old generation's connections after the reload
        gaps, summary = finish(watch, interrupt=True)
    finally:
        server.stop()
    print(f"\nSIGHUP of --workers 2: {summary}")
    assert gaps == []
    assert summary["verdict"] == "PASS" and summary["success_rate"] == 1.0
    assert summary["probes"] >= 8 * 20  # ~2 s at 20 probes/s each


@pytest.fixture
def drain_replicas() -> Iterator[list[Replica]]:
    """tests/test_balancers.py's replicas, each naming itself in the banner, with a short drain."""
    started: list[Replica] = []
    try:
        for _ in range(3):
            started.append(start_replica("--banner={local}", "--shutdown-timeout=2", "--max-connections-per-ip=100"))
        yield started
    finally:
        for replica in started:
            replica.process.stop()


def events_named(replica: Replica, name: str) -> int:
    return sum(record.get("event") == name for record in read_so_far(replica.process))


def test_sigterm_behind_haproxy_moves_the_watchers_of_that_replica_only(
    drain_replicas: list[Replica], tmp_path: Path
) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    balancer = Balancer(HAPROXY, drain_replicas, tmp_path)
    try:
        watch = start_client(
            "watch", "127.0.0.1", str(balancer.port), "--connections", "6", "--reconnect", "--banner", "--json",
            "--max-latency", "1s",
        )  # fmt: skip
        for replica in drain_replicas:  # leastconn: about two each, plus the fail-fast probe somewhere
            wait_for_opened(replica.process, 1)
        keep_running(watch, 0.5)  # every watcher connected and probing
        open_on = [events_named(r, "opened") - events_named(r, "closed") for r in drain_replicas]
        assert sum(open_on) == 6, open_on
        victim = drain_replicas[open_on.index(max(open_on))]
        signalled, signalled_wall = time.monotonic(), time.time()
        victim.process.signal(signal.SIGTERM)
        assert victim.process.finish(20) == 0  # drained: its connections were closed after 2 s
        drained_after = time.monotonic() - signalled
        keep_running(watch, 1.0)  # reconnected watchers probe their new replica
        gaps, summary = finish(watch, interrupt=True)
    finally:
        balancer.stop()
    print(f"\nHAProxy, SIGTERM of one replica (drained in {drained_after:.2f} s): gaps {gaps}; summary {summary}")
    others = {replica.local for replica in drain_replicas if replica is not victim}
    assert len(gaps) == max(open_on), (gaps, open_on)  # the victim's watchers, nobody else
    for gap in gaps:
        assert gap["cause"] in ("eof", "reset"), gap
        started = datetime.fromisoformat(gap["start"].replace("Z", "+00:00")).timestamp()
        assert started >= signalled_wall + 1.8, (gap, signalled_wall)  # echoed until the 2 s drain ended
        assert gap["replica_before"] == victim.local
        assert gap["replica_after"] in others
        assert gap["duration_s"] < 1.0, gap  # the reconnect: no refusal reached the client
    assert summary["gaps"] == len(gaps) and summary["gaps_not_over"] == 0


def test_an_unreachable_server_and_bad_flags_are_one_line() -> None:
    with closed_port() as port:
        refused = run_client("watch", "127.0.0.1", str(port), "--duration", "1s")
    assert refused.returncode == 1
    assert refused.stderr == f"echo-client watch: connection to 127.0.0.1:{port} refused: is the server running?\n"
    bad = run_client("watch", "127.0.0.1", "9", "--interval", "0")
    assert bad.returncode == 2
    assert bad.stderr.startswith("echo-client watch: --interval: expected a duration > 0"), bad.stderr
    assert bad.stderr.count("\n") == 1


def test_a_lost_connection_without_reconnect_is_a_gap_with_no_end() -> None:
    with echo_server("--shutdown-timeout", "0") as server:
        watch = start_client("watch", *map(str, server.address), "--connections", "2", "--json")
        wait_for_opened(server, 1 + 2)
        keep_running(watch, 0.3)
        server.signal(signal.SIGTERM)
        assert server.finish(10) == 0
        keep_running(watch, 0.3)
        gaps, summary = finish(watch, interrupt=True)
    assert len(gaps) == 2 and all(gap["end"] is None and gap["cause"] in ("eof", "reset") for gap in gaps), gaps
    assert summary["gaps_not_over"] == 2 and "not over at the end" in summary["verdict"]


def test_a_server_that_corrupts_a_byte_is_a_mismatch_gap() -> None:
    with FaultyServer("corrupt") as faulty:
        watch = start_client("watch", *map(str, faulty.address), "--connections", "2", "--duration", "1s", "--json")
        gaps, summary = finish(watch)
    assert [gap["cause"] for gap in gaps] == ["mismatch", "mismatch"] and all(gap["end"] is None for gap in gaps)
    assert summary["good_probes"] == 0 and summary["gaps_not_over"] == 2
