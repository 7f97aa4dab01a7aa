"""WorkerProcess: the supervisor's handle on one worker process and its two pipes.

``spawn`` starts ``worker.main`` in a fresh interpreter (multiprocessing's spawn
context), handing it the supervisor's listeners (listeners.py: one tuple), the shared limits and the child's ends of
two one-way pipes; the parent then closes its copies of the child's ends, so that the
up pipe reaches its end when the worker exits and the down pipe's end tells the worker
that the supervisor is gone.

The supervisor never blocks on a worker: the up pipe's read end is non-blocking and a
``FrameReader`` takes whatever bytes are there, keeping a partial frame until the rest
comes. A worker stopped or frozen mid-frame (SIGSTOP, a debugger, a full disk under its
log) delays nobody: not another worker's restart, a reload or the stop.

Threads: only the supervisor's monitor thread uses a WorkerProcess.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from server.config import Config
from server.listeners import Listener
from server.workers.shared_limits import SharedLimits
from server.workers.worker import DRAIN, FAULTS, HAND_OVER, WATCH, WorkerSpec
from server.workers.worker import main as worker_main

log = logging.getLogger("echo.supervisor")

JOIN_S = 1.0  # waiting for an exited process's status (its sentinel said it is gone)
READ_BUDGET = 1 << 20  # bytes taken from one worker per wake-up, so that none starves the others
MAX_FRAME = 16 << 20  # a longer frame is a broken pipe, not a message
_HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header: the length


class FrameError(Exception):
    """The up pipe carried something that is not a frame: the worker is cut off."""


class FrameReader:
    """multiprocessing.Connection's frames (a 4-byte big-endian length, then a pickle)
    from a non-blocking file descriptor, however the bytes arrive. Never blocks."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = bytearray()
        self.ended = False

    def read(self) -> list[Any]:
        """The messages of every frame complete so far (``ended`` set at the pipe's end).
        Raises FrameError on a frame no worker sends (negative, or over MAX_FRAME)."""
        taken = 0
        while taken < READ_BUDGET and not self.ended:
            try:
                chunk = os.read(self._fd, 65_536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.ended = True
            taken += len(chunk)
            self._buffer += chunk
        return self._frames()

    def _frames(self) -> list[Any]:
        buffer = self._buffer
        messages: list[Any] = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, start)
            if length < 0 or length > MAX_FRAME:
                raise FrameError(f"a frame of {length} bytes")
            end = start + _HEADER.size + length
            if len(buffer) < end:
                break
            messages.append(pickle.loads(buffer[start + _HEADER.size : end]))
            start = end
        del buffer[:start]
        return messages


def exit_status(code: int | None) -> str:
    """'exit 0', 'exit 1', 'killed by SIGKILL', or 'unknown'."""
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class WorkerProcess:
    def __init__(self, process: Any, index: int, generation: int, row: int, uplink: Pipe, control: Pipe) -> None:
        self.process = process
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.index = index
        self.generation = generation
        self.row = row
        self.uplink = uplink  # read end (non-blocking: read through ``_frames`` only)
        self._frames = FrameReader(uplink.fileno())
        self._control = control  # write end
        self.ready = False
        self.draining = False
        self.replacing_at: float | None = None  # monotonic time of the death it replaces
        # Liveness (monitor.py): when it was last heard, its loop stalled longest then.
        self.heard_at = time.monotonic()
        self.stalled_loop = ""
        self.stalled_s = 0.0
        self.hung_at: float | None = None  # SIGABRT sent; SIGKILL follows after a grace
        self.drained_at: float | None = None

    @classmethod
    def spawn(
        cls,
        ctx: Any,
        index: int,
        generation: int,
        config: Config,
        listeners: tuple[Listener, ...],
        limits: SharedLimits,
        row: int,
        *,
        log_lines: bool = False,
        faults: dict[str, Any] | None = None,
    ) -> WorkerProcess:
        up_r, up_w = ctx.Pipe(duplex=False)
        down_r, down_w = ctx.Pipe(duplex=False)
        spec = WorkerSpec(index, generation, config, listeners, limits, row, up_w, down_r, log_lines, faults)
        process = ctx.Process(target=worker_main, args=(spec,), name=f"echo-worker-{index}", daemon=True)
        try:
            process.start()
        finally:
            up_w.close()
            down_r.close()
        os.set_blocking(down_w.fileno(), False)  # a stopped worker's full pipe: the send fails, not waits
        return cls(process, index, generation, row, up_r, down_w)

    def receive(self) -> list[tuple[Any, ...]] | None:
        """The messages that have arrived whole (never waits), or None once the worker's
        pipe has ended (or carried garbage) and everything before that was taken."""
        if self.uplink.closed:
            return None
        try:
            batches = self._frames.read()
        except FrameError as error:
            log.error("worker %d sent %s up its pipe: no longer reading it", self.index, error)
            return None
        if not batches and self._frames.ended:
            return None
        return [message for batch in batches for message in batch]

    def ask(self, message: tuple[Any, ...]) -> bool:
        """Send a /connections question down the control pipe; False if it could not go."""
        if self.draining:
            return False
        try:
            self._control.send(message)
        except OSError:
            return False
        return True

    def watch(self, watched: bool) -> None:
        """Tell the worker whether to send its events too (beside their log lines)."""
        try:
            self._control.send((WATCH, watched))
        except OSError:
            pass  # gone, or a stopped worker's full pipe: it is replaced or drained anyway

    def drain(self, *, hand_over: bool = False) -> None:
        """Ask the worker to stop accepting and drain (idempotent). ``hand_over`` (a
        reload): the connections queued on the listeners are the next generation's."""
        if self.draining:
            return
        self.draining = True
        self.drained_at = time.monotonic()
        try:
            self._control.send(HAND_OVER if hand_over else DRAIN)
        except OSError:
            pass  # already gone: its sentinel will say so

    def hung(self, now: float, limit_s: float, drain_bound_s: float | None) -> str | None:
        """Why this worker counts as hung at ``now`` (None: it does not): a loop stalled,
        or nothing heard, for ``limit_s`` (0: never); or, while draining, still alive
        ``limit_s`` past ``drain_bound_s`` after its drain (None: the stop's own kill
        deals with it). It sends no snapshots while it drains."""
        if limit_s <= 0:
            return None
        if self.draining:
            draining_s = now - (self.drained_at or now)
            if drain_bound_s is not None and draining_s > drain_bound_s + limit_s:
                return f"still draining {draining_s:.1f} s after it was asked"
            return None
        if self.stalled_s > limit_s:
            return f"{self.stalled_loop} has not turned for {self.stalled_s:.1f} s"
        silent = now - self.heard_at
        if silent > limit_s:
            return f"sent nothing for {silent:.1f} s"
        return None

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except OSError:
            pass  # already gone: its sentinel will say so

    def send_faults(self, policy: dict[str, Any]) -> None:
        """The supervisor's fault policy changed (FaultPolicy.export)."""
        try:
            self._control.send((FAULTS, policy))
        except OSError:
            pass  # already gone: its sentinel will say so

    def join(self) -> int | None:
        """The exit code of an exited worker (negative: the signal); closes the pipes."""
        self.process.join(JOIN_S)
        code: int | None = self.process.exitcode
        self.uplink.close()
        self._control.close()
        try:
            self.process.close()
        except ValueError:
            pass  # still running (not reaped in JOIN_S): leave it
        return code
