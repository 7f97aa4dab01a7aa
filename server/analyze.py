"""Log analytics: summarize JSON event logs (plain or rotated .gz) on a ProcessPoolExecutor.

    python3 -m server analyze echo.log echo.log.*.gz [--top 10] [--json]

Parsing and aggregating is CPU-bound, so each file is read by a worker process
(``summarize_file``) into a small partial Summary (counters and a log-bucketed
histogram); the parent merges them as their futures complete. Only logs written with
``--log-format json`` can be read; other lines are counted as unparsed, never fatal.

The report: the time span, connections opened and closed, close reasons, rejections
by reason, bytes in and out, connection duration percentiles, and the busiest client
addresses by connections and by bytes. No payload is in the logs, so none is here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import IO, Any

from server.histogram import bucket, percentile


@dataclass
class Summary:
    lines: int = 0
    unparsed: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    events: Counter[str] = field(default_factory=Counter)
    close_reasons: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    durations: Counter[int] = field(default_factory=Counter)
    connections_by_ip: Counter[str] = field(default_factory=Counter)
    bytes_by_ip: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Summary) -> None:
        self.lines += other.lines
        self.unparsed += other.unparsed
        stamps = [t for t in (self.first_ts, other.first_ts) if t]
        self.first_ts = min(stamps) if stamps else None
        stamps = [t for t in (self.last_ts, other.last_ts) if t]
        self.last_ts = max(stamps) if stamps else None
        self.events.update(other.events)
        self.close_reasons.update(other.close_reasons)
        self.rejected.update(other.rejected)
        self.durations.update(other.durations)
        self.connections_by_ip.update(other.connections_by_ip)
        self.bytes_by_ip.update(other.bytes_by_ip)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out

    def report(self, top: int) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "unparsed_lines": self.unparsed,
            "first": self.first_ts,
            "last": self.last_ts,
            "connections_opened": self.events["opened"],
            "connections_closed": self.events["closed"],
            "close_reasons": dict(self.close_reasons.most_common()),
            "rejected": dict(self.rejected.most_common()),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": {
                name: round(percentile(self.durations, q), 6)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
            "top_clients_by_connections": dict(self.connections_by_ip.most_common(top)),
            "top_clients_by_bytes": dict(self.bytes_by_ip.most_common(top)),
            "events": dict(self.events.most_common()),
        }


def _ip_of(peer: str) -> str:
    host = peer.rpartition(":")[0]
    return host.strip("[]") or peer


def _open(path: str) -> IO[str]:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _records(path: str, summary: Summary) -> Iterator[dict[str, Any]]:
    with _open(path) as lines:
        for line in lines:
            summary.lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                summary.unparsed += 1
                continue
            if isinstance(record, dict) and "event" in record:
                yield record
            else:
                summary.unparsed += 1


def summarize_file(path: str) -> Summary:
    """Runs in a worker process: one file -> its partial Summary."""
    summary = Summary()
    for record in _records(path, summary):
        name = record["event"]
        summary.events[name] += 1
        stamp = record.get("ts")
        if isinstance(stamp, str):
            if summary.first_ts is None or stamp < summary.first_ts:
                summary.first_ts = stamp
            if summary.last_ts is None or stamp > summary.last_ts:
                summary.last_ts = stamp
        if name == "opened" and "peer" in record:
            summary.connections_by_ip[_ip_of(str(record["peer"]))] += 1
        elif name == "closed":
            summary.close_reasons[str(record.get("reason", "?"))] += 1
            received, sent = int(record.get("bytes_in", 0)), int(record.get("bytes_out", 0))
            summary.bytes_in += received
            summary.bytes_out += sent
            summary.durations[bucket(float(record.get("duration_s", 0.0)))] += 1
            if "peer" in record:
                summary.bytes_by_ip[_ip_of(str(record["peer"]))] += received + sent
        elif name == "rejected":
            summary.rejected[str(record.get("reason", "?"))] += int(record.get("count", 1))
    return summary


def analyze(paths: Sequence[str], workers: int | None = None) -> Summary:
    """Summarize every file, in parallel, merged in the order they finish."""
    total = Summary()
    workers = max(1, min(workers or os.cpu_count() or 1, len(paths)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(summarize_file, path) for path in paths]):
            total.merge(future.result())
    return total


def _text(report: dict[str, Any]) -> str:
    def pairs(mapping: dict[str, Any]) -> str:
        return ", ".join(f"{key} {value:,}" for key, value in mapping.items()) or "none"

    durations = report["duration_s"]
    return (
        "\n".join(
            [
                f"span:        {report['first']} .. {report['last']}  ({report['lines']:,} lines, "
                f"{report['unparsed_lines']:,} not JSON events)",
                f"connections: {report['connections_opened']:,} opened, {report['connections_closed']:,} closed",
                f"closed by:   {pairs(report['close_reasons'])}",
                f"rejected:    {pairs(report['rejected'])}",
                f"bytes:       {report['bytes_in']:,} in, {report['bytes_out']:,} out",
                f"duration:    p50 {durations['p50'] * 1000:.3f} ms, p90 {durations['p90'] * 1000:.3f} ms, "
                f"p99 {durations['p99'] * 1000:.3f} ms, max {durations['max'] * 1000:.3f} ms",
                f"top clients: {pairs(report['top_clients_by_connections'])}",
                f"by bytes:    {pairs(report['top_clients_by_bytes'])}",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="echo-server analyze",
        description="Summarize JSON event logs (--log-format json; rotated .gz files too) using worker processes.",
    )
    parser.add_argument("files", nargs="+", help="log files, plain or .gz")
    parser.add_argument("--top", type=int, default=10, help="client addresses to list (10)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (one per CPU)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    missing = [path for path in args.files if not os.path.isfile(path)]
    if missing:
        print(f"echo-server analyze: no such file: {missing[0]}", file=sys.stderr)
        return 2
    try:
        report = analyze(args.files, args.workers).report(args.top)
    except (OSError, EOFError) as error:  # unreadable, or a truncated .gz
        print(f"echo-server analyze: cannot read the logs: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else _text(report), end="" if not args.json else "\n")
    return 0
