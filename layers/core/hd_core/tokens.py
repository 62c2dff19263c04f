"""RS256 access tokens for the control API: issuing, verifying and publishing the JWKS.

The signing key never leaves the `KeyProvider` (KMS in AWS), so a token is assembled by hand:
header and claims are encoded here and only the JWS signing input goes to `keys.sign_jwt`.
Verification uses PyJWT, pinned to RS256 and to keys we published ourselves: the token's header
chooses among our key ids, never where a key comes from (`jku`, `x5u`, `jwk`, `x5c` are refused).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hd_core.errors import AuthenticationFailed, KeyUnavailable
from hd_core.models import KeyEnv, User, new_id, utc_now
from hd_core.ports import JwtKeySet, JwtPublicKey

ALGORITHM = "RS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
# Headers that tell a verifier where to fetch a key: honouring one lets the token vouch for itself.
KEY_LOCATION_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
DEFAULT_ACCESS_TTL = timedelta(hours=1)
# Issue time in whole microseconds since the epoch: orders a token against the user's `tokens_valid_after`.
ISSUED_MICROS_CLAIM = "hd_iat_us"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS compact serialisation wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"))


class JwtIssuer:
    """Signs access tokens for users with the key set's current RS256 key (the signing-key ring's, in services)."""

    def __init__(
        self,
        keys: JwtKeySet,
        *,
        issuer: str,
        audience: str,
        ttl: timedelta = DEFAULT_ACCESS_TTL,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("the access token ttl must be positive")
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._now = now

    @property
    def ttl_seconds(self) -> int:
        """The access token lifetime in whole seconds (the `expires_in` of a token response)."""
        return int(self.ttl.total_seconds())

    def issue(self, user: User, env: KeyEnv | str) -> str:
        """A compact JWS for `user` in environment `env`, valid for `ttl` from now."""
        moment = self._now()
        issued_at = int(moment.timestamp())
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self._keys.jwt_signing_kid()}
        claims = {
            "sub": user.user_id,
            "org_id": user.org_id,
            "role": user.role.value,
            "env": KeyEnv(env).value,
            "iat": issued_at,
            "exp": issued_at + self.ttl_seconds,
            "iss": self.issuer,
            "aud": self.audience,
            "jti": new_id("jwt"),
            # `iat` has whole seconds, too coarse to order a token against an end of sessions in the
            # same second; never before the user's last end, or a host whose clock lags mints dead tokens.
            ISSUED_MICROS_CLAIM: max(_micros(moment), _micros(user.tokens_valid_after)),
        }
        signing_input = f"{_json_segment(header)}.{_json_segment(claims)}"
        signature = self._keys.sign_jwt(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"


class JwtVerifier:
    """Verifies access tokens made by `JwtIssuer` against the key set's keys that still verify, picked by `kid`."""

    def __init__(
        self,
        keys: JwtKeySet,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int = 30,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._now = now

    @property
    def leeway_seconds(self) -> int:
        """How long past its `exp` a token is still accepted (clock skew between hosts)."""
        return self._leeway

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; raises `AuthenticationFailed` (with the failed check as reason)."""
        key = self._verification_key(_unverified_header(token))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": [*REQUIRED_CLAIMS, "jti"],
                    "enforce_minimum_key_length": True,
                    # PyJWT reads the wall clock; `check_token_times` uses the injected one instead.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(f"invalid jwt: {type(error).__name__}: {error}") from None
        check_token_times(claims, self._now(), self._leeway)
        return claims

    def _verification_key(self, header: Mapping[str, Any]) -> RSAPublicKey:
        if header.get("alg") != ALGORITHM:
            raise AuthenticationFailed(f"jwt algorithm {header.get('alg')!r} is not {ALGORITHM}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationFailed("jwt has no kid")
        for public_key in self._keys.jwt_public_keys():
            if public_key.kid == kid:
                return _rsa_public_key(public_key)
        raise AuthenticationFailed("jwt kid is not one of our signing keys")


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read without trusting it, refused if it names a key location."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise AuthenticationFailed(f"unreadable jwt header: {error}") from None
    named = KEY_LOCATION_HEADERS.intersection(header)
    if named:
        raise AuthenticationFailed(f"jwt header names a key location ({', '.join(sorted(named))})")
    return header


def check_token_times(claims: Mapping[str, Any], now: datetime, leeway_seconds: float) -> None:
    """Refuse a token that is expired, issued in the future or not yet valid (`nbf`), allowing `leeway_seconds`."""
    moment = now.timestamp()
    expires = _numeric_date(claims, "exp")
    if expires is None:
        raise AuthenticationFailed("jwt has no exp")
    if moment >= expires + leeway_seconds:
        raise AuthenticationFailed("jwt expired")
    issued = _numeric_date(claims, "iat")
    if issued is None:
        raise AuthenticationFailed("jwt has no iat")
    if issued > moment + leeway_seconds:
        raise AuthenticationFailed("jwt issued in the future")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and not_before > moment + leeway_seconds:
        raise AuthenticationFailed("jwt not yet valid")


def _micros(moment: datetime | None) -> int:
    """Microseconds since the epoch, exactly (no float rounding); 0 for None."""
    return 0 if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


def check_session_current(claims: Mapping[str, Any], tokens_valid_after: datetime | None) -> None:
    """Refuse a token issued before its user's sessions were ended (password, MFA, suspension, revocation)."""
    if tokens_valid_after is None:
        return
    issued = claims.get(ISSUED_MICROS_CLAIM)
    # A token without the claim predates it: its age cannot be proven, so an ended session ends it too.
    if isinstance(issued, bool) or not isinstance(issued, int) or issued < _micros(tokens_valid_after):
        raise AuthenticationFailed("jwt issued before the user's sessions were ended")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int subclass: `"exp": true` must not read as 1970-01-01T00:00:01.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed(f"jwt {name} is not a number")
    return float(value)


def _rsa_public_key(public_key: JwtPublicKey) -> RSAPublicKey:
    try:
        loaded = load_pem_public_key(public_key.public_pem)
    except ValueError as error:
        raise KeyUnavailable(f"jwt public key {public_key.kid} is not a PEM public key") from error
    if not isinstance(loaded, RSAPublicKey):
        raise KeyUnavailable(f"jwt public key {public_key.kid} is not an RSA key")
    return loaded


def _b64url_uint(value: int) -> str:
    """A JWK integer: big-endian, no leading zero bytes, base64url."""
    return b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def jwks_document(keys: JwtKeySet) -> dict[str, Any]:
    """The JWKS JSON (RFC 7517) of the RS256 keys that still verify (current and previous), current first."""
    entries = []
    for public_key in keys.jwt_public_keys():
        numbers = _rsa_public_key(public_key).public_numbers()
        entries.append(
            {
                "kty": "RSA",
                "use": "sig",
                "alg": ALGORITHM,
                "kid": public_key.kid,
                "n": _b64url_uint(numbers.n),
                "e": _b64url_uint(numbers.e),
            }
        )
    return {"keys": entries}
