"""Reference echo servers that the benchmark measures echo-service against.

    python -m loadtest.reference_servers KIND [--host H] [--port P]

KIND is one of:
    seed       the design echo-service replaced: ThreadPoolExecutor(128), a thread per
               connection, blocking recv + sendall
    threading  socketserver.ThreadingTCPServer: a new thread per connection
    asyncio    an asyncio Protocol: data_received -> transport.write
    uvloop     the same Protocol on uvloop's loop (libuv in C under asyncio's API): the
               fastest event loop Python has; a development-only dependency of the
               bench, never of the product (the row is skipped where it is missing)
    streams    asyncio streams: await reader.read(), writer.write(), await writer.drain()
    floor      the least a Python event loop can do per message: one thread, select.epoll,
               os.read + os.write, nothing else (no deadlines, no accounting, no partial
               write handling: a fixture, not a server). The interpreter's floor that a
               pure-Python engine's CPU per message is measured against

Each prints ``LISTENING HOST PORT`` once it listens, and runs until killed. All use a
1024 backlog and TCP_NODELAY, like echo-service, so the comparison is of the designs.
They are benchmark fixtures, not products: no limits, no logging.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import socketserver
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

BACKLOG = 1024
CHUNK = 65536


def _ready(sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    print(f"LISTENING {host} {port}", flush=True)


def _blocking_echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := conn.recv(CHUNK):
                conn.sendall(data)
        except OSError:
            pass


def serve_seed(host: str, port: int) -> None:
    listener = socket.create_server((host, port), backlog=BACKLOG)
    _ready(listener)
    with ThreadPoolExecutor(max_workers=128) as pool:
        while True:
            conn, _ = listener.accept()
            pool.submit(_blocking_echo, conn)


class _ThreadingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = BACKLOG


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        _blocking_echo(self.request)


def serve_threading(host: str, port: int) -> None:
    with _ThreadingServer((host, port), _EchoHandler) as server:
        _ready(server.socket)
        server.serve_forever()


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve_asyncio(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, host, port, backlog=BACKLOG)
    _ready(server.sockets[0])
    await server.serve_forever()


async def _stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve_streams(host: str, port: int) -> None:
    server = await asyncio.start_server(_stream_echo, host, port, backlog=BACKLOG)
    _ready(server.sockets[0])
    await server.serve_forever()


def serve_uvloop(host: str, port: int) -> None:
    import uvloop  # a benchmark reference only: pip install uvloop

    uvloop.run(_serve_asyncio(host, port))


def serve_floor(host: str, port: int) -> None:
    import os
    import select

    listener = socket.create_server((host, port), backlog=BACKLOG)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.setblocking(False)
    _ready(listener)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    listening = listener.fileno()
    connections: dict[int, socket.socket] = {}
    owed: dict[int, memoryview] = {}  # what a partial write left, until writable
    read, write = os.read, os.write
    while True:
        for fd, _ in poller.poll():
            if fd == listening:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                connections[conn.fileno()] = conn
                poller.register(conn.fileno(), select.EPOLLIN)
                continue
            try:
                if fd in owed:  # writable: go on with what is owed, read nothing meanwhile
                    rest = owed.pop(fd)
                    rest = rest[write(fd, rest) :]
                    if rest:
                        owed[fd] = rest
                    else:
                        poller.modify(fd, select.EPOLLIN)
                    continue
                data = read(fd, CHUNK)
                if data:
                    try:
                        written = write(fd, data)
                    except BlockingIOError:
                        written = 0
                    if written != len(data):
                        owed[fd] = memoryview(data)[written:]
                        poller.modify(fd, select.EPOLLOUT)
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            owed.pop(fd, None)
            poller.unregister(fd)
            connections.pop(fd).close()


SERVERS: dict[str, Callable[[str, int], None]] = {
    "seed": serve_seed,
    "threading": serve_threading,
    "asyncio": lambda host, port: asyncio.run(_serve_asyncio(host, port)),
    "streams": lambda host, port: asyncio.run(_serve_streams(host, port)),
    "uvloop": serve_uvloop,
    "floor": serve_floor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.reference_servers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        SERVERS[args.kind](args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
