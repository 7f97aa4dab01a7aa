"""GET /connections with many idle connections: its response time, and what it costs
the echo path, against a real ``python3 -m server``.

    python3 -m loadtest.connections_cost --connections 10000 --seconds 5 --interval 0
    python3 -m loadtest.connections_cost --connections 10000 --seconds 5 --interval 1

Starts the server on loopback (banner ``{conn}``, so that each idle connection's first
line proves it was admitted), opens N idle connections from this process, then measures
the round trip of one ping-pong client (64 bytes, back to back, for --seconds) twice:
alone, and while another thread asks for the first page of /connections, back to back
(--interval 0, the worst case) or every --interval seconds (a dashboard's polling).
Prints the response times and both latency distributions (docs/reflection.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.queues
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def server(max_connections: int) -> Iterator[tuple[tuple[str, int], str]]:
    """A server subprocess: its echo address and its admin address (host:port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    args = ["--port", "0", "--admin-port", "0", "--log-format", "json", "--banner", "{conn}"]
    args += ["--max-connections", str(max_connections), "--max-connections-per-ip", str(max_connections)]
    command = [sys.executable, "-m", "server", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    reader: threading.Thread | None = None
    try:
        assert proc.stdout is not None
        record: dict[str, str] = {}
        for line in proc.stdout:
            record = json.loads(line)
            if record.get("event") == "listening":
                break
        reader = threading.Thread(target=proc.stdout.read, daemon=True)  # never let the log pipe fill
        reader.start()
        host, _, port = record["address"].rpartition(":")
        yield (host.strip("[]"), int(port)), record["admin_address"]
    finally:
        proc.terminate()
        proc.wait(15)
        if reader is not None:
            reader.join(15)  # it reads to the end of the log
        if proc.stdout is not None:
            proc.stdout.close()


def open_idle(stack: ExitStack, address: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` connections, each admitted (its banner line read), then left idle."""
    socks = [stack.enter_context(socket.create_connection(address, timeout=30)) for _ in range(count)]
    for sock in socks:
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise RuntimeError("closed before its banner")
            line += chunk
    return socks


def get_connections(admin: str, query: str = "") -> tuple[float, dict[str, object]]:
    """One GET /connections: seconds it took and the document."""
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://{admin}/connections{query}", timeout=30) as response:
        document = json.load(response)
    return time.perf_counter() - began, document


def ask_until(admin: str, interval: float, done: Any, results: Any) -> None:
    """In its own process: GET /connections until ``done``; puts (times, total)."""
    responses: list[float] = []
    total = 0
    while not done.is_set():
        took, document = get_connections(admin)
        responses.append(took)
        total = int(str(document["total"]))
        done.wait(interval)  # pacing the requests, not synchronizing
    results.put((responses, total))


def ping_pong(address: tuple[str, int], seconds: float) -> list[float]:
    """Round-trip times (seconds) of 64-byte echoes on one connection for ``seconds``."""
    payload = b"x" * 64
    times = []
    with socket.create_connection(address, timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not sock.recv(64).endswith(b"\n"):  # the banner
            pass
        end = time.perf_counter() + seconds
        while (began := time.perf_counter()) < end:
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(sock.recv(len(payload) - got))
            times.append(time.perf_counter() - began)
    return times


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return f"p50 {at(0.5):.3f} ms, p99 {at(0.99):.3f} ms, max {ordered[-1] * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m loadtest.connections_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections held open")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each echo latency sample")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between requests (0: back to back)")
    args = parser.parse_args(argv)
    with server(args.connections + 100) as (address, admin), ExitStack() as stack:
        began = time.perf_counter()
        open_idle(stack, address, args.connections)
        print(f"{args.connections} idle connections open in {time.perf_counter() - began:.1f} s")
        alone = ping_pong(address, args.seconds)
        # The asker is another process, so that its work does not slow this one's probe.
        context = multiprocessing.get_context("spawn")
        done = context.Event()
        results: multiprocessing.queues.SimpleQueue[tuple[list[float], int]] = context.SimpleQueue()
        asker = context.Process(target=ask_until, args=(admin, args.interval, done, results))
        asker.start()
        busy = ping_pong(address, args.seconds)
        done.set()
        responses, total = results.get()
        asker.join(120)
        print(f"GET /connections (first page of 100 of {total}): {quantiles(responses)} over {len(responses)}")
        print(f"echo round trip alone:                {quantiles(alone)} over {len(alone)}")
        print(f"echo round trip while /connections:   {quantiles(busy)} over {len(busy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
