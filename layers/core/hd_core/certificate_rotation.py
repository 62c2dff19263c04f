"""Renewing the engine's TLS certificate: Secrets Manager's four rotation steps, with a private CA issuing.

The engine's TLS secret holds `{"certificate": "<PEM chain>", "private_key": "<PEM>"}`; every host re-reads it
every few minutes and serves a renewed certificate to new connections without a restart. Rotation here:
- createSecret: a new ECDSA P-256 key (generated here, never leaving the secret) and a CSR for the same names as
  the current certificate; the CA (`CertificateIssuer`, ACM Private CA in AWS) signs it; the key and the chain
  are stored as the AWSPENDING version. Idempotent per rotation token.
- setSecret: nothing: the hosts pull the secret (no service to push a certificate into).
- testSecret: the pending version parses, its key matches its certificate, it is valid now and for longer than the
  alarm window, and it covers every name the current certificate covers (as libpq's verify-full reads names:
  DNS subject alternative names, else the common name).
- finishSecret: AWSCURRENT moves to the pending version.
Without a private CA there is no rotation function: a certificate from another CA is imported by writing a new
secret version (README), and the expiry alarm warns 30 days ahead either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hd_core.errors import HdError
from hd_core.models import utc_now

CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
DEFAULT_VALIDITY_DAYS = 90
# A renewed certificate must outlive the expiry alarm's window by a margin, or it would alarm at once.
MIN_REMAINING = timedelta(days=31)


class RotationRefused(HdError):
    """The rotation request or the secret cannot be rotated (wrong step, unknown token, rotation off)."""

    code = "HD_ERR_CERT_ROTATION_REFUSED"


class RenewedCertificateInvalid(HdError):
    """The pending certificate fails the checks a host would make, or does not cover the current names."""

    code = "HD_ERR_CERT_RENEWAL_INVALID"


class CertificateIssuer(Protocol):
    """Signs a CSR: (certificate PEM, chain PEM up to the root, possibly empty)."""

    def issue(self, csr_pem: bytes, *, validity_days: int, idempotency_token: str) -> tuple[str, str]: ...


@dataclass(frozen=True)
class TlsBundle:
    """The secret's content."""

    certificate: str  # PEM: the leaf first, then its chain
    private_key: str

    @classmethod
    def parse(cls, text: str) -> TlsBundle:
        try:
            document = json.loads(text)
            certificate, private_key = document["certificate"], document["private_key"]
        except (ValueError, TypeError, KeyError):
            raise RenewedCertificateInvalid("the TLS secret must be JSON: 'certificate' and 'private_key'") from None
        if not isinstance(certificate, str) or not isinstance(private_key, str):
            raise RenewedCertificateInvalid("'certificate' and 'private_key' must be PEM strings")
        return cls(certificate, private_key)

    def json(self) -> str:
        return json.dumps({"certificate": self.certificate, "private_key": self.private_key})

    def leaf(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificates(self.certificate.encode())[0]
        except (ValueError, IndexError):
            raise RenewedCertificateInvalid("the certificate is not a PEM certificate chain") from None


def served_names(certificate: x509.Certificate) -> frozenset[str]:
    """The names a verify-full client accepts the certificate for: DNS SANs if any, else the common name."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sans.get_values_for_type(x509.DNSName)
        if names:
            return frozenset(n.lower() for n in names)
    except x509.ExtensionNotFound:
        pass
    return frozenset(str(a.value).lower() for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def renewal_request(current: x509.Certificate) -> tuple[bytes, bytes]:
    """(a new private key PEM, a CSR PEM for the same subject and DNS names as `current`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = sorted(served_names(current))
    if not names:
        raise RenewedCertificateInvalid("the current certificate names no host: nothing to renew it for")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(current.subject)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def check_renewal(pending: TlsBundle, current: TlsBundle, *, now: datetime) -> None:
    """What testSecret asserts; raises RenewedCertificateInvalid naming the first problem."""
    leaf = pending.leaf()
    try:
        key = serialization.load_pem_private_key(pending.private_key.encode(), password=None)
    except (ValueError, TypeError):
        raise RenewedCertificateInvalid("the pending private key is not an unencrypted PEM key") from None
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise RenewedCertificateInvalid("the pending private key does not match the pending certificate")
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc - MIN_REMAINING:
        raise RenewedCertificateInvalid(
            f"the pending certificate is valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}: it must be valid now and for more than {MIN_REMAINING.days} days")
    missing = served_names(current.leaf()) - served_names(leaf)
    if missing:
        raise RenewedCertificateInvalid(f"the pending certificate does not cover {sorted(missing)}: clients "
                                        "verifying those names would be refused")


class TlsSecretRotation:
    """The four rotation steps for one secret, over a Secrets Manager client and a certificate issuer."""

    def __init__(self, secrets: Any, issuer: CertificateIssuer, *, validity_days: int = DEFAULT_VALIDITY_DAYS,
                 now: Callable[[], datetime] = utc_now) -> None:
        self._secrets = secrets
        self._issuer = issuer
        self._validity_days = validity_days
        self._now = now

    def run(self, step: str, secret_id: str, token: str) -> None:
        if step not in STEPS:
            raise RotationRefused(f"unknown rotation step {step!r}")
        stages = self._stages(secret_id, token)
        if CURRENT in stages:
            return  # this version is already current: a repeated delivery of a finished rotation
        if PENDING not in stages:
            raise RotationRefused(f"version {token} of the secret is not pending rotation")
        {"createSecret": self._create, "setSecret": lambda s, t: None, "testSecret": self._test,
         "finishSecret": self._finish}[step](secret_id, token)

    def _stages(self, secret_id: str, token: str) -> list[str]:
        description = self._secrets.describe_secret(SecretId=secret_id)
        if not description.get("RotationEnabled"):
            raise RotationRefused("rotation is not enabled on the secret")
        versions = description.get("VersionIdsToStages", {})
        if token not in versions:
            raise RotationRefused(f"the secret has no version {token}")
        return list(versions[token])

    def _bundle(self, secret_id: str, *, stage: str, token: str | None = None) -> TlsBundle:
        arguments = {"SecretId": secret_id, "VersionStage": stage, **({"VersionId": token} if token else {})}
        return TlsBundle.parse(self._secrets.get_secret_value(**arguments)["SecretString"])

    def _create(self, secret_id: str, token: str) -> None:
        try:
            self._bundle(secret_id, stage=PENDING, token=token)
            return  # created by an earlier attempt of this rotation
        except self._secrets.exceptions.ResourceNotFoundException:
            pass
        current = self._bundle(secret_id, stage=CURRENT)
        key_pem, csr_pem = renewal_request(current.leaf())
        certificate, chain = self._issuer.issue(csr_pem, validity_days=self._validity_days, idempotency_token=token)
        bundle = TlsBundle(certificate.strip() + "\n" + (chain.strip() + "\n" if chain.strip() else ""),
                           key_pem.decode())
        self._secrets.put_secret_value(SecretId=secret_id, ClientRequestToken=token, SecretString=bundle.json(),
                                       VersionStages=[PENDING])

    def _test(self, secret_id: str, token: str) -> None:
        check_renewal(self._bundle(secret_id, stage=PENDING, token=token), self._bundle(secret_id, stage=CURRENT),
                      now=self._now())

    def _finish(self, secret_id: str, token: str) -> None:
        versions = self._secrets.describe_secret(SecretId=secret_id)["VersionIdsToStages"]
        current = next((version for version, stages in versions.items() if CURRENT in stages), None)
        self._secrets.update_secret_version_stage(SecretId=secret_id, VersionStage=CURRENT, MoveToVersionId=token,
                                                  RemoveFromVersionId=current)
