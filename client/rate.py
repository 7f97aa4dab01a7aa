"""``echo-client rate``: open-loop load at a fixed rate, latency without coordinated omission.

    echo-client rate HOST PORT --rate 5000 --connections 64 --size 64 --duration 60s
        [--arrival uniform|poisson] [--warmup 5s] [--processes N|auto]
        [--json] [--report FILE.html] [--hdr-log FILE]
        [--max-p99 50ms] [--max-p999 200ms] [--max-error-rate 0.001]

The engine is client.rate_worker (one per process); this module parses the command,
splits connections and rate over the processes, merges their RateResults, prints the
result (text, or one JSON object) and the budget verdict. Exit codes: 0 fine; 1 the
server could not be reached, an echo failed or a budget was exceeded (one verdict line);
2 bad arguments. Runs on the main thread; the workers are other processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from client import options
from client.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, UsageError
from client.library import EchoClient, EchoError
from client.rate_result import LATE_S, RateResult
from client.rate_worker import RateSpec, drive

COMMAND = "rate"
# --processes auto starts one process per this much rate: about a quarter of one process's
# CPU ceiling (~22 us per echo, docs/latency.md), so its loop has idle time to wake on time.
RATE_PER_PROCESS = 5000
START_S_PER_CONNECTION = 0.002  # the workers connect before the common start time


def _processes(text: str) -> int:
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"expected 1-256 or auto, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = options.target_parser(
        COMMAND,
        "Open-loop load: send at a fixed rate on an intended schedule and time each echo from "
        "when it should have been sent (coordinated omission corrected), the uncorrected time beside it.",
    )
    parser.add_argument("--rate", type=options.positive_rate, default=1000.0, help="messages per second (1000)")
    connections = options.whole_number(1, 100_000, "connections")
    parser.add_argument("--connections", type=connections, default=16, help="connections sharing the rate (16)")
    size = options.whole_number(1, 1 << 20, "bytes per message")
    parser.add_argument("--size", type=size, default=64, help="bytes per message (64)")
    parser.add_argument("--duration", type=options.positive_duration, default=10.0, help="measured time (10s)")
    parser.add_argument("--warmup", type=options.non_negative_duration, default=0.0, help="load not measured (0)")
    parser.add_argument("--arrival", choices=("uniform", "poisson"), default="uniform", help="send spacing (uniform)")
    parser.add_argument(
        "--processes", type=_processes, default=1, help=f"sending processes, or auto (one per {RATE_PER_PROCESS}/s)"
    )
    add_output_options(parser)
    return parser


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """What to print and write, and the budgets: rate and merge take the same."""
    parser.add_argument("--json", action="store_true", help="print one JSON object (with the raw histograms)")
    parser.add_argument("--report", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    parser.add_argument("--hdr-log", type=Path, metavar="FILE", help="write per-second percentiles as CSV")
    parser.add_argument("--max-p99", type=options.positive_duration, help="fail (exit 1) if corrected p99 exceeds")
    parser.add_argument("--max-p999", type=options.positive_duration, help="fail if corrected p99.9 exceeds")
    parser.add_argument("--max-error-rate", type=options.fraction, help="fail if more of the messages fail")


def run(spec: RateSpec) -> RateResult:
    """Run the load over ``spec.processes`` processes (1: in this one) and merge."""
    workers = max(1, min(spec.processes, spec.connections))
    shares = [spec.connections // workers + (index < spec.connections % workers) for index in range(workers)]
    start_at = time.time() + 0.2 + START_S_PER_CONNECTION * max(shares) + (0.5 if workers > 1 else 0)
    jobs = [
        (spec, share, spec.rate * share / spec.connections, index / workers, start_at, os.getpid() * 1000 + index)
        for index, share in enumerate(shares)
    ]
    if workers == 1:
        return drive(*jobs[0])
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = [future.result() for future in [pool.submit(drive, *job) for job in jobs]]
    return _combine(parts)


def _combine(parts: list[RateResult]) -> RateResult:
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


def verdict(result: RateResult, args: argparse.Namespace) -> list[str]:
    """Why the run fails: errors, then each budget exceeded; empty if it passes."""
    failures = []
    if result.errors:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(result.errors.items()))
        failures.append(f"errors: {kinds}")
    corrected = result.corrected.summary_ms()
    for name, limit in (("p99", args.max_p99), ("p999", args.max_p999)):
        if limit is not None and corrected[name] > limit * 1000:
            failures.append(f"corrected {name} {corrected[name]:g} ms > --max-{name} {limit * 1000:g} ms")
    if args.max_error_rate is not None and result.error_rate > args.max_error_rate:
        failures.append(f"error rate {result.error_rate:.4%} > --max-error-rate {args.max_error_rate:.4%}")
    return failures


def print_text(result: RateResult, arrival: str) -> None:
    print(
        f"target {result.target_rate:,.0f}/s, achieved {result.achieved_rate:,.1f}/s over {result.duration_s:g} s; "
        f"{result.connected}/{result.connections} connections x {result.size} B, {arrival} arrivals, "
        f"{result.processes} process(es)" + (f" on {result.hosts} hosts" if result.hosts > 1 else "")
    )
    print(f"  {'ms':<16}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>10}")
    rows = (
        ("corrected", result.corrected),
        ("uncorrected", result.uncorrected),
        ("send lateness", result.lateness),
        ("connect", result.connect),
    )
    for label, histogram in rows:
        values = histogram.summary_ms()
        print(f"  {label:<16}" + "".join(f"{values[name]:>10.3f}" for name in ("p50", "p90", "p99", "p999", "max")))
    late = 100 * result.late_sends / result.sent if result.sent else 0.0
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(result.errors.items())) or "none"
    print(
        f"  sent {result.sent:,}  received {result.received:,}  "
        f"late sends (> {LATE_S * 1000:g} ms) {result.late_sends:,} ({late:.2f}%)  errors: {errors}"
    )


def write_hdr_log(result: RateResult, path: Path) -> None:
    """Per-second percentiles (by intended send second), one CSV row a second."""
    lines = [
        "second,sent,received,corrected_p50_ms,corrected_p99_ms,corrected_p999_ms,corrected_max_ms,uncorrected_p99_ms"
    ]
    for index, second in sorted(result.seconds.items()):
        corrected, uncorrected = second.corrected.summary_ms(), second.uncorrected.summary_ms()
        lines.append(
            f"{index},{second.sent},{second.corrected.total},{corrected['p50']},{corrected['p99']},"
            f"{corrected['p999']},{corrected['max']},{uncorrected['p99']}"
        )
    path.write_text("\n".join(lines) + "\n")


def report(result: RateResult, args: argparse.Namespace, arrival: str) -> int:
    """Print, write the files asked for, and return the exit code (shared with merge)."""
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print_text(result, arrival)
    for warning in [] if result.errors else result.warnings():  # errors: the verdict is the one line
        print(f"{args.prog}: warning: {warning}", file=sys.stderr)
    try:
        if args.report is not None:
            from client.report_html import render

            args.report.write_text(render(result))
        if args.hdr_log is not None:
            write_hdr_log(result, args.hdr_log)
    except OSError as error:
        print(f"{args.prog}: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED
    failures = verdict(result, args)
    if failures:
        print(f"{args.prog}: FAIL: {'; '.join(failures)}", file=sys.stderr)
        return EXIT_FAILED
    if any(limit is not None for limit in (args.max_p99, args.max_p999, args.max_error_rate)):
        print(f"{args.prog}: PASS: within every budget", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    try:
        args = options.parse_with_target(build_parser(), COMMAND, argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    args.prog = f"{PROG} {COMMAND}"
    processes = args.processes or max(1, min(os.cpu_count() or 1, math.ceil(args.rate / RATE_PER_PROCESS)))
    spec = RateSpec(
        host=args.host,
        port=args.port,
        rate=args.rate,
        connections=args.connections,
        size=args.size,
        duration_s=args.duration,
        warmup_s=args.warmup,
        arrival=args.arrival,
        timeout_s=args.timeout,
        processes=processes,
    )
    try:
        with EchoClient(args.host, args.port, timeout=args.timeout):
            pass  # one clear line, at once, if the server is not there
        result = run(spec)
    except EchoError as error:
        print(f"{args.prog}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return report(result, args, spec.arrival)
