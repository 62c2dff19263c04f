"""TLS certificate rotation (issue 21, item 6) on moto: ACM Private CA issues, Secrets Manager holds the versions,
and the renewed pair is one the engine host accepts (its own startup checks) and then serves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from moto import mock_aws

from engine_host.wire.tls import ensure_self_signed_certificate, server_ssl_context
from functions.cert_rotation import handler
from hd_core.adapters.acm_pca import AcmPrivateCa
from hd_core.certificate_rotation import (
    CURRENT,
    PENDING,
    RenewedCertificateInvalid,
    RotationRefused,
    TlsBundle,
    TlsSecretRotation,
    served_names,
)
from hd_core.models import utc_now

REGION = "us-east-1"
NAME = "warehouse.internal.example.com"


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.secrets = boto3.client("secretsmanager", region_name=REGION)
        self.pca = boto3.client("acm-pca", region_name=REGION)
        self.ca_arn = self.pca.create_certificate_authority(
            CertificateAuthorityConfiguration={"KeyAlgorithm": "EC_prime256v1", "SigningAlgorithm": "SHA256WITHECDSA",
                                               "Subject": {"CommonName": "hd-private-ca"}},
            CertificateAuthorityType="ROOT")["CertificateAuthorityArn"]
        cert, key = ensure_self_signed_certificate(tmp_path / "initial", [NAME])
        self.initial = TlsBundle(cert.read_text(), key.read_text())
        self.arn = self.secrets.create_secret(Name="hd/engine-tls", SecretString=self.initial.json())["ARN"]
        self.lambda_arn = f"arn:aws:lambda:{REGION}:123456789012:function:hd-cert-rotation"

    def start_rotation(self, token: str) -> None:
        """The state RotateSecret leaves before Secrets Manager calls the function: rotation on, `token` staged
        AWSPENDING with no value yet. Built through moto's backend: its RotateSecret without a function moves
        AWSCURRENT at once, as if the rotation had already finished."""
        from moto.backends import get_backend

        self.secrets.put_secret_value(SecretId=self.arn, ClientRequestToken=token, SecretString="{}",
                                      VersionStages=[PENDING])
        secret = get_backend("secretsmanager")["123456789012"][REGION].secrets[self.arn]
        secret.versions[token].pop("secret_string", None)
        secret.rotation_requested = secret.rotation_enabled = True

    def stages(self) -> dict[str, list[str]]:
        return dict(self.secrets.describe_secret(SecretId=self.arn)["VersionIdsToStages"])

    def bundle(self, stage: str) -> TlsBundle:
        return TlsBundle.parse(self.secrets.get_secret_value(SecretId=self.arn, VersionStage=stage)["SecretString"])


@pytest.fixture
def setup(aws_credentials: None, tmp_path: Path) -> Iterator[Setup]:
    with mock_aws():
        yield Setup(tmp_path)


def _run_all(rotation: TlsSecretRotation, setup: Setup, token: str) -> None:
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        rotation.run(step, setup.arn, token)


def test_a_rotation_issues_a_new_key_and_certificate_for_the_same_names_and_makes_it_current(
        setup: Setup, tmp_path: Path) -> None:
    rotation = TlsSecretRotation(setup.secrets, AcmPrivateCa(setup.pca, setup.ca_arn))
    token = "11111111-2222-3333-4444-555555555555"
    setup.start_rotation(token)
    rotation.run("createSecret", setup.arn, token)
    rotation.run("createSecret", setup.arn, token)  # a retried step changes nothing
    pending = TlsBundle.parse(setup.secrets.get_secret_value(SecretId=setup.arn, VersionId=token)["SecretString"])
    assert pending.private_key != setup.initial.private_key
    assert NAME in served_names(pending.leaf())
    assert pending.leaf().issuer.rfc4514_string() == "CN=hd-private-ca"
    rotation.run("setSecret", setup.arn, token)
    rotation.run("testSecret", setup.arn, token)
    rotation.run("finishSecret", setup.arn, token)
    assert CURRENT in setup.stages()[token]
    current = setup.bundle(CURRENT)
    assert current == pending
    # The host's own startup checks accept the renewed pair (it parses and the key matches).
    (tmp_path / "cert.pem").write_text(current.certificate)
    (tmp_path / "key.pem").write_text(current.private_key)
    server_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    rotation.run("finishSecret", setup.arn, token)  # a repeated delivery of a finished rotation does nothing


def test_a_pending_certificate_that_fails_the_checks_is_never_made_current(setup: Setup, tmp_path: Path) -> None:
    rotation = TlsSecretRotation(setup.secrets, AcmPrivateCa(setup.pca, setup.ca_arn))
    token = "22222222-2222-3333-4444-555555555555"
    setup.start_rotation(token)
    rotation.run("createSecret", setup.arn, token)
    good = TlsBundle.parse(setup.secrets.get_secret_value(SecretId=setup.arn, VersionId=token)["SecretString"])
    other_cert, other_key = ensure_self_signed_certificate(tmp_path / "other", ["elsewhere.example.com"])
    for broken, message in (
            (TlsBundle(good.certificate, other_key.read_text()), "does not match"),
            (TlsBundle(other_cert.read_text(), other_key.read_text()), "does not cover"),
    ):
        setup.secrets.put_secret_value(SecretId=setup.arn, ClientRequestToken=token, SecretString=broken.json(),
                                       VersionStages=[PENDING])
        with pytest.raises(RenewedCertificateInvalid, match=message):
            rotation.run("testSecret", setup.arn, token)
    assert setup.bundle(CURRENT) == setup.initial


def test_a_certificate_expiring_inside_the_alarm_window_is_refused(setup: Setup) -> None:
    later = utc_now() + timedelta(days=340)  # moto's certificates are valid a year: 25 days left then
    rotation = TlsSecretRotation(setup.secrets, AcmPrivateCa(setup.pca, setup.ca_arn), now=lambda: later)
    token = "33333333-2222-3333-4444-555555555555"
    setup.start_rotation(token)
    rotation.run("createSecret", setup.arn, token)
    with pytest.raises(RenewedCertificateInvalid, match="more than 31 days"):
        rotation.run("testSecret", setup.arn, token)


def test_steps_for_an_unknown_version_or_a_secret_without_rotation_are_refused(setup: Setup) -> None:
    rotation = TlsSecretRotation(setup.secrets, AcmPrivateCa(setup.pca, setup.ca_arn))
    with pytest.raises(RotationRefused, match="not enabled"):
        rotation.run("createSecret", setup.arn, "44444444-2222-3333-4444-555555555555")
    setup.start_rotation("55555555-2222-3333-4444-555555555555")
    with pytest.raises(RotationRefused, match="no version"):
        rotation.run("createSecret", setup.arn, "66666666-2222-3333-4444-555555555555")
    with pytest.raises(RotationRefused, match="unknown rotation step"):
        rotation.run("dropSecret", setup.arn, "55555555-2222-3333-4444-555555555555")


def test_the_lambda_handler_runs_the_steps_with_the_configured_ca(setup: Setup,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HD_CERT_CA_ARN", setup.ca_arn)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    handler.rotation.cache_clear()
    token = "77777777-2222-3333-4444-555555555555"
    setup.start_rotation(token)
    try:
        for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
            handler.lambda_handler({"Step": step, "SecretId": setup.arn, "ClientRequestToken": token}, None)
    finally:
        handler.rotation.cache_clear()
    assert CURRENT in setup.stages()[token]
    leaf = setup.bundle(CURRENT).leaf()
    assert isinstance(leaf, x509.Certificate) and NAME in served_names(leaf)


def test_the_handler_refuses_a_ca_arn_that_is_not_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("HD_CERT_CA_ARN", "arn:aws:s3:::not-a-ca")
    with pytest.raises(ValidationError):
        handler.RotationSettings()  # type: ignore[call-arg]
