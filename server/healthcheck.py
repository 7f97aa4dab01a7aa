"""``python3 -m server healthcheck``: exit 0 if the admin endpoint's /healthz answers 200
within a second, else 1. The container's HEALTHCHECK runs it (the image has no curl).

It reads the admin port and host from ``--admin-port``/``--admin-host`` or the same
environment variables as the server, so inside the container it needs no arguments.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from collections.abc import Mapping, Sequence

from server.config import DEFAULT_ADMIN_PORT, ConfigError, parse_value

TIMEOUT_S = 1.0


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="echo-server healthcheck", description=__doc__)
    parser.add_argument("--admin-port", help="admin port to probe [env ECHO_ADMIN_PORT; default 7008]")
    parser.add_argument("--admin-host", help="admin host to probe [env ECHO_ADMIN_HOST; default 127.0.0.1]")
    args = parser.parse_args(list(argv))
    try:
        port_text = args.admin_port or environ.get("ECHO_ADMIN_PORT") or str(DEFAULT_ADMIN_PORT)
        port = parse_value("admin_port", port_text)
    except ConfigError as error:
        print(f"healthcheck: --admin-port: {error.problem}", file=sys.stderr)
        return 2
    if port is None:
        print("healthcheck: the admin endpoint is off", file=sys.stderr)
        return 1
    host = args.admin_host or environ.get("ECHO_ADMIN_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        print(f"healthcheck: http://{host}:{port}/healthz: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if status != 200:
        print(f"healthcheck: http://{host}:{port}/healthz answered {status}", file=sys.stderr)
        return 1
    return 0
