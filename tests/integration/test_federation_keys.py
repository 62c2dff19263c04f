"""Pinned federation keys (issue 21, item 5): the refresh job pins an issuer's keys from its discovery document and
JWKS (a real HTTP identity provider on loopback), and sign-in verifies with the pinned keys alone, the provider
down. A real SQLite control store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import AuthenticationFailed
from hd_core.federation import FederatedIssuer, OidcFederation
from hd_core.federation_keys import SETTING_PREFIX, PinnedJwks, public_keys, refresh_pinned_keys

AUDIENCE = "hardened-duck"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEXT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _jwk(private_key: Any, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}


class Provider:
    """An OIDC provider on loopback: discovery at /.well-known/openid-configuration, keys at /jwks.json."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": [_jwk(KEY, "k1")]}
        self.discovery: dict[str, Any] = {}
        self.fetched: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetched.append(self.path)
                documents = {"/.well-known/openid-configuration": provider.discovery, "/jwks.json": provider.jwks}
                if self.path not in documents:
                    self.send_error(404)
                    return
                body = json.dumps(documents[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.discovery = {"issuer": self.url, "jwks_uri": f"{self.url}/jwks.json"}
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider()
    yield running
    running.stop()


@pytest.fixture
def store(tmp_path: Path) -> SqliteControlStore:
    return SqliteControlStore(tmp_path / "control.db")


def _issuer(provider: Provider) -> FederatedIssuer:
    return FederatedIssuer(name="ci", issuer=provider.url, audience=AUDIENCE, jwks_uri=f"{provider.url}/jwks.json",
                           algorithms=("RS256",))


def _token(issuer: FederatedIssuer, key: Any = KEY, kid: str = "k1") -> str:
    now = int(datetime.now(UTC).timestamp())
    return jwt.encode({"iss": issuer.issuer, "sub": "repo:acme/etl", "aud": AUDIENCE, "iat": now, "exp": now + 300},
                      key, algorithm="RS256", headers={"kid": kid})


def test_pinned_keys_verify_tokens_with_the_provider_down(provider: Provider, store: SqliteControlStore) -> None:
    issuer = _issuer(provider)
    (outcome,) = refresh_pinned_keys(store, [issuer], now=lambda: T0)
    assert (outcome.keys, outcome.error) == (1, None)
    assert provider.fetched == ["/.well-known/openid-configuration", "/jwks.json"]
    provider.stop()  # sign-in fetches nothing: the isolated VPC has no route to the provider
    federation = OidcFederation([issuer], key_source=PinnedJwks(store).signing_key)
    verified, claims = federation.verify(_token(issuer))
    assert verified is issuer and claims["sub"] == "repo:acme/etl"
    with pytest.raises(AuthenticationFailed) as refused:
        federation.verify(_token(issuer, NEXT_KEY, "k2"))  # a key the job has not pinned is not trusted
    assert "not pinned" in refused.value.reason


def test_a_rotated_key_is_trusted_after_the_next_refresh_and_a_withdrawn_one_is_not(
        provider: Provider, store: SqliteControlStore) -> None:
    issuer = _issuer(provider)
    refresh_pinned_keys(store, [issuer])
    provider.jwks = {"keys": [_jwk(NEXT_KEY, "k2")]}
    refresh_pinned_keys(store, [issuer])
    federation = OidcFederation([issuer], key_source=PinnedJwks(store, ttl_seconds=0).signing_key)
    assert federation.verify(_token(issuer, NEXT_KEY, "k2"))[1]["sub"] == "repo:acme/etl"
    with pytest.raises(AuthenticationFailed):
        federation.verify(_token(issuer, KEY, "k1"))


def test_a_discovery_document_moving_trust_is_refused_and_the_old_keys_stay(
        provider: Provider, store: SqliteControlStore) -> None:
    issuer = _issuer(provider)
    refresh_pinned_keys(store, [issuer])
    pinned = store.get_setting(SETTING_PREFIX + "ci")
    provider.discovery = {"issuer": provider.url, "jwks_uri": "https://attacker.example.com/jwks.json"}
    (outcome,) = refresh_pinned_keys(store, [issuer])
    assert outcome.keys == 0 and "is not the configured" in str(outcome.error)
    provider.discovery = {"issuer": "https://someone-else.example.com", "jwks_uri": issuer.jwks_uri}
    (outcome,) = refresh_pinned_keys(store, [issuer])
    assert "names issuer" in str(outcome.error)
    assert store.get_setting(SETTING_PREFIX + "ci") == pinned  # the keys pinned before are kept


def test_private_symmetric_and_encryption_keys_are_never_pinned() -> None:
    good = _jwk(KEY, "k1")
    private = {**RSAAlgorithm.to_jwk(KEY, as_dict=True), "kid": "leak"}
    assert public_keys({"keys": [good, private, {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                                 {**_jwk(NEXT_KEY, "enc"), "use": "enc"}]}) == [good]
    with pytest.raises(Exception, match="no usable public signing key"):
        public_keys({"keys": [private]})


def test_without_pinned_keys_sign_in_fails_closed(provider: Provider, store: SqliteControlStore) -> None:
    issuer = _issuer(provider)
    federation = OidcFederation([issuer], key_source=PinnedJwks(store).signing_key)
    with pytest.raises(AuthenticationFailed) as refused:
        federation.verify(_token(issuer))
    assert "refresh job has not run" in refused.value.reason


def test_keys_pinned_for_another_issuer_of_the_same_name_are_not_trusted(
        provider: Provider, store: SqliteControlStore) -> None:
    issuer = _issuer(provider)
    refresh_pinned_keys(store, [issuer])
    moved = FederatedIssuer(name="ci", issuer="https://other.example.com", audience=AUDIENCE,
                            jwks_uri="https://other.example.com/jwks.json", algorithms=("RS256",))
    federation = OidcFederation([moved], key_source=PinnedJwks(store).signing_key)
    token = jwt.encode({"iss": moved.issuer, "sub": "x", "aud": AUDIENCE, "iat": 1, "exp": 2}, KEY, algorithm="RS256",
                       headers={"kid": "k1"})
    with pytest.raises(AuthenticationFailed) as refused:
        federation.verify(token)
    assert "another issuer" in refused.value.reason


def test_the_refresh_lambda_pins_the_configured_issuers(provider: Provider, store: SqliteControlStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from functions.federation_keys import handler
    from hd_core.control_settings import settings

    issuer = _issuer(provider)
    monkeypatch.setenv("HD_FEDERATION_ISSUERS", json.dumps([{
        "name": issuer.name, "issuer": issuer.issuer, "audience": issuer.audience, "jwks_uri": issuer.jwks_uri,
        "algorithms": list(issuer.algorithms)}]))
    monkeypatch.setattr(handler, "services", lambda: SimpleNamespace(store=store))
    settings.cache_clear()
    try:
        result = handler.run({}, None)
    finally:
        settings.cache_clear()
    assert result == {"issuers": [{"issuer": "ci", "keys": 1, "error": None}], "failures": 0}
    assert json.loads(store.get_setting(SETTING_PREFIX + "ci") or "{}")["jwks_uri"] == issuer.jwks_uri
