"""The command-line options every echo-client command shares for how it connects
(banner, TLS, PROXY header, UDP), and their translation into a DialOptions:

    add_dial_arguments(parser, udp=True)     # send and ping; udp=False elsewhere
    options = dial_options(args)             # ValueError("--ca: needs --tls") if they clash

A new subcommand calls these two and hands the DialOptions to EchoClient or
client.dial.open_stream. Messages name the option; the caller adds its program name.
Called on the main thread, before anything connects.
"""

from __future__ import annotations

import argparse
import re

from client.dial import DialOptions, TlsSettings
from client.proxy_header import VERSIONS, parse_endpoint

TLS_ONLY = ("ca", "cert", "key", "sni", "alpn", "insecure")


def add_dial_arguments(parser: argparse.ArgumentParser, *, udp: bool) -> None:
    banner = parser.add_argument_group("the server's banner (echo-server --banner)")
    banner.add_argument(
        "--banner", action="store_true", help="the server sends a line first: read it and skip it before any echo"
    )
    banner.add_argument(
        "--show-banner", action="store_true", help="print the server's banner line on stderr (implies --banner)"
    )
    banner.add_argument(
        "--expect-banner",
        metavar="REGEX",
        help="fail (exit 2) unless the banner line contains a match for REGEX (implies --banner)",
    )
    tls = parser.add_argument_group("TLS (echo-server --tls-port)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server's certificate")
    tls.add_argument("--ca", metavar="FILE", help="PEM CA certificates to verify the server with (default: system's)")
    tls.add_argument("--cert", metavar="FILE", help="PEM client certificate, for a server that asks for one (mTLS)")
    tls.add_argument("--key", metavar="FILE", help="PEM private key of --cert (default: read from --cert's file)")
    tls.add_argument("--sni", metavar="NAME", help="the server name to send and verify (default: HOST)")
    tls.add_argument("--alpn", metavar="PROTOCOLS", help="ALPN protocols to offer, comma-separated (e.g. h2,http/1.1)")
    tls.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    proxy = parser.add_argument_group("PROXY protocol (echo-server --proxy-protocol)")
    proxy.add_argument(
        "--proxy-protocol",
        choices=VERSIONS,
        help="send a PROXY protocol header first, as a load balancer would: v1 (text) or v2 (binary)",
    )
    proxy.add_argument(
        "--proxy-source",
        metavar="ADDR:PORT",
        help="the client address the header claims (default: this connection's own address)",
    )
    if udp:
        parser.add_argument(
            "--udp", action="store_true", help="echo over UDP (echo-server --udp-port): one datagram per message"
        )


def dial_options(args: argparse.Namespace) -> DialOptions:
    """The options as a DialOptions; ValueError naming the option if they do not fit."""
    for name in TLS_ONLY:
        if getattr(args, name) not in (None, False) and not args.tls:
            raise ValueError(f"--{name}: needs --tls")
    if args.key is not None and args.cert is None:
        raise ValueError("--key: needs --cert")
    if args.insecure and args.ca is not None:
        raise ValueError("--insecure: not with --ca (it skips the check --ca is for)")
    if args.proxy_source is not None and args.proxy_protocol is None:
        raise ValueError("--proxy-source: needs --proxy-protocol")
    if getattr(args, "udp", False):
        for name in ("tls", "proxy_protocol", "banner", "show_banner", "expect_banner"):
            if getattr(args, name) not in (None, False):
                raise ValueError(f"--udp: not with --{name.replace('_', '-')} (UDP echo has no {_udp_lacks(name)})")
    if args.expect_banner is not None:
        try:
            re.compile(args.expect_banner)
        except re.error as error:
            raise ValueError(f"--expect-banner: not a regular expression: {error}") from None
    tls = None
    if args.tls:
        tls = TlsSettings(args.ca, args.cert, args.key, args.sni, _alpn(args.alpn), args.insecure)
        tls.context()  # a file that cannot be used is named now, not at the first connection
    proxy_source = None
    if args.proxy_source is not None:
        try:
            proxy_source = parse_endpoint(args.proxy_source)
        except ValueError as error:
            raise ValueError(f"--proxy-source: {error}") from None
    return DialOptions(
        tls=tls,
        udp=bool(getattr(args, "udp", False)),
        proxy_version=args.proxy_protocol,
        proxy_source=proxy_source,
        banner=args.banner or args.show_banner,
        expect_banner=args.expect_banner,
    )


def _udp_lacks(name: str) -> str:
    return {"tls": "TLS", "proxy_protocol": "PROXY header"}.get(name, "banner")


def _alpn(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    protocols = tuple(text.split(","))
    for protocol in protocols:
        if not protocol or len(protocol.encode()) > 255 or not protocol.isascii() or not protocol.isprintable():
            raise ValueError(f"--alpn: expected comma-separated protocol names of 1-255 characters, got {text!r}")
    return protocols
