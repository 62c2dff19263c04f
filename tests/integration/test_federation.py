"""OIDC federation against a real identity provider stand-in: an HTTP server on 127.0.0.1 serving a JWKS."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import AuthenticationFailed
from hd_core.federation import FederatedIssuer, OidcFederation, federated_login
from hd_core.models import KeyEnv, Organization, OrgStatus, Role, User, UserStatus, new_id
from hd_core.tokens import JwtIssuer, JwtVerifier

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AUDIENCE = "hardened-duck"
SUBJECT = "system:serviceaccount:etl:loader"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(public_key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public_key, as_dict=True), "kid": kid, "use": "sig"}


class IdentityProvider:
    """Serves `/jwks.json` (an RSA and an EC P-256 key) and counts how often it is fetched."""

    def __init__(self) -> None:
        self.fetches = 0
        self.jwks = {"keys": [_jwk(RSA_KEY.public_key(), "rsa-1"), _jwk(EC_KEY.public_key(), "ec-1")]}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                provider.fetches += 1
                body = json.dumps(provider.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


@dataclass
class World:
    idp: IdentityProvider
    issuer: FederatedIssuer
    federation: OidcFederation
    store: SqliteControlStore
    jwt_issuer: JwtIssuer
    jwt_verifier: JwtVerifier
    user: User
    clock: list[datetime]

    def token(self, key: Any = RSA_KEY, *, alg: str = "RS256", kid: str = "rsa-1", **changes: Any) -> str:
        issued = int(T0.timestamp())
        claims = {"iss": self.issuer.issuer, "sub": SUBJECT, "aud": AUDIENCE, "iat": issued, "exp": issued + 300}
        claims.update(changes)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def login(self, token: str) -> Any:
        return federated_login(self.store, self.federation, self.jwt_issuer, token, now=lambda: self.clock[0])

    def refused(self, token: str) -> AuthenticationFailed:
        with pytest.raises(AuthenticationFailed) as caught:
            self.login(token)
        assert str(caught.value) == "authentication failed"
        return caught.value


@pytest.fixture
def world(idp: IdentityProvider, tmp_path: Path) -> Iterator[World]:
    clock = [T0]
    issuer = FederatedIssuer(
        name="local-idp", issuer=idp.url, audience=AUDIENCE, jwks_uri=f"{idp.url}/jwks.json"
    )
    federation = OidcFederation([issuer], jwks_cache_seconds=300, now=lambda: clock[0])
    store = SqliteControlStore(":memory:")
    org = Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)
    user = User(
        new_id("usr"),
        org.org_id,
        "etl@acme.test",
        Role.SERVICE_ACCOUNT,
        UserStatus.ACTIVE,
        None,
        None,
        T0,
        external_ids=(f"{idp.url}#{SUBJECT}",),
    )
    store.put_org(org)
    store.put_user(user)
    keys = LocalKeyFile(tmp_path / "keys.json")
    jwt_issuer = JwtIssuer(keys, issuer="https://control.hd.test", audience="hd", now=lambda: clock[0])
    jwt_verifier = JwtVerifier(keys, issuer="https://control.hd.test", audience="hd", now=lambda: clock[0])
    yield World(idp, issuer, federation, store, jwt_issuer, jwt_verifier, user, clock)
    store.close()


# --- accepted -------------------------------------------------------------------------------------


def test_an_rsa_signed_token_of_a_linked_subject_signs_in_as_its_user(world: World) -> None:
    pair = world.login(world.token())
    claims = world.jwt_verifier.verify(pair.access_token)
    assert (claims["sub"], claims["role"], claims["env"]) == (world.user.user_id, "ServiceAccount", KeyEnv.LIVE.value)
    assert pair.refresh_token.startswith("hdr_")


def test_an_ec_signed_token_is_accepted_too(world: World) -> None:
    issuer, claims = world.federation.verify(world.token(EC_KEY, alg="ES256", kid="ec-1"))
    assert issuer is world.issuer and claims["sub"] == SUBJECT


def test_the_jwks_is_fetched_once_and_cached_across_tokens(world: World) -> None:
    before = world.idp.fetches
    for _ in range(3):
        world.federation.verify(world.token())
    world.federation.verify(world.token(EC_KEY, alg="ES256", kid="ec-1"))
    assert world.idp.fetches - before == 1


# --- refused --------------------------------------------------------------------------------------


def test_a_token_for_another_audience_is_refused(world: World) -> None:
    assert "InvalidAudienceError" in world.refused(world.token(aud="someone-else")).reason


def test_an_expired_token_is_refused(world: World) -> None:
    token = world.token()
    world.clock[0] = T0 + timedelta(seconds=300 + 30)
    assert world.refused(token).reason == "jwt expired"


def test_a_token_missing_a_required_claim_is_refused(world: World) -> None:
    for claim in ("exp", "iat", "sub", "aud"):
        assert "MissingRequiredClaimError" in world.refused(world.token(**{claim: None})).reason


def test_a_token_from_an_issuer_that_is_not_configured_is_refused(world: World) -> None:
    # Signed by a key the configured issuer publishes: only the issuer is wrong.
    error = world.refused(world.token(iss="https://accounts.google.com"))
    assert error.reason == "federated token from an issuer that is not configured"
    world.refused(world.token(iss=None))


def test_an_unlinked_subject_is_refused(world: World) -> None:
    assert world.refused(world.token(sub="someone-else")).reason == "federated identity not linked to any user"


def test_a_linked_but_suspended_user_or_organisation_is_refused(world: World) -> None:
    world.store.put_user(replace(world.user, status=UserStatus.SUSPENDED))
    world.refused(world.token())
    world.store.put_user(world.user)
    org = world.store.get_org(world.user.org_id)
    assert org is not None
    world.store.put_org(replace(org, status=OrgStatus.SUSPENDED))
    world.refused(world.token())


def test_a_token_signed_by_a_stranger_under_a_published_kid_is_refused(world: World) -> None:
    assert "InvalidSignatureError" in world.refused(world.token(STRANGER_KEY)).reason


def test_an_algorithm_the_issuer_does_not_use_is_refused(world: World) -> None:
    rsa_only = replace(world.issuer, algorithms=("RS256",))
    federation = OidcFederation([rsa_only], now=lambda: T0)
    with pytest.raises(AuthenticationFailed) as caught:
        federation.verify(world.token(EC_KEY, alg="ES256", kid="ec-1"))
    assert caught.value.reason == "algorithm 'ES256' not accepted from local-idp"


def test_a_token_cannot_make_a_key_verify_under_another_algorithm(world: World) -> None:
    # The header names the EC key but claims RS256: the key's own algorithm decides.
    assert "InvalidAlgorithmError" in world.refused(world.token(RSA_KEY, alg="RS256", kid="ec-1")).reason
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    payload = jwt.utils.base64url_encode(
        json.dumps({"iss": world.issuer.issuer, "sub": SUBJECT, "aud": AUDIENCE, "iat": 1, "exp": 2**40}).encode()
    )
    mac = hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    error = world.refused((header + b"." + payload + b"." + jwt.utils.base64url_encode(mac)).decode())
    assert error.reason == "algorithm 'HS256' not accepted from local-idp"


def test_a_header_pointing_at_another_key_location_is_refused(world: World) -> None:
    token = jwt.encode(
        {"iss": world.issuer.issuer, "sub": SUBJECT, "aud": AUDIENCE, "iat": 1, "exp": 2**40},
        STRANGER_KEY,
        algorithm="RS256",
        headers={"kid": "rsa-1", "jku": f"{world.idp.url}/evil.json"},
    )
    assert "jku" in world.refused(token).reason


def test_an_unreachable_jwks_refuses_the_token(world: World) -> None:
    broken = replace(world.issuer, jwks_uri=f"{world.idp.url}/missing.json")
    federation = OidcFederation([broken], now=lambda: T0)
    with pytest.raises(AuthenticationFailed) as caught:
        federation.verify(world.token())
    assert "PyJWKClient" in caught.value.reason


def test_garbage_is_refused(world: World) -> None:
    for token in ("", "abc", "a.b.c"):
        world.refused(token)


# --- configuration --------------------------------------------------------------------------------


def test_presets_name_each_clouds_issuer_keys_and_algorithms() -> None:
    aws = FederatedIssuer.aws_sts_outbound("https://abc123.tokens.sts.global.api.aws/", "hd")
    assert (aws.issuer, aws.jwks_uri, aws.algorithms) == (
        "https://abc123.tokens.sts.global.api.aws",
        "https://abc123.tokens.sts.global.api.aws/.well-known/jwks.json",
        ("RS256", "ES384"),
    )
    gcp = FederatedIssuer.gcp_workload_identity("https://hd.example")
    assert (gcp.issuer, gcp.jwks_uri, gcp.audience) == (
        "https://accounts.google.com",
        "https://www.googleapis.com/oauth2/v3/certs",
        "https://hd.example",
    )
    azure = FederatedIssuer.azure_ad("contoso-tenant-id", "api://hardened-duck")
    assert (azure.issuer, azure.jwks_uri) == (
        "https://login.microsoftonline.com/contoso-tenant-id/v2.0",
        "https://login.microsoftonline.com/contoso-tenant-id/discovery/v2.0/keys",
    )
    with pytest.raises(ValueError):
        FederatedIssuer.azure_ad("../evil", "api://hd")


def test_an_issuer_from_json_settings_is_normalised_and_validated() -> None:
    settings = {"name": "x", "issuer": "https://idp.test", "audience": "hd", "jwks_uri": "https://idp.test/keys"}
    assert FederatedIssuer(**settings, algorithms=["RS256"]).algorithms == ("RS256",)  # type: ignore[arg-type]
    for bad in ({"algorithms": ("HS256",)}, {"algorithms": ("none",)}, {"algorithms": ()}):
        with pytest.raises(ValueError, match="asymmetric"):
            FederatedIssuer(**settings, **bad)  # type: ignore[arg-type]
    for uri in ("http://idp.test/keys", "file:///etc/passwd", "https://"):
        with pytest.raises(ValueError, match="https"):
            FederatedIssuer(**{**settings, "jwks_uri": uri})
    with pytest.raises(ValueError, match="twice"):
        OidcFederation([FederatedIssuer(**settings), FederatedIssuer(**settings)])
