"""Log analytics: summarize JSON event logs (plain or rotated .gz) on a ProcessPoolExecutor.

    python3 -m server analyze echo.log echo.log.*.gz [--top 10] [--json]

Parsing and aggregating is CPU-bound, so each file is read by a worker process
(``summarize_file``) into a small partial Summary (counters and a log-bucketed
histogram); the parent merges them as their futures complete. Only logs written with
``--log-format json`` can be read: a bad line or field is counted, skipped and summed
up in one line, and the report is still made; a log with no JSON event at all (the
text format) is said in one line, exit 2.

The report: the time span, connections opened and closed, close reasons, rejections
by reason, bytes in and out, connection duration percentiles, and the busiest client
addresses by connections and by bytes. No payload is in the logs, so none is here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from server.observe.histogram import bucket, percentile


@dataclass
class Summary:
    lines: int = 0
    unparsed: int = 0  # lines that are not a JSON object with a string "event"
    bad_fields: Counter[str] = field(default_factory=Counter)  # field name -> values left out
    files_without_events: list[str] = field(default_factory=list)  # had lines, none of them an event
    min_duration_s: float | None = None
    max_duration_s: float | None = None
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
        self.bad_fields.update(other.bad_fields)
        self.files_without_events += other.files_without_events
        if other.min_duration_s is not None:
            self.note_duration(other.min_duration_s)
        if other.max_duration_s is not None:
            self.note_duration(other.max_duration_s)
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

    def note_duration(self, seconds: float) -> None:
        if self.min_duration_s is None or seconds < self.min_duration_s:
            self.min_duration_s = seconds
        if self.max_duration_s is None or seconds > self.max_duration_s:
            self.max_duration_s = seconds

    def _durations(self) -> dict[str, float]:
        low, high = self.min_duration_s or 0.0, self.max_duration_s or 0.0
        figures = {"min": low}
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            # A bucket's middle may lie past the true extremes: keep it within them.
            figures[name] = min(max(percentile(self.durations, fraction), low), high)
        figures["max"] = high
        return {name: round(value, 6) for name, value in figures.items()}

    def report(self, top: int) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "unparsed_lines": self.unparsed,
            "bad_fields": dict(sorted(self.bad_fields.items(), key=lambda item: (-item[1], item[0]))),
            "files_without_events": sorted(self.files_without_events),
            "first": self.first_ts,
            "last": self.last_ts,
            "connections_opened": self.events["opened"],
            "connections_closed": self.events["closed"],
            "close_reasons": dict(self.close_reasons.most_common()),
            "rejected": dict(self.rejected.most_common()),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": self._durations(),
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
            except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
                summary.unparsed += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                yield record
            else:
                summary.unparsed += 1


class _Fields:
    """Typed reads of one record's optional fields; a present but bad value is counted
    in ``summary.bad_fields`` under its name and read as absent."""

    def __init__(self, record: dict[str, Any], summary: Summary) -> None:
        self.record = record
        self.summary = summary

    def _bad(self, name: str) -> None:
        self.summary.bad_fields[name] += 1

    def text(self, name: str) -> str | None:
        value = self.record.get(name)
        if value is None or isinstance(value, str):
            return value
        self._bad(name)
        return None

    def count(self, name: str) -> int | None:
        """A whole number >= 0 (JSON true/false are not numbers here)."""
        value = self.record.get(name)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        self._bad(name)
        return None

    def seconds(self, name: str) -> float | None:
        value = self.record.get(name)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return float(value)
        self._bad(name)
        return None

    def timestamp(self, name: str) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            datetime.fromisoformat(value)
        except ValueError:
            self._bad(name)
            return None
        return value


def summarize_file(path: str) -> Summary:
    """Runs in a worker process: one file -> its partial Summary."""
    summary = Summary()
    for record in _records(path, summary):
        name = record["event"]
        summary.events[name] += 1
        fields = _Fields(record, summary)
        stamp = fields.timestamp("ts")
        if stamp is not None:
            if summary.first_ts is None or stamp < summary.first_ts:
                summary.first_ts = stamp
            if summary.last_ts is None or stamp > summary.last_ts:
                summary.last_ts = stamp
        peer = fields.text("peer") if name in ("opened", "closed") else None
        if name == "opened" and peer is not None:
            summary.connections_by_ip[_ip_of(peer)] += 1
        elif name == "closed":
            summary.close_reasons[fields.text("reason") or "?"] += 1
            received, sent = fields.count("bytes_in") or 0, fields.count("bytes_out") or 0
            summary.bytes_in += received
            summary.bytes_out += sent
            duration = fields.seconds("duration_s")
            if duration is not None:
                summary.durations[bucket(duration)] += 1
                summary.note_duration(duration)
            if peer is not None:
                summary.bytes_by_ip[_ip_of(peer)] += received + sent
        elif name == "rejected":
            summary.rejected[fields.text("reason") or "?"] += fields.count("count") or 1
    if summary.lines and not summary.events:
        summary.files_without_events.append(path)
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
                "duration:    "
                + ", ".join(f"{name} {durations[name] * 1000:,.3f} ms" for name in ("min", "p50", "p90", "p99", "max")),
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
        summary = analyze(args.files, args.workers)
    except (OSError, EOFError, zlib.error) as error:  # unreadable, a truncated or corrupt .gz
        print(f"echo-server analyze: cannot read the logs: {error}", file=sys.stderr)
        return 1
    if not summary.events and summary.files_without_events:
        print(
            f"echo-server analyze: {', '.join(sorted(summary.files_without_events))}: no JSON events "
            "(analyze reads logs written with --log-format json)",
            file=sys.stderr,
        )
        return 2
    report = summary.report(args.top)
    print(json.dumps(report, indent=2) if args.json else _text(report), end="" if not args.json else "\n")
    if skipped := _skipped(summary):
        print(f"echo-server analyze: skipped {skipped}", file=sys.stderr)
    return 0


def _skipped(summary: Summary) -> str:
    """One line on what was left out, or "" if nothing was."""
    parts = []
    if summary.unparsed:
        parts.append(f"{summary.unparsed:,} line(s) that are not JSON events")
    if summary.bad_fields:
        ordered = sorted(summary.bad_fields.items(), key=lambda item: (-item[1], item[0]))
        named = ", ".join(f"{name} {count:,}" for name, count in ordered)
        parts.append(f"{summary.bad_fields.total():,} bad field value(s) ({named})")
    if summary.files_without_events:
        parts.append(f"files with no JSON events: {', '.join(sorted(summary.files_without_events))}")
    return "; ".join(parts)
