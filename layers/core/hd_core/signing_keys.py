"""JWT signing-key rotation (issue 19): a new key on schedule, the previous one verifying until its tokens expire.

KMS cannot rotate an asymmetric key, so rotation here means a new key. The ring of JWT keys lives in
the control store (setting `signing_keys.jwt`), newest first; every process signs with its first key
and verifies with every key not yet disabled, picked by the token's `kid`, so the API and the engine
hosts (which both read the store) agree on one set. The key provider holds the key material (KMS, or
files in `hd dev`) and is only ever asked about a kid the ring names.

One scheduled run (`rotate_jwt_signing_keys`, part of the daily lifecycle job):

1. A retired key whose every token has expired (retired + the longest token lifetime + the verifier's
   leeway) is disabled in the provider and its deletion scheduled (KMS: ScheduleKeyDeletion with a
   pending window; `hd dev`: the file is removed when the window ends). SIGNING_KEY_DISABLED.
2. A disabled key whose deletion date has passed is purged (local file removed; in AWS, KMS deletes it
   itself and the run confirms the key is pending deletion or gone). SIGNING_KEY_DELETED.
3. When the current key is older than the rotation interval, a new key is made and becomes current;
   the old one is retired and keeps verifying. SIGNING_KEY_ROTATED.

Every step is stored in the ring before the next one starts, so a crash or a failed provider call is
picked up by the next run; each is an IAM event on the deployment chain. The first use of a store
seeds the ring with the provider's configured keys (first writer wins).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hd_core.errors import HdError, KeyUnavailable
from hd_core.iam_audit import IamAuditTrail, checkpoint_message, event_hash, format_audit_time, parse_audit_time
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import ChainCheckpoint, IamEvent, utc_now
from hd_core.ports import CheckpointStore, ControlStore, JwtPublicKey, KeyProvider, SettingsStore
from hd_core.wipe import DEPLOYMENT_CHAIN_ID

log = logging.getLogger(__name__)

JWT_RING_SETTING = "signing_keys.jwt"
DEFAULT_ROTATE_EVERY = timedelta(days=90)
DEFAULT_PENDING_DAYS = 30  # KMS allows 7..30: the longest lets a mistaken deletion be cancelled for a month
# How long a process trusts its copy of the ring: a rotation or a disabled key reaches every process within it.
DEFAULT_RING_REFRESH = timedelta(seconds=30)
_RING_FORMAT = 1
# Tags on every JWT key the rotation makes in KMS: the deployment's IAM grants (CreateKey, Sign, GetPublicKey,
# DisableKey, ScheduleKeyDeletion) are conditioned on them, so no role can use or retire any other key this way.
PURPOSE_TAG = "hd:purpose"
JWT_KEY_PURPOSE = "jwt-signing"
DEPLOYMENT_TAG = "hd:deployment"


def kms_jwt_key_tags(deployment: str) -> dict[str, str]:
    """The tags of a JWT key made in KMS for the deployment `deployment` (empty: the purpose tag only)."""
    return {PURPOSE_TAG: JWT_KEY_PURPOSE, **({DEPLOYMENT_TAG: deployment} if deployment else {})}


@dataclass(frozen=True)
class SigningKey:
    """One JWT signing key and what has happened to it."""

    kid: str
    created_at: datetime
    retired_at: datetime | None = None  # a successor took over signing; this one still verifies
    disabled_at: datetime | None = None  # every token it signed has expired: it verifies nothing now
    delete_after: datetime | None = None  # its deletion was scheduled for this moment
    deleted_at: datetime | None = None

    @property
    def verifies(self) -> bool:
        """Whether tokens signed by this key are still accepted."""
        return self.disabled_at is None

    def as_dict(self) -> dict[str, Any]:
        def stamp(value: datetime | None) -> str | None:
            return None if value is None else format_audit_time(value)

        return {"kid": self.kid, "created_at": stamp(self.created_at), "retired_at": stamp(self.retired_at),
                "disabled_at": stamp(self.disabled_at), "delete_after": stamp(self.delete_after),
                "deleted_at": stamp(self.deleted_at)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> SigningKey:
        def moment(name: str) -> datetime | None:
            text = value.get(name)
            return None if text is None else parse_audit_time(str(text))

        created = moment("created_at")
        if not isinstance(value.get("kid"), str) or not value["kid"] or created is None:
            raise ValueError("a signing key entry needs a kid and a created_at")
        return cls(kid=value["kid"], created_at=created, retired_at=moment("retired_at"),
                   disabled_at=moment("disabled_at"), delete_after=moment("delete_after"),
                   deleted_at=moment("deleted_at"))


@dataclass(frozen=True)
class SigningKeyRing:
    """The JWT keys of a deployment, newest first: the first signs, every one not disabled verifies."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys or not self.keys[0].verifies:
            raise ValueError("a signing key ring needs a current key that is not disabled")

    @property
    def current(self) -> SigningKey:
        return self.keys[0]

    @property
    def verifying(self) -> list[SigningKey]:
        """The keys whose tokens are accepted, current first."""
        return [key for key in self.keys if key.verifies]

    def replaced(self, key: SigningKey) -> SigningKeyRing:
        """This ring with `key`'s entry (same kid) replaced."""
        return SigningKeyRing(tuple(key if entry.kid == key.kid else entry for entry in self.keys))

    def to_json(self) -> str:
        return json.dumps({"format": _RING_FORMAT, "keys": [key.as_dict() for key in self.keys]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SigningKeyRing:
        try:
            document = json.loads(text)
            if document.get("format") != _RING_FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
            return cls(tuple(SigningKey.from_dict(entry) for entry in document["keys"]))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KeyUnavailable(
                f"the stored JWT signing-key ring ({JWT_RING_SETTING}) is unreadable ({error}): restore the control "
                "store's setting from a backup"
            ) from None


def load_ring(store: SettingsStore, keys: KeyProvider, now: datetime, *, setting: str = JWT_RING_SETTING,
              ) -> SigningKeyRing:
    """The stored ring; the first use seeds it with the provider's configured keys (the first writer wins)."""
    stored = store.get_setting(setting)
    if stored is None:
        kids = keys.configured_jwt_kids() if setting == JWT_RING_SETTING else [keys.checkpoint_key_id()]
        if not kids:
            raise KeyUnavailable("no signing key is configured: the ring cannot be seeded")
        # The configured keys after the first are earlier ones: retired now, they verify until their tokens expire.
        seed = SigningKeyRing(tuple(
            SigningKey(kid=kid, created_at=now, retired_at=None if index == 0 else now)
            for index, kid in enumerate(dict.fromkeys(kids))
        ))
        try:
            stored = store.put_setting_if_absent(setting, seed.to_json())
        # A process that may only read the store (a read-only function, an engine host) verifies with the
        # seed it would have written: the configured keys, exactly; the first writer stores it.
        except Exception:  # noqa: BLE001 - any store refusal (AccessDenied, read-only file) is the same case
            log.info("the %s ring is not stored yet and this process cannot store it: using the configured keys",
                     setting)
            return seed
    return SigningKeyRing.from_json(stored)


class JwtKeyRing:
    """The `JwtKeySet` tokens use: the stored ring's keys, their material from the key provider, by kid.

    The ring is re-read from the store at most every `refresh` (the injected clock's time), so a
    rotation or a disabled key reaches every process within it; `invalidate` forgets it at once.
    """

    def __init__(
        self, store: SettingsStore, keys: KeyProvider, *, now: Callable[[], datetime] = utc_now,
        refresh: timedelta = DEFAULT_RING_REFRESH,
    ) -> None:
        self._store = store
        self._keys = keys
        self._now = now
        self._refresh = refresh
        self._lock = threading.Lock()
        self._ring: SigningKeyRing | None = None
        self._read_at: datetime | None = None

    def ring(self) -> SigningKeyRing:
        """The ring as stored, at most `refresh` old."""
        at = self._now()
        with self._lock:
            fresh = self._read_at is not None and timedelta(0) <= at - self._read_at < self._refresh
            if self._ring is not None and fresh:
                return self._ring
        ring = load_ring(self._store, self._keys, at)
        with self._lock:
            self._ring, self._read_at = ring, at
        return ring

    def invalidate(self) -> None:
        """Read the ring from the store on next use (after this process changed it)."""
        with self._lock:
            self._ring = self._read_at = None

    def jwt_signing_kid(self) -> str:
        return self.ring().current.kid

    def sign_jwt(self, signing_input: bytes) -> bytes:
        return self._keys.sign_jwt_with(self.ring().current.kid, signing_input)

    def jwt_public_keys(self) -> list[JwtPublicKey]:
        """Every key whose tokens are still accepted, current first."""
        return [JwtPublicKey(kid=key.kid, public_pem=self._keys.jwt_public_pem(key.kid))
                for key in self.ring().verifying]


@dataclass(frozen=True)
class SigningKeyPolicy:
    """How often the JWT key rotates and how long its tokens can live (what the old key must outlast)."""

    rotate_every: timedelta = DEFAULT_ROTATE_EVERY
    token_lifetime: timedelta = timedelta(hours=1)  # the issuer's access token ttl
    leeway: timedelta = timedelta(seconds=30)  # the verifier's clock leeway: a token is accepted this long past exp
    pending_days: int = DEFAULT_PENDING_DAYS

    def __post_init__(self) -> None:
        if self.rotate_every <= self.token_lifetime + self.leeway:
            raise ValueError("the rotation interval must be longer than a token's lifetime and the leeway")
        if not 7 <= self.pending_days <= 30:
            raise ValueError("the deletion pending window must be 7 to 30 days (KMS's range)")

    @property
    def outlived_after(self) -> timedelta:
        """How long after its retirement no token of a key can be accepted any more."""
        return self.token_lifetime + self.leeway


@dataclass
class SigningKeyReport:
    """What one run did to the JWT signing keys, by kid."""

    created: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # a provider call failed; the next run tries again
    checkpoint_created: list[str] = field(default_factory=list)  # new IAM checkpoint keys

    def as_dict(self) -> dict[str, list[str]]:
        return {"created": list(self.created), "disabled": list(self.disabled), "deleted": list(self.deleted),
                "failed": list(self.failed), "checkpoint_created": list(self.checkpoint_created)}


def rotate_jwt_signing_keys(
    store: SettingsStore, trail: IamAuditTrail, keys: KeyProvider, now: datetime, *,
    policy: SigningKeyPolicy | None = None, request_id: str = "signing-keys",
) -> SigningKeyReport:
    """One scheduled pass over the JWT keys at `now` (see the module text); never raises for a provider failure."""
    policy = policy or SigningKeyPolicy()
    at = now.astimezone(UTC)
    report = SigningKeyReport()
    ring = load_ring(store, keys, at)
    for key in ring.keys[1:]:
        ring = _retire_step(store, trail, keys, ring, key, at, policy, request_id, report)
    if at - ring.current.created_at >= policy.rotate_every:
        ring = _rotate(store, trail, keys, ring, at, request_id, report)
    return report


def _save(store: SettingsStore, ring: SigningKeyRing) -> SigningKeyRing:
    store.put_setting(JWT_RING_SETTING, ring.to_json())
    return ring


def _record(trail: IamAuditTrail, kind: IamEventType, kid: str, before: SigningKey | None, after: object,
            request_id: str) -> None:
    trail.record(DEPLOYMENT_CHAIN_ID, kind, actor=SYSTEM_ACTOR, target=kid,
                 before=None if before is None else before.as_dict(), after=after, request_id=request_id)


def _retire_step(
    store: SettingsStore, trail: IamAuditTrail, keys: KeyProvider, ring: SigningKeyRing, key: SigningKey,
    at: datetime, policy: SigningKeyPolicy, request_id: str, report: SigningKeyReport,
) -> SigningKeyRing:
    """Disable and schedule the deletion of a key whose tokens have all expired; purge one whose date has come."""
    try:
        if key.deleted_at is not None:
            return ring
        if key.disabled_at is None:
            if key.retired_at is None or at < key.retired_at + policy.outlived_after:
                return ring
            keys.disable_jwt_key(key.kid)
            # Stored before the deletion is asked for: from here on no process accepts its tokens.
            disabled = replace(key, disabled_at=at)
            ring = _save(store, ring.replaced(disabled))
            key = disabled
            report.disabled.append(key.kid)
        if key.delete_after is None:
            delete_after = keys.schedule_jwt_key_deletion(key.kid, policy.pending_days)
            scheduled = replace(key, delete_after=delete_after)
            ring = _save(store, ring.replaced(scheduled))
            _record(trail, IamEventType.SIGNING_KEY_DISABLED, key.kid, key, scheduled.as_dict(), request_id)
            return ring
        if at >= key.delete_after:
            keys.purge_jwt_key(key.kid)
            deleted = replace(key, deleted_at=at)
            ring = _save(store, ring.replaced(deleted))
            _record(trail, IamEventType.SIGNING_KEY_DELETED, key.kid, key, deleted.as_dict(), request_id)
            report.deleted.append(key.kid)
    except HdError as error:
        log.warning("JWT signing key %s: %s (%s); the next run tries again", key.kid, error, error.code)
        report.failed.append(key.kid)
    return ring


def _rotate(
    store: SettingsStore, trail: IamAuditTrail, keys: KeyProvider, ring: SigningKeyRing, at: datetime,
    request_id: str, report: SigningKeyReport,
) -> SigningKeyRing:
    previous = ring.current
    try:
        kid = keys.create_jwt_key()
        keys.jwt_public_pem(kid)  # usable before anyone is told to sign with it
    except HdError as error:
        log.warning("a new JWT signing key could not be made: %s (%s); the next run tries again", error, error.code)
        report.failed.append(previous.kid)
        return ring
    retired = replace(previous, retired_at=at)
    ring = _save(store, SigningKeyRing((SigningKey(kid=kid, created_at=at), retired, *ring.keys[1:])))
    _record(trail, IamEventType.SIGNING_KEY_ROTATED, kid, previous,
            {"new": ring.current.as_dict(), "old": retired.as_dict()}, request_id)
    report.created.append(kid)
    log.info("JWT signing key rotated: %s signs now, %s verifies until its tokens expire", kid, previous.kid)
    return ring


# --- IAM checkpoint keys ----------------------------------------------------------------------------------
#
# A checkpoint key rotates on the same schedule, but nothing it signed ever expires: old checkpoints must stay
# verifiable for as long as the trail is kept. So no checkpoint key is ever disabled, and the verifier trusts
# every key it ever used: the configured (first) key, and each later key whose public key was recorded in the
# deployment chain (CHECKPOINT_KEY_ADDED) by an event that a checkpoint signed by an already trusted key covers.
# Someone who can write to the store and the checkpoint bucket but cannot sign with a trusted key therefore
# cannot introduce a key of their own: its introduction would carry no trusted signature.

CHECKPOINT_RING_SETTING = "signing_keys.checkpoint"


class CheckpointKeyRing:
    """The `CheckpointKeys` the IAM trail uses: signs with the ring's current key, verifies with every trusted key."""

    def __init__(
        self, store: ControlStore, checkpoints: CheckpointStore, keys: KeyProvider, *,
        now: Callable[[], datetime] = utc_now, refresh: timedelta = DEFAULT_RING_REFRESH,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._keys = keys
        self._now = now
        self._refresh = refresh
        self._lock = threading.Lock()
        self._current: tuple[str, datetime] | None = None
        self._trusted: dict[str, bytes] = {}  # kid -> DER public key, proven by the chain (never forgotten)

    @property
    def anchor(self) -> str:
        """The configured checkpoint key: trusted without proof, the root of every later key's introduction."""
        return self._keys.checkpoint_key_id()

    def checkpoint_key_id(self) -> str:
        at = self._now()
        with self._lock:
            if self._current is not None and timedelta(0) <= at - self._current[1] < self._refresh:
                return self._current[0]
        kid = load_ring(self._store, self._keys, at, setting=CHECKPOINT_RING_SETTING).current.kid
        with self._lock:
            self._current = (kid, at)
        return kid

    def invalidate(self) -> None:
        with self._lock:
            self._current = None

    def sign_checkpoint(self, message: bytes) -> bytes:
        kid = self.checkpoint_key_id()
        if kid == self.anchor:
            return self._keys.sign_checkpoint(message)
        return self._keys.sign_checkpoint_with(kid, message)

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether a trusted checkpoint key `key_id` signed `message`; a key the chain never introduced fails."""
        if key_id == self.anchor:
            return self._keys.verify_checkpoint(key_id, message, signature)
        with self._lock:
            public = self._trusted.get(key_id)
        if public is None:  # not proven yet in this process: read the chain's introductions again
            public = self.trusted_keys().get(key_id)
        return public is not None and _ecdsa_valid(public, message, signature)

    def trusted_keys(self) -> dict[str, bytes]:
        """Every introduced key whose introduction a trusted key signed, in chain order (re-read each call)."""
        trusted = dict(self._trusted)
        after_seq = 0
        while True:
            page = self._store.list_iam_events(DEPLOYMENT_CHAIN_ID, after_seq, 500)
            for event in page:
                if event.event_type == IamEventType.CHECKPOINT_KEY_ADDED.value:
                    introduced = self._introduction(event, trusted)
                    if introduced is not None:
                        trusted.setdefault(*introduced)
            if len(page) < 500:
                break
            after_seq = page[-1].seq
        with self._lock:
            self._trusted.update(trusted)
        return trusted

    def _introduction(self, event: IamEvent, trusted: dict[str, bytes]) -> tuple[str, bytes] | None:
        """(kid, public key) of a key-introduction event that is intact and signed by a key trusted before it."""
        after = event.after or {}
        kid, public_b64 = after.get("kid"), after.get("public_key")
        if not isinstance(kid, str) or not isinstance(public_b64, str):
            return None
        recomputed = event_hash(event.prev_hash, event.event_id, event.chain_id, event.event_type, event.actor,
                                event.target, event.before, event.after, event.at, event.request_id)
        if recomputed != event.hash:
            return None  # edited after it was signed: verify-chain reports it; its key is not trusted
        for checkpoint in self._checkpoints.list_checkpoints(DEPLOYMENT_CHAIN_ID, size=event.seq):
            if checkpoint.size != event.seq or checkpoint.head_hash != event.hash or checkpoint.key_id == kid:
                continue
            message = checkpoint_message(DEPLOYMENT_CHAIN_ID, checkpoint.size, checkpoint.head_hash, checkpoint.time)
            try:
                signature = base64.b64decode(checkpoint.signature, validate=True)
            except (binascii.Error, ValueError):
                continue
            signer = checkpoint.key_id
            if (signer == self.anchor and self._keys.verify_checkpoint(signer, message, signature)) or (
                    signer in trusted and _ecdsa_valid(trusted[signer], message, signature)):
                try:
                    return kid, base64.b64decode(public_b64, validate=True)
                except (binascii.Error, ValueError):
                    return None
        return None


def _ecdsa_valid(public_der: bytes, message: bytes, signature: bytes) -> bool:
    try:
        public_key = serialization.load_der_public_key(public_der)
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return False
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def rotate_checkpoint_key(
    store: ControlStore, trail: IamAuditTrail, checkpoints: CheckpointStore, keys: KeyProvider, now: datetime, *,
    rotate_every: timedelta = DEFAULT_ROTATE_EVERY, request_id: str = "signing-keys",
) -> str | None:
    """Make a new checkpoint key when the current one is older than `rotate_every`; returns its kid, else None.

    The new key's public key is recorded in the deployment chain and that event is signed, as a checkpoint of
    its own position, by the key in force, before the ring names the new key: from then on it signs, and the
    verifier trusts it because of that signature. Raises `HdError` when the provider cannot make or use a key.
    """
    at = now.astimezone(UTC)
    ring = load_ring(store, keys, at, setting=CHECKPOINT_RING_SETTING)
    if at - ring.current.created_at < rotate_every:
        return None
    previous = ring.current.kid
    kid = keys.create_checkpoint_key()
    public = keys.checkpoint_public_key(kid)
    event = trail.record(
        DEPLOYMENT_CHAIN_ID, IamEventType.CHECKPOINT_KEY_ADDED, actor=SYSTEM_ACTOR, target=kid,
        before={"kid": previous},
        after={"kid": kid, "public_key": base64.b64encode(public).decode("ascii"), "algorithm": "ECDSA_SHA_256",
               "signed_by": previous},
        request_id=request_id,
    )
    message = checkpoint_message(DEPLOYMENT_CHAIN_ID, event.seq, event.hash, at)
    signature = keys.sign_checkpoint(message) if previous == keys.checkpoint_key_id() else \
        keys.sign_checkpoint_with(previous, message)
    checkpoints.put_checkpoint(ChainCheckpoint(
        chain_id=DEPLOYMENT_CHAIN_ID, size=event.seq, head_hash=event.hash, time=at, key_id=previous,
        signature=base64.b64encode(signature).decode("ascii"),
    ))
    _save_to(store, CHECKPOINT_RING_SETTING, SigningKeyRing(
        (SigningKey(kid=kid, created_at=at), replace(ring.current, retired_at=at), *ring.keys[1:])))
    log.info("IAM checkpoint key rotated: %s signs now; %s stays trusted for the checkpoints it signed", kid, previous)
    return kid


def _save_to(store: SettingsStore, setting: str, ring: SigningKeyRing) -> None:
    store.put_setting(setting, ring.to_json())
