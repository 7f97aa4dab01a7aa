"""What can go wrong talking to an echo server: one EchoError subclass per cause, each
with a message a user understands (never a bare socket traceback). Any thread may
raise or read these; nothing here does I/O."""

from __future__ import annotations


class EchoError(Exception):
    """Anything that went wrong talking to the echo server."""


class ConnectFailed(EchoError):
    """Could not connect: refused, unreachable, the name does not resolve, or TLS failed."""


class EchoTimeout(EchoError):
    """The server did not answer within the timeout."""


class ConnectionReset(EchoError):
    """The server (or something in between) reset the connection."""


class ShortEcho(EchoError):
    """The connection ended before the whole echo came back."""


class EchoMismatch(EchoError):
    """The echo differs from what was sent."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class UnexpectedBanner(EchoMismatch):
    """The echo differs because the server sent a line of its own first (a banner) and
    the client was not told to expect one. ``line`` is that line, as text."""

    def __init__(self, message: str, offset: int, line: str) -> None:
        super().__init__(message, offset)
        self.line = line


class BannerError(EchoError):
    """The banner line the client was told to expect is missing or does not match."""


class BadOption(EchoError):
    """An option does not fit the connection it was used on (found only once connected)."""


def exit_code(error: EchoError) -> int:
    """echo-client's exit code for ``error``: 2 for a check that failed (an echo or a
    banner that differed) or an option that does not fit, 1 for everything else."""
    return 2 if isinstance(error, EchoMismatch | BannerError | BadOption) else 1
