"""FaultDraw: a connection's draw at admission, and the ``fault`` event that shows it.

    draw = FaultDraw(policy, publish, worker=None)
    fault = draw(conn_id, peer, ip, "tcp")       # None for most connections

The draw is ``FaultPolicy.draw`` (see policy.py); when a fault is drawn, a ``fault``
event (kind, the rule's position from 1 and ``spec``, the rule in --fault syntax,
listener, connection id and peer) is published at
most once a second per kind, carrying ``count``: how many faults of that kind it stands
for since the last one said. So a reset=100% flood costs one event a second, never one
per connection, and the counts still add up (``echo_faults_injected_total`` counts each).

Threads: any scheduler thread may call a FaultDraw (a lock guards the throttles).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from server.faults.policy import Fault, FaultPolicy
from server.observe.events import Event, event
from server.observe.throttle import Throttle


class FaultDraw:
    def __init__(self, policy: FaultPolicy, publish: Callable[[Event], None], worker: int | None = None) -> None:
        self.policy = policy
        self.worker = worker
        self._publish = publish
        self._lock = threading.Lock()
        self._throttles: dict[str, Throttle] = {}

    def __call__(self, conn_id: int, peer: str, ip: str, listener: str) -> Fault | None:
        fault = self.policy.draw(ip, listener, self.worker)
        if fault is not None:
            self.announce(fault, listener, conn_id=conn_id, peer=peer)
        return fault

    def announce(self, fault: Fault, listener: str, *, conn_id: int | None = None, peer: str | None = None) -> None:
        """Publish the ``fault`` event, unless one of this kind went out within the second."""
        with self._lock:
            throttle = self._throttles.get(fault.kind)
            if throttle is None:
                throttle = self._throttles[fault.kind] = Throttle()
            held_back = throttle.allow()
        if held_back is None:
            return
        self._publish(
            event(
                "fault",
                conn_id=conn_id,
                peer=peer,
                kind=fault.kind,
                rule=fault.index + 1,
                spec=fault.rule.to_flag(),
                listener=listener,
                count=held_back + 1,
            )
        )
