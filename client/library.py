"""EchoClient: a blocking client for an echo server, with errors a user understands.

    with EchoClient("localhost", 7007, timeout=5) as client:
        assert client.echo(b"hello") == b"hello"
    with EchoClient("localhost", 7443, options=DialOptions(tls=TlsSettings(ca="ca.pem"), banner=True)) as client:
        print(client.banner)      # the server's first line, read by client.dial

Connecting (TCP, PROXY header, TLS, banner) is client.dial's; this module is the echo.

``echo`` sends and reads back at the same time (a large payload would otherwise
deadlock against a server that stops reading while it owes echo), and checks every
byte. Every failure is an EchoError subclass whose message says what happened, never
a bare socket traceback. When the echo differs and the server had sent a line of its
own first, the error is UnexpectedBanner, which says what to pass. Over TLS the loops
check ``pending()`` (bytes the TLS layer holds that the socket will not signal) and
treat want-read/want-write as "not yet". One EchoClient belongs to one thread.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from types import TracebackType

from client.dial import (
    BANNER_MAX_BYTES,
    PLAIN,
    DialOptions,
    first_line,
    format_target,
    open_stream,
    shown,
    tls_problem,
)
from client.errors import (
    BadOption,
    BannerError,
    ConnectFailed,
    ConnectionReset,
    EchoError,
    EchoMismatch,
    EchoTimeout,
    ShortEcho,
    UnexpectedBanner,
)

__all__ = [
    "BadOption",
    "BannerError",
    "ConnectFailed",
    "ConnectionReset",
    "EchoClient",
    "EchoError",
    "EchoMismatch",
    "EchoTimeout",
    "ShortEcho",
    "UnexpectedBanner",
]

CHUNK = 256 * 1024
HINT_WAIT_S = 0.5  # how long a mismatch waits for the rest of what may be a banner line


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
    def __init__(
        self, host: str = "127.0.0.1", port: int = 7007, *, timeout: float = 5.0, options: DialOptions = PLAIN
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.options = options
        self.banner: str | None = None  # the server's banner line, once connected with options.banner
        self._sock: socket.socket | None = None
        self._echoed = False  # an echo came back whole: a later mismatch is no banner

    @property
    def target(self) -> str:
        return format_target(self.host, self.port)

    def connect(self) -> EchoClient:
        stream = open_stream(self.host, self.port, self.options, self.timeout)
        self._sock, self.banner = stream.sock, stream.banner
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
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as error:
            raise self._reset(error, " while we were sending") from None

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` of echo; b"" once the server has closed (or ended TLS)."""
        try:
            return self.sock.recv(max_bytes)
        except TimeoutError:
            raise EchoTimeout(f"no echo from {self.target} within {self.timeout:g} s") from None
        except ssl.SSLZeroReturnError:
            return b""
        except (ConnectionResetError, ssl.SSLError) as error:
            raise self._reset(error) from None

    def close_write(self) -> None:
        """Half-close: tell the server we are done sending; its echo can still arrive.
        Plain TCP only: a TLS session cannot be half-closed and then read on here."""
        if isinstance(self.sock, ssl.SSLSocket):
            raise EchoError("a TLS connection cannot be half-closed by this client")
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise ConnectionReset(f"cannot half-close the connection to {self.target}: {error.strerror}") from None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reset(self, error: OSError, doing: str = "") -> ConnectionReset:
        if isinstance(error, ssl.SSLError):  # e.g. the alert of a server that wanted a client certificate
            message = f"TLS: {self.target} ended the session{doing}: {tls_problem(error)}"
        else:
            message = f"{self.target} reset the connection{doing}"
        tls = self.options.tls
        if tls is not None and tls.cert is None and not self._echoed and "client certificate" not in message:
            # TLS 1.3 ends the handshake before the server checks for a certificate: its alert
            # races our first write, which may see only the close.
            message += " (right after the handshake: does the server want a client certificate? pass --cert and --key)"
        return ConnectionReset(message)

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
                    if self.pending():
                        mask = selectors.EVENT_READ  # already decrypted: the socket will not say so
                    else:
                        left = deadline - time.monotonic()
                        ready = selector.select(left) if left > 0 else []
                        if not ready:
                            raise EchoTimeout(
                                f"echo from {self.target} timed out after {self.timeout:g} s: "
                                f"{len(received)} of {len(data)} bytes came back"
                            )
                        deadline = time.monotonic() + self.timeout  # progress restarts the clock
                        mask = ready[0][1]
                    if mask & selectors.EVENT_WRITE and to_send:
                        to_send = to_send[self.send_some(to_send) :]
                        if not to_send:
                            selector.modify(sock, selectors.EVENT_READ)
                    if mask & selectors.EVENT_READ:
                        chunk = self.recv_some(min(CHUNK, len(data) - len(received)))
                        if chunk == b"":
                            raise ShortEcho(
                                f"{self.target} closed the connection after {len(received)} of {len(data)} bytes"
                            )
                        if chunk:
                            received += chunk
            if received != data:
                offset = first_difference(data, received)
                raise self._unexpected_banner(received, offset) or EchoMismatch(
                    f"the echo differs from what was sent, first at byte {offset}", offset
                )
        finally:
            sock.settimeout(self.timeout)
        self._echoed = True
        return bytes(received)

    # --- non-blocking steps (the socket must be non-blocking), for echo and client.interactive

    def pending(self) -> bool:
        """TLS holds decrypted bytes: read them without waiting for the socket."""
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def _unexpected_banner(self, received: bytearray, offset: int) -> UnexpectedBanner | None:
        """If this is the connection's first echo and it begins with a line of text the
        client was not told to expect, the error that says so. Reads what else arrives
        (briefly, non-blocking) to see the whole line."""
        if self.options.reads_banner or self._echoed:
            return None
        head = bytearray(received[:BANNER_MAX_BYTES])
        deadline = time.monotonic() + min(self.timeout, HINT_WAIT_S)
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while b"\n" not in head and len(head) < BANNER_MAX_BYTES:
                left = deadline - time.monotonic()
                if not self.pending() and (left <= 0 or not selector.select(left)):
                    break
                try:
                    chunk = self.recv_some(BANNER_MAX_BYTES - len(head))
                except EchoError:
                    break
                if chunk == b"":
                    break
                head += chunk or b""
        line = first_line(bytes(head))
        if line is None or offset > head.index(b"\n"):
            return None
        flag, expect_flag = self.options.banner_flags
        return UnexpectedBanner(
            f"the echo differs from what was sent, first at byte {offset}: the server sent a line of its own "
            f"first ({shown(line)}), as a server run with --banner does; pass {flag} to skip it "
            f"(or {expect_flag} REGEX to check it)",
            offset,
            line,
        )

    def send_some(self, view: memoryview) -> int:
        """Bytes of ``view`` sent (0: not yet; over TLS, retry with the same bytes)."""
        try:
            return self.sock.send(view[:CHUNK])
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0  # TLS retries the same bytes, as OpenSSL requires: the view has not moved
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as error:
            raise self._reset(error, " while we were sending") from None

    def recv_some(self, size: int) -> bytes | None:
        """Up to ``size`` bytes; None: nothing yet; b"": the server closed (or ended TLS)."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except ssl.SSLZeroReturnError:
            return b""
        except (ConnectionResetError, ssl.SSLError) as error:
            raise self._reset(error) from None
