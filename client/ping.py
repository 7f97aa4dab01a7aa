"""``echo-client ping``: round trips on one connection, each with fresh random bytes, then
a summary as ping prints one (sent, received, loss, min/avg/max/p99), also after an error
or Ctrl-C. Over UDP a missing echo is a loss and the next round trip goes on; over TCP
the stream is broken by any failure, so it stops there. Exit code: 0 when every round
trip came back, 1 when any did not, else what client.errors.exit_code says.

Runs on the caller's thread; the client is the caller's (already connected).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time

from client.errors import EchoError, EchoTimeout, exit_code
from client.library import EchoClient
from client.udp import UdpEchoClient


def run(client: EchoClient | UdpEchoClient, args: argparse.Namespace, *, prog: str) -> int:
    """Round trips on ``client`` (connected) as ``args`` say; the exit code."""
    times_ms: list[float] = []
    sent, code = 0, 0
    started_all = time.monotonic()
    tls = _tls_facts(client)
    try:
        for sequence in range(1, args.count + 1):
            payload = os.urandom(args.size)  # fresh bytes: a late UDP echo is never taken for this one
            sent += 1
            started = time.perf_counter()
            try:
                client.echo(payload)
            except EchoTimeout:
                if not args.dial.udp:
                    raise
                if not args.json:
                    print(f"no echo for seq={sequence} within {args.timeout:g} s")
                code = 1
            else:
                times_ms.append((time.perf_counter() - started) * 1000)
                if not args.json:
                    print(f"{args.size} bytes from {client.target}: seq={sequence} time={times_ms[-1]:.3f} ms")
            if args.interval > 0 and sequence < args.count:
                time.sleep(args.interval)  # the pacing the user asked for
    except EchoError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        code = exit_code(error)
    except KeyboardInterrupt:
        code = 130
    _summary(args, client.target, tls, sent, times_ms, (time.monotonic() - started_all) * 1000)
    return code


def _tls_facts(client: EchoClient | UdpEchoClient) -> dict[str, str | None] | None:
    """What the TLS handshake settled (for --json), or None without TLS."""
    if not isinstance(client, EchoClient) or not isinstance(client.sock, ssl.SSLSocket):
        return None
    cipher = client.sock.cipher()
    return {
        "version": client.sock.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": client.sock.selected_alpn_protocol(),
    }


def _summary(
    args: argparse.Namespace,
    target: str,
    tls: dict[str, str | None] | None,
    sent: int,
    times_ms: list[float],
    elapsed_ms: float,
) -> None:
    received = len(times_ms)
    loss = 100.0 * (sent - received) / sent if sent else 0.0
    ordered = sorted(times_ms)
    summary = (
        {
            "min": ordered[0],
            "avg": statistics.fmean(ordered),
            "median": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1],
        }
        if ordered
        else {}
    )
    if args.json:
        document = {
            "target": target,
            "transport": "udp" if args.dial.udp else "tls" if args.dial.tls else "tcp",
            "tls": tls,
            "size": args.size,
            "count": args.count,
            "sent": sent,
            "received": received,
            "loss_percent": round(loss, 3),
            "times_ms": [round(t, 4) for t in times_ms],
            **{f"{name}_ms": round(value, 4) for name, value in summary.items()},
        }
        print(json.dumps(document, indent=2))
        return
    print(f"--- {target} echo statistics ---")
    print(f"{sent} sent, {received} received, {loss:.3g}% loss, time {elapsed_ms:.0f} ms")
    if summary:
        figures = "/".join(f"{summary[name]:.3f}" for name in ("min", "avg", "max", "p99"))
        print(f"rtt min/avg/max/p99 = {figures} ms")
