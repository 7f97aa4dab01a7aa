"""The admin port's /faults: read, replace and clear the fault policy.

    GET    /faults   200 {"rules": [...], "fired": [...], "left": [...], "active": [...]}
    PUT    /faults   body: a JSON list of rules (server/faults/rules.py); replaces the policy
    DELETE /faults   clears it

With ``--faults off`` the server has no policy and every /faults request is a 404, as
for any unknown path. A PUT body is at most MAX_BODY bytes, sent with Content-Length
(no chunked bodies), and must be a valid policy as a whole: otherwise a 400 (413 when
too large) with the reason in one line, and nothing changes. With an admin token
(``--admin-token-file``), PUT and DELETE must carry ``Authorization: Bearer TOKEN``
(401 otherwise); GET stays open, like /metrics.

``answer`` runs on an admin handler thread; the policy is thread-safe, and this module
keeps no state of its own. Every change is published as a ``faults_changed`` event.
With faults off the admin imports this module but none of server/faults/ (its imports
are made where faults are on).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from server.faults.policy import FaultPolicy

MAX_BODY = 65_536  # a policy of MAX_RULES rules fits many times over
MAX_TOKEN_BYTES = 4096

Answer = tuple[int, str, dict[str, str]]  # status, body (JSON or one line), extra headers


def _series() -> tuple[tuple[str, str], ...]:
    """Every (kind, listener) a fault can be counted under, so each series exists from the start."""
    from server.faults.rules import CONNECTION_KINDS, DATAGRAM_KINDS

    return (
        *((kind, listener) for kind in CONNECTION_KINDS for listener in ("tcp", "tls")),
        ("delay", "udp"),
        *((kind, "udp") for kind in DATAGRAM_KINDS),
        *(("refuse", listener) for listener in ("all", "tcp", "tls")),
        ("unready", "all"),
        ("unhealthy", "all"),
    )


def policy_of(view: object) -> FaultPolicy | None:
    """The server's fault policy, or None when faults are off."""
    return cast("FaultPolicy | None", getattr(view, "faults", None))


def load_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); ValueError says why not."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_BYTES + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise ValueError(f"{path}: a token is at most {MAX_TOKEN_BYTES} bytes")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token must be printable ASCII") from None
    if not token or not token.isprintable() or " " in token:
        raise ValueError(f"{path}: expected one token (printable ASCII, no spaces)")
    return token


def answer(
    policy: FaultPolicy,
    method: str,
    header: Callable[[str], str | None],
    read_body: Callable[[int], bytes],
    token: str | None,
    publish: Callable[[str, dict[str, Any]], None],
) -> Answer:
    """Serve one /faults request; ``header(name)`` is a request header or None (any case),
    ``read_body(n)`` reads exactly n bytes of the body."""
    from server.faults.rules import FaultRuleError, rules_from_json_text

    if method in ("GET", "HEAD"):
        return 200, _json(policy.snapshot()), {}
    if method not in ("PUT", "DELETE"):
        return 405, "method not allowed: GET, PUT or DELETE\n", {"Allow": "GET, HEAD, PUT, DELETE"}
    if token is not None and not _authorized(header("Authorization") or "", token):
        return 401, "a bearer token is required: Authorization: Bearer TOKEN\n", {"WWW-Authenticate": "Bearer"}
    if method == "DELETE":
        policy.clear()
        publish("faults_changed", {"rules": 0})
        return 200, _json(policy.snapshot()), {}
    if header("Transfer-Encoding") is not None:
        return 400, "send the policy with Content-Length, not a chunked body\n", {}
    length_text = (header("Content-Length") or "").strip()
    if not length_text.isdigit():
        return 400, "a PUT needs a Content-Length and a JSON list of rules\n", {}
    length = int(length_text)
    if length > MAX_BODY:
        return 413, f"the policy is larger than {MAX_BODY} bytes\n", {}
    body = read_body(length)
    try:
        rules = rules_from_json_text(body.decode("utf-8"))
    except UnicodeDecodeError:
        return 400, "the body is not UTF-8\n", {}
    except FaultRuleError as error:
        return 400, f"{error}\n", {}
    policy.replace(rules)
    publish("faults_changed", {"rules": len(rules), "kinds": ",".join(rule.kind for rule in rules)})
    return 200, _json(policy.snapshot()), {}


def _authorized(header: str, token: str) -> bool:
    import hmac

    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _json(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"


def render_metrics(policy: FaultPolicy) -> str:
    """``echo_faults_injected_total{kind,listener}`` in Prometheus text (any thread)."""
    counts = policy.injected()
    lines = [
        "# HELP echo_faults_injected_total Faults applied: connections or datagrams that drew one, states set.",
        "# TYPE echo_faults_injected_total counter",
    ]
    series = _series()
    for kind, listener in (*series, *sorted(set(counts) - set(series))):
        lines.append(
            f'echo_faults_injected_total{{kind="{kind}",listener="{listener}"}} {counts.get((kind, listener), 0)}'
        )
    return "\n".join(lines) + "\n"
