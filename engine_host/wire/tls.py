"""TLS for the engine host: a self-signed certificate for local mode and the TLS 1.3-only server context.

Key type: ECDSA P-256. RFC 8446 section 9.1 makes ecdsa_secp256r1_sha256 mandatory to implement for
every TLS 1.3 client, so every client that can reach us at all (libpq, JDBC, psycopg, asyncpg,
pg8000) can verify it. It gives the same ~128-bit security level as RSA 3072 with a key generated
in milliseconds instead of up to a second, and a smaller handshake.

Cipher suites: Python's ``ssl`` module (3.11 here, OpenSSL 3.0) has no binding for
``SSL_CTX_set_ciphersuites``; ``set_ciphers`` only touches the TLS 1.2-and-older list. The TLS 1.3
suites a context offers are OpenSSL's defaults as adjusted by the OpenSSL configuration file
(``Ciphersuites =`` in the ``system_default`` section, or whatever ``OPENSSL_CONF`` points at). The
OpenSSL defaults are exactly the three suites we want (TLS_AES_256_GCM_SHA384,
TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256), and we checked that an ``OPENSSL_CONF``
overriding ``Ciphersuites`` really changes what ``SSLContext.get_ciphers()`` reports. So
`server_ssl_context` cannot set the suites; it reads them back with ``get_ciphers()`` and refuses
to build a context (`TlsConfigurationError`) when they are not exactly those three. Failing closed
at startup beats serving a suite the security review never approved.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hd_core.errors import HdError
from hd_core.files import write_file_atomically

log = logging.getLogger(__name__)

CERT_FILENAME = "server.crt"
KEY_FILENAME = "server.key"

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

# About a year: long enough that a laptop setup is not re-trusted every week, short enough that a
# forgotten dev certificate does not live forever.
CERT_LIFETIME = dt.timedelta(days=365)
# Warn this long before expiry, so the operator replaces the certificate before clients start refusing it.
RENEW_BEFORE = dt.timedelta(days=7)
# Backdate notBefore a little: a client whose clock runs slightly behind would otherwise reject a
# certificate generated a second ago.
CLOCK_SKEW = dt.timedelta(minutes=5)

TLS13_CIPHER_SUITES: frozenset[str] = frozenset(
    {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}
)

# Only consulted if someone lowers the minimum version below 1.3 (which this module never does):
# then at least only forward-secret AEAD suites are possible. Also keeps get_ciphers() short.
_LEGACY_CIPHER_STRING = "ECDHE+AESGCM:ECDHE+CHACHA20"

# PostgreSQL 17 clients using `sslnegotiation=direct` start TLS without SSLRequest and insist that
# the server selects this ALPN protocol; clients that send no ALPN are unaffected.
POSTGRES_ALPN = "postgresql"


class TlsConfigurationError(RuntimeError):
    """The TLS library on this host cannot be made to offer exactly the approved TLS 1.3 suites."""


class TlsFilesUnusable(HdError):
    """A certificate or key file is present but cannot be served; it is the operator's, so it is never replaced."""

    code = "HD_ERR_TLS_FILES_UNUSABLE"
    exit_code = 4


def ensure_self_signed_certificate(tls_dir: Path, hostnames: Sequence[str] = DEFAULT_HOSTNAMES) -> tuple[Path, Path]:
    """Return (certificate, private key) paths in `tls_dir`, generating a self-signed pair only when neither exists.

    A pair that is present is the operator's and is never replaced: one file without the other, an
    unreadable file, a key that does not belong to the certificate, or a certificate outside its
    validity period raises `TlsFilesUnusable` saying what to do. A certificate close to expiry, or
    one that does not name every entry of `hostnames`, is served with a warning (a certificate made
    for the operator's own host name need not cover localhost).
    """
    if not hostnames:
        raise ValueError("at least one hostname is required")
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _restrict_mode(tls_dir, 0o700)
    cert_path = tls_dir / CERT_FILENAME
    key_path = tls_dir / KEY_FILENAME

    if cert_path.exists() or key_path.exists():
        _check_existing_pair(cert_path, key_path, hostnames)
        _restrict_mode(key_path, 0o600)
        log.debug("reusing TLS certificate %s", cert_path)
        return cert_path, key_path

    log.info("generating self-signed TLS certificate in %s", tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_certificate(key, hostnames)
    # Key first: if we are interrupted between the two writes, the next start finds a key without a
    # certificate and refuses with instructions, rather than serving a stale pair.
    write_file_atomically(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_file_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info(
        "TLS certificate %s valid until %s, SHA-256 fingerprint %s",
        cert_path,
        cert.not_valid_after_utc.isoformat(),
        cert.fingerprint(hashes.SHA256()).hex(":"),
    )
    return cert_path, key_path


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context that speaks TLS 1.3 only, with exactly the three approved cipher suites."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(_LEGACY_CIPHER_STRING)
    # TLS 1.3 has no renegotiation and no compression; the flags make that explicit should the
    # version floor ever move. Session tickets are off: Postgres clients hold long connections and
    # do not resume, and tickets sealed under a process-lifetime key would weaken forward secrecy.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_NONE  # clients authenticate with an API key or JWT, not a certificate
    ctx.set_alpn_protocols([POSTGRES_ALPN])
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))

    offered = offered_tls13_cipher_suites(ctx)
    if offered != TLS13_CIPHER_SUITES:
        raise TlsConfigurationError(
            f"this OpenSSL ({ssl.OPENSSL_VERSION}) offers TLS 1.3 suites {sorted(offered)}, expected exactly "
            f"{sorted(TLS13_CIPHER_SUITES)}; Python cannot set TLS 1.3 suites, so remove the `Ciphersuites` "
            "override from the OpenSSL configuration (see OPENSSL_CONF)"
        )
    return ctx


def offered_tls13_cipher_suites(ctx: ssl.SSLContext) -> frozenset[str]:
    """The TLS 1.3 cipher suites `ctx` would negotiate, as OpenSSL reports them."""
    return frozenset(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3")


def _check_existing_pair(cert_path: Path, key_path: Path, hostnames: Sequence[str]) -> None:
    """Raise `TlsFilesUnusable` unless the pair can be served; warn about what does not stop serving."""
    recovery = (f"hd never replaces a certificate: put a valid certificate and its key there, or delete both "
                f"{cert_path} and {key_path} to have a new self-signed pair made at the next start")
    missing = [path for path in (cert_path, key_path) if not path.exists()]
    if missing:
        raise TlsFilesUnusable(f"TLS file {missing[0]} is missing but {cert_path.parent} holds the other half of "
                               f"the pair; {recovery}")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise TlsFilesUnusable(f"TLS certificate {cert_path} cannot be read ({_reason(exc)}); {recovery}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsFilesUnusable(f"TLS private key {key_path} cannot be read ({_reason(exc)}); {recovery}") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise TlsFilesUnusable(f"TLS private key {key_path} does not belong to certificate {cert_path}; {recovery}")
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now:
        raise TlsFilesUnusable(
            f"TLS certificate {cert_path} is valid only from {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}, not now; {recovery}")
    if cert.not_valid_after_utc - now <= RENEW_BEFORE:
        log.warning("TLS certificate %s expires at %s; replace it (or delete both files for a new self-signed pair) "
                    "before then", cert_path, cert.not_valid_after_utc.isoformat())
    uncovered = _uncovered_names(cert, hostnames)
    if uncovered:
        log.warning("TLS certificate %s does not name %s: clients verifying the host name there will refuse it",
                    cert_path, ", ".join(uncovered))


def _public_der(public_key: object) -> bytes:
    if not hasattr(public_key, "public_bytes"):
        return b""
    der: bytes = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (OpenSSL's can span several)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split())[:200] or type(exc).__name__


def _uncovered_names(cert: x509.Certificate, hostnames: Sequence[str]) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(hostnames)
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    missing = []
    for name in hostnames:
        ip = _as_ip(name)
        if (ip is not None and ip not in ips) or (ip is None and name.lower() not in dns):
            missing.append(name)
    return missing


def _as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _build_certificate(key: ec.EllipticCurvePrivateKey, hostnames: Sequence[str]) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for name in hostnames:
        ip = _as_ip(name)
        names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name.lower()))
    common_name = next((n for n in hostnames if _as_ip(n) is None), hostnames[0])
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hardened Duck local development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # A leaf, not a CA: strict verifiers (rustls, webpki) refuse a CA certificate as the server's.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Key identifiers: OpenSSL 3.x strict mode (Python 3.13's default client context) wants the AKI.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _restrict_mode(path: Path, mode: int) -> None:
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        log.warning("tightening permissions of %s from %o to %o", path, current, mode)
        path.chmod(mode)


class CertificateReloader:
    """Puts a renewed certificate into a live server context: new handshakes present it, no restart needed.

    Connections already open keep the certificate they were made with (OpenSSL copies it into each connection
    when the connection is created). A pair that fails the same checks as at startup (unparsable, key not
    matching) is refused and the context keeps serving the previous one.
    """

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self._context = context
        self._cert = cert
        self._key = key
        self._loaded = cert.read_bytes()

    @property
    def not_valid_after(self) -> dt.datetime:
        """When the certificate served now expires (UTC)."""
        return x509.load_pem_x509_certificate(self._loaded).not_valid_after_utc

    def reload_if_changed(self) -> bool:
        """Load the files again if the certificate changed; True when a new one is now served.

        Call it on the thread that runs the server's handshakes (the event loop), so no handshake sees a
        certificate without its key. Raises TlsFilesUnusable (the old pair stays) for a pair that does not work.
        """
        current = self._cert.read_bytes()
        if current == self._loaded:
            return False
        try:
            server_ssl_context(self._cert, self._key)  # the startup checks, on a throwaway context first
            self._context.load_cert_chain(certfile=str(self._cert), keyfile=str(self._key))
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise TlsFilesUnusable(f"the renewed TLS pair {self._cert} / {self._key} is unusable ({_reason(exc)}); "
                                   "still serving the previous certificate") from None
        self._loaded = current
        log.info("serving the renewed TLS certificate from %s (valid until %s)", self._cert,
                 self.not_valid_after.isoformat())
        return True
