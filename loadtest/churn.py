"""Connection churn against a real ``python3 -m server``: RSS before and after.

    python3 -m loadtest.churn --connections 100000 --rate 2000

Starts the server (default settings: idle timeout 300 s) on loopback, warms it with
1,000 short connections, records its RSS, then opens N more short connections
(connect, echo 5 bytes, close) at up to --rate per second from this process, waits
until the server has counted every close, and records the RSS again. It is the
measurement behind "a closed connection is forgotten at once" (docs/design.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 1_000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def closed_count(admin: str) -> int:
    with urllib.request.urlopen(f"http://{admin}/stats", timeout=10) as response:
        return int(json.load(response)["closed"])


def churn(address: tuple[str, int], count: int, rate: float) -> float:
    """Open ``count`` short connections at up to ``rate`` a second; returns the rate achieved."""
    started = time.monotonic()
    for index in range(count):
        ahead = started + index / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the load, not synchronizing
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"hello")
            got = b""
            while len(got) < 5:
                chunk = sock.recv(5 - len(got))
                if not chunk:
                    raise RuntimeError("EOF before the echo")
                got += chunk
    return count / (time.monotonic() - started)


def wait_closed(admin: str, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while closed_count(admin) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server counted fewer than {expected} closes")
        time.sleep(0.05)  # polling a figure for a one-off measurement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.churn", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000, help="short connections after the warm-up")
    parser.add_argument("--rate", type=float, default=2_000.0, help="connections per second at most")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--admin-port", "0", "--log-format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        addresses: dict[str, str] = {}
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("event") == "listening":
                addresses = record
                break
        # Keep reading the log (as a collector would), so the server never waits on the pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        host, _, port = addresses["address"].rpartition(":")
        address = (host.strip("[]"), int(port))
        admin = addresses["admin_address"]
        churn(address, WARM_UP, args.rate)
        wait_closed(admin, WARM_UP)
        before = rss_kib(proc.pid)
        achieved = churn(address, args.connections, args.rate)
        wait_closed(admin, WARM_UP + args.connections)
        after = rss_kib(proc.pid)
        print(
            f"{args.connections} short connections at {achieved:,.0f}/s: RSS {before / 1024:.1f} MiB -> "
            f"{after / 1024:.1f} MiB ({(after - before) / 1024:+.2f} MiB)"
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
