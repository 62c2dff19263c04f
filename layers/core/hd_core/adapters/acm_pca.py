"""ACM Private CA as the `CertificateIssuer` of TLS certificate rotation (hd_core.certificate_rotation)."""

from __future__ import annotations

from typing import Any

# The signing algorithm must match the CA's key; our CSRs carry ECDSA P-256 keys, the CA signs with its own.
DEFAULT_SIGNING_ALGORITHM = "SHA256WITHECDSA"
_WAIT_DELAY_SECONDS = 3
_WAIT_ATTEMPTS = 40  # two minutes: issuance normally takes seconds


class AcmPrivateCa:
    """Issues end-entity certificates from one private CA."""

    def __init__(self, client: Any, ca_arn: str, *, signing_algorithm: str = DEFAULT_SIGNING_ALGORITHM) -> None:
        self._client = client
        self._ca_arn = ca_arn
        self._signing_algorithm = signing_algorithm

    def issue(self, csr_pem: bytes, *, validity_days: int, idempotency_token: str) -> tuple[str, str]:
        # The same token returns the same certificate if a retried createSecret asks again.
        arn = self._client.issue_certificate(
            CertificateAuthorityArn=self._ca_arn, Csr=csr_pem, SigningAlgorithm=self._signing_algorithm,
            Validity={"Value": validity_days, "Type": "DAYS"}, IdempotencyToken=idempotency_token[:36],
            TemplateArn="arn:aws:acm-pca:::template/EndEntityCertificate/V1",
        )["CertificateArn"]
        self._client.get_waiter("certificate_issued").wait(
            CertificateAuthorityArn=self._ca_arn, CertificateArn=arn,
            WaiterConfig={"Delay": _WAIT_DELAY_SECONDS, "MaxAttempts": _WAIT_ATTEMPTS})
        issued = self._client.get_certificate(CertificateAuthorityArn=self._ca_arn, CertificateArn=arn)
        return str(issued["Certificate"]), str(issued.get("CertificateChain", ""))
