"""UdpEchoClient: ``--udp`` for send and ping, one datagram out and the same one back.

    with UdpEchoClient("127.0.0.1", 7007, timeout=1) as client:
        client.echo(b"hello")     # EchoTimeout when no echo came back: a lost datagram

The socket is connected, so the kernel passes an ICMP "port unreachable" on as a
refusal (ConnectFailed) and drops datagrams from any other address. An echo of an
earlier datagram that arrives late is skipped and counted (``late``), never taken for
the current one. One UdpEchoClient belongs to one thread.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from types import TracebackType

from client.dial import open_datagram
from client.errors import ConnectFailed, EchoError, EchoMismatch, EchoTimeout
from client.library import first_difference

MAX_DATAGRAM = 65_507  # the most a UDP datagram carries over IPv4
RECENT = 1024  # earlier payloads remembered, to recognise their late echoes


class UdpEchoClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 7007, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.banner: str | None = None  # UDP echo has none; here so callers treat clients alike
        self.late = 0
        self.target = ""
        self._sock: socket.socket | None = None
        self._recent: deque[bytes] = deque(maxlen=RECENT)

    def connect(self) -> UdpEchoClient:
        self._sock, self.target = open_datagram(self.host, self.port, self.timeout)
        return self

    def __enter__(self) -> UdpEchoClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def echo(self, data: bytes) -> bytes:
        """Send ``data`` as one datagram and wait for it to come back unchanged."""
        if self._sock is None:
            raise EchoError("not connected")
        if len(data) > MAX_DATAGRAM:
            raise EchoError(f"a UDP datagram holds at most {MAX_DATAGRAM} bytes, not {len(data)}")
        deadline = time.monotonic() + self.timeout
        try:
            self._sock.send(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._sock.settimeout(left)
                answer = self._sock.recv(MAX_DATAGRAM + 1)
                if answer == data:
                    self._recent.append(data)
                    return answer
                if answer in self._recent:
                    self.late += 1
                    continue
                offset = first_difference(data, answer)
                raise EchoMismatch(f"the echo differs from what was sent, first at byte {offset}", offset)
        except TimeoutError:
            self._recent.append(data)  # if it comes back later, it is late, not wrong
            raise EchoTimeout(f"no echo from {self.target}/udp within {self.timeout:g} s") from None
        except ConnectionRefusedError:
            raise ConnectFailed(
                f"{self.target}/udp refused the datagram (ICMP port unreachable): is the server's --udp-port open?"
            ) from None
        except OSError as error:
            raise ConnectFailed(f"cannot echo over UDP with {self.target}: {error.strerror or error}") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.timeout)
