"""RS256 access tokens: what `JwtIssuer` signs, what `JwtVerifier` refuses, and the JWKS document."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hd_core.errors import AuthenticationFailed
from hd_core.models import KeyEnv, Role, User, UserStatus, new_id
from hd_core.ports import JwtPublicKey
from hd_core.tokens import JwtIssuer, JwtVerifier, jwks_document

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://control.hd.test"
AUDIENCE = "hardened-duck-control"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# Key generation is the slow part of these tests: three keys, made once.
KEY_A, KEY_B, KEY_C = _rsa_key(), _rsa_key(), _rsa_key()


class RsaJwtKeys:
    """The JWT half of a `KeyProvider`, in memory: the first key signs, every listed key verifies."""

    def __init__(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        self.keys = list(keys)

    def jwt_signing_kid(self) -> str:
        return self.keys[0][0]

    def sign_jwt(self, signing_input: bytes) -> bytes:
        return self.keys[0][1].sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def jwt_public_keys(self) -> list[JwtPublicKey]:
        return [JwtPublicKey(kid, _public_pem(key)) for kid, key in self.keys]


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> RsaJwtKeys:
    return RsaJwtKeys(("kid-a", KEY_A))


def _user(role: Role = Role.ANALYST) -> User:
    return User(new_id("usr"), new_id("org"), "ana@acme.test", role, UserStatus.ACTIVE, None, None, T0)


def _issuer(keys: Any, clock: Clock, ttl: timedelta = timedelta(hours=1)) -> JwtIssuer:
    return JwtIssuer(keys, issuer=ISSUER, audience=AUDIENCE, ttl=ttl, now=clock.now)


def _verifier(keys: Any, clock: Clock, *, issuer: str = ISSUER, audience: str = AUDIENCE) -> JwtVerifier:
    return JwtVerifier(keys, issuer=issuer, audience=audience, leeway_seconds=30, now=clock.now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _claims(clock: Clock, **changes: Any) -> dict[str, Any]:
    issued = int(clock.at.timestamp())
    claims: dict[str, Any] = {
        "sub": "usr_1",
        "org_id": "org_1",
        "role": "Analyst",
        "env": "live",
        "iat": issued,
        "exp": issued + 3600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": "jwt_1",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _signed(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token signed with a real key of ours: only the check under test can refuse it."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _refusal(verifier: JwtVerifier, token: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(token)
    assert str(caught.value) == "authentication failed"
    return caught.value


# --- issuing --------------------------------------------------------------------------------------


def test_an_issued_token_is_an_rs256_jws_with_the_documented_header_and_claims(keys: RsaJwtKeys, clock: Clock) -> None:
    user = _user(Role.DEVELOPER)
    token = _issuer(keys, clock).issue(user, KeyEnv.TEST)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "kid-a"}
    claims = _verifier(keys, clock).verify(token)
    issued = int(T0.timestamp())
    assert {name: claims[name] for name in ("sub", "org_id", "role", "env", "iat", "exp", "iss", "aud")} == {
        "sub": user.user_id,
        "org_id": user.org_id,
        "role": "Developer",
        "env": "test",
        "iat": issued,
        "exp": issued + 3600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    assert claims["jti"].startswith("jwt_")


def test_every_token_gets_its_own_jti(keys: RsaJwtKeys, clock: Clock) -> None:
    issuer, verifier, user = _issuer(keys, clock), _verifier(keys, clock), _user()
    jtis = {verifier.verify(issuer.issue(user, "live"))["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_pyjwt_verifies_our_hand_made_token_with_the_published_jwks(keys: RsaJwtKeys, clock: Clock) -> None:
    token = _issuer(keys, clock).issue(_user(), "live")
    jwk = jwt.PyJWK(jwks_document(keys)["keys"][0])
    claims = jwt.decode(token, jwk, algorithms=["RS256"], audience=AUDIENCE, options={"verify_exp": False})
    assert claims["iss"] == ISSUER


def test_an_issuer_refuses_a_non_positive_ttl(keys: RsaJwtKeys) -> None:
    with pytest.raises(ValueError, match="ttl"):
        JwtIssuer(keys, issuer=ISSUER, audience=AUDIENCE, ttl=timedelta(0))


# --- refusals -------------------------------------------------------------------------------------


def test_alg_none_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    token = f"{_segment({'alg': 'none', 'typ': 'JWT', 'kid': 'kid-a'})}.{_segment(_claims(clock))}."
    assert "RS256" in _refusal(_verifier(keys, clock), token).reason


def test_hs256_signed_with_our_public_key_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    # The classic key-confusion attack: the public key is public, so an HMAC made with it is forgeable.
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': 'kid-a'})}.{_segment(_claims(clock))}"
    mac = hmac.new(_public_pem(KEY_A), signing_input.encode(), hashlib.sha256).digest()
    _refusal(_verifier(keys, clock), f"{signing_input}.{_b64(mac)}")


def test_an_expired_token_is_refused_after_the_leeway(keys: RsaJwtKeys, clock: Clock) -> None:
    token = _issuer(keys, clock, ttl=timedelta(minutes=5)).issue(_user(), "live")
    verifier = _verifier(keys, clock)
    clock.at = T0 + timedelta(minutes=5, seconds=29)
    verifier.verify(token)  # within the 30-second leeway
    clock.at = T0 + timedelta(minutes=5, seconds=30)
    assert _refusal(verifier, token).reason == "jwt expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "jti"])
def test_a_token_missing_a_required_claim_is_refused(keys: RsaJwtKeys, clock: Clock, claim: str) -> None:
    token = _signed(KEY_A, {"alg": "RS256", "kid": "kid-a"}, _claims(clock, **{claim: None}))
    _refusal(_verifier(keys, clock), token)


def test_a_non_numeric_expiry_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    for exp in ("9999999999", True):
        token = _signed(KEY_A, {"alg": "RS256", "kid": "kid-a"}, _claims(clock, exp=exp))
        _refusal(_verifier(keys, clock), token)


def test_a_token_issued_in_the_future_or_not_yet_valid_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    later = int(T0.timestamp()) + 120
    verifier = _verifier(keys, clock)
    assert _refusal(verifier, _signed(KEY_A, {"alg": "RS256", "kid": "kid-a"}, _claims(clock, iat=later))).reason == (
        "jwt issued in the future"
    )
    not_yet = _signed(KEY_A, {"alg": "RS256", "kid": "kid-a"}, _claims(clock, nbf=later))
    assert _refusal(verifier, not_yet).reason == "jwt not yet valid"


def test_a_token_for_another_audience_or_from_another_issuer_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    token = _issuer(keys, clock).issue(_user(), "live")
    _refusal(_verifier(keys, clock, audience="someone-else"), token)
    _refusal(_verifier(keys, clock, issuer="https://evil.test"), token)


def test_an_unknown_or_missing_kid_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    verifier = _verifier(keys, clock)
    unknown = _signed(KEY_A, {"alg": "RS256", "kid": "kid-z"}, _claims(clock))
    assert _refusal(verifier, unknown).reason == "jwt kid is not one of our signing keys"
    missing = _signed(KEY_A, {"alg": "RS256"}, _claims(clock))
    assert _refusal(verifier, missing).reason == "jwt has no kid"


def test_a_token_signed_by_a_stranger_under_our_kid_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    forged = _signed(KEY_C, {"alg": "RS256", "kid": "kid-a"}, _claims(clock))
    _refusal(_verifier(keys, clock), forged)


def test_a_tampered_payload_is_refused(keys: RsaJwtKeys, clock: Clock) -> None:
    token = _issuer(keys, clock).issue(_user(Role.ANALYST), "live")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "Owner"
    _refusal(_verifier(keys, clock), f"{header}.{_segment(claims)}.{signature}")


@pytest.mark.parametrize("location", ["jku", "x5u", "jwk", "x5c"])
def test_a_header_pointing_at_a_key_location_is_refused(keys: RsaJwtKeys, clock: Clock, location: str) -> None:
    token = _signed(KEY_A, {"alg": "RS256", "kid": "kid-a", location: "https://evil.test/keys"}, _claims(clock))
    assert location in _refusal(_verifier(keys, clock), token).reason


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_garbage_is_refused(keys: RsaJwtKeys, clock: Clock, garbage: str) -> None:
    _refusal(_verifier(keys, clock), garbage)


# --- rotation and the JWKS ----------------------------------------------------------------------


def test_a_token_signed_with_the_previous_key_still_verifies_after_rotation(clock: Clock) -> None:
    before = RsaJwtKeys(("kid-a", KEY_A))
    token = _issuer(before, clock).issue(_user(), "live")
    after = RsaJwtKeys(("kid-b", KEY_B), ("kid-a", KEY_A))
    assert _verifier(after, clock).verify(token)["iss"] == ISSUER
    assert jwt.get_unverified_header(_issuer(after, clock).issue(_user(), "live"))["kid"] == "kid-b"
    retired = RsaJwtKeys(("kid-c", KEY_C), ("kid-b", KEY_B))
    _refusal(_verifier(retired, clock), token)


def test_the_jwks_lists_current_then_previous_key_as_rsa_signing_keys(clock: Clock) -> None:
    keys = RsaJwtKeys(("kid-b", KEY_B), ("kid-a", KEY_A))
    document = jwks_document(keys)
    assert [entry["kid"] for entry in document["keys"]] == ["kid-b", "kid-a"]
    for entry, key in zip(document["keys"], (KEY_B, KEY_A), strict=True):
        assert set(entry) == {"kty", "use", "alg", "kid", "n", "e"}
        assert (entry["kty"], entry["use"], entry["alg"], entry["e"]) == ("RSA", "sig", "RS256", "AQAB")
        modulus = int.from_bytes(base64.urlsafe_b64decode(entry["n"] + "=" * (-len(entry["n"]) % 4)), "big")
        assert modulus == key.public_key().public_numbers().n
        assert not entry["n"].startswith("AA")  # no leading zero byte (RFC 7518 section 6.3.1.1)


