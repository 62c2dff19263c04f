"""TLS certificate rotation Lambda: Secrets Manager calls it with each rotation step of the engine's TLS secret.

The steps are `hd_core.certificate_rotation.TlsSecretRotation`; ACM Private CA (HD_CERT_CA_ARN) issues. A failed
step raises, so Secrets Manager marks the rotation failed and retries it; the current certificate keeps serving
meanwhile, and the EngineCertificateExpiry alarm speaks 30 days before it expires if renewals keep failing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.shared.lambda_entry import function_logger
from hd_core.certificate_rotation import DEFAULT_VALIDITY_DAYS, TlsSecretRotation

SERVICE = "hd-cert-rotation"
logger = function_logger(SERVICE)


class RotationSettings(BaseSettings):
    """From `HD_CERT_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="HD_CERT_", extra="ignore")

    ca_arn: str = Field(pattern=r"^arn:aws[a-z-]*:acm-pca:[a-z0-9-]+:\d{12}:certificate-authority/[0-9a-f-]{36}$")
    validity_days: int = Field(default=DEFAULT_VALIDITY_DAYS, ge=32, le=825)
    signing_algorithm: str = Field(default="SHA256WITHECDSA", pattern=r"^SHA(256|384|512)WITH(ECDSA|RSA)$")


@lru_cache(maxsize=1)
def rotation() -> TlsSecretRotation:
    import boto3

    from hd_core.adapters.acm_pca import AcmPrivateCa

    config = RotationSettings()  # type: ignore[call-arg]
    issuer = AcmPrivateCa(boto3.client("acm-pca"), config.ca_arn, signing_algorithm=config.signing_algorithm)
    return TlsSecretRotation(boto3.client("secretsmanager"), issuer, validity_days=config.validity_days)


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """{"Step", "SecretId", "ClientRequestToken"} from Secrets Manager."""
    step, secret_id, token = event["Step"], event["SecretId"], event["ClientRequestToken"]
    logger.info("rotation step", extra={"step": step, "secret_id": secret_id, "token": token})
    rotation().run(step, secret_id, token)
