"""Opening a connection to an echo server the way the user asked, for every command
(send, ping, bench, interactive, and the Locust user):

    options = DialOptions(tls=TlsSettings(ca="ca.pem"), expect_banner=r"^replica-\\d ")
    stream = open_stream("127.0.0.1", 7007, options, timeout=5)  # Stream(sock, banner, target)
    sock, target = open_datagram("127.0.0.1", 7007, timeout=5)   # --udp: a connected UDP socket

A stream is opened in the order a balanced stack sees it: TCP connect -> the PROXY
header (on the raw socket, before any TLS, as a balancer sends it) -> the TLS handshake
-> the server's banner line (read whole, never a byte of echo, and checked) -> ready
for echo. Each failure is an EchoError (client.errors) that says what to pass.

DialOptions is frozen and picklable (bench hands it to worker processes): it holds the
TLS *settings*, and each process builds its SSLContext once (``TlsSettings.context``).
Any thread may call anything here; a returned socket belongs to its caller's thread.
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
from dataclasses import dataclass, field

from client import proxy_header
from client.errors import BadOption, BannerError, ConnectFailed, ConnectionReset, EchoTimeout
from server.lib import tls_wrap

# The server renders a banner of at most 1,024 characters (4 bytes each in UTF-8 at
# worst) plus CRLF: a first line longer than this is no banner.
BANNER_MAX_BYTES = 4 * 1024 + 2
# What a terminal would act on rather than show: C0 and C1 controls but tab, newline, CR.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class TlsSettings:
    """``--tls`` and its options; ``alpn`` is the protocols to offer, in order."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """This process's context for these settings (built once); ValueError naming
        the option whose file could not be used."""
        return _context(self)


@functools.lru_cache(maxsize=8)
def _context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca is not None:
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"--ca: no PEM CA certificate in {settings.ca}: {_problem(error)}") from None
    if settings.cert is not None:
        try:
            context.load_cert_chain(settings.cert, settings.key)
        except (OSError, ssl.SSLError) as error:
            files = settings.cert if settings.key is None else f"{settings.cert} and {settings.key}"
            raise ValueError(f"--cert/--key: no usable certificate and key in {files}: {_problem(error)}") from None
    if settings.alpn:
        context.set_alpn_protocols(list(settings.alpn))
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _problem(error: OSError | ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return str(error.strerror or error)


@dataclass(frozen=True)
class DialOptions:
    """How to open a connection. ``banner``: the server sends one line first (skip it);
    ``expect_banner``: a regular expression that line must contain (implies banner).
    ``banner_flags`` are the names the caller's users know these two by, for messages."""

    tls: TlsSettings | None = None
    udp: bool = False
    proxy_version: str | None = None
    proxy_source: tuple[str, int] | None = None
    banner: bool = False
    expect_banner: str | None = None
    banner_flags: tuple[str, str] = field(default=("--banner", "--expect-banner"))

    @property
    def reads_banner(self) -> bool:
        return self.banner or self.expect_banner is not None


PLAIN = DialOptions()


@dataclass
class Stream:
    sock: socket.socket  # an ssl.SSLSocket with --tls; blocking, with the timeout set
    banner: str | None  # the banner line without its line end, if one was read
    target: str


def format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shown(text: str, limit: int = 120) -> str:
    """Text from the network made safe to print: quoted, controls escaped, cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def tls_problem(error: ssl.SSLError) -> str:
    """OpenSSL's reason, with what to do where the reason alone does not say."""
    reason = str(error.reason or error)
    if reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return f"{reason} (does the server want a client certificate? pass --cert and --key)"
    if reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_MESSAGE"):  # plain text; a plain echo of our hello
        return f"{reason} (is it a TLS port?)"
    return reason


def first_line(data: bytes) -> str | None:
    """The first line of ``data`` if it looks like a banner: a non-empty line of
    printable UTF-8 text, ended by a newline within BANNER_MAX_BYTES."""
    end = data.find(b"\n", 0, BANNER_MAX_BYTES)
    if end < 0:
        return None
    try:
        text = data[:end].removesuffix(b"\r").decode()
    except UnicodeDecodeError:
        return None
    return text if text.strip() and not CONTROL_CHARACTERS.search(text) else None


def open_stream(host: str, port: int, options: DialOptions, timeout: float) -> Stream:
    """Connect, send the PROXY header, shake hands, read the banner; see the module docstring."""
    target = format_target(host, port)
    sock = _connect(host, port, timeout, target)
    try:
        if options.proxy_version is not None:
            _send_proxy_header(sock, options, target)
        if options.tls is not None:
            sock = _handshake(sock, host, options.tls, target, timeout)
        banner = read_banner(sock, options, target, timeout) if options.reads_banner else None
    except BaseException:
        sock.close()
        raise
    return Stream(sock, banner, target)


def open_datagram(host: str, port: int, timeout: float) -> tuple[socket.socket, str]:
    """A UDP socket connected to the server (so an ICMP "port unreachable" is seen)."""
    target = format_target(host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as error:
        raise ConnectFailed(f"cannot resolve {host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except OSError as error:
        sock.close()
        raise ConnectFailed(f"cannot reach {target}/udp: {error.strerror or error}") from None
    return sock, target


def _connect(host: str, port: int, timeout: float, target: str) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as error:
        raise ConnectFailed(f"cannot resolve {host!r}: {error.strerror}") from None
    except ConnectionRefusedError:
        raise ConnectFailed(f"connection to {target} refused: is the server running?") from None
    except TimeoutError:
        raise EchoTimeout(f"connecting to {target} timed out after {timeout:g} s") from None
    except OSError as error:
        raise ConnectFailed(f"cannot connect to {target}: {error.strerror or error}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_proxy_header(sock: socket.socket, options: DialOptions, target: str) -> None:
    assert options.proxy_version is not None
    source = options.proxy_source or sock.getsockname()[:2]
    try:
        header = proxy_header.encode(options.proxy_version, source, sock.getpeername()[:2])
    except ValueError as error:
        raise BadOption(f"--proxy-source: {error}") from None
    try:
        sock.sendall(header)
    except OSError as error:
        raise ConnectionReset(f"{target} closed the connection before its PROXY header was sent: {error}") from None


def _handshake(sock: socket.socket, host: str, settings: TlsSettings, target: str, timeout: float) -> ssl.SSLSocket:
    try:
        return tls_wrap.wrap(settings.context(), sock, server_hostname=settings.sni or host)
    except ssl.SSLCertVerificationError as error:
        raise ConnectFailed(
            f"TLS: cannot verify {target}'s certificate: {error.verify_message} "
            "(pass --ca FILE with the CA that signed it, --sni NAME for the name it holds, or --insecure)"
        ) from None
    except ssl.SSLError as error:
        raise ConnectFailed(f"TLS handshake with {target} failed: {tls_problem(error)}") from None
    except TimeoutError:
        raise EchoTimeout(f"TLS handshake with {target} timed out after {timeout:g} s") from None
    except OSError as error:
        raise ConnectionReset(
            f"{target} closed the connection during the TLS handshake: {error.strerror or error} (is it a TLS port?)"
        ) from None


def read_banner(sock: socket.socket, options: DialOptions, target: str, timeout: float) -> str:
    """The first line, read whole and not one byte further (peeking on plain TCP; on TLS
    a byte at a time, as the TLS layer cannot peek). BannerError names the option."""
    flag, expect_flag = options.banner_flags
    line = bytearray()
    while not line.endswith(b"\n"):
        if len(line) >= BANNER_MAX_BYTES:
            raise BannerError(f"{target} sent {len(line)} bytes without a line end: that is no banner line ({flag})")
        try:
            if isinstance(sock, ssl.SSLSocket):
                chunk = sock.recv(1)
            else:
                peeked = sock.recv(BANNER_MAX_BYTES - len(line), socket.MSG_PEEK)
                chunk = sock.recv(peeked.find(b"\n") + 1 or len(peeked)) if peeked else b""
        except TimeoutError:
            raise BannerError(
                f"no banner line from {target} within {timeout:g} s: does the server send one? "
                f"(drop {flag} if it is not run with --banner)"
            ) from None
        except ssl.SSLError as error:
            raise ConnectionReset(
                f"TLS: {target} ended the session before its banner line: {tls_problem(error)}"
            ) from None
        except OSError as error:
            raise ConnectionReset(f"{target} reset the connection before its banner line: {error.strerror}") from None
        if not chunk:
            raise BannerError(f"{target} closed the connection before its banner line ended ({flag})")
        line += chunk
    text = line.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
    if options.expect_banner is not None and re.search(options.expect_banner, text) is None:
        raise BannerError(f"the banner line {shown(text)} does not match {expect_flag} {options.expect_banner!r}")
    return text
