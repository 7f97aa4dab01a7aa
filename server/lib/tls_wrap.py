"""wrap_socket that leaves no orphan: the server's hand-off, echo-client and tests' tls_client.

CPython's ``SSLContext.wrap_socket`` detaches the socket it is given, then checks the
peer (``getpeername``, and a ``recv(1)`` when that says not connected). When the peer
reset in between, it raises from that check and drops the SSLSocket it made, which now
owns the descriptor: nobody holds it, and only the garbage collector closes it (with a
ResourceWarning). ``wrap`` closes that SSLSocket before the error goes on.

A pure function of its arguments: any thread.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any


def wrap(context: ssl.SSLContext, sock: socket.socket, **options: Any) -> ssl.SSLSocket:
    """``context.wrap_socket(sock, **options)``; on an error, nothing of it left open."""
    try:
        return context.wrap_socket(sock, **options)
    except OSError as error:
        close_orphan(error)
        raise


def close_orphan(error: BaseException) -> None:
    """Close the SSLSocket a failed wrap made and dropped (found in the error's frames)."""
    trace = error.__traceback__
    while trace is not None:
        made = trace.tb_frame.f_locals.get("self")
        if isinstance(made, ssl.SSLSocket):
            made.close()
            return
        trace = trace.tb_next
