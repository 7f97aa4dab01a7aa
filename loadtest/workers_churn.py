"""Connection churn with --workers N: connections a second, CPU per connection, and the
supervisor's share of it.

    python3 -m loadtest.workers_churn --workers 1 2 --seconds 5 --threads 2

For each N, starts ``python3 -m server --workers N`` on loopback (info logging, text,
to a file in a temporary directory: the log is part of the cost), warms it up, then
runs --threads client threads for --seconds: connect, echo 4 bytes, close, as fast as
they go. The CPU time of the supervisor and of each worker (found by name:
``echo-worker N``, see docs/workers.md) comes from /proc/PID/stat before and after.
One JSON line per N. The client runs on the same machine and takes its share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_S = 1.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def workers_of(pid: int) -> list[int]:
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        found += [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().startswith("echo-worker")]
    return found


def hammer(address: tuple[str, int], stop: threading.Event, counts: list[int]) -> None:
    """``counts``: this thread's own [echoed, failed]."""
    while not stop.is_set():
        try:
            _echo_once(address)
        except OSError:
            counts[1] += 1  # a failure: counted, and the run goes on
            continue
        counts[0] += 1


def _echo_once(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"ping")
        got = b""
        while len(got) < 4:
            chunk = sock.recv(4 - len(got))
            if not chunk:
                raise ConnectionError("EOF before the echo")
            got += chunk


def run(address: tuple[str, int], threads: int, seconds: float) -> tuple[int, int]:
    """(connections echoed, connections failed) by ``threads`` threads in ``seconds``."""
    stop = threading.Event()
    counts = [[0, 0] for _ in range(threads)]
    pool = [threading.Thread(target=hammer, args=(address, stop, mine)) for mine in counts]
    for thread in pool:
        thread.start()
    stop.wait(seconds)  # the measurement's length, not a synchronization
    stop.set()
    for thread in pool:
        thread.join(30)
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def measure(workers: int, threads: int, seconds: float, log_dir: str) -> dict[str, object]:
    log_file = tempfile.mktemp(prefix=f"workers-{workers}-", suffix=".log", dir=log_dir)
    command = [sys.executable, "-m", "server", "--port", "0", "--admin-port", "off", "--workers", str(workers)]
    command += ["--log-format", "json", "--log-file", log_file, "--log-max-bytes", str(1 << 40)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = _wait_ready(log_file, server)
        worker_pids = workers_of(server.pid) if workers > 1 else []
        run(address, threads, WARM_UP_S)
        pids = [server.pid, *worker_pids]
        before = [cpu_s(pid) for pid in pids]
        started = time.monotonic()
        connections, failed = run(address, threads, seconds)
        elapsed = time.monotonic() - started
        spent = [cpu_s(pid) - b for pid, b in zip(pids, before, strict=True)]
    finally:
        server.terminate()
        server.wait(30)
    total = sum(spent)
    records = [json.loads(line) for line in Path(log_file).read_text().splitlines()]
    problems = [r for r in records if r.get("level") in ("warning", "error")]
    return {
        "workers": workers,
        "connections_per_s": round(connections / elapsed),
        "cpu_us_per_connection": round(total * 1e6 / connections, 1),
        "supervisor_us_per_connection": round(spent[0] * 1e6 / connections, 1) if workers > 1 else None,
        "connections": connections,
        "failed": failed,
        "seconds": round(elapsed, 2),
        "log_lines": len(records),
        "warnings_and_errors": len(problems),
        "first_problems": [f"{r.get('event')}: {r.get('reason') or r.get('message', '')}" for r in problems[:3]],
    }


def _wait_ready(log_file: str, server: subprocess.Popen[str]) -> tuple[str, int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read() if server.stderr else ''}")
        try:
            for line in Path(log_file).read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "ready":
                    host, _, port = str(record["address"]).rpartition(":")
                    return host.strip("[]"), int(port)
        except FileNotFoundError:
            pass
        time.sleep(0.05)  # polling a file another process writes: no readiness signal to wait on
    raise RuntimeError("the server was not ready within 30 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.workers_churn", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="echo-churn-") as log_dir:
        for workers in args.workers:
            print(json.dumps(measure(workers, args.threads, args.seconds, log_dir)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
