"""The operating-system limits a server starts within: enough file descriptors for
``max_connections``, the kernel's cap on the listen backlog, and refusing new handshakes
on a listener that is about to close. (Opening listeners: lib/net.py, server/listeners.py.)

Called by EchoServer.start() on the thread that starts the server, before any other
thread of the server exists; ``refuse_new_connections`` by the acceptor at the stop.
"""

from __future__ import annotations

import ctypes
import resource
import socket
import struct

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux; Python names it only on some builds
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
# One classic-BPF instruction, "ret #0": keep no byte of any packet, i.e. drop it.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


def refuse_new_connections(listener: socket.socket) -> bool:
    """Make the kernel complete no more handshakes on ``listener`` (Linux): a socket
    filter that drops every packet, so a new SYN goes unanswered (the client retries it,
    and by then finds the port closed: refused, which a balancer retries elsewhere).

    Closing a listener resets the connections the kernel completed since the last
    accept(); with this first, the backlog can be emptied and then closed with nothing
    arriving in between. Only for a listener no other process still accepts on: the
    filter belongs to the socket, not to this process's descriptor. Returns False where
    the OS refuses (then the short race stays)."""
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def accept_new_connections(listener: socket.socket) -> bool:
    """Undo ``refuse_new_connections`` (the ``refuse`` fault ending): handshakes complete
    again, and a client still retrying its SYN gets in. False where the OS refuses."""
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        return False
    return True


def backlog_capped(backlog: int, path: str = SOMAXCONN_PATH) -> str | None:
    """Why the kernel will give a smaller listen backlog than asked, or None."""
    try:
        with open(path) as file:
            cap = int(file.read().strip())
    except (OSError, ValueError):
        return None  # not Linux, or not readable: nothing to say
    if cap >= backlog:
        return None
    return f"listen backlog {backlog} is capped at {cap} by net.core.somaxconn; raise that sysctl for bursts"


def fit_fd_limit(max_connections: int, headroom: int) -> tuple[int, str | None]:
    """Raise the soft RLIMIT_NOFILE to fit max_connections plus ``headroom`` (the
    server's other descriptors) if the hard limit allows; otherwise clamp
    max_connections. Returns the max_connections to use and, if clamped, why."""
    needed = max_connections + headroom
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections, None
    target = needed if hard == resource.RLIM_INFINITY or hard >= needed else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return max_connections, None
    clamped = max(1, target - headroom)
    reason = (
        f"max_connections {max_connections} needs {needed} file descriptors "
        f"({headroom} for the server itself) but "
        f"RLIMIT_NOFILE allows {target}; using max_connections {clamped}"
    )
    return clamped, reason
