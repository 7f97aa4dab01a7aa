"""echo-service: a production TCP echo server (RFC 862) on the standard library."""

__version__ = "0.1.0"
