"""Refusal: the ``refuse`` fault at the listeners, for as long as it lasts.

    refusal = Refusal(policy, {"tcp": listener, "tls": tls_listener}, acceptor_loop)
    refusal.start()        # follows the policy from now on
    refusal.stop()         # the server's stop: its own filter must stay

While a ``refuse`` state is active for a listener, the listener completes no handshake:
the stop's socket filter (listener.refuse_new_connections) drops every SYN, so a client
or balancer sees its connect time out (its SYN retries get in once the state ends)
rather than a connection that then fails. Connections already open keep echoing.
When the state ends, the filter is removed (listener.accept_new_connections).

Threads: ``start`` and ``stop`` from any thread; the policy's change callback posts to
the acceptor's scheduler, where ``sync`` and the timer run, and waits (at most
SYNC_WAIT_S) until it has: so the answer to a ``PUT /faults`` means the filter is on,
and a client that connects right after it is refused. (Called on the acceptor's own
thread, it syncs there and then.) One one-shot timer is armed at a time, for the
earliest end, so a flood of PUTs cannot pile timers up.
"""

from __future__ import annotations

import socket
import threading
import time

from server.engine.listener import accept_new_connections, refuse_new_connections
from server.engine.scheduler import Scheduler
from server.engine.waits import Sleep, TaskGen
from server.faults.policy import FaultPolicy

SYNC_WAIT_S = 1.0  # how long a policy change waits for the acceptor's thread to apply it


class Refusal:
    def __init__(self, policy: FaultPolicy, listeners: dict[str, socket.socket], loop: Scheduler) -> None:
        self._policy = policy
        self._listeners = listeners
        self._loop = loop
        self._refusing: set[str] = set()  # the acceptor's thread
        self._timer_at: float | None = None  # the acceptor's thread
        self._stopped = False
        self._loop_thread: int | None = None  # the acceptor's thread, once sync has run there

    def start(self) -> None:
        self._policy.set_on_change(self._changed)
        self._loop.call_soon_threadsafe(self.sync)  # a refuse given at start

    def _changed(self) -> None:  # the thread that changed the policy
        if threading.get_ident() == self._loop_thread:
            self.sync()
            return
        synced = threading.Event()

        def sync_and_tell() -> None:
            try:
                self.sync()
            finally:
                synced.set()

        self._loop.call_soon_threadsafe(sync_and_tell)
        synced.wait(SYNC_WAIT_S)  # a stalled loop delays the change's caller by this much at most

    def stop(self) -> None:
        """Before the acceptor's stop is requested: from then on the filter is the stop's."""
        self._stopped = True
        self._policy.set_on_change(None)

    def refusing(self) -> frozenset[str]:
        return frozenset(self._refusing)

    def sync(self) -> None:  # the acceptor's thread
        self._loop_thread = threading.get_ident()
        if self._stopped:
            return
        for name, sock in self._listeners.items():
            refusing = self._policy.refusing(name)
            if refusing and name not in self._refusing:
                refuse_new_connections(sock)
                self._refusing.add(name)
            elif not refusing and name in self._refusing:
                accept_new_connections(sock)
                self._refusing.discard(name)
        ends = self._policy.next_change()
        if ends is not None and (self._timer_at is None or ends < self._timer_at):
            self._timer_at = ends
            self._loop.spawn(self._timer(ends), daemon=True)

    def _timer(self, at: float) -> TaskGen:  # the acceptor's thread
        yield Sleep(max(0.0, at - time.monotonic()))
        if self._timer_at == at:
            self._timer_at = None
        self.sync()
