"""UdpFaults: drop, delay and reorder for the UDP echo, never amplifying.

    faults = UdpFaults(draw)                        # with --faults on; else the echo has None
    verdict = faults.decide(ip, address, data, now)  # after the rate limits admitted it
    for data, address in faults.due(now): sendto(...)
    faults.next_due()                               # when the echo task must wake to send

Each datagram the rate limits let through draws once (FaultDraw, listener ``udp``):

    drop     not echoed (counted as dropped, reason ``fault_drop``)
    delay    echoed delay_ms +- jitter_ms later (uniform, never below 0)
    reorder  held and echoed right after the next datagram that is echoed, or after
             REORDER_HOLD_S if none comes: the two arrive swapped

A held datagram keeps the one token it was admitted with and is sent once or never, so
out <= in holds for datagrams and bytes, faults included. At most MAX_HELD datagrams
(MAX_HELD_BYTES bytes) are held at once; past that a datagram that would be held is
dropped instead (``fault_held_full``). On the stop, what is held is sent at once.

Threads: the UDP echo task's scheduler thread only (the draw itself is thread-safe).
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any

from server.faults.draw import FaultDraw

REORDER_HOLD_S = 0.05  # a reordered datagram waits at most this long for the next one
MAX_HELD = 1024
MAX_HELD_BYTES = 4 * 1024 * 1024

ECHO, HELD, DROPPED, HELD_FULL = "echo", "held", "fault_drop", "fault_held_full"


class UdpFaults:
    ECHO, HELD = ECHO, HELD  # for the UDP task, which does not import this module with faults off

    def __init__(self, draw: FaultDraw) -> None:
        self._draw = draw
        self._held: list[tuple[float, int, bool, bytes, Any]] = []  # (due, seq, reordered, data, address)
        self._held_bytes = 0
        self._seq = itertools.count()

    def decide(self, ip: str, address: Any, data: memoryview, now: float) -> str:
        """ECHO (send it now), HELD (it will come out of ``due``), or a drop reason."""
        fault = self._draw.policy.draw(ip, "udp", self._draw.worker)
        if fault is None:
            return ECHO
        self._draw.announce(fault, "udp", peer=ip)
        rule = fault.rule
        if rule.kind == "drop":
            return DROPPED
        if len(self._held) >= MAX_HELD or self._held_bytes + len(data) > MAX_HELD_BYTES:
            return HELD_FULL
        if rule.kind == "reorder":
            due, reordered = now + REORDER_HOLD_S, True
        else:
            jitter = rule.jitter_ms / 1000.0
            hold = rule.delay_ms / 1000.0 + (random.Random(fault.seed).uniform(-jitter, jitter) if jitter else 0.0)
            due, reordered = now + max(0.0, hold), False
        heapq.heappush(self._held, (due, next(self._seq), reordered, bytes(data), address))
        self._held_bytes += len(data)
        return HELD

    def due(self, now: float, *, echoed: bool = False, everything: bool = False) -> list[tuple[bytes, Any]]:
        """What to send now: what is due, plus (``echoed``: a datagram was just echoed)
        every reordered one, plus (``everything``: the stop) all that is held."""
        out: list[tuple[bytes, Any]] = []
        keep: list[tuple[float, int, bool, bytes, Any]] = []
        if everything or echoed:
            for entry in self._held:
                if everything or entry[0] <= now or entry[2]:
                    out.append((entry[3], entry[4]))
                else:
                    keep.append(entry)
            heapq.heapify(keep)
            self._held = keep
        else:
            while self._held and self._held[0][0] <= now:
                entry = heapq.heappop(self._held)
                out.append((entry[3], entry[4]))
        self._held_bytes -= sum(len(data) for data, _ in out)
        return out

    def next_due(self) -> float | None:
        return self._held[0][0] if self._held else None

    def held(self) -> int:
        return len(self._held)
