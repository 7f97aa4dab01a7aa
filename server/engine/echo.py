"""The plain TCP transport: a connection's task on a TCP listener, as a generator run by a Scheduler.

It reads the loop top to bottom like the blocking code it replaces: wait readable,
read what is there, write it back; if the write was partial, keep what is owed and wait
writable until it drains, reading nothing more meanwhile. So a client that never reads
costs at most one buffer's worth (``buffer_size`` bytes), and then the write-stall
deadline.

Per message, the loop's steady state is the scheduler's echo step (waits.py): one
``os.read`` of up to ``buffer_size`` bytes on the socket's descriptor (the one
allocation: the bytes object it returns, freed by the end of the loop turn), one ``os.write`` of it,
two counter updates on the Connection, and no resume of this generator. It is resumed
only at EOF, on a partial write (then what is owed is a view of the bytes read, not a
copy) or with the error either call raised. No lock, clock read, event or log line per
message. Its scheduler folds the Connection's counters into Stats once a second, and
the task folds the rest at close. (The scheduler's shared buffer still serves the
linger after a shutdown's FIN, and TLS.)

A write stall means *no progress* for write_stall_timeout, not "could not flush
everything within it": a slow but steady reader keeps its connection. The kernel only
reports writable once a third of the send buffer is free, which for a slow reader can
take far longer than the timeout; so when the write wait times out, the task asks the
kernel how much it still holds unacknowledged (SIOCOUTQ, Linux) and keeps waiting if
the peer took any of it since the last look. Progress is seen at the peer's window
updates (on loopback, about one per 64 KiB it reads), so a reader slower than one
window update per timeout is a stall. The task looks STALL_CHECKS (4) times per timeout
and closes after that many looks in a row saw no progress: between 1 and 1.25 timeouts
after the peer last took anything. Where the kernel cannot say, a timeout without a
successful send is a stall.

The task is also the connection's pipeline (pipeline.py): it first runs the listener's
steps (PROXY header, banner...) with ``yield from``, then the loop; how it ends is
pipeline.ended_by's mapping and pipeline.finish's accounting, shared with TLS.

How it ends: ``Connection.reason`` (connection.py lists the reasons).

Everything here runs on the connection's scheduler thread only.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios
from collections.abc import Generator

from server.engine.connection import Connection
from server.engine.pipeline import STALL_CHECKS, EchoWaits, Pipeline, ended_by
from server.engine.waits import READ, Shutdown, TaskGen, Wait, WaitTimeout, reset_on_close

# After a shutdown FIN, read and drop what the client still sends until it closes, so
# that closing does not turn into an RST that could destroy echo the client has not yet
# read; but once the peer has acknowledged every byte and our FIN (nothing unsent) and
# sends nothing, there is nothing left to protect: close then, checked every
# LINGER_CHECK_S, so a client that never closes does not hold the stop until the
# scheduler's abort deadline (which still bounds a peer that never reads).
LINGER_CHECK_S = 0.05
_LINGER_WAIT = Wait(READ, LINGER_CHECK_S)
_INT = struct.Struct("i")


def unsent_bytes(sock: socket.socket) -> int | None:
    """Bytes the kernel still holds for the peer (not yet acknowledged), or None."""
    try:
        return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(_INT.size)))[0])
    except (OSError, ValueError):
        return None


def plain_echo(sock: socket.socket, conn: Connection, buffer: memoryview, pipeline: Pipeline) -> TaskGen:
    """The connection's task on a plain TCP listener: the steps, then echo until EOF, a
    deadline, an error or shutdown; then ``pipeline.finish``."""
    waits = pipeline.waits
    echo_wait = waits.echo
    try:
        for step in pipeline.steps:
            yield from step(sock, conn)
        while True:
            try:
                # The scheduler echoes whole messages itself, counting them into conn;
                # this resumes only at EOF or a partial write (waits.py).
                echoed = yield echo_wait
            except WaitTimeout:
                conn.reason = "idle_timeout"
                return
            except Shutdown:
                conn.reason = "shutdown"
                break
            assert echoed is not None, "an echo wait resumes with what it echoed"
            data, sent = echoed
            if not data:
                conn.reason = "eof"
                break
            # The bytes read are this task's own: what is owed is a view, not a copy.
            if not (yield from flush(sock, memoryview(data)[sent:], waits, conn)):
                # Closing with RST makes the kernel drop the echo it still holds.
                reset_on_close(sock)
                return
            conn.bytes_out += len(data)
            if conn.reason == "shutdown":  # arrived while flushing: read no more
                break
        # Graceful end (EOF or shutdown): nothing is owed here, so say we are done.
        yield from half_close(sock, conn, buffer)
    except Exception as error:
        if not ended_by(sock, conn, error):
            raise
    finally:
        pipeline.finish(conn)


def flush(
    sock: socket.socket, owed: bytes | memoryview, waits: EchoWaits, conn: Connection
) -> Generator[Wait, None, bool]:
    """Send ``owed`` in full, waiting writable; False once the peer took nothing for
    write_stall_timeout (see the module docstring). tls_echo's task and the banner step
    flush with it too.

    It looks for progress STALL_CHECKS times per timeout, and gives up after that many
    looks in a row saw none. A Shutdown arriving here changes nothing: what was read is
    still owed. (The scheduler's abort deadline bounds this.) Over TLS (an
    ssl.SSLSocket) a send that wants the socket is retried with the same bytes, as
    OpenSSL requires; one that wants the peer's bytes first waits readable, as a write
    stall all the same.
    """
    send = sock.send
    check = wait = waits.write_check
    view = memoryview(owed)
    held = unsent_bytes(sock)
    quiet = 0  # looks in a row that saw no progress
    while view:
        try:
            yield wait
        except WaitTimeout:
            now_held = unsent_bytes(sock)
            if now_held is not None and held is not None and now_held < held:
                held, quiet = now_held, 0  # slow, not stalled: the peer took some
                continue
            quiet += 1
            if quiet < STALL_CHECKS:
                continue
            conn.reason = "write_stall"
            return False
        except Shutdown:
            conn.reason = "shutdown"
            continue
        try:
            sent = send(view)
        except (BlockingIOError, ssl.SSLWantWriteError):
            wait = check
            continue
        except ssl.SSLWantReadError:
            wait = waits.write_check_wants_read
            continue
        view = view[sent:]
        wait = check
        held, quiet = unsent_bytes(sock), 0
    return True


def half_close(sock: socket.socket, conn: Connection, buffer: memoryview) -> TaskGen:
    """FIN after the last echo; after a shutdown's, read and drop until the client closes
    (see LINGER_CHECK_S). Both transports end a graceful connection with it."""
    try:
        sock.shutdown(socket.SHUT_WR)  # on TLS, after close_notify: reads below are raw
    except OSError:
        return
    if conn.reason == "shutdown":
        yield from discard_until_eof(sock, buffer)


def discard_until_eof(sock: socket.socket, buffer: memoryview) -> TaskGen:
    while True:
        try:
            yield _LINGER_WAIT
        except WaitTimeout:
            if unsent_bytes(sock) == 0:
                return  # the peer holds all of its echo and our FIN
            continue
        try:
            if not sock.recv_into(buffer):
                return
        except BlockingIOError:
            continue
        except OSError:
            return
