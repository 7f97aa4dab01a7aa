"""FaultyServer: a deliberately broken echo server, to prove that checks can fail.

Modes: ``corrupt`` echoes with one byte in each chunk flipped; ``close`` reads the
first chunk and closes without echoing; ``reset`` reads and resets the connection.
A thread per connection; stopping shuts the listener down, which wakes accept().
"""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


class FaultyServer:
    def __init__(self, mode: str) -> None:
        assert mode in ("corrupt", "close", "reset")
        self.mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name=f"faulty-{mode}")

    def __enter__(self) -> FaultyServer:
        self._acceptor.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(10)
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,))
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    if self.mode == "close":
                        return
                    if self.mode == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    corrupted = bytearray(data)
                    corrupted[len(corrupted) // 2] ^= 0xFF
                    conn.sendall(corrupted)
            except OSError:
                return
