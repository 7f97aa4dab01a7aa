"""Other processes' CPU during a measured window: how ``make bench`` tells a noisy row.

    window = NoiseWindow(roots=[os.getpid()]); window.start(); ...; window.stop()
    window.others_cores  # CPU the rest of the machine used, in cores, over the window
    row, discarded = rerun_while_noisy(measure_a_row, threshold_cores=0.1, retries=2)

The machine's busy time comes from /proc/stat (user + nice + system ticks over every CPU);
the bench's own is its process tree's (the bench, its load generator processes and the
server under test, each with the time of the children it reaped), from /proc/PID/stat.
Their difference is what every other process used. Interrupt time (irq, softirq) is left
out on both sides: a kernel that accounts it separately bills loopback TCP's softirq work
to no process, so counting it would blame our own traffic on the neighbours. Steal time
(another virtual machine on the host) is reported beside it, not added.

A row is noisy when others used more than a threshold (NOISY_CORES by default) during its
window; ``rerun_while_noisy`` measures it again, a bounded number of times, and keeps the
first quiet attempt, or the last one, flagged.

Used by loadtest/bench.py: a window from whichever thread calls ``on_window`` (one at a
time), the re-runs from its main thread.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
NOISY_CORES = 0.10  # another process using more than 10% of a core during a window flags the row


def machine_seconds() -> tuple[float, float, float]:
    """(user + nice + system, steal, every state) over every CPU since boot, in seconds."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system) / TICKS, steal / TICKS, sum(fields) / TICKS


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and their descendants living now (children are listed per thread)."""
    pids, index, seen = list(roots), 0, set(roots)
    while index < len(pids):
        try:
            listings = list(Path(f"/proc/{pids[index]}/task").glob("*/children"))
        except OSError:
            listings = []  # the process ended while its threads were listed
        for children in listings:
            try:
                found = [int(child) for child in children.read_text().split()]
            except OSError:
                continue  # the thread or process is gone
            pids += [child for child in found if child not in seen]
            seen.update(found)
        index += 1
    return pids


def tree_seconds(roots: list[int]) -> float:
    """CPU time of every process under ``roots`` (themselves included), with the time of
    the children each has reaped, so a process that ended meanwhile still counts."""
    total = 0.0
    for pid in process_tree(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile: its parent's reaped-children time has it
        total += sum(int(value) for value in fields[11:15]) / TICKS  # utime stime cutime cstime
    return total


class NoiseWindow:
    """CPU used outside the process trees under ``roots`` between ``start`` and ``stop``."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self._started_at = self._machine = self._steal = self._accounted = self._ours = 0.0
        self.seconds = 0.0
        self.ours_cores = 0.0
        self.others_cores: float | None = None  # until stop(): a window never closed is not a quiet one
        self.steal_cores = 0.0

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._machine, self._steal, self._accounted = machine_seconds()
        self._ours = tree_seconds(self.roots)

    def stop(self) -> None:
        ours = tree_seconds(self.roots)
        machine, steal, accounted = machine_seconds()
        self.seconds = max(1e-9, time.monotonic() - self._started_at)
        self.ours_cores = (ours - self._ours) / self.seconds
        self.steal_cores = (steal - self._steal) / self.seconds
        if accounted - self._accounted < 0.5 * self.seconds * (os.cpu_count() or 1):
            return  # the CPUs' own clocks stood still (a paused VM): nothing known, not quiet
        # Never below zero: tick sampling can put a few of ours on the machine's next tick.
        self.others_cores = max(0.0, (machine - self._machine) - (ours - self._ours)) / self.seconds

    def noisy(self, threshold_cores: float = NOISY_CORES) -> bool:
        return self.others_cores is None or self.others_cores > threshold_cores


def rerun_while_noisy(
    measure: Callable[[], dict[str, Any]], threshold_cores: float, retries: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``measure()`` (a row with ``others_cores``) until a quiet one, at most ``retries``
    more times: (the row kept, marked ``noisy`` and numbered ``attempt``; those discarded)."""
    discarded: list[dict[str, Any]] = []
    while True:
        row = measure()
        row["noisy"] = row["others_cores"] is None or row["others_cores"] > threshold_cores
        row["attempt"] = len(discarded)
        if not row["noisy"] or len(discarded) >= retries:
            return row, discarded
        discarded.append(row)
        print(
            f"{row['scenario']:32} {row['server']:22} noisy: others used {row['others_cores'] or 'unknown'} cores; "
            "again",
            file=sys.stderr,
            flush=True,
        )
