"""Prometheus text exposition (format 0.0.4) of a Stats snapshot and process facts.

``render(snapshot, ...)`` is a pure function of its arguments plus what /proc says
about this process; any thread may call it. Names follow Prometheus conventions:
counters end in ``_total``, units are base units (seconds, bytes), labels carry the
reason. Every reason label is always present (0 until it happens) so that rate() and
alerts work from the first scrape.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable

from server import __version__
from server.observe.stats import (
    REJECT_MAX_CONNECTIONS,
    REJECT_PER_IP,
    REJECT_PROXY_PROTOCOL,
    TIMEOUT_REASONS,
    Histogram,
    StatsSnapshot,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLOSE_REASONS = ("eof", "idle_timeout", "write_stall", "reset", "shutdown", "error", "tls_handshake")
UDP_DROP_REASONS = ("source_rate", "global_rate", "source_table_full", "send_failed", "fault_drop", "fault_held_full")
REJECT_REASONS = (REJECT_MAX_CONNECTIONS, REJECT_PER_IP, REJECT_PROXY_PROTOCOL)


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _histogram(name: str, help_text: str, histogram: Histogram) -> list[str]:
    samples: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        samples.append((f'_bucket{{le="{_number(bound)}"}}', cumulative))
    samples.append(('_bucket{le="+Inf"}', histogram.count))
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    lines += [f"{name}{suffix} {_number(value)}" for suffix, value in samples]
    lines += [f"{name}_sum {_number(histogram.total)}", f"{name}_count {histogram.count}"]
    return lines


def render(snapshot: StatsSnapshot, *, ready: bool, draining: bool) -> str:
    s = snapshot
    lines: list[str] = []
    lines += _family("echo_connections_accepted_total", "counter", "Connections admitted.", [("", s.accepted)])
    lines += _family("echo_connections_active", "gauge", "Connections open now.", [("", s.active)])
    lines += _family("echo_connections_active_peak", "gauge", "Most connections open at once.", [("", s.peak_active)])
    lines += _family(
        "echo_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
        [(f'{{reason="{r}"}}', s.closed_by_reason.get(r, 0)) for r in CLOSE_REASONS],
    )
    lines += _family(
        "echo_connections_rejected_total",
        "counter",
        "Connections refused at a limit, by reason.",
        [(f'{{reason="{r}"}}', s.rejected.get(r, 0)) for r in REJECT_REASONS],
    )
    lines += _family(
        "echo_connections_timed_out_total",
        "counter",
        "Connections closed by a deadline, by reason.",
        [(f'{{reason="{r}"}}', s.timed_out.get(r, 0)) for r in sorted(TIMEOUT_REASONS)],
    )
    lines += _family("echo_received_bytes_total", "counter", "Bytes read from clients.", [("", s.bytes_received)])
    lines += _family("echo_sent_bytes_total", "counter", "Bytes echoed to clients.", [("", s.bytes_sent)])
    lines += _listener_lines(s)
    lines += _family("echo_connection_errors_total", "counter", "Connections ended by an error.", [("", s.errors)])
    lines += _family("echo_accept_errors_total", "counter", "accept() calls that failed.", [("", s.accept_errors)])
    lines += _family(
        "echo_log_events_dropped_total",
        "counter",
        "Log events dropped: the log mailbox was full, or the log could not be written.",
        [("", s.log_events_dropped)],
    )
    lines += _histogram("echo_connection_duration_seconds", "How long closed connections lasted.", s.duration_s)
    lines += _histogram("echo_connection_bytes", "Bytes in plus out per closed connection.", s.bytes_per_connection)
    lines += _family("echo_ready", "gauge", "1 while accepting and not draining.", [("", int(ready and not draining))])
    lines += _family("echo_draining", "gauge", "1 while shutting down.", [("", int(draining))])
    lines += _family(
        "echo_build_info",
        "gauge",
        "Version of echo-service and of Python.",
        [(f'{{version="{__version__}",python_version="{platform.python_version()}"}}', 1)],
    )
    lines += _worker_lines(s)
    lines += _process_lines()
    return "\n".join(lines) + "\n"


def _worker_lines(s: StatsSnapshot) -> list[str]:
    """With --workers N (a supervisor's totals.WorkersSnapshot): per-worker series, by
    worker slot (a replacement or a reload's new worker keeps its slot's label). The
    process_* lines that follow are the supervisor's own."""
    rows = getattr(s, "workers", None)
    if rows is None:
        return []
    active: dict[int, int] = {}
    restarts: dict[int, int] = {}
    for row in rows:
        active[row.worker] = active.get(row.worker, 0) + row.active
        restarts[row.worker] = max(restarts.get(row.worker, 0), row.restarts)
    lines: list[str] = []
    lines += _family("echo_workers", "gauge", "Worker processes running (a reload overlaps two).", [("", len(rows))])
    lines += _family(
        "echo_worker_connections_active",
        "gauge",
        "Connections open now, by worker slot.",
        [(f'{{worker="{w}"}}', n) for w, n in sorted(active.items())],
    )
    lines += _family(
        "echo_worker_restarts_total",
        "counter",
        "Workers replaced after exiting unasked, by worker slot.",
        [(f'{{worker="{w}"}}', n) for w, n in sorted(restarts.items())],
    )
    return lines


def _listener_lines(s: StatsSnapshot) -> list[str]:
    """The totals above split by listener (tcp, tls, udp and any other), and UDP's datagrams."""

    streams = tuple(name for name in s.listeners if name != "udp")  # UDP accepts no connections

    def by_listener(key: str, names: tuple[str, ...] = tuple(s.listeners)) -> list[tuple[str, float]]:
        return [(f'{{listener="{n}"}}', s.listeners.get(n, {}).get(key, 0)) for n in names]

    lines: list[str] = []
    lines += _family(
        "echo_listener_connections_accepted_total",
        "counter",
        "Connections admitted, by listener.",
        by_listener("accepted", streams),
    )
    lines += _family(
        "echo_listener_received_bytes_total", "counter", "Bytes read, by listener.", by_listener("bytes_received")
    )
    lines += _family(
        "echo_listener_sent_bytes_total", "counter", "Bytes echoed, by listener.", by_listener("bytes_sent")
    )
    lines += _family(
        "echo_udp_received_datagrams_total", "counter", "UDP datagrams read.", [("", s.udp_datagrams_received)]
    )
    lines += _family("echo_udp_sent_datagrams_total", "counter", "UDP datagrams echoed.", [("", s.udp_datagrams_sent)])
    lines += _family(
        "echo_udp_dropped_datagrams_total",
        "counter",
        "UDP datagrams read and not echoed, by reason.",
        [(f'{{reason="{r}"}}', s.udp_dropped.get(r, 0)) for r in UDP_DROP_REASONS],
    )
    return lines


def _process_lines() -> list[str]:
    """Process facts from /proc (Linux); nothing where /proc is missing."""
    try:
        with open("/proc/self/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as system_stat:
            boot_time = next(int(line.split()[1]) for line in system_stat if line.startswith("btime"))
        with open("/proc/self/status") as status:
            threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
        open_fds = len(os.listdir("/proc/self/fd"))
    except (OSError, StopIteration, IndexError, ValueError):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    page = resource.getpagesize()
    # Fields after the command name, 0-based: utime 11, stime 12, starttime 19, vsize 20, rss 21.
    cpu_seconds = (int(fields[11]) + int(fields[12])) / ticks
    start_time = boot_time + int(fields[19]) / ticks
    soft_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lines: list[str] = []
    lines += _family("process_cpu_seconds_total", "counter", "User and system CPU time.", [("", round(cpu_seconds, 2))])
    lines += _family("process_open_fds", "gauge", "Open file descriptors.", [("", open_fds)])
    lines += _family("process_max_fds", "gauge", "File descriptor limit (soft).", [("", soft_fds)])
    lines += _family("process_threads", "gauge", "OS threads.", [("", threads)])
    lines += _family("process_resident_memory_bytes", "gauge", "Resident memory.", [("", int(fields[21]) * page)])
    lines += _family("process_virtual_memory_bytes", "gauge", "Virtual memory.", [("", int(fields[20]))])
    lines += _family(
        "process_start_time_seconds", "gauge", "Start time, seconds since the epoch.", [("", round(start_time, 2))]
    )
    return lines
