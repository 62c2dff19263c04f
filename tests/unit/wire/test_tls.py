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

from engine_host.wire import tls
from engine_host.wire.tls import (
    TLS13_CIPHER_SUITES,
    TlsFilesUnusable,
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


def _contents(tls_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(tls_dir.iterdir())}


def _expect_refusal(tls_dir: Path, *words: str) -> None:
    before = _contents(tls_dir)
    with pytest.raises(TlsFilesUnusable) as refused:
        ensure_self_signed_certificate(tls_dir)
    message = str(refused.value)
    assert "\n" not in message
    assert all(word in message for word in words), message
    assert "delete both" in message  # what to do
    assert _contents(tls_dir) == before  # never replaced


def test_certificate_within_seven_days_of_expiry_is_kept_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tls, "CERT_LIFETIME", dt.timedelta(days=3))
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")
    before = cert.read_bytes()
    monkeypatch.undo()

    with caplog.at_level(logging.WARNING, logger="engine_host.wire.tls"):
        ensure_self_signed_certificate(tmp_path / "tls")

    assert cert.read_bytes() == before
    assert "expires at" in caplog.text


def test_an_expired_certificate_is_refused_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "CERT_LIFETIME", dt.timedelta(seconds=-1))
    monkeypatch.setattr(tls, "CLOCK_SKEW", dt.timedelta(hours=1))
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")
    monkeypatch.undo()

    _expect_refusal(tmp_path / "tls", str(cert), "not now")


def test_a_key_that_does_not_match_the_certificate_is_refused_and_kept(tmp_path: Path) -> None:
    _, key = ensure_self_signed_certificate(tmp_path / "tls")
    stranger = ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(
        stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    _expect_refusal(tmp_path / "tls", str(key), "does not belong")


def test_an_unreadable_certificate_or_key_is_refused_and_kept(tmp_path: Path) -> None:
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls")
    cert.write_text("not a certificate")
    _expect_refusal(tmp_path / "tls", str(cert), "cannot be read")

    ensure_self_signed_certificate(tmp_path / "other")
    (tmp_path / "other" / "server.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    _expect_refusal(tmp_path / "other", "server.key", "cannot be read")


def test_half_a_pair_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    _, key = ensure_self_signed_certificate(tmp_path / "tls")
    key.unlink()

    _expect_refusal(tmp_path / "tls", str(key), "missing")


def test_a_certificate_without_the_local_names_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, _ = ensure_self_signed_certificate(tmp_path / "tls", hostnames=("engine.internal",))
    before = cert.read_bytes()

    with caplog.at_level(logging.WARNING, logger="engine_host.wire.tls"):
        ensure_self_signed_certificate(tmp_path / "tls")

    assert cert.read_bytes() == before
    assert "does not name localhost, 127.0.0.1, ::1" in caplog.text
    san = _load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["engine.internal"]


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
