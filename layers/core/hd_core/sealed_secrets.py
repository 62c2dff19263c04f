"""Small secrets kept in the control store (TOTP seeds) sealed with a fresh KeyProvider data key each.

A sealed value is `hdsealed:v1:<data key ciphertext>:<nonce + AES-256-GCM ciphertext>` (base64).
The data key is bound to its owner through the KMS encryption context, and the owner id is also the
GCM associated data, so a sealed secret copied onto another user's record does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hd_core.errors import KeyUnavailable
from hd_core.ports import KeyProvider

SEALED_PREFIX = "hdsealed:v1:"
_NONCE_BYTES = 12


def is_sealed(stored: str) -> bool:
    """Whether a stored value is in the sealed form."""
    return stored.startswith(SEALED_PREFIX)


class SecretSealer:
    """Envelope encryption of small secrets with the deployment's KeyProvider (KMS in AWS)."""

    def __init__(self, keys: KeyProvider, *, purpose: str = "totp-secret") -> None:
        self._keys = keys
        self._purpose = purpose

    def seal(self, owner: str, secret: str) -> str:
        """The sealed form of `secret`, which only `unseal(owner, ...)` opens."""
        data_key = self._keys.generate_data_key(self._context(owner))
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key.plaintext).encrypt(nonce, secret.encode("utf-8"), owner.encode("utf-8"))
        return SEALED_PREFIX + _b64(data_key.ciphertext) + ":" + _b64(nonce + ciphertext)

    def unseal(self, owner: str, stored: str) -> str:
        """The secret inside a sealed value; raises `KeyUnavailable` if it is malformed, foreign or tampered."""
        if not is_sealed(stored):
            raise KeyUnavailable("the stored secret is not sealed")
        try:
            wrapped_key, box = stored[len(SEALED_PREFIX):].split(":")
            data_key = self._keys.decrypt_data_key(base64.b64decode(wrapped_key, validate=True), self._context(owner))
            sealed = base64.b64decode(box, validate=True)
            nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            return AESGCM(data_key).decrypt(nonce, ciphertext, owner.encode("utf-8")).decode("utf-8")
        except (ValueError, binascii.Error, InvalidTag):
            raise KeyUnavailable("the stored secret does not open for this user: it was altered or copied") from None

    def _context(self, owner: str) -> dict[str, str]:
        return {"purpose": self._purpose, "owner": owner}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
