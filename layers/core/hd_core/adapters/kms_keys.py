"""`KeyProvider` on AWS KMS: private keys never leave KMS; we send it bytes to sign and data keys to unwrap.

JWTs are signed RS256 (RSASSA_PKCS1_V1_5_SHA_256) by RSA_2048 keys, and the `kid` of a JWT key is
the KMS key id it was configured with, so pass key ids or ARNs, not aliases (an alias moved to a
new key would give old tokens the wrong verification key). Checkpoints are signed ECDSA_SHA_256 by
an ECC_NIST_P256 key and verified here, with the public key fetched once, so verifying a long
trail costs no KMS calls. Data keys are AES_256 keys from GenerateDataKey, bound to their
encryption context. Every KMS failure becomes `KeyUnavailable`, saying what an operator should check.

JWT keys rotate on a schedule (hd_core.signing_keys): `create_jwt_key` makes a tagged RSA_2048 key,
`disable_jwt_key` and `schedule_jwt_key_deletion` retire one, and any key the ring names is used by its
kid. `KmsRotationInspector` reports whether KMS rotates the deployment's symmetric keys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hd_core.errors import InvalidRequest, KeyUnavailable
from hd_core.kms_rotation import KeyRotationStatus
from hd_core.ports import DataKey, JwtPublicKey

_JWT_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"
_CHECKPOINT_ALGORITHM = "ECDSA_SHA_256"
_MAX_RAW_MESSAGE_BYTES = 4096  # KMS signs at most this much with MessageType RAW
# hd_core.signing_keys.PURPOSE_TAG / CHECKPOINT_KEY_PURPOSE (adapters do not import the domain's rotation module).
PURPOSE_TAG = "hd:purpose"
CHECKPOINT_KEY_PURPOSE = "checkpoint-signing"

# What an operator should look at, per KMS error code.
KMS_ERROR_ADVICE = {
    "DisabledException": "the key is disabled: enable it, or configure the key that replaced it",
    "KMSInvalidStateException": "the key is not usable in its current state (pending deletion or import?): "
    "check its key state and cancel a scheduled deletion",
    "NotFoundException": "the key does not exist: check the key id or ARN and the region",
    "AccessDeniedException": "access was denied: check the key policy and the IAM permissions of this role",
    "InvalidCiphertextException": "the ciphertext does not decrypt: check that the encryption context matches "
    "the one the data key was made with",
    "IncorrectKeyException": "the ciphertext was made by a different KMS key than the one configured",
    "InvalidKeyUsageException": "the key cannot do this: check its KeyUsage and KeySpec",
    "KeyUnavailableException": "KMS cannot use the key right now: retry later",
    "DependencyTimeoutException": "KMS timed out: retry later",
    "KMSInternalException": "KMS had an internal error: retry later",
    "ThrottlingException": "KMS throttled the request: retry with backoff or raise the KMS request quota",
}

_T = TypeVar("_T")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _reraise(exc: ClientError) -> Callable[[], Any]:
    """A request that fails as `exc` did, for `_call` to turn into `KeyUnavailable` with its advice."""

    def request() -> Any:
        raise exc

    return request


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class KmsKeyProvider:
    """Key material in KMS: RSA JWT signing keys (current first), an ECC checkpoint key and a data-key key."""

    def __init__(
        self,
        kms_client: Any,
        *,
        jwt_key_ids: Sequence[str],
        checkpoint_key_id: str,
        data_key_id: str,
        new_key_tags: Mapping[str, str] | None = None,
        new_key_description: str = "Hardened Duck: signs API JWTs (RS256), made by the scheduled rotation",
    ) -> None:
        """`new_key_tags` go on every JWT key `create_jwt_key` makes (the deployment's IAM conditions name them)."""
        if not jwt_key_ids:
            raise ValueError("at least one JWT signing key id is needed (the current one first)")
        self._kms = kms_client
        self._jwt_key_ids = tuple(jwt_key_ids)
        self._checkpoint_key_id = checkpoint_key_id
        self._data_key_id = data_key_id
        self._new_key_tags = dict(new_key_tags or {})
        self._new_key_description = new_key_description
        self._lock = threading.Lock()
        self._public_keys: dict[str, bytes] = {}  # key id -> DER SubjectPublicKeyInfo

    # --- JWT signing --------------------------------------------------------------------------------

    def jwt_signing_kid(self) -> str:
        """The current JWT key's id, which is its KMS key id."""
        return self._jwt_key_ids[0]

    def sign_jwt(self, signing_input: bytes) -> bytes:
        """RS256 signature over a JWS signing input, made by KMS with the current key."""
        return self._sign(self._jwt_key_ids[0], signing_input, _JWT_ALGORITHM)

    def jwt_public_keys(self) -> list[JwtPublicKey]:
        """The configured JWT keys' public halves as PEM, current first."""
        return [JwtPublicKey(kid=key_id, public_pem=self._public_pem(key_id)) for key_id in self._jwt_key_ids]

    # --- JWT keys by kid, and their rotation (hd_core.signing_keys keeps the ring) ------------------------

    def configured_jwt_kids(self) -> list[str]:
        """The configured JWT key ids, current first: they seed the ring."""
        return list(self._jwt_key_ids)

    def create_jwt_key(self) -> str:
        """A new RSA_2048 SIGN_VERIFY key, tagged so that IAM conditions on its tags admit its use; its key id."""
        response = self._call(
            "CreateKey", "(new)",
            lambda: self._kms.create_key(
                KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY", Description=self._new_key_description,
                Tags=[{"TagKey": name, "TagValue": value} for name, value in sorted(self._new_key_tags.items())],
            ),
        )
        key_id: str = response["KeyMetadata"]["KeyId"]
        return key_id

    def sign_jwt_with(self, kid: str, signing_input: bytes) -> bytes:
        """RS256 signature made by KMS with the key `kid`."""
        return self._sign(kid, signing_input, _JWT_ALGORITHM)

    def jwt_public_pem(self, kid: str) -> bytes:
        """The PEM public key of `kid` (fetched once per key)."""
        return self._public_pem(kid)

    def disable_jwt_key(self, kid: str) -> None:
        """DisableKey: KMS refuses every further Sign and GetPublicKey with it."""
        self._call("DisableKey", kid, lambda: self._kms.disable_key(KeyId=kid))

    def schedule_jwt_key_deletion(self, kid: str, pending_days: int) -> datetime:
        """ScheduleKeyDeletion after `pending_days`; a key already pending deletion answers its date."""
        try:
            response = self._kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=pending_days)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "KMSInvalidStateException":
                return self._call("ScheduleKeyDeletion", kid, _reraise(exc))
            metadata = self._describe(kid)
            if metadata.get("KeyState") != "PendingDeletion":
                return self._call("ScheduleKeyDeletion", kid, _reraise(exc))
            return _utc(metadata["DeletionDate"])
        return _utc(response["DeletionDate"])

    def purge_jwt_key(self, kid: str) -> None:
        """KMS deletes the key itself at its date: confirm that it is pending deletion or gone."""
        try:
            metadata = self._describe(kid)
        except KeyUnavailable as error:
            if isinstance(error.__cause__, ClientError) and _error_code(error.__cause__) == "NotFoundException":
                return
            raise
        if metadata.get("KeyState") not in ("PendingDeletion", "PendingReplicaDeletion"):
            raise KeyUnavailable(
                f"KMS key {kid} should be deleted by now but is {metadata.get('KeyState')}: its deletion was "
                "cancelled; schedule it again or find out who cancelled it"
            )

    # --- checkpoint keys by kid (hd_core.signing_keys rotates them) -------------------------------------

    def create_checkpoint_key(self) -> str:
        """A new ECC_NIST_P256 SIGN_VERIFY key, tagged like the JWT keys but for checkpoints; its key id."""
        tags = {**self._new_key_tags, **({PURPOSE_TAG: CHECKPOINT_KEY_PURPOSE} if self._new_key_tags else {})}
        response = self._call(
            "CreateKey", "(new)",
            lambda: self._kms.create_key(
                KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY",
                Description="Hardened Duck: signs IAM checkpoints (ES256), made by the scheduled rotation",
                Tags=[{"TagKey": name, "TagValue": value} for name, value in sorted(tags.items())],
            ),
        )
        key_id: str = response["KeyMetadata"]["KeyId"]
        return key_id

    def checkpoint_public_key(self, kid: str) -> bytes:
        """The DER public key of the checkpoint key `kid` (fetched once per key)."""
        return self._public_key_der(kid)

    def sign_checkpoint_with(self, kid: str, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature made by KMS with the checkpoint key `kid`."""
        return self._sign(kid, message, _CHECKPOINT_ALGORITHM)

    def _describe(self, kid: str) -> dict[str, Any]:
        metadata: dict[str, Any] = self._call("DescribeKey", kid, lambda: self._kms.describe_key(KeyId=kid))[
            "KeyMetadata"]
        return metadata

    # --- checkpoints --------------------------------------------------------------------------------

    def checkpoint_key_id(self) -> str:
        """The checkpoint key's KMS key id."""
        return self._checkpoint_key_id

    def sign_checkpoint(self, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature over `message`, made by KMS."""
        return self._sign(self._checkpoint_key_id, message, _CHECKPOINT_ALGORITHM)

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether the checkpoint key `key_id` signed `message`, checked locally; False on any failure."""
        if key_id != self._checkpoint_key_id:
            return False
        try:
            public_key = serialization.load_der_public_key(self._public_key_der(key_id))
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError, KeyUnavailable):
            return False
        return True

    # --- data keys ----------------------------------------------------------------------------------

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A new AES-256 data key from KMS, bound to the encryption context `context`."""
        response = self._call(
            "GenerateDataKey", self._data_key_id,
            lambda: self._kms.generate_data_key(
                KeyId=self._data_key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            ),
        )
        return DataKey(plaintext=response["Plaintext"], ciphertext=response["CiphertextBlob"])

    def decrypt_data_key(self, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext of a data key made with the same context; raises `KeyUnavailable`."""
        response = self._call(
            "Decrypt", self._data_key_id,
            # Naming the key makes KMS refuse ciphertext made under any other key.
            lambda: self._kms.decrypt(
                CiphertextBlob=ciphertext, EncryptionContext=dict(context), KeyId=self._data_key_id
            ),
        )
        plaintext: bytes = response["Plaintext"]
        return plaintext

    # --- internals ----------------------------------------------------------------------------------

    def _sign(self, key_id: str, message: bytes, algorithm: str) -> bytes:
        if len(message) > _MAX_RAW_MESSAGE_BYTES:
            raise InvalidRequest(
                f"a {len(message)}-byte message is too long to sign: KMS signs at most {_MAX_RAW_MESSAGE_BYTES}"
            )
        response = self._call(
            "Sign", key_id,
            lambda: self._kms.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm=algorithm),
        )
        signature: bytes = response["Signature"]
        return signature

    def _public_pem(self, key_id: str) -> bytes:
        public_key = serialization.load_der_public_key(self._public_key_der(key_id))
        return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def _public_key_der(self, key_id: str) -> bytes:
        """The key's DER public key, fetched once: a KMS key's key pair never changes."""
        with self._lock:
            cached = self._public_keys.get(key_id)
        if cached is not None:
            return cached
        response = self._call("GetPublicKey", key_id, lambda: self._kms.get_public_key(KeyId=key_id))
        der: bytes = response["PublicKey"]
        with self._lock:
            self._public_keys[key_id] = der
        return der

    @staticmethod
    def _call(operation: str, key_id: str, request: Callable[[], _T]) -> _T:
        """Run one KMS request, turning its failure into `KeyUnavailable`."""
        try:
            return request()
        except ClientError as exc:
            code = _error_code(exc)
            advice = KMS_ERROR_ADVICE.get(code, "check the key's state, its key policy and this role's permissions")
            raise KeyUnavailable(f"KMS {operation} with key {key_id} failed ({code}): {advice}") from exc
        except BotoCoreError as exc:
            raise KeyUnavailable(
                f"KMS {operation} with key {key_id} could not be sent ({exc}): check network access to KMS "
                "(VPC endpoint, security groups) and the region"
            ) from exc


class KmsRotationInspector:
    """`KeyRotationInspector` on KMS: DescribeKey, then GetKeyRotationStatus for a symmetric customer-managed key."""

    def __init__(self, kms_client: Any) -> None:
        self._kms = kms_client

    def rotation_status(self, key_id: str) -> KeyRotationStatus:
        """What KMS says about `key_id`; a failed call is a status whose note names the error code."""
        try:
            metadata = self._kms.describe_key(KeyId=key_id)["KeyMetadata"]
            spec = str(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec") or "")
            if metadata.get("KeyManager") != "CUSTOMER":
                return KeyRotationStatus(key_id, None, spec, note="AWS-managed: KMS rotates it every year")
            if spec != "SYMMETRIC_DEFAULT":
                return KeyRotationStatus(key_id, None, spec,
                                         note="asymmetric: KMS cannot rotate it (JWT keys rotate on hd's schedule)")
            response = self._kms.get_key_rotation_status(KeyId=key_id)
        except ClientError as exc:
            return KeyRotationStatus(key_id, None, note=f"KMS refused the check ({_error_code(exc)})")
        except BotoCoreError as exc:
            return KeyRotationStatus(key_id, None, note=f"KMS could not be reached ({type(exc).__name__})")
        period = response.get("RotationPeriodInDays")
        return KeyRotationStatus(key_id, bool(response.get("KeyRotationEnabled")), spec,
                                 rotation_period_days=int(period) if period is not None else None)
