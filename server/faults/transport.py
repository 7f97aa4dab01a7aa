"""faulted_transport: a listener's transport with the fault draw in front of it.

    transport = faulted_transport(plain_echo, draw)   # listeners.pipeline_for, --faults on

With ``--faults on`` a stream listener's task is this one: it runs the PROXY step (if
any; the draw must see the client's address, not the balancer's), draws once
(FaultDraw), and then

  - no fault (most connections): the listener's own transport, given the pipeline
    without the step already run, so the connection lives exactly as with faults off;
  - a fault that acts at accept (hang; close or reset with neither after_bytes nor
    after_s): the behaviour at once, on the raw TCP connection (before a TLS handshake,
    before a banner: a backend that hangs or resets does not greet first);
  - any other fault: the remaining steps (TLS handshake, banner), then the faulted loop
    (behaviours.py) instead of the plain one.

It ends as every transport does: pipeline.ended_by maps what was raised to a close
reason, pipeline.finish reports the connection once.

Threads: the connection's scheduler thread (the draw is thread-safe).
"""

from __future__ import annotations

import dataclasses
import socket

from server.engine.connection import Connection
from server.engine.pipeline import Pipeline, Transport, ended_by
from server.engine.waits import TaskGen
from server.faults.behaviours import acts_at_accept, faulted_loop
from server.faults.draw import FaultDraw


def faulted_transport(base: Transport, draw: FaultDraw) -> Transport:
    """``base`` (plain_echo, tls_echo) with the draw after the PROXY step."""
    without_head: dict[int, Pipeline] = {}  # a listener's pipeline without its PROXY step

    def transport(sock: socket.socket, conn: Connection, buffer: memoryview, pipeline: Pipeline) -> TaskGen:
        head = 1 if pipeline.gate is not None else 0  # the PROXY step comes first (listeners.py)
        handed_on = False
        try:
            for step in pipeline.steps[:head]:
                yield from step(sock, conn)
            fault = draw(conn.id, conn.peer, conn.ip, pipeline.listener)
            if fault is None:
                rest = without_head.get(id(pipeline))
                if rest is None:
                    rest = without_head[id(pipeline)] = dataclasses.replace(pipeline, steps=pipeline.steps[head:])
                handed_on = True  # base ends the connection (ended_by, finish) itself
                yield from base(sock, conn, buffer, rest)
                return
            if not acts_at_accept(fault):
                for step in pipeline.steps[head:]:
                    yield from step(sock, conn)
            yield from faulted_loop(fault)(sock, conn, buffer, pipeline.waits)
        except Exception as error:
            if handed_on or not ended_by(sock, conn, error):
                raise
        finally:
            if not handed_on:
                pipeline.finish(conn)

    return transport
