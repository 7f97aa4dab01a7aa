"""TLS facts from real handshakes over loopback with a stdlib ssl client: SNI, ALPN
(the server offering x-echo), the client certificate, TLS 1.3 and 1.2, resumption;
and the --tls-alpn setting's checks."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest

from server.arguments import load_config
from server.config import Config, ConfigError
from server.engine.tls import build_context
from server.engine.tls_facts import TEXT_MAX_CHARS, client_cert_facts, distinguished_name, tls_facts
from tests.helpers import run_cli
from tests.pki import Pki


def _handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, sni: str | None, session: Any = None
) -> tuple[dict[str, Any], Any]:
    """One handshake on loopback; the server side's facts and the client's session."""
    facts: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            accepted, _ = listener.accept()
            with server_context.wrap_socket(accepted, server_side=True) as tls:
                facts.update(tls_facts(tls))
                tls.sendall(b"ok")  # lets a TLS 1.3 client take its session tickets

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname=sni, session=session) as client,
        ):
            assert client.recv(2) == b"ok"
            client_session = client.session
        thread.join(10)
    return facts, client_session


def alpn_client(pki: Pki, *, with_cert: bool = True, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False  # the certificate is for localhost; the SNI we send is a.example
    context.set_alpn_protocols(["h2", "x-echo"])
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    if maximum is not None:
        context.maximum_version = maximum
    return context


@pytest.mark.parametrize(("maximum", "version"), [(None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")])
def test_sni_alpn_and_the_client_certificate_are_reflected(
    pki: Pki,
    maximum: ssl.TLSVersion | None,
    version: str,
) -> None:
    server = build_context(str(pki.cert), str(pki.key), str(pki.ca), alpn="x-echo")
    facts, _ = _handshake(server, alpn_client(pki, maximum=maximum), "a.example")
    assert facts["version"] == version and facts["sni"] == "a.example" and facts["alpn"] == "x-echo"
    assert facts["cipher"] and facts["resumed"] is False
    cert = facts["client_cert"]
    assert cert["subject"] == "CN=echo client" and cert["issuer"] == "CN=test CA"
    assert int(cert["serial"], 16) == 1003 and cert["san"] == []
    assert cert["not_after"].endswith("Z") and cert["not_after"][:2] == "20"


def test_without_sni_alpn_or_mtls_those_facts_are_empty(pki: Pki) -> None:
    server = build_context(str(pki.cert), str(pki.key), None)  # --tls-alpn off, no client CA
    facts, _ = _handshake(server, alpn_client(pki, with_cert=False), None)
    assert facts["sni"] is None and facts["alpn"] is None and "client_cert" not in facts
    offered_other = build_context(str(pki.cert), str(pki.key), None, alpn="x-other")
    facts, _ = _handshake(offered_other, alpn_client(pki, with_cert=False), "a.example")
    assert facts["alpn"] is None and facts["sni"] == "a.example"  # no common protocol: still connects


def test_a_resumed_session_says_so(pki: Pki) -> None:
    server = build_context(str(pki.cert), str(pki.key), None)
    client = alpn_client(pki, with_cert=False, maximum=ssl.TLSVersion.TLSv1_2)
    first, session = _handshake(server, client, "a.example")
    again, _ = _handshake(server, client, "a.example", session)
    assert first["resumed"] is False and again["resumed"] is True


def test_certificate_names_are_escaped_and_cut() -> None:
    cert = {
        "subject": ((("commonName", 'a,b+"c"'),), (("organizationName", "O"), ("countryName", "DE"))),
        "issuer": ((("commonName", "x" * 1000),),),
        "serialNumber": "03EB",
        "subjectAltName": tuple(("DNS", f"n{i}.example") for i in range(40)),
        "notAfter": "Jun  1 12:00:00 2027 GMT",
    }
    facts = client_cert_facts(cert)
    assert facts["subject"] == 'CN=a\\,b\\+\\"c\\",O=O+C=DE'
    assert len(facts["issuer"]) == TEXT_MAX_CHARS and len(facts["san"]) == 16
    assert facts["not_after"] == "2027-06-01T12:00:00Z"
    assert distinguished_name(()) == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x-echo,,h2", "empty protocol"),
        ("x echo", "without spaces"),
        ("é", "printable ASCII"),
        (",".join("a" * 17), "at most 16"),
    ],
)
def test_bad_alpn_lists_are_refused_naming_the_setting(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"tls_alpn: .*{problem}"):
        Config(tls_alpn=text)


def test_alpn_from_a_flag_or_the_environment() -> None:
    assert load_config(["--tls-alpn", " x-echo , h2 "], {}).tls_alpn == "x-echo,h2"
    assert load_config([], {"ECHO_TLS_ALPN": ""}).tls_alpn is None
    result = run_cli([], {"ECHO_TLS_ALPN": "x-echo,,h2"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "tls_alpn" in result.stderr.replace("-", "_").lower()
