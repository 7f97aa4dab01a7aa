"""Interactive mode's relay (``echo-client [HOST] [PORT]``, like nc): stdin goes to the
server, the echo to a callback; at the end of stdin the connection is finished the way
its transport allows, and the rest of the echo still arrives.

    ending = relay(client, sys.stdin.fileno(), on_echo)   # DONE, SERVER_CLOSED or REFUSED

One thread and one selector over stdin and the socket, because a TLS session must not be
read and written from two threads at once. stdin is read only when what it gave last
has been sent (so a server that stops reading holds us, not our memory); a regular
file, which no selector accepts, is simply always readable. At the end of stdin:

  - plain TCP half-closes (FIN) and reads until the server's EOF;
  - TLS cannot half-close and read on here, so it reads until as many bytes came back
    as were sent (an echo server owes exactly that), then sends close_notify and closes.

``on_echo`` returns False to stop (REFUSED). Runs on the caller's thread only.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
from collections.abc import Callable

from client.library import EchoClient

DONE, SERVER_CLOSED, REFUSED = "done", "server closed", "refused"
READ_SIZE = 65536
_STDIN, _SOCKET = "stdin", "socket"


def relay(client: EchoClient, stdin_fd: int, on_echo: Callable[[bytes], bool]) -> str:
    sock = client.sock
    tls = isinstance(sock, ssl.SSLSocket)
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, _SOCKET)
        try:
            selector.register(stdin_fd, selectors.EVENT_READ, _STDIN)
            stdin_selectable = True
        except PermissionError:  # a regular file (epoll refuses those): always readable
            stdin_selectable = False
        stdin_open, outbox, half_closed = True, memoryview(b""), False
        sent = received = 0
        while True:
            if not stdin_open and not outbox:
                if tls and received >= sent:
                    _close_notify(sock)
                    return DONE
                if not tls and not half_closed:
                    client.close_write()
                    half_closed = True
            want_stdin = stdin_open and not outbox
            if stdin_selectable:
                _watch(selector, stdin_fd, want_stdin)
            selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if outbox else 0), _SOCKET)
            ready_now = client.pending() or (want_stdin and not stdin_selectable)
            events = {key.data: mask for key, mask in selector.select(0 if ready_now else None)}
            if want_stdin and (_STDIN in events or not stdin_selectable):
                chunk = os.read(stdin_fd, READ_SIZE)  # what a pipe or terminal has, up to this
                stdin_open = bool(chunk)
                outbox = memoryview(chunk)
            if outbox and events.get(_SOCKET, 0) & selectors.EVENT_WRITE:
                count = client.send_some(outbox)
                outbox, sent = outbox[count:], sent + count
            if events.get(_SOCKET, 0) & selectors.EVENT_READ or client.pending():
                data = client.recv_some(READ_SIZE)
                if data == b"":
                    return DONE if not stdin_open and not outbox else SERVER_CLOSED
                if data:
                    received += len(data)
                    if not on_echo(data):
                        return REFUSED


def _watch(selector: selectors.BaseSelector, fd: int, wanted: bool) -> None:
    registered = fd in selector.get_map()
    if wanted and not registered:
        selector.register(fd, selectors.EVENT_READ, _STDIN)
    elif registered and not wanted:
        selector.unregister(fd)


def _close_notify(sock: socket.socket) -> None:
    """Send our close_notify without waiting for the server's: every echo is in."""
    assert isinstance(sock, ssl.SSLSocket)
    try:
        sock.unwrap()
    except (ssl.SSLError, OSError):
        pass  # sent, or the session is past saying goodbye: closing is all that is left
