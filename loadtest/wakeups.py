"""Wake-ups per accepted connection for N processes sharing one listening socket.

    python3 -m loadtest.wakeups          # N = 2 and N = 8, with and without ACCEPT
    measure(workers=8, connections=500, exclusive=True) -> Wakeups

Each process (loadtest/accept_worker.py) runs a Scheduler whose one task waits on the
shared listener (ACCEPT: EPOLLEXCLUSIVE, or plain READ) and accepts what it finds.
Connections are made one at a time, each waited for (the server closes it), so each is
its own wake-up, and every process is idle when it arrives (the case where the first
exclusive waiter would take them all, but for the scheduler's re-queueing). Counted: the
task's wake-ups (user space) and the processes' voluntary context switches (the kernel's
wake-ups: a woken process that finds nothing is put back to sleep by the kernel, and
counts only there).
"""

from __future__ import annotations

import multiprocessing
import socket
from dataclasses import dataclass
from pathlib import Path

from loadtest.accept_worker import serve


@dataclass(frozen=True)
class Wakeups:
    workers: int
    exclusive: bool
    accepted: int
    task_wakeups: int
    context_switches: int
    spread: tuple[int, ...]  # connections accepted by each process

    @property
    def per_accept(self) -> float:
        return self.context_switches / max(self.accepted, 1)


def _switches(pid: int | None) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def measure(workers: int, connections: int, exclusive: bool) -> Wakeups:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["loadtest.accept_worker"])
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    address = listener.getsockname()[:2]
    children = []
    try:
        for _ in range(workers):
            stop_here, stop_there = socket.socketpair()
            report, report_there = ctx.Pipe(duplex=False)
            child = ctx.Process(target=serve, args=(listener, exclusive, stop_there, report_there))
            child.start()
            stop_there.close()
            report_there.close()
            children.append((child, stop_here, report))
        for _, _, report in children:
            assert report.poll(30) and report.recv() == b"ready"
        before = sum(_switches(child.pid) for child, _, _ in children)
        for _ in range(connections):
            with socket.create_connection(address, timeout=10) as conn:
                assert conn.recv(1) == b""  # accepted and closed: the next one is its own event
        switched = sum(_switches(child.pid) for child, _, _ in children) - before
        for _, stop_here, _ in children:
            stop_here.send(b"x")
        counts = []
        for child, _, report in children:
            assert report.poll(30)
            counts.append(report.recv())
            child.join(10)
    finally:
        for child, stop_here, report in children:
            if child.is_alive():
                child.kill()
                child.join(10)
            stop_here.close()
            report.close()
        listener.close()
    accepted = tuple(c[1] for c in counts)
    return Wakeups(workers, exclusive, sum(accepted), sum(c[0] for c in counts), switched, accepted)


def main() -> int:
    for workers in (2, 8):
        for exclusive in (False, True):
            w = measure(workers, 500, exclusive)
            wait = "ACCEPT (EPOLLEXCLUSIVE)" if exclusive else "READ"
            print(
                f"N={workers} {wait}: {w.accepted} accepted, {w.task_wakeups} task wake-ups, "
                f"{w.context_switches} process wake-ups: {w.per_accept:.2f} per accept; "
                f"accepted by each: {', '.join(map(str, w.spread))}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
