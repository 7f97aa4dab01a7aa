"""What ``make bench`` (loadtest/bench.py) measures: its scenarios, by index.

Scenarios 0-4 drive every server with client.loadgen: ``conns`` connections echoing
``size`` bytes with one message in flight (``idle`` more connections held open and
silent).

Scenario 5 is the TLS row: echo-service plain and with ``--tls-port`` (a certificate made
here with the ``openssl`` command), both driven by loadtest.tls_load (one client process,
so the two figures compare with each other, not with the loadgen rows above them).

Scenario 6 is the workers row: echo-service with ``--workers 1`` and ``--workers 2``,
both unpinned (server and load generator share every CPU: on a 2-core machine the load
generator takes a core that a second worker would want), driven by the same client.
CPU per message then counts the supervisor and all its workers.

Scenario 7 is connection churn: short connections (connect, echo 16 bytes, half-close,
read the server's EOF, close) at a fixed offered rate (``--churn-rate``, open-loop, from
loadtest.churn_bench's worker processes: enough of them for the rate), echo-service at
its default info logging with its log lines on a pipe this process drains, as users run
it. Its warm-up is the same one connection, then ``--warmup`` seconds of the churn load
itself, the measured window following at once at the same rate. Per row: connections per
second offered and achieved, the server's CPU microseconds per connection, and the log
lines it wrote per connection.

Scenario 8 is pipelined: 50 connections each keeping 16 messages of 1 KiB in flight,
so a read finds several messages and the server's turns carry more bytes each (a
pipelining client, or a proxy that coalesces a stream). Warmed the same way, with the
same depth.

Data only: any thread or process may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest import churn_bench


@dataclass(frozen=True)
class Scenario:
    name: str
    conns: int
    size: int
    idle: int = 0
    tls: bool = False  # driven by loadtest.tls_load, for TLS_SERVERS only
    workers: bool = False  # WORKER_SERVERS only, unpinned
    churn: bool = False  # short connections at --churn-rate, driven by loadtest.churn_bench
    pipeline: int = 1  # messages in flight per connection


SCENARIOS = [
    Scenario("1 conn, 64 B", 1, 64),
    Scenario("50 conns, 1 KiB", 50, 1024),
    Scenario("50 conns, 64 KiB", 50, 65536),
    Scenario("1000 busy conns, 1 KiB", 1000, 1024),
    Scenario("100 busy + 10000 idle, 1 KiB", 100, 1024, idle=10_000),
    Scenario("50 conns, 1 KiB: plain vs TLS", 50, 1024, tls=True),
    Scenario("50 conns, 1 KiB: 1 vs 2 workers, unpinned", 50, 1024, workers=True),
    Scenario("churn: short connections, info logging", 0, churn_bench.PAYLOAD_BYTES, churn=True),
    Scenario("50 conns, 1 KiB, 16 in flight", 50, 1024, pipeline=16),
]
