"""The ceiling of ``echo-client rate`` itself: the highest rate it holds with the achieved
rate within 1% of the target and a late-send p99 under 1 ms, with 1 and 2 processes.

    python -m loadtest.rate_ceiling [--seconds 5] [--rates 1000,2000,...] [--processes 1,2]

The target is the C epoll reference server (loadtest/epoll_echo.c, built with cc): the
cheapest echo there is, so the client, not the server, is what runs out. Each step runs
``echo-client rate --json`` in a subprocess and reads its JSON; the client's CPU time
(its worker processes included) comes from getrusage(RUSAGE_CHILDREN). Prints a
Markdown table and the ceiling per process count. Main thread only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.servers import C_SERVER, ROOT, ServerUnderTest, build_c_server

LATE_P99_MS = 1.0


def step(address: tuple[str, int], rate: int, processes: int, seconds: float) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-m", "client", "rate", address[0], str(address[1]), "--rate", str(rate),
         "--connections", "64", "--size", "64", "--duration", f"{seconds}s", "--warmup", "1s",
         "--processes", str(processes), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    document = json.loads(result.stdout.splitlines()[-1])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "achieved": document["achieved_rate"],
        "late_p99_ms": document["send_lateness_ms"]["p99"],
        "corrected_p99_ms": document["latency_ms"]["corrected"]["p99"],
        "uncorrected_p99_ms": document["latency_ms"]["uncorrected"]["p99"],
        "cpu_per_s": cpu / (seconds + 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.rate_ceiling", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,10000,12000,16000")
    parser.add_argument("--processes", default="1,2")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as build:
        why = build_c_server(Path(build))
        if why:
            print(f"cannot build the C reference server: {why}", file=sys.stderr)
            return 1
        server = ServerUnderTest(C_SERVER, None)
        try:
            print("| processes | target/s | achieved/s | late-send p99 ms | corrected p99 ms | uncorrected p99 ms "
                  "| client CPU s/s |")  # fmt: skip
            print("| --- | --- | --- | --- | --- | --- | --- |")
            ceilings: dict[int, int] = {}
            for processes in map(int, args.processes.split(",")):
                for rate in map(int, args.rates.split(",")):
                    row = step(server.address, rate, processes, args.seconds)
                    print(
                        f"| {processes} | {rate:,} | {row['achieved']:,.0f} | {row['late_p99_ms']:.3f} | "
                        f"{row['corrected_p99_ms']:.3f} | {row['uncorrected_p99_ms']:.3f} | {row['cpu_per_s']:.2f} |",
                        flush=True,
                    )
                    held = row["achieved"] >= rate * 0.99 and row["late_p99_ms"] < LATE_P99_MS
                    if held:
                        ceilings[processes] = rate
                    elif row["achieved"] < rate * 0.9:
                        break  # far past it
        finally:
            server.proc.kill()
            server.proc.wait(10)
    for processes, rate in sorted(ceilings.items()):
        print(f"ceiling with {processes} process(es): {rate:,}/s (achieved within 1%, late-send p99 < 1 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
