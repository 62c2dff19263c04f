"""The local-mode certificate and the TLS 1.3-only server context."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine_host import tls
from engine_host.tls import (
    TLS13_CIPHER_SUITES,
    ensure_self_signed_certificate,
    offered_tls13_cipher_suites,
    server_ssl_context,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load(cert: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.read_bytes())


def test_first_call_generates_a_private_key_readable_only_by_the_owner(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"

    cert, key = ensure_self_signed_certificate(tls_dir)

    assert cert.parent == key.parent == tls_dir
    assert _mode(tls_dir) == 0o700
    assert _mode(key) == 0o600
    assert _mode(cert) == 0o644
    assert [p.name for p in sorted(tls_dir.iterdir())] == ["server.crt", "server.key"]  # no temp files left


def test_certificate_is_an_ecdsa_p256_leaf_for_localhost_valid_for_about_a_year(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed_certificate(tmp_path / "tls")
    cert = _load(cert_path)

    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key().public_numbers() == public_key.public_numbers()  # type: ignore[union-attr]


def test_second_call_reuses_the_existing_files(tmp_path: Path) -> None:
    cert, key = ensure_self_signed_certificate(tmp_path / "tls")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cert, key)}

    again = ensure_self_signed_certificate(tmp_path / "tls")

    assert again == (cert, key)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cert, key)} == before


def test_certificate_within_seven_days_of_expiry_is_regenerated_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tls, "CERT_LIFETIME", dt.timedelta(days=3))
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")
    old_serial = _load(cert).serial_number
    monkeypatch.undo()

    with caplog.at_level(logging.WARNING, logger="engine_host.tls"):
        ensure_self_signed_certificate(tmp_path / "tls")

    assert _load(cert).serial_number != old_serial
    assert _load(cert).not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert "regenerating" in caplog.text


def test_a_key_that_does_not_match_the_certificate_is_replaced(tmp_path: Path) -> None:
    cert, key = ensure_self_signed_certificate(tmp_path / "tls")
    old_serial = _load(cert).serial_number
    stranger = ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(
        stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    ensure_self_signed_certificate(tmp_path / "tls")

    assert _load(cert).serial_number != old_serial
    server_ssl_context(cert, key)  # load_cert_chain would fail on a mismatched pair


def test_unreadable_files_are_regenerated(tmp_path: Path) -> None:
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")
    cert.write_text("not a certificate")

    ensure_self_signed_certificate(tmp_path / "tls")

    _load(cert)


def test_a_new_hostname_triggers_a_certificate_that_covers_it(tmp_path: Path) -> None:
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")

    ensure_self_signed_certificate(tmp_path / "tls", hostnames=("localhost", "engine.internal", "10.0.0.5"))

    san = _load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "engine.internal"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]


def test_loosened_permissions_are_tightened_again(tmp_path: Path) -> None:
    _, key = ensure_self_signed_certificate(tmp_path / "tls")
    key.chmod(0o644)
    (tmp_path / "tls").chmod(0o755)

    ensure_self_signed_certificate(tmp_path / "tls")

    assert _mode(key) == 0o600
    assert _mode(tmp_path / "tls") == 0o700


def test_server_context_speaks_tls13_only(tmp_path: Path) -> None:
    ctx = server_ssl_context(*ensure_self_signed_certificate(tmp_path / "tls"))

    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_server_context_offers_exactly_the_three_approved_tls13_suites(tmp_path: Path) -> None:
    ctx = server_ssl_context(*ensure_self_signed_certificate(tmp_path / "tls"))

    approved = {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}
    assert TLS13_CIPHER_SUITES == approved
    assert offered_tls13_cipher_suites(ctx) == approved


def test_server_context_disables_compression_renegotiation_and_session_tickets(tmp_path: Path) -> None:
    ctx = server_ssl_context(*ensure_self_signed_certificate(tmp_path / "tls"))

    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert ctx.options & flag == flag
    assert ctx.num_tickets == 0
    assert ctx.verify_mode == ssl.CERT_NONE


def test_server_context_refuses_an_openssl_that_offers_other_suites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = ensure_self_signed_certificate(tmp_path / "tls")
    monkeypatch.setattr(
        tls, "offered_tls13_cipher_suites", lambda ctx: frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_128_CCM_SHA256"})
    )

    with pytest.raises(tls.TlsConfigurationError, match="TLS_AES_128_CCM_SHA256"):
        server_ssl_context(cert, key)
