"""WorkerProcess: the supervisor's handle on one worker process and its two pipes.

``spawn`` starts ``worker.main`` in a fresh interpreter (multiprocessing's spawn
context), handing it the supervisor's listeners (listeners.py: one tuple), the shared limits and the child's ends of
two one-way pipes; the parent then closes its copies of the child's ends, so that the
up pipe reaches its end when the worker exits and the down pipe's end tells the worker
that the supervisor is gone.

Threads: only the supervisor's monitor thread uses a WorkerProcess.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection as Pipe
from typing import Any

from server.config import Config
from server.listeners import Listener
from server.workers.shared_limits import SharedLimits
from server.workers.worker import DRAIN, FAULTS, WorkerSpec
from server.workers.worker import main as worker_main

JOIN_S = 1.0  # waiting for an exited process's status (its sentinel said it is gone)


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
        self.uplink = uplink  # read end
        self._control = control  # write end
        self.ready = False
        self.draining = False
        self.replacing_at: float | None = None  # monotonic time of the death it replaces

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
        faults: dict[str, Any] | None = None,
    ) -> WorkerProcess:
        up_r, up_w = ctx.Pipe(duplex=False)
        down_r, down_w = ctx.Pipe(duplex=False)
        spec = WorkerSpec(index, generation, config, listeners, limits, row, up_w, down_r, faults)
        process = ctx.Process(target=worker_main, args=(spec,), name=f"echo-worker-{index}", daemon=True)
        try:
            process.start()
        finally:
            up_w.close()
            down_r.close()
        return cls(process, index, generation, row, up_r, down_w)

    def receive(self) -> list[tuple[Any, ...]] | None:
        """One batch of messages, or None once the worker's pipe has ended."""
        try:
            if not self.uplink.poll(0):
                return None if self.uplink.closed else []
            batch: list[tuple[Any, ...]] = self.uplink.recv()
            return batch
        except (EOFError, OSError):
            return None

    def ask(self, message: tuple[Any, ...]) -> bool:
        """Send a /connections question down the control pipe; False if it could not go."""
        if self.draining:
            return False
        try:
            self._control.send(message)
        except OSError:
            return False
        return True

    def drain(self) -> None:
        """Ask the worker to stop accepting and drain (idempotent)."""
        if self.draining:
            return
        self.draining = True
        try:
            self._control.send(DRAIN)
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
