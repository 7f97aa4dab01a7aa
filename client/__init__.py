"""echo-service's client: the EchoClient library and the ``echo-client`` command."""

from client.dial import DialOptions, TlsSettings
from client.library import (
    BadOption,
    BannerError,
    ConnectFailed,
    ConnectionReset,
    EchoClient,
    EchoError,
    EchoMismatch,
    EchoTimeout,
    ShortEcho,
    UnexpectedBanner,
)
from client.udp import UdpEchoClient

__all__ = [
    "BadOption",
    "BannerError",
    "ConnectFailed",
    "ConnectionReset",
    "DialOptions",
    "EchoClient",
    "EchoError",
    "EchoMismatch",
    "EchoTimeout",
    "ShortEcho",
    "TlsSettings",
    "UdpEchoClient",
    "UnexpectedBanner",
]
