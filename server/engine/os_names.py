"""Names the kernel shows for this process and its threads (``ps``, ``top -H``).

Linux keeps a 15-byte name ("comm") per thread; the process's is its main thread's.
``ps -o comm``, ``ps -e``, ``top`` and ``pgrep`` show it; ``ps aux`` and ``ps -ef`` show
the command line instead, which the standard library cannot change. Names are written
to /proc (no ctypes, no privilege); elsewhere, or if /proc is read-only, nothing changes.

Threads: ``name_process`` from any thread (it names the main thread); ``name_thread``
names the thread that calls it.
"""

from __future__ import annotations

COMM_BYTES = 15  # the kernel keeps this many; the rest is cut


def _write(path: str, name: str) -> bool:
    try:
        with open(path, "w", encoding="ascii", errors="replace") as comm:
            comm.write(name[:COMM_BYTES])
        return True
    except OSError:
        return False


def name_process(name: str) -> bool:
    """Show this process as ``name`` (at most 15 characters). False if not possible."""
    return _write("/proc/self/comm", name)


def name_thread(name: str) -> bool:
    """Show the calling thread as ``name`` (at most 15 characters) in ``top -H``."""
    return _write("/proc/thread-self/comm", name)
