"""Addresses and listening sockets: how the server names an address and opens a port.

Pure functions; any thread may call them. ``open_listener`` is called by whoever starts
a server or the admin endpoint, before the sockets are handed to other threads.
"""

from __future__ import annotations

import os
import socket


class ListenError(OSError):
    """A port could not be bound (in use, no such address, no permission)."""


def open_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening TCP socket; '::' is dual-stack where the OS allows it."""
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


def format_address(address: tuple[object, ...]) -> str:
    """ "host:port", or "[host]:port" for IPv6."""
    host = str(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def peer_text(address: tuple[object, ...]) -> tuple[str, str]:
    """(ip, "ip:port") for a peer address; IPv4-mapped IPv6 shown as IPv4."""
    ip = str(address[0])
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ip, format_address((ip, address[1]))
