"""How ``make bench`` warms every server up alike before a measured window.

Without a warm-up that closes a connection first, an asyncio server measured before its
first connection close pays glibc malloc's mmap + mremap + munmap for its 256 KiB read
buffer on every read: freeing the first such buffer at full size (the read that returns
EOF) is what raises glibc's dynamic mmap threshold. A benchmark that never closes a
connection before measuring measures that artifact, not the design.

Called by loadtest/bench.py on its main thread.
"""

from __future__ import annotations

import os
import socket

from client import loadgen

WARMUP_TIMEOUT_S = 10.0


def echo_and_close(address: tuple[str, int], size: int) -> None:
    """One connection: echo ``size`` bytes, half-close, and read until the server closed it."""
    payload = os.urandom(max(1, size))
    with socket.create_connection(address, timeout=WARMUP_TIMEOUT_S) as sock:
        sock.sendall(payload)
        echoed = bytearray()
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            echoed += chunk
        if bytes(echoed) != payload:
            raise RuntimeError(f"warm-up: echo of {len(payload)} bytes came back as {len(echoed)} different bytes")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the server's FIN: it has seen our EOF and closed its side
            pass


def warm_up(
    address: tuple[str, int], conns: int, size: int, warmup_s: float, processes: int, pipeline: int = 1
) -> None:
    """The same for every server: one connection opened, echoed and closed, then
    ``warmup_s`` seconds of the scenario's busy load, ``conns`` connections echoing
    ``size`` bytes with ``pipeline`` messages in flight on each (they close at the end)."""
    echo_and_close(address, size)
    if warmup_s > 0:
        loadgen.run(
            loadgen.LoadSpec(
                host=address[0],
                port=address[1],
                conns=conns,
                size=size,
                duration_s=warmup_s,
                pipeline=pipeline,
                processes=processes,
                connect_timeout_s=WARMUP_TIMEOUT_S,
            )
        )
