"""Boot installs the engine's TLS certificate from Secrets Manager (moto), so clients can use sslmode=verify-full."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.boot.config import EngineConfig
from engine_host.boot.tls_material import TlsMaterialInvalid, install_tls_material
from engine_host.wire.tls import ensure_self_signed_certificate, server_ssl_context
from tests.unit.boot.fakes import REGION, config_data

log = logging.getLogger("test.boot.tls")


@pytest.fixture
def secrets(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name=REGION)


def _pem_pair(folder: Path, hostname: str = "hd.example.internal") -> tuple[str, str]:
    cert, key = ensure_self_signed_certificate(folder, hostnames=(hostname,))
    return cert.read_text(), key.read_text()


def _config(tmp_path: Path, secret_arn: str | None) -> EngineConfig:
    return EngineConfig.model_validate(config_data(
        tls_cert_file=str(tmp_path / "tls" / "server.crt"), tls_key_file=str(tmp_path / "tls" / "server.key"),
        tls_secret_arn=secret_arn,
    ))


def test_the_secret_becomes_the_certificate_and_a_private_key_file(secrets: Any, tmp_path: Path) -> None:
    certificate, private_key = _pem_pair(tmp_path / "issued")
    arn = secrets.create_secret(Name="hd/tls", SecretString=json.dumps(
        {"certificate": certificate, "private_key": private_key}))["ARN"]
    config = _config(tmp_path, arn)

    assert install_tls_material(config, secrets, log) is True

    assert config.tls_cert_file.read_text() == certificate
    assert config.tls_key_file.stat().st_mode & 0o777 == 0o600
    server_ssl_context(config.tls_cert_file, config.tls_key_file)  # what serve loads


def test_a_key_that_does_not_match_the_certificate_is_refused_and_nothing_is_left(secrets: Any,
                                                                                   tmp_path: Path) -> None:
    certificate, _ = _pem_pair(tmp_path / "one")
    _, other_key = _pem_pair(tmp_path / "two")
    arn = secrets.create_secret(Name="hd/tls", SecretString=json.dumps(
        {"certificate": certificate, "private_key": other_key}))["ARN"]
    config = _config(tmp_path, arn)

    with pytest.raises(TlsMaterialInvalid, match="usable certificate and matching private key"):
        install_tls_material(config, secrets, log)
    assert not config.tls_key_file.exists() and not config.tls_cert_file.exists()


@pytest.mark.parametrize("secret_string", ["not json", json.dumps({"certificate": "x"}), json.dumps([1, 2])])
def test_a_secret_of_the_wrong_shape_is_refused(secrets: Any, tmp_path: Path, secret_string: str) -> None:
    arn = secrets.create_secret(Name="hd/tls", SecretString=secret_string)["ARN"]
    with pytest.raises(TlsMaterialInvalid, match="must be JSON with 'certificate' and 'private_key'"):
        install_tls_material(_config(tmp_path, arn), secrets, log)


def test_a_missing_secret_says_what_to_check(secrets: Any, tmp_path: Path) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:hd/absent-AbCdEf"
    with pytest.raises(TlsMaterialInvalid, match="secretsmanager:GetSecretValue"):
        install_tls_material(_config(tmp_path, arn), secrets, log)


def test_without_a_secret_nothing_is_installed(secrets: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, None)
    assert install_tls_material(config, secrets, log) is False
    assert "self-signed" in caplog.text and not config.tls_cert_file.exists()


def test_the_config_refuses_a_secret_arn_of_the_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_secret_arn"):
        _config(tmp_path, "arn:aws:kms:eu-west-1:123456789012:key/abc")
