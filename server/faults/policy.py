"""FaultPolicy: the active rules, the per-connection draw, and the listener states.

    policy = FaultPolicy(rules, seed=7)
    fault = policy.draw("127.0.0.2", "tcp", worker=None)   # once per connection, at admission
    policy.replace(new_rules); policy.clear(); policy.snapshot()
    policy.refusing("tcp"), policy.unready(), policy.unhealthy()

``draw`` walks the rules in order; the first one that targets the connection (listener,
``from`` CIDR matched against the peer after the PROXY header, worker), is not spent
(``count``) and fires (``probability``, from one seeded ``random.Random``) is applied:
the connection gets a Fault and keeps it for its life. A rule with ``count`` N fires for
exactly the next N matching connections, whichever scheduler threads draw them (the
draw holds the lock). With no per-connection rule, ``draw`` returns None without
taking the lock.

``refuse``, ``unready`` and ``unhealthy`` are states, not draws: they start when the
policy holding them is set and end by themselves ``for_s`` later; a new policy (or
``clear``) ends the old one's states at once. ``on_change`` (given at construction) is
called after every change, on the changing thread, so the owner of a listener can
follow ``refusing`` without polling; ``next_change`` says when a state ends next.

Under ``--workers`` the supervisor's policy travels as ``export()`` (the rules, each
state's for_s cut to its time left) and a worker takes it with ``install``; ``report``
is what a worker sends back to be summed (server/workers/faults_relay.py).

Threads: every method may be called from any thread (one lock guards the rules, their
counts, the RNG and the states); ``snapshot`` returns plain data, a copy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.faults.rules import CONNECTION_KINDS, DATAGRAM_KINDS, STATE_KINDS, Rule, rule_from_json


@dataclass(frozen=True, slots=True)
class Fault:
    """What one connection drew: the rule, its position in the policy, and a seed for
    the behaviour's own randomness (jitter), so a seeded run repeats exactly."""

    rule: Rule
    index: int
    seed: int

    @property
    def kind(self) -> str:
        return self.rule.kind


class FaultPolicy:
    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._clock = clock
        self._on_change: Callable[[], None] | None = None
        self._rules: tuple[Rule, ...] = ()
        # The rules a draw looks at, with their position; empty = draw is free.
        self._drawn: tuple[tuple[int, Rule], ...] = ()
        self._left: list[int | None] = []
        self._fired: list[int] = []
        self._until: dict[tuple[str, str | None], float] = {}  # (state, listener or None) -> end
        self._injected: Counter[tuple[str, str]] = Counter()  # (kind, listener): this process's life
        self.version = 0  # which policy this is: +1 per change (a worker takes its supervisor's)
        self._apply(tuple(rules))
        self._on_change = on_change  # told of changes after this one

    # --- changes (any thread: the admin's handler, the CLI at start, a worker's pipe) ----------

    def replace(self, rules: Sequence[Rule]) -> None:
        """Make ``rules`` the policy: new connections draw from them from now on; the old
        states end and the new ones start now."""
        self._apply(tuple(rules))

    def clear(self) -> None:
        self._apply(())

    def set_on_change(self, on_change: Callable[[], None] | None) -> None:
        self._on_change = on_change

    def _apply(self, rules: tuple[Rule, ...], version: int | None = None) -> None:
        now = self._clock()
        with self._lock:
            self.version = self.version + 1 if version is None else version
            self._rules = rules
            self._left = [rule.count for rule in rules]
            self._fired = [0] * len(rules)
            until: dict[tuple[str, str | None], float] = {}
            for index, rule in enumerate(rules):
                if rule.kind in STATE_KINDS:
                    key = (rule.kind, rule.listener)
                    until[key] = max(until.get(key, 0.0), now + rule.for_s)
                    self._fired[index] += 1
                    self._injected[(rule.kind, rule.listener or "all")] += 1
            self._until = until  # whole: lock-free readers see the old states or the new
            self._drawn = tuple((i, r) for i, r in enumerate(rules) if r.kind in CONNECTION_KINDS + DATAGRAM_KINDS)
        if self._on_change is not None:
            self._on_change()

    # --- under --workers: the supervisor's policy, carried to each worker -----------------------

    def export(self) -> dict[str, Any]:
        """The policy as a worker should take it now: its rules, with each state's for_s
        cut to what is left of it (a new generation does not restart a refuse)."""
        now = self._clock()
        with self._lock:
            rules, until, version = self._rules, dict(self._until), self.version
        shown = []
        for rule in rules:
            document = rule.to_json()
            if rule.kind in STATE_KINDS:
                document["for_s"] = max(0.0, until.get((rule.kind, rule.listener), now) - now)
            shown.append(document)
        return {"version": version, "rules": shown}

    def install(self, exported: dict[str, Any]) -> None:
        """Take a policy ``export`` made (a worker, from its supervisor). A state whose time
        is up by now is kept as a rule but not active."""
        rules = []
        for document in exported["rules"]:
            left = document.get("for_s")
            if left is not None and left <= 0:  # ended: a for_s that cannot be parsed, kept inert
                rules.append(dataclasses.replace(rule_from_json({**document, "for_s": 1}), for_s=0.0))
            else:
                rules.append(rule_from_json(document))
        self._apply(tuple(rules), version=int(exported["version"]))

    def report(self) -> tuple[int, list[int], list[int | None], list[tuple[str, str, int]]]:
        """(version, fired, left, injected) for the supervisor to sum (a worker's uplink)."""
        with self._lock:
            injected = [(kind, listener, count) for (kind, listener), count in self._injected.items()]
            return self.version, list(self._fired), list(self._left), injected

    # --- the draw (scheduler threads, the UDP task) ------------------------------------------

    def draw(self, ip: str, listener: str, worker: int | None = None) -> Fault | None:
        """The fault for a new connection (or datagram) from ``ip`` on ``listener``, or None."""
        if not self._drawn:
            return None
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        with self._lock:
            for index, rule in self._drawn:
                left = self._left[index]
                if left == 0 or not rule.targets(listener):
                    continue
                if rule.worker is not None and rule.worker != worker:
                    continue
                if rule.source is not None:
                    if address is None:
                        address = _address(ip)
                    if address is None or address not in rule.source:
                        continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if left is not None:
                    self._left[index] = left - 1
                self._fired[index] += 1
                self._injected[(rule.kind, listener)] += 1
                return Fault(rule, index, self._rng.getrandbits(32))
        return None

    # --- the states (any thread: the acceptor, the admin's probes) -------------------------------

    def refusing(self, listener: str) -> bool:
        return self._active("refuse", listener)

    def unready(self) -> bool:
        return self._active("unready", None)

    def unhealthy(self) -> bool:
        return self._active("unhealthy", None)

    def _active(self, kind: str, listener: str | None) -> bool:
        until = self._until  # replaced whole under the lock: a plain read is a consistent one
        if not until:
            return False
        now = self._clock()
        if until.get((kind, None), 0.0) > now:
            return True
        return listener is not None and until.get((kind, listener), 0.0) > now

    def next_change(self) -> float | None:
        """When the next state ends (on the policy's clock), or None if none is active."""
        now = self._clock()
        ends = [end for end in self._until.values() if end > now]
        return min(ends) if ends else None

    # --- reading (any thread) ----------------------------------------------------------

    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def injected(self) -> dict[tuple[str, str], int]:
        """Faults applied per (kind, listener) over the process's life (for /metrics); a
        state counts once when set, under its listener or ``all``."""
        with self._lock:
            return dict(self._injected)

    def snapshot(self) -> dict[str, Any]:
        """``{"rules": [...], "fired": [...], "left": [...], "active": [...]}`` as JSON-ready data."""
        now = self._clock()
        with self._lock:
            rules, fired, left, until = self._rules, list(self._fired), list(self._left), dict(self._until)
        active = [
            {"kind": kind, **({"listener": listener} if listener else {}), "remaining_s": round(end - now, 3)}
            for (kind, listener), end in sorted(until.items(), key=lambda item: (item[0][0], item[0][1] or ""))
            if end > now
        ]
        return {"rules": [rule.to_json() for rule in rules], "fired": fired, "left": left, "active": active}


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
