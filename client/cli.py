"""``echo-client``: talk to an echo server like netcat, check it, time it, load it.

    echo-client [HOST] [PORT]                 interactive: stdin -> server, echo -> stdout
    echo-client send TEXT | --file F          send, verify, print the echo
    echo-client ping -c N                     round-trip times
    echo-client bench --conns C --size S ...  load + latency figures (client.loadgen)

Exit codes: 0 fine; 1 the server could not be reached or the connection failed;
2 bad arguments, or (``send``) the echo differed from what was sent.
Everything runs on the main thread, but interactive mode's stdin pump.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from client import loadgen
from client.library import EchoClient, EchoError, EchoMismatch

PROG = "echo-client"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SUBCOMMANDS = ("send", "ping", "bench")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", nargs="?", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("port", nargs="?", type=_port, default=7007, help="server port (default 7007)")
    parser.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds to wait for the server (5)")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    if command is None:
        parser = _Parser(
            prog=PROG,
            description="Interactive echo: stdin goes to the server, the echo to stdout. "
            f"Other modes: {PROG} send|ping|bench --help.",
        )
        _add_target(parser)
        return parser
    parser = _Parser(prog=f"{PROG} {command}")
    if command == "send":
        parser.add_argument("text", nargs="?", help="text to send (or --file)")
        parser.add_argument("--file", help="send this file's bytes instead")
        parser.add_argument("--quiet", "-q", action="store_true", help="print nothing; the exit code says it all")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=_port, default=7007)
        parser.add_argument("--timeout", type=_positive_float, default=5.0)
    elif command == "ping":
        _add_target(parser)
        parser.add_argument("-c", "--count", type=_positive_int, default=10, help="round trips (10)")
        parser.add_argument("-s", "--size", type=_positive_int, default=64, help="bytes per round trip (64)")
        parser.add_argument("-i", "--interval", type=float, default=0.0, help="seconds between round trips (0)")
    else:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=_port, default=7007)
        parser.add_argument("--conns", type=_positive_int, default=50, help="busy connections (50)")
        parser.add_argument("--size", type=_positive_int, default=1024, help="bytes per message (1024)")
        parser.add_argument("--duration", type=_positive_float, default=5.0, help="seconds of load (5)")
        parser.add_argument("--pipeline", type=_positive_int, default=1, help="messages in flight per connection (1)")
        parser.add_argument(
            "--processes",
            type=_positive_int,
            default=max(1, (os.cpu_count() or 2) // 2),
            help="load generator processes (half the CPUs)",
        )
        parser.add_argument("--idle", type=_non_negative_int, default=0, help="silent connections held meanwhile (0)")
        parser.add_argument("--timeout", type=_positive_float, default=5.0, help="connect timeout, seconds (5)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    try:
        args = build_parser(command).parse_args(args_list[1:] if command else args_list)
        if command == "send" and (args.text is None) == (args.file is None):
            raise UsageError(f"{PROG} send: give TEXT or --file, not both or neither")
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    try:
        if command == "send":
            return _send(args)
        if command == "ping":
            return _ping(args)
        if command == "bench":
            return _bench(args)
        return _interactive(args)
    except EchoMismatch as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except EchoError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _interactive(args: argparse.Namespace) -> int:
    with EchoClient(args.host, args.port, timeout=args.timeout) as client:
        client.sock.settimeout(None)  # a person may type slowly
        finished_sending = threading.Event()

        def pump() -> None:
            try:
                while chunk := os.read(sys.stdin.fileno(), 65536):  # returns what a pipe or tty has
                    client.send(chunk)
                client.close_write()
            except EchoError:
                pass  # the reader reports how the connection ended
            finally:
                finished_sending.set()

        threading.Thread(target=pump, name="stdin", daemon=True).start()
        out = sys.stdout.buffer
        while chunk := client.recv(65536):
            out.write(chunk)
            out.flush()
        if not finished_sending.is_set():
            print(f"{PROG}: the server closed the connection", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    if args.file is not None:
        try:
            with open(args.file, "rb") as source:
                data = source.read()
        except OSError as error:
            print(f"{PROG} send: --file: {error.strerror}: {args.file}", file=sys.stderr)
            return EXIT_USAGE
    else:
        data = args.text.encode()
    with EchoClient(args.host, args.port, timeout=args.timeout) as client:
        echoed = client.echo(data)
    if not args.quiet:
        sys.stdout.buffer.write(echoed)
        sys.stdout.flush()
    return EXIT_OK


def _ping(args: argparse.Namespace) -> int:
    payload = os.urandom(args.size)
    times_ms: list[float] = []
    with EchoClient(args.host, args.port, timeout=args.timeout) as client:
        for sequence in range(1, args.count + 1):
            started = time.perf_counter()
            client.echo(payload)
            times_ms.append((time.perf_counter() - started) * 1000)
            print(f"{args.size} bytes from {client.target}: seq={sequence} time={times_ms[-1]:.3f} ms")
            if args.interval > 0 and sequence < args.count:
                time.sleep(args.interval)
    ordered = sorted(times_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"--- {args.count} round trips: min {ordered[0]:.3f} / median {statistics.median(ordered):.3f} / "
        f"p99 {p99:.3f} / max {ordered[-1]:.3f} ms"
    )
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    spec = loadgen.LoadSpec(
        host=args.host,
        port=args.port,
        conns=args.conns,
        size=args.size,
        duration_s=args.duration,
        pipeline=args.pipeline,
        processes=args.processes,
        idle=args.idle,
        connect_timeout_s=args.timeout,
    )
    with EchoClient(args.host, args.port, timeout=args.timeout):
        pass  # fail fast, with one line, if the server is not there
    show_progress = sys.stderr.isatty() and not args.json
    stop_ticker = threading.Event()

    def tick() -> None:
        started = time.monotonic()
        while not stop_ticker.wait(0.5):
            elapsed = time.monotonic() - started
            print(f"\r{PROG} bench: {elapsed:5.1f} s of ~{spec.duration_s:g} s ", end="", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if show_progress:
            print(f"\r{PROG} bench: {done}/{total} load processes finished ", end="", file=sys.stderr)

    ticker = threading.Thread(target=tick, daemon=True)
    if show_progress:
        ticker.start()
    try:
        result = loadgen.run(spec, on_progress=progress)
    finally:
        stop_ticker.set()
        if show_progress:
            print(file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        latency = result.latency_ms
        print(
            f"{spec.conns} conns x {spec.size} B, pipeline {spec.pipeline}, {spec.duration_s:g} s, "
            f"{spec.processes} process(es)"
        )
        print(f"  {result.msgs_per_s:,.0f} msgs/s   {result.mb_per_s:,.2f} MB/s   {result.messages:,} messages")
        print(
            f"  latency ms: p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}  p99 {latency['p99']:.3f}  "
            f"p99.9 {latency['p99.9']:.3f}  max {latency['max']:.3f}"
        )
        print(f"  errors: {sum(result.errors.values())} {result.errors or ''}  mismatches: {result.mismatches}")
        if result.idle_open_at_end is not None:
            print(f"  idle connections still open at the end: {result.idle_open_at_end} of {spec.idle}")
    return EXIT_OK if not result.errors and not result.mismatches else EXIT_FAILED
