"""What a finished TLS handshake says about the client, for reflection: version, cipher,
SNI, the negotiated ALPN protocol, resumption and the client certificate.

    context.sni_callback = record_sni         # tls.build_context installs it
    facts = tls_facts(ssl_sock)                # after do_handshake(): a JSON-ready dict

The server side of Python's ``ssl`` does not keep the SNI the client sent, so the
context's SNI callback writes it on the SSLSocket (an attribute of ours) during the
handshake, on the thread doing the handshake; ``tls_facts`` reads it back there.

The client certificate is only known when it was asked for and verified (mTLS,
``--tls-client-ca``); ``getpeercert()`` is empty otherwise and ``client_cert`` is left
out. Text from the certificate or the client is cut to TEXT_MAX_CHARS (and SANs to
SAN_MAX_ITEMS), so the facts of one connection stay small; escaping is the JSON
encoder's job (reflection.py).

``tls_facts`` and ``record_sni`` run on the connection's scheduler thread; the rest
anywhere.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

TEXT_MAX_CHARS = 255
SAN_MAX_ITEMS = 16
_SNI_ATTRIBUTE = "_echo_sni"
# RFC 4514's short names for the attributes a subject usually holds; others keep Python's name.
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
}


def record_sni(sock: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
    """The context's SNI callback: keep the name the client asked for (None: it sent none)."""
    setattr(sock, _SNI_ATTRIBUTE, server_name)


def tls_facts(sock: ssl.SSLSocket) -> dict[str, Any]:
    """The handshake's facts; call after it has completed."""
    cipher = sock.cipher()
    facts: dict[str, Any] = {
        "version": sock.version(),
        "cipher": cipher[0] if cipher else None,
        "sni": _cut(getattr(sock, _SNI_ATTRIBUTE, None)),
        "alpn": sock.selected_alpn_protocol(),
        "resumed": sock.session_reused,
    }
    cert = sock.getpeercert()
    if cert:
        facts["client_cert"] = client_cert_facts(cert)
    return facts


def client_cert_facts(cert: dict[str, Any]) -> dict[str, Any]:
    """``getpeercert()``'s dict -> subject, issuer, serial, san, not_after (ISO 8601, UTC)."""
    not_after = cert.get("notAfter")
    return {
        "subject": _cut(distinguished_name(cert.get("subject", ()))),
        "issuer": _cut(distinguished_name(cert.get("issuer", ()))),
        "serial": _cut(cert.get("serialNumber")),
        "san": [_cut(f"{kind}:{value}") for kind, value in cert.get("subjectAltName", ())[:SAN_MAX_ITEMS]],
        "not_after": _iso_time(not_after) if isinstance(not_after, str) else None,
    }


def distinguished_name(rdns: Any) -> str:
    """Python's ((('commonName', 'x'),), ...) -> "CN=x,O=y", in the certificate's order."""
    parts = []
    for rdn in rdns:
        parts.append("+".join(f"{_SHORT_NAMES.get(key, key)}={_escape_dn(value)}" for key, value in rdn))
    return ",".join(parts)


def _escape_dn(value: str) -> str:
    """The characters RFC 4514 escapes in a value, so that the name reads back unambiguously."""
    return "".join("\\" + char if char in ',+"\\<>;=' else char for char in value)


def _iso_time(text: str) -> str | None:
    try:
        seconds = ssl.cert_time_to_seconds(text)
    except ValueError:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:TEXT_MAX_CHARS]
