"""Task: one generator task's state, as its Scheduler keeps it.

A plain slotted record: the scheduler's thread creates it at ``spawn`` and is the only
one to read or change it (scheduler.py says what each field is for; timers.py reads
``armed``, ``armed_seq`` and ``due()``). Other modules see Tasks only through
``Scheduler.tasks()``, on that thread, for their ``state`` (the echo Connection).
"""

from __future__ import annotations

import socket
from typing import Any

from server.engine.waits import TaskGen, Wait


class Task:
    __slots__ = (
        "armed",
        "armed_seq",
        "critical",
        "daemon",
        "done",
        "echo",
        "events",
        "fd",
        "gen",
        "sleeping",
        "sock",
        "state",
        "send",
        "timeout",
        "wait",
        "wait_since",
    )

    def __init__(self, gen: TaskGen, sock: socket.socket | None, daemon: bool, state: Any, critical: bool) -> None:
        self.gen = gen
        self.send = gen.send  # bound once: the loop resumes the task with it per event
        self.sock = sock
        self.fd = -1 if sock is None else sock.fileno()  # its key in the scheduler's table
        self.daemon = daemon
        self.critical = critical
        self.state = state  # the owner's per-task data (the echo Connection)
        self.events = 0  # what the socket is registered for; 0 = not registered
        self.wait_since = 0.0  # when the current Wait or Sleep began
        self.timeout: float | None = None  # its length; None = no deadline
        # The Wait last yielded, when yielding it again needs no settling (see run_once).
        self.wait: Wait | None = None
        self.echo = 0  # the current Wait's echo size: the loop echoes for the task (waits.py)
        self.sleeping = False  # the current wait is a Sleep (resume, not WaitTimeout)
        self.armed: float | None = None  # ``when`` of the task's live heap entry
        self.armed_seq = 0  # and its sequence number (see timers.py)
        self.done = False

    def due(self) -> float | None:
        return None if self.timeout is None else self.wait_since + self.timeout
