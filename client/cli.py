"""``echo-client``: talk to an echo server like netcat, check it, time it, load it.

    echo-client [HOST] [PORT]                        interactive: stdin -> server, echo -> stdout
    echo-client send (TEXT | --file F) [HOST] [PORT] send, verify, print the echo
    echo-client ping [-c N] [--json] [HOST] [PORT]   round-trip times, then a summary with loss
    echo-client bench [--conns C ...] [HOST] [PORT]  load + latency figures (client.loadgen)
    echo-client rate|watch|merge ...                 open-loop latency, disruption watch (docs/latency.md)

Every mode connects as client.dial_args says: --banner/--expect-banner for a server run
with --banner, --tls (--ca, --cert/--key, --sni, --alpn, --insecure), --proxy-protocol
v1|v2 (--proxy-source), and --udp for send and ping.

Every mode takes the server as ``[HOST] [PORT]`` operands, like nc (127.0.0.1 7007 by
default); ``--host``/``--port`` are accepted as aliases. Options and operands may be
mixed in any order. Bytes that are not printable text are never written to a terminal
unless ``--force`` says so (a file's bytes could be escape sequences).

Exit codes: 0 fine; 1 the server could not be reached or the connection failed;
2 bad arguments, a refusal to write binary to a terminal, an echo that differed from
what was sent, or a banner line missing or not matching --expect-banner; ``ping`` exits
1 when any round trip got no echo. Everything runs on the main thread (bench's progress
ticker aside; its load runs in worker processes).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from client import interactive, loadgen, ping
from client.dial import CONTROL_CHARACTERS, shown
from client.dial_args import add_dial_arguments, dial_options
from client.errors import exit_code
from client.library import EchoClient, EchoError, UnexpectedBanner
from client.udp import MAX_DATAGRAM, UdpEchoClient
from server import __version__

PROG = "echo-client"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SUBCOMMANDS = ("send", "ping", "bench")
MEASURE_SUBCOMMANDS = ("rate", "watch", "merge")  # open-loop latency, disruption watch, merge of rate runs
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7007
BINARY_REFUSED = "the echo is not printable text; not writing it to a terminal (use --force, or redirect stdout)"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "argument --conns: expected ..." -> "--conns: expected ..."
        raise UsageError(f"{self.prog}: {message.removeprefix('argument ')}")


def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole(text, 0)


def _seconds(text: str, *, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds {'>= 0' if zero_ok else '> 0'}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _seconds(text, zero_ok=False)


def _non_negative_float(text: str) -> float:
    return _seconds(text, zero_ok=True)


def parse_port(text: str) -> int:
    """A TCP port to connect to; UsageError naming the argument otherwise."""
    value = int(text) if text.isascii() and text.isdigit() else -1
    if not 1 <= value <= 65535:
        raise UsageError(f"port: expected 1-65535, got {text!r}")
    return value


def printable(data: bytes, decoder: codecs.IncrementalDecoder | None = None) -> bool:
    """True if ``data`` is UTF-8 text with no control characters but tab, newline and
    CR. Pass one incremental decoder for a stream cut into chunks at any byte."""
    try:
        text = decoder.decode(data) if decoder else data.decode()
    except UnicodeDecodeError:
        return False
    return CONTROL_CHARACTERS.search(text) is None


def _add_target(parser: argparse.ArgumentParser, operands: str) -> None:
    parser.add_argument(
        "operands",
        nargs="*",
        metavar=operands,
        help=("TEXT to send (unless --file), then " if operands.startswith("[TEXT]") else "")
        + f"the server: HOST (default {DEFAULT_HOST}) and PORT (default {DEFAULT_PORT}), as nc takes them",
    )
    parser.add_argument("--host", help="the server's address; an alias for the HOST operand")
    parser.add_argument("--port", help="the server's port; an alias for the PORT operand")
    parser.add_argument("--timeout", type=_positive_float, default=5.0, help="seconds to wait for the server (5)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}", help="print the version")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    if command is None:
        parser = _Parser(
            prog=PROG,
            usage=f"{PROG} [options] [HOST] [PORT]",
            description="Interactive echo, like nc: stdin goes to the server, the echo to stdout; "
            "at the end of stdin it half-closes and prints the rest. "
            f"Other modes: {PROG} send|ping|bench|rate|watch|merge --help.",
        )
        _add_target(parser, "[HOST] [PORT]")
        parser.add_argument("--force", action="store_true", help="write the echo to a terminal even if it is binary")
        add_dial_arguments(parser, udp=False)
        return parser
    if command == "send":
        parser = _Parser(
            prog=f"{PROG} send",
            usage=f"{PROG} send [options] (TEXT | --file F) [HOST] [PORT]",
            description="Send TEXT (or a file's bytes), verify the echo byte for byte, print it.",
        )
        _add_target(parser, "[TEXT] [HOST] [PORT]")
        parser.add_argument("--file", help="send this file's bytes instead of TEXT")
        parser.add_argument("--quiet", "-q", action="store_true", help="print nothing; the exit code says it all")
        parser.add_argument("--force", action="store_true", help="write the echo to a terminal even if it is binary")
        add_dial_arguments(parser, udp=True)
    elif command == "ping":
        parser = _Parser(
            prog=f"{PROG} ping",
            usage=f"{PROG} ping [options] [HOST] [PORT]",
            description="Time round trips on one connection.",
        )
        _add_target(parser, "[HOST] [PORT]")
        parser.add_argument("-c", "--count", type=_positive_int, default=10, help="round trips (10)")
        parser.add_argument("-s", "--size", type=_positive_int, default=64, help="bytes per round trip (64)")
        parser.add_argument(
            "-i", "--interval", type=_non_negative_float, default=0.0, help="seconds between round trips (0)"
        )
        parser.add_argument("--json", action="store_true", help="print the times and summary as JSON")
        add_dial_arguments(parser, udp=True)
    else:
        parser = _Parser(
            prog=f"{PROG} bench",
            usage=f"{PROG} bench [options] [HOST] [PORT]",
            description="Closed-loop load from worker processes; every echoed byte verified.",
        )
        _add_target(parser, "[HOST] [PORT]")
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
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        add_dial_arguments(parser, udp=False)
    return parser


def _resolve_target(command: str | None, args: argparse.Namespace) -> None:
    """Operands -> args.text (send), args.host, args.port; UsageError if they clash."""
    operands: list[str] = list(args.operands)
    prog = f"{PROG} {command}" if command else PROG
    if command == "send":
        if args.file is None:
            if not operands:
                raise UsageError(f"{prog}: give TEXT or --file")
            args.text = operands.pop(0)
        else:
            args.text = None
    if len(operands) > 2:
        expected = "TEXT HOST PORT" if command == "send" and args.text is not None else "HOST PORT"
        raise UsageError(f"{prog}: too many operands: expected at most {expected}, got {' '.join(args.operands)!r}")
    for name, operand in zip(("host", "port"), operands, strict=False):
        if getattr(args, name) is not None:
            raise UsageError(f"{prog}: {name}: given twice (as an operand and as --{name})")
        setattr(args, name, operand)
    if args.host is None:
        args.host = DEFAULT_HOST
    try:
        args.port = DEFAULT_PORT if args.port is None else parse_port(str(args.port))
        # rate and watch open their own sockets and take none of the dial options.
        args.dial = dial_options(args) if hasattr(args, "tls") else None
    except (UsageError, ValueError) as error:
        raise UsageError(f"{prog}: {error}") from None


def _measure(command: str, argv: list[str]) -> int:
    """The measuring subcommands live in their own modules (imported when used)."""
    if command == "rate":
        from client import rate

        return rate.main(argv)
    if command == "watch":
        from client import watch

        return watch.main(argv)
    from client import merge

    return merge.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in MEASURE_SUBCOMMANDS:
        return _measure(args_list[0], args_list[1:])
    command = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else None
    try:
        args = build_parser(command).parse_intermixed_args(args_list[1:] if command else args_list)
        _resolve_target(command, args)
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
    except EchoError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        return 130


def _connected(args: argparse.Namespace) -> EchoClient | UdpEchoClient:
    """The command's client, connected (banner read and shown if asked)."""
    if args.dial.udp:
        return UdpEchoClient(args.host, args.port, timeout=args.timeout).connect()
    client = EchoClient(args.host, args.port, timeout=args.timeout, options=args.dial).connect()
    if args.show_banner and client.banner is not None:
        print(f"{PROG}: banner: {shown(client.banner)}", file=sys.stderr)
    return client


def _interactive(args: argparse.Namespace) -> int:
    client = _connected(args)
    assert isinstance(client, EchoClient)  # no --udp here
    out = sys.stdout.buffer
    # Typed input was shown by the terminal already; piped input could be anything.
    decoder = None if args.force or not out.isatty() or sys.stdin.isatty() else codecs.getincrementaldecoder("utf-8")()

    def show(chunk: bytes) -> bool:
        if decoder is not None and not printable(chunk, decoder):
            return False
        out.write(chunk)
        out.flush()
        return True

    with client:
        ending = interactive.relay(client, sys.stdin.fileno(), show)
    if ending == interactive.REFUSED:
        print(f"{PROG}: {BINARY_REFUSED}", file=sys.stderr)
        return EXIT_USAGE
    if ending == interactive.SERVER_CLOSED:
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
    terminal = not args.quiet and sys.stdout.isatty()
    if terminal and not args.force and not printable(data):  # the echo, once verified, is these bytes
        print(f"{PROG} send: {BINARY_REFUSED}", file=sys.stderr)
        return EXIT_USAGE
    if args.dial.udp and len(data) > MAX_DATAGRAM:
        print(f"{PROG} send: --udp: a datagram holds at most {MAX_DATAGRAM} bytes, got {len(data)}", file=sys.stderr)
        return EXIT_USAGE
    with _connected(args) as client:
        echoed = client.echo(data)
    if not args.quiet:
        sys.stdout.buffer.write(echoed)
        if terminal and echoed and not echoed.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")  # the prompt on a line of its own; a pipe gets the bytes only
        sys.stdout.flush()
    return EXIT_OK


def _ping(args: argparse.Namespace) -> int:
    if args.dial.udp and args.size > MAX_DATAGRAM:
        print(f"{PROG} ping: --udp: a datagram holds at most {MAX_DATAGRAM} bytes, got {args.size}", file=sys.stderr)
        return EXIT_USAGE
    with _connected(args) as client:
        return ping.run(client, args, prog=PROG)


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
        dial=args.dial,
    )
    with _connected(args) as probe:  # fail fast, with one line, if the server is not there
        try:
            probe.echo(b"echo-client bench: probe\n")
        except UnexpectedBanner:
            raise  # every connection would fail the same way: say what to pass instead
        except EchoError:
            pass  # the run measures and counts what else goes wrong
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
