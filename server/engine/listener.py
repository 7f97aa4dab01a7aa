"""The operating-system resources the server starts from: its listening socket and
enough file descriptors for ``max_connections``.

Called by EchoServer.start() on the thread that starts the server, before any other
thread of the server exists.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import resource
import socket
import struct

from server.config import Config

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux; Python names it only on some builds
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
# One classic-BPF instruction, "ret #0": keep no byte of any packet, i.e. drop it.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


class ListenError(OSError):
    """The echo port could not be bound (in use, no such address, no permission)."""


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket; '::' is dual-stack where the OS allows it."""
    try:
        if host == "::" and socket.has_dualstack_ipv6():
            sock = socket.create_server((host, port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True)
        else:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((host, port), family=family, backlog=backlog)
    except socket.gaierror as error:
        raise ListenError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ListenError(error.errno, f"cannot listen on {host}:{port}: {reason}") from None
    sock.setblocking(False)
    return sock


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


def format_address(address: tuple[object, ...]) -> str:
    """ "host:port", or "[host]:port" for IPv6."""
    host = str(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


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


def fit_fd_limit(config: Config, headroom: int) -> tuple[Config, str | None]:
    """Raise the soft RLIMIT_NOFILE to fit max_connections plus ``headroom`` (the
    server's other descriptors) if the hard limit allows; otherwise clamp
    max_connections. Returns the config to use and, if clamped, why."""
    needed = config.max_connections + headroom
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return config, None
    target = needed if hard == resource.RLIM_INFINITY or hard >= needed else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return config, None
    clamped = max(1, target - headroom)
    reason = (
        f"max_connections {config.max_connections} needs {needed} file descriptors "
        f"({headroom} for the server itself) but "
        f"RLIMIT_NOFILE allows {target}; using max_connections {clamped}"
    )
    return dataclasses.replace(config, max_connections=clamped), reason
