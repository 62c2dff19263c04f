"""`KeyProvider` on a local JSON key file, for `hd dev` only: the private keys sit on disk, not in KMS.

The file (mode 0600) is created on first use and holds the first RS256 JWT signing key(s), the
ECDSA P-256 checkpoint key and a 256-bit master key that wraps
data keys with AES-256-GCM. A data key's ciphertext is a version byte, a 96-bit nonce and the
GCM output; the encryption context, as canonical JSON, is the GCM associated data, so a data
key only unwraps under the context it was made for.

Several processes may share the file (the engine host and the local control API): it is created
by linking a complete temporary file into place, so racing creators end with one file, and it
is re-read whenever it changes on disk.

JWT keys made by the scheduled rotation (hd_core.signing_keys) get files of their own under `jwt/`
beside it (`<kid>.json`), and their retirement adds markers there (`<kid>.disabled`, `<kid>.deletion`);
no existing key file is ever rewritten, and a rotated-in key's file is removed once its deletion date passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hd_core.errors import KeyUnavailable
from hd_core.iam_audit import canonical_json
from hd_core.models import utc_now
from hd_core.ports import DataKey, JwtPublicKey

log = logging.getLogger(__name__)

_FORMAT = 1
_FILE_MODE = 0o600
_RSA_BITS = 2048
_RSA_PUBLIC_EXPONENT = 65537
_MASTER_KEY_BYTES = 32
_DATA_KEY_BYTES = 32
_NONCE_BYTES = 12
_CIPHERTEXT_VERSION = b"\x01"
_JWT_DIR = "jwt"  # rotated-in JWT keys, one file each, beside the key file
_JWT_FILE_WARNING = "DEV ONLY: a signing key not protected by KMS. Do not copy this file anywhere."
_LOCAL_JWT_KID = re.compile(r"local-jwt-[0-9a-f]{24}")
_CHECKPOINT_DIR = "checkpoint"  # rotated-in checkpoint keys, one file each
_LOCAL_CHECKPOINT_KID = re.compile(r"local-checkpoint-[0-9a-f]{24}")
_DEV_WARNING = (
    "DEV ONLY: signing and data-key master keys are in the local file %s, not in KMS; "
    "never use this key file for a shared or production deployment"
)

_warned_paths: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class _JwtKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    public_pem: bytes


@dataclass(frozen=True)
class _KeyMaterial:
    """The parsed contents of the key file."""

    jwt_keys: tuple[_JwtKey, ...]  # current first
    checkpoint_kid: str
    checkpoint_key: ec.EllipticCurvePrivateKey
    master_key: bytes


class LocalKeyFile:
    """Key material in a local file; creates the file with fresh keys on first use unless told not to."""

    def __init__(self, path: Path, *, create_missing: bool = True, now: Callable[[], datetime] = utc_now) -> None:
        """`create_missing=False` for a state folder that already has keys: a missing file is then an error,
        never silently replaced by new keys that cannot open what the old ones sealed or signed. `now` dates
        a JWT key's scheduled deletion."""
        self._path = Path(path)
        self._create_missing = create_missing
        self._now = now
        self._jwt_files: dict[str, _JwtKey] = {}  # kid -> a rotated-in key from its own file under jwt/
        self._lock = threading.Lock()
        self._material: _KeyMaterial | None = None
        self._file_identity: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        """Where the key file lives."""
        return self._path

    # --- JWT signing --------------------------------------------------------------------------------

    def jwt_signing_kid(self) -> str:
        """The key id new JWTs are signed with."""
        return self._keys().jwt_keys[0].kid

    def sign_jwt(self, signing_input: bytes) -> bytes:
        """RS256 signature over a JWS signing input, with the current key."""
        return self._keys().jwt_keys[0].private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def jwt_public_keys(self) -> list[JwtPublicKey]:
        """The current and previous verification keys, current first."""
        return [JwtPublicKey(kid=key.kid, public_pem=key.public_pem) for key in self._keys().jwt_keys]

    # --- JWT keys by kid, and their rotation (hd_core.signing_keys keeps the ring) ------------------------

    def configured_jwt_kids(self) -> list[str]:
        """The key file's own JWT keys, current first: they seed the ring."""
        return [key.kid for key in self._keys().jwt_keys]

    def create_jwt_key(self) -> str:
        """A new RS256 key in a file of its own under `jwt/` (no existing key file is ever rewritten); its kid."""
        self._keys()  # the key file first: a state folder that lost it must not grow new keys
        entry = _new_jwt_key_entry()
        kid = str(entry["kid"])
        self._publish_new(self._jwt_dir / f"{kid}.json", {"format": _FORMAT, "warning": _JWT_FILE_WARNING, **entry})
        log.info("local JWT signing key %s created", kid)
        return kid

    def sign_jwt_with(self, kid: str, signing_input: bytes) -> bytes:
        """RS256 signature with the key `kid`; `KeyUnavailable` when it is unknown, disabled or deleted."""
        return self._jwt_key(kid).private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def jwt_public_pem(self, kid: str) -> bytes:
        """The PEM public key of `kid`; `KeyUnavailable` when it is unknown, disabled or deleted."""
        return self._jwt_key(kid).public_pem

    def disable_jwt_key(self, kid: str) -> None:
        """Mark `kid` disabled (a new marker file next to it): nothing signs or verifies with it any more."""
        self._jwt_key(kid, allow_disabled=True)
        self._publish_new(self._marker(kid, "disabled"), {"kid": kid, "disabled_at": self._stamp(self._now())},
                          exist_ok=True)

    def schedule_jwt_key_deletion(self, kid: str, pending_days: int) -> datetime:
        """Record that the disabled key `kid` may be removed `pending_days` from now; returns that moment."""
        if not self._marker(kid, "disabled").exists():
            raise KeyUnavailable(f"JWT key {kid} is not disabled: only a disabled key is scheduled for deletion")
        delete_after = self._now() + timedelta(days=pending_days)
        self._publish_new(self._marker(kid, "deletion"), {"kid": kid, "delete_after": self._stamp(delete_after)},
                          exist_ok=True)
        return _parse_stamp(json.loads(self._marker(kid, "deletion").read_text())["delete_after"])

    def purge_jwt_key(self, kid: str) -> None:
        """Remove the key file of `kid` once its deletion date has passed.

        A key kept in the main key file (the first one) stays there, disabled, since that file is never rewritten.
        """
        try:
            delete_after = _parse_stamp(json.loads(self._marker(kid, "deletion").read_text())["delete_after"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyUnavailable(f"JWT key {kid} has no readable deletion schedule: {exc}") from None
        if self._now() < delete_after:
            raise KeyUnavailable(f"JWT key {kid} may not be deleted before {self._stamp(delete_after)}")
        with suppress(FileNotFoundError):
            (self._jwt_dir / f"{_checked_kid(kid)}.json").unlink()
        with self._lock:
            self._jwt_files.pop(kid, None)
        log.info("local JWT signing key %s deleted", kid)

    # --- checkpoint keys by kid (hd_core.signing_keys rotates them) -------------------------------------

    def create_checkpoint_key(self) -> str:
        """A new ECDSA P-256 key in a file of its own under `checkpoint/` (never rewriting a key file); its kid."""
        self._keys()
        key = ec.generate_private_key(ec.SECP256R1())
        kid = _key_id("local-checkpoint", key.public_key())
        document: dict[str, object] = {"format": _FORMAT, "warning": _JWT_FILE_WARNING, "kid": kid,
                                       "private_pem": _private_pem(key)}
        self._publish_new(self._path.parent / _CHECKPOINT_DIR / f"{kid}.json", document)
        log.info("local checkpoint signing key %s created", kid)
        return kid

    def checkpoint_public_key(self, kid: str) -> bytes:
        """The DER public key of the checkpoint key `kid`."""
        return self._checkpoint_private(kid).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_checkpoint_with(self, kid: str, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature with the checkpoint key `kid`."""
        return self._checkpoint_private(kid).sign(message, ec.ECDSA(hashes.SHA256()))

    def _checkpoint_private(self, kid: str) -> ec.EllipticCurvePrivateKey:
        keys = self._keys()
        if kid == keys.checkpoint_kid:
            return keys.checkpoint_key
        if not isinstance(kid, str) or not _LOCAL_CHECKPOINT_KID.fullmatch(kid):
            raise KeyUnavailable(f"{kid!r} is not a local checkpoint key id")
        path = self._path.parent / _CHECKPOINT_DIR / f"{kid}.json"
        try:
            key = _load_private_key(json.loads(path.read_bytes())["private_pem"])
        except FileNotFoundError:
            raise KeyUnavailable(f"checkpoint key {kid} is not in {path.parent}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyUnavailable(f"checkpoint key file of {kid} is damaged ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or _key_id("local-checkpoint", key.public_key()) != kid:
            raise KeyUnavailable(f"the checkpoint key file named {kid} holds another key")
        return key

    @property
    def _jwt_dir(self) -> Path:
        return self._path.parent / _JWT_DIR

    def _marker(self, kid: str, state: str) -> Path:
        return self._jwt_dir / f"{_checked_kid(kid)}.{state}"

    def _stamp(self, moment: datetime) -> str:
        return moment.astimezone(UTC).isoformat()

    def _jwt_key(self, kid: str, *, allow_disabled: bool = False) -> _JwtKey:
        """The JWT key `kid`, from the key file or its own file under `jwt/`."""
        if not allow_disabled and self._marker(kid, "disabled").exists():
            raise KeyUnavailable(f"JWT key {kid} is disabled: every token it signed has expired")
        for key in self._keys().jwt_keys:
            if key.kid == kid:
                return key
        with self._lock:
            cached = self._jwt_files.get(kid)
        if cached is not None and (self._jwt_dir / f"{kid}.json").exists():
            return cached
        try:
            document = json.loads((self._jwt_dir / f"{_checked_kid(kid)}.json").read_bytes())
            key = _parse_jwt_key(document)
        except FileNotFoundError:
            raise KeyUnavailable(f"JWT key {kid} is not in {self._jwt_dir} (deleted, or never made here)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyUnavailable(f"JWT key file of {kid} in {self._jwt_dir} is damaged ({exc})") from None
        if key.kid != kid:
            raise KeyUnavailable(f"the JWT key file named {kid} holds key {key.kid}")
        with self._lock:
            self._jwt_files[kid] = key
        return key

    def _publish_new(self, target: Path, document: dict[str, object], *, exist_ok: bool = False) -> None:
        """Link a complete owner-only file into place under a name that must be new (never overwrites)."""
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyUnavailable(f"folder {target.parent} cannot be created: {exc.strerror}") from exc
        temporary = self._write_temporary(document, folder=target.parent)
        try:
            os.link(temporary, target)
        except FileExistsError:
            if not exist_ok:
                raise KeyUnavailable(f"{target} exists already; key files are never replaced") from None
        except OSError as exc:
            raise KeyUnavailable(f"{target} cannot be written: {exc.strerror}") from exc
        finally:
            with suppress(OSError):
                temporary.unlink()

    # --- checkpoints --------------------------------------------------------------------------------

    def checkpoint_key_id(self) -> str:
        """The id of the checkpoint signing key."""
        return self._keys().checkpoint_kid

    def sign_checkpoint(self, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature over `message`."""
        return self._keys().checkpoint_key.sign(message, ec.ECDSA(hashes.SHA256()))

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this file's checkpoint key's over `message`; never raises."""
        try:
            keys = self._keys()
            if key_id != keys.checkpoint_kid:
                return False
            keys.checkpoint_key.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            return False
        except KeyUnavailable:
            log.warning("checkpoint signature not verified: the local key file is unavailable", exc_info=True)
            return False
        return True

    # --- data keys ----------------------------------------------------------------------------------

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A fresh 256-bit data key, wrapped under the master key and bound to `context`."""
        plaintext = os.urandom(_DATA_KEY_BYTES)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(self._keys().master_key).encrypt(nonce, plaintext, _context_aad(context))
        return DataKey(plaintext=plaintext, ciphertext=_CIPHERTEXT_VERSION + nonce + sealed)

    def decrypt_data_key(self, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap a data key made by `generate_data_key` with the same context; raises `KeyUnavailable`."""
        if len(ciphertext) <= 1 + _NONCE_BYTES or ciphertext[:1] != _CIPHERTEXT_VERSION:
            raise KeyUnavailable("data key ciphertext is not one made by a local key file (unknown format)")
        nonce, sealed = ciphertext[1 : 1 + _NONCE_BYTES], ciphertext[1 + _NONCE_BYTES :]
        try:
            return AESGCM(self._keys().master_key).decrypt(nonce, sealed, _context_aad(context))
        except InvalidTag:
            raise KeyUnavailable(
                f"data key could not be unwrapped with {self._path}: check that the encryption context matches "
                "the one it was made with and that it was made by this key file"
            ) from None

    # --- the file -----------------------------------------------------------------------------------

    def check(self) -> None:
        """Load the key file now (creating it only if allowed); raises `KeyUnavailable` saying what is wrong."""
        self._keys()

    def _keys(self) -> _KeyMaterial:
        """The key material, created on first use and re-read when the file changed on disk."""
        with self._lock:
            identity = self._current_identity()
            if self._material is None or identity is None or identity != self._file_identity:
                if identity is None:
                    self._create_or_refuse()
                self._load()
            assert self._material is not None
            return self._material

    def _current_identity(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyUnavailable(f"local key file {self._path} cannot be read: {exc.strerror}") from exc
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _load(self) -> None:
        try:
            with open(self._path, "rb") as handle:
                info = os.fstat(handle.fileno())
                data = handle.read()
        except OSError as exc:
            raise KeyUnavailable(f"local key file {self._path} cannot be read: {exc.strerror}") from exc
        if info.st_mode & 0o077:
            log.warning("local key file %s is readable by other users; run: chmod 600 %s", self._path, self._path)
        self._material = _parse_material(data, self._path)
        self._file_identity = (info.st_ino, info.st_mtime_ns, info.st_size)
        _warn_dev_only(self._path)

    def _create_or_refuse(self) -> None:
        if not self._create_missing:
            raise KeyUnavailable(
                f"local key file {self._path} is missing; restore it from a backup (hd never makes new keys "
                "over existing state: sealed MFA secrets, wrapped mask keys and signed IAM checkpoints need it)"
            )
        self._create_file()

    def _create_file(self) -> None:
        """Publish a complete new key file, unless another process got there first (then theirs is used)."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyUnavailable(f"folder of local key file {self._path} cannot be created: {exc.strerror}") from exc
        temporary = self._write_temporary(_new_document())
        try:
            os.link(temporary, self._path)  # atomic, and fails if the name exists: one creator wins
        except FileExistsError:
            pass
        except OSError as exc:
            raise KeyUnavailable(f"local key file {self._path} cannot be created: {exc.strerror}") from exc
        finally:
            with suppress(OSError):
                temporary.unlink()

    def _write_temporary(self, document: dict[str, object], *, folder: Path | None = None) -> Path:
        """A complete, synced, owner-only copy of `document` next to the key file (or in `folder`)."""
        temporary = (folder or self._path.parent) / f".{self._path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(document, indent=2).encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with suppress(OSError):
                temporary.unlink()
            raise KeyUnavailable(f"local key file {self._path} cannot be written: {exc.strerror}") from exc
        return temporary


def _warn_dev_only(path: Path) -> None:
    """Say once per process and file that these keys are not protected by KMS."""
    key = str(path.resolve())
    with _warned_lock:
        if key in _warned_paths:
            return
        _warned_paths.add(key)
    log.warning(_DEV_WARNING, path)


def _context_aad(context: Mapping[str, str]) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise TypeError("an encryption context maps strings to strings")
    return canonical_json(dict(context)).encode()


def _key_id(prefix: str, public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """A key id derived from the public key, so two key files never share one."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"{prefix}-{hashlib.sha256(der).hexdigest()[:24]}"


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _new_jwt_key_entry() -> dict[str, object]:
    key = rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=_RSA_BITS)
    return {"kid": _key_id("local-jwt", key.public_key()), "private_pem": _private_pem(key)}


def _new_document() -> dict[str, object]:
    checkpoint_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "format": _FORMAT,
        "warning": "DEV ONLY: these keys are not protected by KMS. Do not copy this file anywhere.",
        "jwt_keys": [_new_jwt_key_entry()],
        "checkpoint_key": {
            "kid": _key_id("local-checkpoint", checkpoint_key.public_key()),
            "private_pem": _private_pem(checkpoint_key),
        },
        "master_key": base64.b64encode(os.urandom(_MASTER_KEY_BYTES)).decode("ascii"),
    }


def _parse_material(data: bytes, path: Path) -> _KeyMaterial:
    """The key material in a key file; raises `KeyUnavailable` saying what is wrong with it."""
    try:
        document = json.loads(data)
        if document.get("format") != _FORMAT:
            raise ValueError(f"unsupported format {document.get('format')!r}")
        jwt_keys = tuple(_parse_jwt_key(entry) for entry in document["jwt_keys"])
        if not jwt_keys:
            raise ValueError("no JWT signing key")
        checkpoint_key = _load_private_key(document["checkpoint_key"]["private_pem"])
        if not isinstance(checkpoint_key, ec.EllipticCurvePrivateKey) or checkpoint_key.curve.name != "secp256r1":
            raise ValueError("the checkpoint key is not an ECDSA P-256 key")
        master_key = base64.b64decode(document["master_key"], validate=True)
        if len(master_key) != _MASTER_KEY_BYTES:
            raise ValueError("the master key is not 256 bits")
        return _KeyMaterial(jwt_keys, str(document["checkpoint_key"]["kid"]), checkpoint_key, master_key)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyUnavailable(
            f"local key file {path} is damaged ({' '.join(str(exc).split())}); restore it from a backup (new keys "
            "cannot open MFA secrets or mask keys sealed with it, nor sign on from its IAM checkpoints)"
        ) from None


def _checked_kid(kid: str) -> str:
    """A kid made by this module (it names files: nothing else may reach the file system)."""
    if not isinstance(kid, str) or not _LOCAL_JWT_KID.fullmatch(kid):
        raise KeyUnavailable(f"{kid!r} is not a local JWT key id")
    return kid


def _parse_stamp(text: object) -> datetime:
    value = datetime.fromisoformat(str(text))
    if value.tzinfo is None:
        raise ValueError("a time without a zone")
    return value.astimezone(UTC)


def _parse_jwt_key(entry: dict[str, object]) -> _JwtKey:
    key = _load_private_key(entry["private_pem"])
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < _RSA_BITS:
        raise ValueError("a JWT signing key is not an RSA-2048 key")
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _JwtKey(kid=str(entry["kid"]), private_key=key, public_pem=public_pem)


def _load_private_key(pem: object) -> object:
    if not isinstance(pem, str):
        raise TypeError("a private key must be a PEM string")
    return serialization.load_pem_private_key(pem.encode("ascii"), password=None)
