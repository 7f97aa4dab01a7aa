"""The TLS server context: certificate and key loaded and checked, optional client CA, reload.

    tls = TlsContext.load(cert, key, client_ca)   # raises TlsError naming the setting at fault
    tls.context                        # the ssl.SSLContext new connections are wrapped with
    tls.reload()                       # SIGHUP: re-read the files; keep the old ones if bad

Settings: TLS 1.2 at least, the ``ssl`` module's secure defaults for a server
(``create_default_context(Purpose.CLIENT_AUTH)``: no compression, strong ciphers,
server cipher preference), no renegotiation (it would let a client make the server
write while it asked to read). With ``tls_client_ca`` the client must present a
certificate signed by one of those CAs (mTLS); without, none is asked for. With
``tls_alpn`` the server offers those ALPN protocols (a client offering none of them
still connects, with no protocol). The SNI callback records the client's server name
(tls_facts.py), for reflection.

Every file problem becomes a TlsError whose ``setting`` names the file's setting: a
file that is missing or unreadable, a certificate that is not PEM, a key that is not
PEM, encrypted or not the certificate's. An encrypted key is never prompted for.

Threads: ``load`` and ``reload`` run on the thread that starts the server or handles
SIGHUP (the main thread); ``context`` may be read from any thread (one attribute, swapped
whole by ``reload``: a connection being wrapped gets the old or the new, never a mix).
"""

from __future__ import annotations

import logging
import ssl

from server.engine.tls_facts import record_sni
from server.lib.alpn import alpn_protocols

log = logging.getLogger("echo.tls")


class TlsError(Exception):
    """A TLS file or setting is unusable. ``setting`` is the Config field at fault."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def _no_passphrase() -> bytes:
    raise TlsError("tls_key", "is encrypted; give an unencrypted key (mount it read-only)")


def _problem(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)


def _check_readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise TlsError(setting, f"cannot read {path}: {_problem(error)}") from None


def build_context(cert: str, key: str, client_ca: str | None, alpn: str | None = None) -> ssl.SSLContext:
    """A server context from the files (and the --tls-alpn list); raises TlsError naming
    the file at fault. Its SNI callback keeps the client's server name for reflection."""
    for setting, path in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", client_ca)):
        if path is not None:
            _check_readable(setting, path)
    try:  # the certificate alone first, so that a bad one is not blamed on the key
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError) as error:
        raise TlsError("tls_cert", f"no PEM certificate in {cert}: {_problem(error)}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (ssl.SSLError, OSError) as error:
        if "KEY_VALUES_MISMATCH" in str(error) or "key values mismatch" in str(error):
            raise TlsError("tls_key", f"{key} is not the key of the certificate in {cert}") from None
        raise TlsError("tls_key", f"cannot load the key in {key}: {_problem(error)}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as error:
            raise TlsError("tls_client_ca", f"no PEM CA certificate in {client_ca}: {_problem(error)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn_protocols(alpn))
    context.sni_callback = record_sni
    return context


class TlsContext:
    """The current server context and the files it came from; see the module docstring."""

    def __init__(
        self, cert: str, key: str, client_ca: str | None, context: ssl.SSLContext, alpn: str | None = None
    ) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.alpn = alpn
        self.context = context

    @classmethod
    def load(cls, cert: str | None, key: str | None, client_ca: str | None, alpn: str | None = None) -> TlsContext:
        """The files of --tls-cert, --tls-key and --tls-client-ca, and --tls-alpn (plain
        values: the engine never reads Config)."""
        if cert is None:
            raise TlsError("tls_cert", "required with --tls-port (a PEM certificate file)")
        if key is None:
            raise TlsError("tls_key", "required with --tls-port (a PEM private key file)")
        return cls(cert, key, client_ca, build_context(cert, key, client_ca, alpn), alpn)

    def reload(self) -> bool:
        """Re-read the files for new connections; on a problem keep the current ones and
        log one error. Open connections are not touched. True if reloaded."""
        try:
            context = build_context(self.cert, self.key, self.client_ca, self.alpn)
        except TlsError as error:
            log.error("TLS reload failed, keeping the certificate in use: %s", error)
            return False
        self.context = context
        log.info("TLS certificate and key reloaded from %s and %s", self.cert, self.key)
        return True
