"""EchoClient: a blocking client for an echo server, with errors a user understands.

    with EchoClient("localhost", 7007, timeout=5) as client:
        assert client.echo(b"hello") == b"hello"

``echo`` sends and reads back at the same time (a large payload would otherwise
deadlock against a server that stops reading while it owes echo), and checks every
byte. Every failure is an EchoError subclass whose message says what happened, never
a bare socket traceback. One EchoClient belongs to one thread.
"""

from __future__ import annotations

import selectors
import socket
import time
from types import TracebackType

CHUNK = 256 * 1024


class EchoError(Exception):
    """Anything that went wrong talking to the echo server."""


class ConnectFailed(EchoError):
    """Could not connect: refused, unreachable, or the name does not resolve."""


class EchoTimeout(EchoError):
    """The server did not answer within the timeout."""


class ConnectionReset(EchoError):
    """The server (or something in between) reset the connection."""


class ShortEcho(EchoError):
    """The connection ended before the whole echo came back."""


class EchoMismatch(EchoError):
    """The echo differs from what was sent."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def error_kind(error: OSError) -> str:
    """A socket error in a word: refused, timeout or reset (the connection is gone: ECONNRESET,
    EPIPE); else the system's own text (``No route to host``)."""
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    return error.strerror or type(error).__name__


def first_difference(expected: bytes | bytearray, got: bytes | bytearray) -> int:
    """Index of the first differing byte (or the shorter length)."""
    shorter = min(len(expected), len(got))
    for start in range(0, shorter, CHUNK):  # whole chunks compare in C; bytes only where they differ
        if expected[start : start + CHUNK] != got[start : start + CHUNK]:
            for index in range(start, min(start + CHUNK, shorter)):
                if expected[index] != got[index]:
                    return index
    return shorter


class EchoClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 7007, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connect(self) -> EchoClient:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.gaierror as error:
            raise ConnectFailed(f"cannot resolve {self.host!r}: {error.strerror}") from None
        except ConnectionRefusedError:
            raise ConnectFailed(f"connection to {self.target} refused: is the server running?") from None
        except TimeoutError:
            raise EchoTimeout(f"connecting to {self.target} timed out after {self.timeout:g} s") from None
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {self.target}: {error.strerror or error}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def __enter__(self) -> EchoClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            raise EchoError("not connected")
        return self._sock

    # --- streaming ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise EchoTimeout(f"sending to {self.target} timed out after {self.timeout:g} s") from None
        except (ConnectionResetError, BrokenPipeError):
            raise ConnectionReset(f"{self.target} reset the connection while we were sending") from None

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` of echo; b"" once the server has closed."""
        try:
            return self.sock.recv(max_bytes)
        except TimeoutError:
            raise EchoTimeout(f"no echo from {self.target} within {self.timeout:g} s") from None
        except ConnectionResetError:
            raise ConnectionReset(f"{self.target} reset the connection") from None

    def close_write(self) -> None:
        """Half-close: tell the server we are done sending; its echo can still arrive."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise ConnectionReset(f"cannot half-close the connection to {self.target}: {error.strerror}") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- one verified round trip ------------------------------------------------------

    def echo(self, data: bytes) -> bytes:
        """Send ``data`` and read back exactly as many bytes; raise unless identical."""
        sock = self.sock
        received = bytearray()
        to_send = memoryview(data)
        deadline = time.monotonic() + self.timeout
        sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if to_send else 0))
                while len(received) < len(data):
                    left = deadline - time.monotonic()
                    ready = selector.select(left) if left > 0 else []
                    if not ready:
                        raise EchoTimeout(
                            f"echo from {self.target} timed out after {self.timeout:g} s: "
                            f"{len(received)} of {len(data)} bytes came back"
                        )
                    deadline = time.monotonic() + self.timeout  # progress restarts the clock
                    mask = ready[0][1]
                    if mask & selectors.EVENT_WRITE:
                        to_send = to_send[self._send_some(to_send) :]
                        if not to_send:
                            selector.modify(sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        chunk = self._recv_some(min(CHUNK, len(data) - len(received)))
                        if chunk == b"":
                            raise ShortEcho(
                                f"{self.target} closed the connection after {len(received)} of {len(data)} bytes"
                            )
                        if chunk:
                            received += chunk
        finally:
            sock.settimeout(self.timeout)
        if received != data:
            offset = first_difference(data, received)
            raise EchoMismatch(f"the echo differs from what was sent, first at byte {offset}", offset)
        return bytes(received)

    def _send_some(self, view: memoryview) -> int:
        try:
            return self.sock.send(view[:CHUNK])
        except BlockingIOError:
            return 0
        except (ConnectionResetError, BrokenPipeError):
            raise ConnectionReset(f"{self.target} reset the connection while we were sending") from None

    def _recv_some(self, size: int) -> bytes | None:
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None
        except ConnectionResetError:
            raise ConnectionReset(f"{self.target} reset the connection") from None
