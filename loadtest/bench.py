"""``make bench``: echo-service against reference servers, in one run, on one machine.

    python -m loadtest.bench [--repeats 3] [--duration 3] [--warmup 1] [--scenarios ...] [--servers ...]

For every scenario and repeat, each server is started fresh (a subprocess pinned to
CPU 0 when there are two or more), warmed up, driven by client.loadgen from this
process (pinned to the other CPUs), measured, and stopped. Repeats are interleaved
across servers so that a noisy minute hurts them alike. Per row: msgs/s, MB/s, latency
percentiles, the server's CPU microseconds per echoed message and its RSS (from /proc),
errors.

Every server is warmed up the same way before its measured window (loadtest.warmup says
why): one connection is opened, echoed and closed (the server saw the close), then the
scenario's load runs for ``--warmup`` seconds and its connections close.

The practical ceiling is ``c-epoll`` (loadtest/epoll_echo.c), compiled here with ``cc``
when there is one; without it that server's rows are skipped with a one-line reason.

The scenarios, and how each is driven: loadtest/scenarios.py.

``--baseline DIR`` adds echo-service from another checkout to every scenario (whatever
``--servers`` lists); its rows pair with echo-service's like any other server's, repeat
by repeat, with targets of no regression beyond 5%.

Noisy rows: during every measured window the CPU that other processes of the machine
used is sampled (loadtest.noise: /proc/stat minus this process tree, which holds the
server and the load generator). A row during which they used more than
``--noise-threshold`` of a core is re-run, up to ``--noise-retries`` times; one still
noisy after that is kept and flagged in the table. Every discarded attempt stays in
results.json (``noisy_attempts``).

echo-service's rows run without the admin endpoint; ``--admin-port 7008`` gives each
of them one, to watch http://127.0.0.1:7008/dashboard while the bench runs (a server
per row: the page shows each row's server in turn).

Writes ``results.json``, ``results.md`` (the table with medians and ranges, and which
targets hold) and ``results.svg`` (a bar chart) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from client import loadgen
from loadtest import chart, churn_bench, report, tls_load
from loadtest.noise import NOISY_CORES, NoiseWindow, rerun_while_noisy
from loadtest.scenarios import SCENARIOS, Scenario
from loadtest.servers import (
    BASELINE_SERVER,
    C_SERVER,
    ROOT,
    SERVERS,
    TLS_SERVER,
    TLS_SERVERS,
    UVLOOP_SERVER,
    WORKER_SERVERS,
    WORKERS_SERVER,
    ServerUnderTest,
    add_baseline,
    build_c_server,
    make_tls_files,
    uvloop_missing,
    watch_admin,
)
from loadtest.warmup import echo_and_close, warm_up


def runs_in(name: str, scenario: Scenario) -> bool:
    """Which servers have a row in ``scenario``: TLS and workers rows have their two."""
    if scenario.tls:
        return name in TLS_SERVERS
    if scenario.workers:
        return name in WORKER_SERVERS
    return name not in (TLS_SERVER, WORKERS_SERVER)


def measure(
    server_name: str,
    scenario: Scenario,
    duration_s: float,
    cpus: tuple[set[int] | None, set[int] | None],
    processes: int,
    warmup_s: float = 1.0,
    churn_rate: float = 2000.0,
) -> dict[str, Any]:
    if scenario.workers:  # unpinned: the server and the load generator share every CPU
        all_cpus = set(range(os.cpu_count() or 1))
        os.sched_setaffinity(0, all_cpus)
        try:
            unpinned = dataclasses.replace(scenario, workers=False)
            return measure(server_name, unpinned, duration_s, (None, None), processes, warmup_s)
        finally:
            if cpus[1]:
                os.sched_setaffinity(0, cpus[1])
    server = ServerUnderTest(server_name, cpus[0])
    noise = NoiseWindow([os.getpid()])  # this process's tree: the server and the load generator
    try:
        if scenario.churn:  # then the load's own first warmup_s seconds
            echo_and_close(server.address, scenario.size)
        elif not scenario.tls:
            warm_up(server.address, scenario.conns, scenario.size, warmup_s, processes, scenario.pipeline)
        rss_before_kib = server.memory_kib("VmRSS")
        window: dict[str, float] = {}
        lock = threading.Lock()

        def on_window(edge: str) -> None:
            with lock:
                if edge == "start":
                    noise.start()
                window[f"cpu_{edge}"] = server.cpu_seconds()
                window[f"rss_{edge}_kib"] = server.memory_kib("VmRSS")
                window[f"log_lines_{edge}"] = server.log_lines
                if edge == "end":
                    noise.stop()

        if scenario.churn:
            churn = churn_bench.run(
                churn_bench.ChurnSpec(
                    host=server.address[0],
                    port=server.address[1],
                    rate=churn_rate,
                    duration_s=duration_s,
                    warmup_s=warmup_s,
                    processes=churn_bench.processes_for(churn_rate),
                ),
                on_window=on_window,
            )
            peak_kib = server.memory_kib("VmHWM")
            cpu_s = window.get("cpu_end", 0.0) - window.get("cpu_start", 0.0)
            named = {"server": server_name, "scenario": scenario.name, "peak_rss_mib": round(peak_kib / 1024, 1)}
            # Lines the server wrote during the window, per connection completed in it: about 2
            # for echo-service at info (opened, closed), whether it writes them one by one or batched.
            lines = window.get("log_lines_end", 0) - window.get("log_lines_start", 0)
            named["log_lines_per_conn"] = round(lines / churn.completed, 2) if churn.completed else None
            return named | churn.figures(cpu_s, duration_s) | noise_figures(noise)
        spec = loadgen.LoadSpec(
            host=server.address[0],
            port=server.address[1],
            conns=scenario.conns,
            size=scenario.size,
            duration_s=duration_s,
            pipeline=scenario.pipeline,
            processes=processes,
            idle=scenario.idle,
            connect_timeout_s=10,
        )
        if scenario.tls:  # the same client for both rows; it warms up itself
            result: loadgen.BenchResult | tls_load.TlsLoadResult = tls_load.run(
                server.tls_address or server.address,
                conns=scenario.conns,
                size=scenario.size,
                duration_s=duration_s,
                use_tls=server.tls_address is not None,
                warmup_s=warmup_s,
                on_window=on_window,
            )
        else:
            result = loadgen.run(spec, on_window=on_window)
        peak_kib = server.memory_kib("VmHWM")
    finally:
        server.stop()
    cpu_s = window.get("cpu_end", 0.0) - window.get("cpu_start", 0.0)
    messages_in_window = result.msgs_per_s * duration_s
    row: dict[str, Any] = {
        "server": server_name,
        "scenario": scenario.name,
        "msgs_per_s": result.msgs_per_s,
        "mb_per_s": result.mb_per_s,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "p999_ms": result.latency_ms["p99.9"],
        "p999_over_p50": round(result.latency_ms["p99.9"] / result.latency_ms["p50"], 2)
        if result.latency_ms["p50"]
        else None,
        "cpu_us_per_msg": round(cpu_s * 1e6 / messages_in_window, 2) if messages_in_window else None,
        "server_cpu_util": round(cpu_s / duration_s, 3),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "errors": sum(result.errors.values()) + result.mismatches,
        "error_kinds": result.errors,
    }
    if scenario.idle and isinstance(result, loadgen.BenchResult):
        row["idle_held"] = result.idle_open_at_end
        row["rss_per_idle_conn_bytes"] = round((window.get("rss_end_kib", 0) - rss_before_kib) * 1024 / scenario.idle)
    return row | noise_figures(noise)


def noise_figures(noise: NoiseWindow) -> dict[str, float | None]:
    others = None if noise.others_cores is None else round(noise.others_cores, 3)
    return {"others_cores": others, "steal_cores": round(noise.steal_cores, 3)}


def pinning() -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per row")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before each measured window (after one closed echo)"
    )
    parser.add_argument(
        "--scenarios",
        help="comma-separated indexes into the scenario list (0-8; 5 is TLS, 6 workers, 7 churn, 8 pipelined)",
    )
    parser.add_argument("--servers", help="comma-separated server names: " + ", ".join(SERVERS))
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load generator processes (churn: one per 5,000 connections a second, whatever this says)",
    )
    parser.add_argument(
        "--churn-rate", type=float, default=2000.0, help="connections offered per second in the churn scenario"
    )
    parser.add_argument(
        "--noise-threshold",
        type=float,
        default=NOISY_CORES,
        help="cores other processes may use during a window before its row counts as noisy (default 0.1)",
    )
    parser.add_argument("--noise-retries", type=int, default=2, help="re-runs of a noisy row at most (default 2)")
    parser.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    parser.add_argument(
        "--admin-port",
        type=int,
        help="run echo-service's rows with the admin endpoint on this port, to watch /dashboard (default: off)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run echo-service from this checkout (e.g. git worktree add /tmp/base COMMIT): a before/after",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        try:
            add_baseline(args.baseline.resolve())
        except ValueError as error:
            parser.error(f"--baseline: {error}")
    scenarios = [SCENARIOS[int(i)] for i in args.scenarios.split(",")] if args.scenarios else SCENARIOS
    servers = args.servers.split(",") if args.servers else list(SERVERS)
    if args.baseline is not None and BASELINE_SERVER not in servers:
        servers.append(BASELINE_SERVER)  # asked for by --baseline, whatever --servers lists
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}")
    if args.warmup < 0 or args.duration <= 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0, --duration > 0 and --repeats >= 1")
    for flag, value, low in (("--churn-rate", args.churn_rate, 1e-9), ("--noise-threshold", args.noise_threshold, 0),
                             ("--noise-retries", args.noise_retries, 0)):  # fmt: skip
        if value < low:
            parser.error(f"{flag} must be {'> 0' if low else '>= 0'}, not {value:g}")
    if args.admin_port is not None:
        watch_admin(args.admin_port)
    with tempfile.TemporaryDirectory(prefix="echo-bench-") as build_dir:
        skipped: dict[str, str] = {}
        if C_SERVER in servers:
            why = build_c_server(Path(build_dir))
            if why:
                skipped[C_SERVER] = why
                servers.remove(C_SERVER)
                print(f"skipping {C_SERVER}: {why}", file=sys.stderr, flush=True)
        if UVLOOP_SERVER in servers and (why := uvloop_missing()):
            skipped[UVLOOP_SERVER] = why
            servers.remove(UVLOOP_SERVER)
            print(f"skipping {UVLOOP_SERVER}: {why}", file=sys.stderr, flush=True)
        if TLS_SERVER in servers and any(s.tls for s in scenarios):
            why = make_tls_files(Path(build_dir))
            if why:
                skipped[TLS_SERVER] = why
                servers.remove(TLS_SERVER)
                print(f"skipping {TLS_SERVER}: {why}", file=sys.stderr, flush=True)
        elif TLS_SERVER in servers:
            servers.remove(TLS_SERVER)  # it has no row outside the TLS scenario
        return run(args, scenarios, servers, skipped)


def run(args: argparse.Namespace, scenarios: list[Scenario], servers: list[str], skipped: dict[str, str]) -> int:
    server_cpus, load_cpus = pinning()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the load generator's processes inherit it
    rows: list[dict[str, Any]] = []
    noisy_attempts: list[dict[str, Any]] = []
    for scenario in scenarios:
        for repeat in range(args.repeats):
            for name in servers:
                if not runs_in(name, scenario):
                    continue
                started = time.monotonic()
                once = functools.partial(
                    measure, name, scenario, args.duration, (server_cpus, load_cpus), args.processes, args.warmup,
                    args.churn_rate,
                )  # fmt: skip
                row, discarded = rerun_while_noisy(once, args.noise_threshold, args.noise_retries)
                row["repeat"] = repeat
                rows.append(row)
                noisy_attempts += [attempt | {"repeat": repeat} for attempt in discarded]
                rate, cpu = ("conns_per_s", "cpu_us_per_conn") if scenario.churn else ("msgs_per_s", "cpu_us_per_msg")
                print(
                    f"{scenario.name:32} {name:22} #{repeat}  {row[rate]:>10,.0f} {rate[:-6]}/s  "
                    f"{row[cpu] or 0:>7.2f} us/{rate[:-6].rstrip('s')}  errors {row['errors']}  "
                    f"others {row['others_cores'] or 0:.2f} cores{' NOISY' if row['noisy'] else ''}  "
                    f"({time.monotonic() - started:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = report.summarize(rows)
    ratio_list = report.ratios(rows)
    document: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "server_cpus": sorted(server_cpus or []),
            "load_cpus": sorted(load_cpus or []),
        },
        "settings": {
            "repeats": args.repeats,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "warm_up": "one connection opened, echoed and closed, then the scenario's load for warmup_s",
            "processes": args.processes,
            "churn_rate": args.churn_rate,
            "churn_processes": churn_bench.processes_for(args.churn_rate),
            "noise_threshold_cores": args.noise_threshold,
            "noise_retries": args.noise_retries,
        },
        "skipped": skipped,
        "rows": rows,
        "noisy_attempts": noisy_attempts,
        "summary": summary,
        "ratios": ratio_list,
        "targets": report.targets(summary, ratio_list),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "results.md").write_text(report.markdown(document))
    (out / "results.svg").write_text(chart.svg(summary))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
