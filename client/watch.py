"""``echo-client watch``: long-lived connections probed at an interval; every disruption
one line the moment it ends, a summary at the end, an exit code for pipelines.

    echo-client watch HOST PORT --connections 8 --interval 50ms --max-latency 250ms
        [--reconnect] [--banner] [--duration 10m] [--json] [--max-gap 0] [--min-success 0.999]

The probing is client.watch_probe (a thread per connection); this module parses the
command, starts the probers, and on the main thread prints each gap as its Prober
reports it, then the summary (after --duration, or at SIGINT/SIGTERM). Exit codes: 0 no
gap longer than --max-gap and the success rate at least --min-success; 1 otherwise, or
the server could not be reached at the start; 2 bad arguments; 130 a second SIGINT.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from client import options
from client.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, UsageError
from client.library import EchoClient, EchoError
from client.watch_probe import Gap, ProbeCounts, Prober, WatchSpec

COMMAND = "watch"
JOIN_S = 5.0  # each prober sees the stop within an interval or 0.5 s


class _Stop(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler: end the watch now."""


def build_parser() -> argparse.ArgumentParser:
    parser = options.target_parser(
        COMMAND,
        "Hold connections open and probe each at an interval; print every disruption (gap) with its "
        "cause and the replica before and after, then a summary. Exit 1 if a gap exceeds --max-gap.",
    )
    parser.add_argument(
        "--connections", type=options.whole_number(1, 10_000, "connections"), default=8, help="connections (8)"
    )
    parser.add_argument("--interval", type=options.positive_duration, default=0.05, help="between probes (50ms)")
    parser.add_argument(
        "--max-latency", type=options.positive_duration, default=0.25, help="a slower echo is a gap (250ms)"
    )
    parser.add_argument("--size", type=options.whole_number(1, 65536, "bytes"), default=16, help="probe bytes (16)")
    parser.add_argument("--reconnect", action="store_true", help="re-open a broken connection, timing the outage")
    parser.add_argument(
        "--banner", action="store_true", help="read the first line as the replica's name (server --banner '{hostname}')"
    )
    parser.add_argument("--duration", type=options.positive_duration, help="then stop (default: until Ctrl-C)")
    parser.add_argument("--json", action="store_true", help="one JSON object per gap and for the summary")
    parser.add_argument(
        "--max-gap", type=options.non_negative_duration, default=0.0, help="longest gap that passes (0: none)"
    )
    parser.add_argument("--min-success", type=options.fraction, default=0.0, help="least share of good probes (0)")
    return parser


def _clock(moment: float | None, wall_offset: float) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment + wall_offset, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gap_record(gap: Gap, wall_offset: float) -> dict[str, Any]:
    duration = gap.duration_s
    return {
        "conn": gap.conn,
        "start": _clock(gap.start, wall_offset),
        "end": _clock(gap.end, wall_offset),
        "duration_s": None if duration is None else round(duration, 4),
        "cause": gap.cause,
        "replica_before": gap.replica_before,
        "replica_after": gap.replica_after,
        "failed_probes": gap.failed_probes,
    }


def gap_line(record: dict[str, Any]) -> str:
    replicas = f"; replica {record['replica_before']} -> {record['replica_after']}" if record["replica_before"] else ""
    if record["end"] is None:
        return f"conn {record['conn']}: gap ({record['cause']}) since {record['start']}, not over{replicas}"
    return (
        f"conn {record['conn']}: {record['duration_s']:.3f} s gap ({record['cause']}) "
        f"{record['start']} -> {record['end']}{replicas}"
    )


class Tally:
    """The summary, built on the main thread from what the probers report."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.good = self.failed = 0
        self.causes: Counter[str] = Counter()
        self.longest_s = 0.0
        self.unended = 0

    def add_counts(self, counts: ProbeCounts) -> None:
        self.good += counts[1]
        self.failed += counts[2]

    def add_gap(self, gap: Gap) -> None:
        self.causes[gap.cause] += 1
        if gap.duration_s is None:
            self.unended += 1
        else:
            self.longest_s = max(self.longest_s, gap.duration_s)

    def summary(self, elapsed_s: float, max_gap_s: float, min_success: float) -> dict[str, Any]:
        probes = self.good + self.failed
        success = self.good / probes if probes else 0.0
        failures = []
        if self.unended:
            failures.append(f"{self.unended} gap(s) not over at the end")
        if self.longest_s > max_gap_s:
            failures.append(f"longest gap {self.longest_s:.3f} s > --max-gap {max_gap_s:g} s")
        if success < min_success:
            failures.append(f"success rate {success:.4%} < --min-success {min_success:.4%}")
        return {
            "summary": True,
            "duration_s": round(elapsed_s, 3),
            "connections": self.connections,
            "probes": probes,
            "good_probes": self.good,
            "success_rate": round(success, 6),
            "gaps": sum(self.causes.values()),
            "gaps_by_cause": dict(sorted(self.causes.items())),
            "gaps_not_over": self.unended,
            "longest_gap_s": round(self.longest_s, 4),
            "verdict": "FAIL: " + "; ".join(failures) if failures else "PASS",
        }


def main(argv: Sequence[str]) -> int:
    try:
        args = options.parse_with_target(build_parser(), COMMAND, argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    prog = f"{PROG} {COMMAND}"
    spec = WatchSpec(
        host=args.host,
        port=args.port,
        interval_s=args.interval,
        max_latency_s=args.max_latency,
        size=args.size,
        reconnect=args.reconnect,
        banner=args.banner,
        connect_timeout_s=args.timeout,
    )
    try:
        with EchoClient(args.host, args.port, timeout=args.timeout):
            pass  # one clear line, at once, if the server is not there at the start
    except EchoError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return _watch(spec, args, prog)


def _watch(spec: WatchSpec, args: argparse.Namespace, prog: str) -> int:
    reports: queue.Queue[Gap | ProbeCounts] = queue.Queue()
    stop = threading.Event()
    probers = [Prober(index, spec, reports, stop) for index in range(args.connections)]
    tally = Tally(args.connections)
    wall_offset = time.time() - time.monotonic()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    ends_at = None if args.duration is None else started + args.duration

    def take(item: Gap | ProbeCounts) -> None:
        if isinstance(item, tuple):
            tally.add_counts(item)
            return
        tally.add_gap(item)
        record = gap_record(item, wall_offset)
        print(json.dumps(record) if args.json else gap_line(record), flush=True)

    try:
        try:
            for prober in probers:
                prober.thread.start()
            while ends_at is None or (left := ends_at - time.monotonic()) > 0:
                try:
                    take(reports.get(timeout=None if ends_at is None else left))
                except queue.Empty:
                    break
        except _Stop:
            pass
        stop.set()
        for prober in probers:
            prober.thread.join(JOIN_S)
        while True:
            try:
                take(reports.get_nowait())
            except queue.Empty:
                break
    except _Stop:
        return 130  # a second signal while finishing
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = tally.summary(time.monotonic() - started, args.max_gap, args.min_success)
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        causes = ", ".join(f"{cause} {count}" for cause, count in summary["gaps_by_cause"].items()) or "none"
        print(
            f"{summary['connections']} connections, {summary['probes']:,} probes, "
            f"success {summary['success_rate']:.4%}, {summary['gaps']} gap(s) ({causes}), "
            f"longest {summary['longest_gap_s']:.3f} s",
            flush=True,
        )
    print(f"{prog}: {summary['verdict']}", file=sys.stderr)
    return EXIT_OK if summary["verdict"] == "PASS" else EXIT_FAILED
