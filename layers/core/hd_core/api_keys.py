"""API keys: format and checksum, Argon2id hashing, issuing, revoking and authenticating.

A key is `hd_live_` or `hd_test_` followed by 32 base62 characters: 26 random ones, then a
6-character base62 CRC32 of everything before it. The checksum lets secret scanners (and our own
login path) reject a mistyped or made-up key offline, the way GitHub tokens work. The key id is the
prefix plus the first 8 random characters; it is stored in clear and used to look the key up, so the
Argon2id hash is verified once per login instead of against every stored key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from hd_core.auth_throttle import AuthThrottle, ThrottleSubject
from hd_core.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidApiKeyFormat,
    InvalidRequest,
    NotFound,
    SourceAddressNotAllowed,
)
from hd_core.models import (
    BASE62_ALPHABET,
    ApiKeyRecord,
    ApiScope,
    KeyEnv,
    OrgStatus,
    Principal,
    UserStatus,
    random_base62,
    utc_now,
)
from hd_core.permissions import effective_scopes, expand_scopes, narrow_scopes
from hd_core.ports import ControlStore

_RANDOM_CHARS = 26
_CHECKSUM_CHARS = 6
_KEY_ID_RANDOM_CHARS = 8
_API_KEY_PATTERN = re.compile(r"hd_(live|test)_[0-9A-Za-z]{32}")
_PREFIX_LENGTH = len("hd_live_")
# A key id collides with an existing one with probability ~n / 62**8; a few retries make issuing certain.
_ISSUE_ATTEMPTS = 5
DEFAULT_ROTATION_GRACE = timedelta(hours=72)


def _base62_fixed(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, remainder = divmod(value, 62)
        digits.append(BASE62_ALPHABET[remainder])
    if value:
        raise ValueError("value does not fit in the requested width")
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62_fixed(zlib.crc32(body.encode("ascii")), _CHECKSUM_CHARS)


def generate_api_key(env: KeyEnv | str = KeyEnv.LIVE) -> tuple[str, str]:
    """A new random API key for `env`, as (plaintext, key id). The plaintext is shown to its owner once."""
    body = f"hd_{KeyEnv(env).value}_{random_base62(_RANDOM_CHARS)}"
    plaintext = body + _checksum(body)
    return plaintext, key_id_of(plaintext)


def checksum_valid(plaintext: str) -> bool:
    """Whether `plaintext` has the API key shape and its trailing CRC32 matches; needs no lookup."""
    if _API_KEY_PATTERN.fullmatch(plaintext) is None:
        return False
    body, checksum = plaintext[:-_CHECKSUM_CHARS], plaintext[-_CHECKSUM_CHARS:]
    return hmac.compare_digest(_checksum(body), checksum)


def key_id_of(plaintext: str) -> str:
    """The public key id (`hd_live_` + 8 characters) of a well-formed key; raises `InvalidApiKeyFormat`."""
    if not checksum_valid(plaintext):
        raise InvalidApiKeyFormat()
    return plaintext[: _PREFIX_LENGTH + _KEY_ID_RANDOM_CHARS]


class ApiKeyHasher:
    """Argon2id hashing of API keys; the defaults are OWASP's (19 MiB, 2 passes, 1 lane)."""

    def __init__(
        self,
        *,
        time_cost: int = 2,
        memory_cost: int = 19456,
        parallelism: int = 1,
        hash_len: int = 32,
        salt_len: int = 16,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=hash_len,
            salt_len=salt_len,
            type=Type.ID,
        )

    def hash(self, plaintext: str) -> str:
        """The encoded Argon2id hash (`$argon2id$v=19$m=...`) of `plaintext`, with a fresh random salt."""
        return self._hasher.hash(plaintext)

    def verify(self, key_hash: str, plaintext: str) -> bool:
        """Whether `plaintext` matches `key_hash`; a mismatch or an unreadable hash is False, never an exception."""
        try:
            return self._hasher.verify(key_hash, plaintext)
        except (VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True)
class _VerifiedKey:
    key_id: str
    key_hash: str  # a cache hit counts only while the stored record still carries this hash
    verified_at: float


class ApiKeyAuthenticator:
    """Turns a Postgres (user name, password) pair into a `Principal`, or raises `AuthenticationFailed`.

    The password is the API key; the user name must be the key's user id or its key id. Every failure
    raises the same generic error (its `reason` is for server logs only) and costs one Argon2 verify,
    whether or not the key id exists, so neither the message nor the timing reveals which keys exist.

    A verified key is remembered for `ttl_seconds` under HMAC-SHA256(pepper, key) so a busy client
    does not pay for Argon2 on every connection; the plaintext itself is never held. A remembered key
    still has its record, user and organisation re-read from the store on every login, so revocation
    and suspension take effect at once, on every host. Safe to call from several threads.

    Secret checks are throttled per key id (`hd_core.auth_throttle`), before the cache is consulted:
    a locked key id is refused even with the right key. An unknown key id and a wrong secret count
    as failures; a fresh Argon2 proof forgets them, a cache hit does not (else a busy client would
    wipe an attacker's count between guesses). Without `throttle` the default policy applies, unaudited.
    """

    def __init__(
        self,
        store: ControlStore,
        pepper: bytes,
        *,
        hasher: ApiKeyHasher | None = None,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        max_cached_keys: int = 10_000,
        throttle: AuthThrottle | None = None,
    ) -> None:
        if len(pepper) < 16:
            raise ValueError("the pepper must be at least 16 bytes")
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must not be negative")
        self._store = store
        self._pepper = pepper
        self._hasher = hasher if hasher is not None else ApiKeyHasher()
        self._ttl = ttl_seconds
        self._clock = clock
        self._now = now
        self._max_cached = max_cached_keys
        self._throttle = throttle if throttle is not None else AuthThrottle(store, now=now)
        # Verified against when there is no real hash to verify, so a miss costs what a hit costs.
        self._dummy_hash = self._hasher.hash(random_base62(_RANDOM_CHARS + _CHECKSUM_CHARS))
        self._verified: dict[bytes, _VerifiedKey] = {}
        self._lock = threading.Lock()

    def authenticate(self, username: str, password: str, source_ip: str | None = None) -> Principal:
        """The principal `password` (an API key) authenticates as; raises `AuthenticationFailed`.

        A key with an IP allowlist is accepted only from `source_ip` inside it: an unknown source
        address is refused too (`SourceAddressNotAllowed`), so a caller that forgets to pass it fails closed.
        """
        if not checksum_valid(password):
            self._hasher.verify(self._dummy_hash, password)
            raise AuthenticationFailed("malformed api key or bad checksum")
        key_id = key_id_of(password)
        # A malformed key above can never be accepted, so it needs no throttle; a well-formed one can.
        attempt = self._throttle.admit(ThrottleSubject.api_key(key_id), source_ip=source_ip)
        digest = hmac.new(self._pepper, password.encode("ascii"), hashlib.sha256).digest()
        record = self._store.get_api_key(key_id)
        if record is None:
            self._hasher.verify(self._dummy_hash, password)
            self._drop(digest)
            raise attempt.refused("unknown key id")
        if not self._recently_verified(digest, record):
            if not self._hasher.verify(record.key_hash, password):
                raise attempt.refused("wrong secret")
            attempt.succeeded()
            principal = self._admit(record, username, source_ip)
            self._remember(digest, record)
            return principal
        try:
            return self._admit(record, username, source_ip)
        except AuthenticationFailed:
            self._drop(digest)
            raise

    def forget(self, key_id: str) -> None:
        """Drop every remembered verification of `key_id` (called when the key is revoked)."""
        with self._lock:
            for digest in [d for d, entry in self._verified.items() if entry.key_id == key_id]:
                del self._verified[digest]

    def _admit(self, record: ApiKeyRecord, username: str, source_ip: str | None) -> Principal:
        """The principal for a proven key, if the key, its user and its organisation are all in good standing."""
        if record.revoked_at is not None:
            raise AuthenticationFailed("api key revoked")
        if record.expires_at is not None and self._now() >= record.expires_at:
            raise AuthenticationFailed("api key expired")
        if username not in (record.user_id, record.key_id):
            raise AuthenticationFailed("user name is neither the key's user id nor its key id")
        check_source_address(record.allowed_cidrs, source_ip)
        user = self._store.get_user(record.user_id)
        if user is None or user.org_id != record.org_id or user.status != UserStatus.ACTIVE:
            raise AuthenticationFailed("user missing or not active")
        org = self._store.get_org(record.org_id)
        if org is None or org.status != OrgStatus.ACTIVE:
            raise AuthenticationFailed("organization missing or not active")
        return Principal(
            user_id=user.user_id,
            org_id=org.org_id,
            role=user.role,
            key_id=record.key_id,
            env=record.env,
            # Narrowed to the user's current role: a demotion also demotes keys issued before it.
            scopes=effective_scopes(record.scopes, user.role),
            department=user.department,
            region=user.region,
        )

    def _recently_verified(self, digest: bytes, record: ApiKeyRecord) -> bool:
        with self._lock:
            entry = self._verified.get(digest)
            if entry is None:
                return False
            if self._clock() - entry.verified_at >= self._ttl or entry.key_hash != record.key_hash:
                del self._verified[digest]
                return False
            return True

    def _remember(self, digest: bytes, record: ApiKeyRecord) -> None:
        if self._ttl == 0 or self._max_cached <= 0:
            return
        with self._lock:
            now = self._clock()
            if len(self._verified) >= self._max_cached:
                self._evict(now)
            self._verified[digest] = _VerifiedKey(record.key_id, record.key_hash, now)

    def _evict(self, now: float) -> None:
        """Make room: drop expired entries, then the oldest (dicts keep insertion order)."""
        for digest in [d for d, entry in self._verified.items() if now - entry.verified_at >= self._ttl]:
            del self._verified[digest]
        while len(self._verified) >= self._max_cached:
            del self._verified[next(iter(self._verified))]

    def _drop(self, digest: bytes) -> None:
        with self._lock:
            self._verified.pop(digest, None)


def issue_api_key(
    store: ControlStore,
    hasher: ApiKeyHasher,
    *,
    org_id: str,
    user_id: str,
    env: KeyEnv | str = KeyEnv.LIVE,
    scopes: Iterable[str] = (ApiScope.QUERY_READ,),
    name: str = "",
    expires_at: datetime | None = None,
    allowed_cidrs: Iterable[str] = (),
    now: Callable[[], datetime] = utc_now,
    rotate_every_days: int | None = None,
    delivery_secret: str | None = None,
    before_store: Callable[[str, ApiKeyRecord], None] | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Create and store a key for an active user of an active organisation; returns (plaintext, record).

    `rotate_every_days` and `delivery_secret` are the key's rotation policy and where a scheduled
    successor is delivered (`hd_core.key_lifecycle`). `before_store`, if given, receives the plaintext
    and the record before the record is stored: if it raises, nothing is stored.

    `scopes` may name scope bundles (`read_only`, `agent`, ...) and must all belong to the user's
    role. `allowed_cidrs` (IPv4/IPv6 networks or single addresses) restricts where the key may be
    used from; empty means anywhere. The plaintext exists only in the return value: the store keeps
    the Argon2id hash. Raises `NotFound` if the organisation or user does not exist (or the user is
    in another organisation), `Conflict` if either is not active, `ScopeNotAllowed` for a scope the
    user's role lacks, `UnknownScope` for unknown scopes and `InvalidRequest` for a past expiry or a
    malformed network (both are `ValueError`s).
    """
    normalised_scopes = _normalise_scopes(scopes)
    networks = normalise_cidrs(allowed_cidrs)
    created_at = now()
    expires_at = _future_expiry(expires_at, created_at)
    org = store.get_org(org_id)
    user = store.get_user(user_id)
    if org is None or user is None or user.org_id != org_id:
        raise NotFound("organization or user not found")
    if org.status != OrgStatus.ACTIVE or user.status != UserStatus.ACTIVE:
        raise Conflict("keys can only be issued to active users of active organizations")
    normalised_scopes = narrow_scopes(user.role, normalised_scopes)
    key_env = KeyEnv(env)
    for _ in range(_ISSUE_ATTEMPTS):
        plaintext, key_id = generate_api_key(key_env)
        record = ApiKeyRecord(
            key_id=key_id,
            org_id=org_id,
            user_id=user_id,
            env=key_env,
            key_hash=hasher.hash(plaintext),
            scopes=normalised_scopes,
            created_at=created_at,
            expires_at=expires_at,
            revoked_at=None,
            name=name,
            allowed_cidrs=networks,
            rotate_every_days=rotate_every_days,
            delivery_secret=delivery_secret,
        )
        if before_store is not None:
            before_store(plaintext, record)
        try:
            store.put_api_key(record)
        except Conflict:
            continue
        return plaintext, record
    raise Conflict("could not allocate an unused api key id")


def rotate_api_key(
    store: ControlStore,
    hasher: ApiKeyHasher,
    key_id: str,
    *,
    grace: timedelta = DEFAULT_ROTATION_GRACE,
    now: Callable[[], datetime] = utc_now,
    before_store: Callable[[str, ApiKeyRecord], None] | None = None,
) -> tuple[str, ApiKeyRecord, ApiKeyRecord]:
    """Replace a key with a new one; the old key keeps working for `grace` so clients can switch over.

    The new key has the old one's user, organisation, environment, name, allowlist and expiry, and
    its scopes as the user's current role still allows them (what the old key could do today). The
    old key then expires at the earlier of its own expiry and now + `grace`, and records the new key
    id in `rotated_to`. The new key keeps the old one's rotation policy and delivery target;
    `before_store` is handed to `issue_api_key` (a failure there leaves both keys as they were).
    Returns (new plaintext, new record, old record after rotation). Raises
    `NotFound` for an unknown key and `Conflict` for a revoked, expired or already rotated one.
    """
    if grace < timedelta(0):
        raise InvalidRequest("the rotation grace period must not be negative")
    old = store.get_api_key(key_id)
    if old is None:
        raise NotFound(f"api key {key_id} not found")
    rotated_at = now()
    _require_rotatable(old, rotated_at)
    user = store.get_user(old.user_id)
    if user is None:
        raise NotFound("organization or user not found")
    scopes = effective_scopes(old.scopes, user.role)
    if not scopes:
        raise Conflict("the user's current role keeps none of this key's scopes; issue a new key instead")
    plaintext, new = issue_api_key(
        store,
        hasher,
        org_id=old.org_id,
        user_id=old.user_id,
        env=old.env,
        scopes=scopes,
        name=old.name,
        expires_at=old.expires_at,
        allowed_cidrs=old.allowed_cidrs,
        now=lambda: rotated_at,
        rotate_every_days=old.rotate_every_days,
        delivery_secret=old.delivery_secret,
        before_store=before_store,
    )
    grace_end = rotated_at + grace
    retired = replace(
        old,
        expires_at=grace_end if old.expires_at is None else min(old.expires_at, grace_end),
        rotated_to=new.key_id,
    )
    store.update_api_key(retired)
    return plaintext, new, retired


def _require_rotatable(record: ApiKeyRecord, at: datetime) -> None:
    if record.revoked_at is not None:
        raise Conflict("a revoked api key cannot be rotated")
    if record.rotated_to is not None:
        raise Conflict(f"api key {record.key_id} was already rotated to {record.rotated_to}")
    if record.expires_at is not None and record.expires_at <= at:
        raise Conflict("an expired api key cannot be rotated")


def revoke_api_key(
    store: ControlStore,
    authenticator: ApiKeyAuthenticator | None,
    key_id: str,
    *,
    now: Callable[[], datetime] = utc_now,
) -> ApiKeyRecord:
    """Revoke a key now (keeping an earlier revocation time) and forget any cached verification of it.

    Raises `NotFound` for an unknown key id. Other hosts' caches need no message: every login
    re-reads the key record, so the revocation is honoured everywhere at once.
    """
    record = store.revoke_api_key(key_id, now())
    if authenticator is not None:
        authenticator.forget(key_id)
    return record


def normalise_cidrs(cidrs: Iterable[str]) -> tuple[str, ...]:
    """Networks in canonical form (`10.1.2.3/8` -> `10.0.0.0/8`, an address -> a /32 or /128), each once.

    Raises `InvalidRequest` for anything that is not an IPv4 or IPv6 network or address.
    """
    if isinstance(cidrs, str):
        # A lone string would otherwise be iterated character by character.
        raise InvalidRequest("allowed_cidrs must be a list of networks, not a single string")
    normalised: list[str] = []
    for cidr in cidrs:
        try:
            network = str(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError:
            raise InvalidRequest(f"{cidr!r} is not an IPv4 or IPv6 network (such as 203.0.113.0/24)") from None
        if network not in normalised:
            normalised.append(network)
    return tuple(normalised)


def check_source_address(allowed_cidrs: Iterable[str], source_ip: str | None) -> None:
    """Raise `SourceAddressNotAllowed` unless the allowlist is empty or `source_ip` lies inside it."""
    networks = tuple(allowed_cidrs)
    if not networks:
        return
    if source_ip is None:
        raise SourceAddressNotAllowed("the key has an ip allowlist but the source address is unknown")
    try:
        address = ipaddress.ip_address(source_ip.strip())
    except ValueError:
        raise SourceAddressNotAllowed("the source address is not an ip address") from None
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the allowlist names them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not any(address in ipaddress.ip_network(network, strict=False) for network in networks):
        raise SourceAddressNotAllowed()


def _future_expiry(expires_at: datetime | None, created_at: datetime) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidRequest("expires_at must be timezone-aware")
    expires_at = expires_at.astimezone(UTC)
    if expires_at <= created_at:
        raise InvalidRequest("expires_at must be in the future")
    return expires_at


def _normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    # Declaration order, so equal scope sets are stored identically.
    requested = expand_scopes(scopes)
    if not requested:
        raise InvalidRequest("an api key needs at least one scope")
    return requested
