"""echo-service's client: the EchoClient library and the ``echo-client`` command."""

from client.library import (
    ConnectFailed,
    ConnectionReset,
    EchoClient,
    EchoError,
    EchoMismatch,
    EchoTimeout,
    ShortEcho,
)

__all__ = [
    "ConnectFailed",
    "ConnectionReset",
    "EchoClient",
    "EchoError",
    "EchoMismatch",
    "EchoTimeout",
    "ShortEcho",
]
