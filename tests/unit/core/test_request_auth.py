"""Authenticating control API requests: one credential per request, judged against the store's current state."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher, issue_api_key
from hd_core.errors import AuthenticationFailed, SourceAddressNotAllowed
from hd_core.models import ApiScope, KeyEnv, Organization, OrgStatus, Role, User, UserStatus, new_id
from hd_core.permissions import ROLE_SCOPES
from hd_core.request_auth import RequestAuthenticator
from hd_core.tokens import JwtIssuer, JwtVerifier

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://control.hd.test"
AUDIENCE = "hd"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "keys.json")


@dataclass
class World:
    store: SqliteControlStore
    keys: LocalKeyFile
    issuer: JwtIssuer
    requests: RequestAuthenticator
    org: Organization
    user: User
    api_key: str

    def bearer(self, env: KeyEnv = KeyEnv.LIVE) -> str:
        return f"Bearer {self.issuer.issue(self.user, env)}"

    def signed(self, **claims: Any) -> str:
        """A token signed with our real key, carrying exactly `claims` on top of valid defaults."""
        issued = int(T0.timestamp())
        body = {
            "sub": self.user.user_id,
            "org_id": self.user.org_id,
            "role": "Owner",
            "env": "live",
            "iat": issued,
            "exp": issued + 600,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "jti": "jwt_handmade",
            **claims,
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": self.keys.jwt_signing_kid()}
        signing_input = f"{_segment(header)}.{_segment(body)}"
        signature = base64.urlsafe_b64encode(self.keys.sign_jwt(signing_input.encode())).rstrip(b"=").decode()
        return f"{signing_input}.{signature}"


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.fixture
def world(key_file: LocalKeyFile) -> Iterator[World]:
    store = SqliteControlStore(":memory:")
    hasher = ApiKeyHasher(time_cost=1, memory_cost=8, parallelism=1)
    org = Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)
    user = User(new_id("usr"), org.org_id, "ana@acme.test", Role.ANALYST, UserStatus.ACTIVE, "finance", "eu", T0)
    store.put_org(org)
    store.put_user(user)
    api_key, _ = issue_api_key(store, hasher, org_id=org.org_id, user_id=user.user_id, scopes=[ApiScope.QUERY_READ])
    authenticator = ApiKeyAuthenticator(store, b"p" * 32, hasher=hasher, now=lambda: T0)
    issuer = JwtIssuer(key_file, issuer=ISSUER, audience=AUDIENCE, now=lambda: T0)
    verifier = JwtVerifier(key_file, issuer=ISSUER, audience=AUDIENCE, now=lambda: T0)
    requests = RequestAuthenticator(store, authenticator, verifier)
    yield World(store, key_file, issuer, requests, org, user, api_key)
    store.close()


def _refused(world: World, headers: dict[str, str], source_ip: str | None = None) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        world.requests.authenticate(headers, source_ip)
    assert str(caught.value) == "authentication failed"
    return caught.value


def _in_declaration_order(role: Role) -> tuple[str, ...]:
    return tuple(scope.value for scope in ApiScope if scope.value in ROLE_SCOPES[role])


# --- bearer tokens ------------------------------------------------------------------------------


def test_a_bearer_token_authenticates_as_its_user_with_the_scopes_of_the_role(world: World) -> None:
    principal = world.requests.authenticate({"Authorization": world.bearer(KeyEnv.TEST)}, "203.0.113.9")
    assert (principal.user_id, principal.org_id, principal.role, principal.env) == (
        world.user.user_id,
        world.org.org_id,
        Role.ANALYST,
        KeyEnv.TEST,
    )
    assert principal.auth_method == "jwt"
    assert principal.key_id.startswith("jwt:jwt_")
    assert principal.scopes == _in_declaration_order(Role.ANALYST)
    assert (principal.department, principal.region) == ("finance", "eu")


def test_header_names_and_the_scheme_are_case_insensitive(world: World) -> None:
    token = world.bearer().removeprefix("Bearer ")
    for headers in ({"authorization": f"bearer {token}"}, {"AUTHORIZATION": f"BEARER {token}"}):
        assert world.requests.authenticate(headers, None).user_id == world.user.user_id


def test_the_role_comes_from_the_store_so_a_demotion_applies_to_live_tokens(world: World) -> None:
    headers = {"Authorization": world.bearer()}
    world.store.put_user(replace(world.user, role=Role.AUDITOR))
    principal = world.requests.authenticate(headers, None)
    assert principal.role is Role.AUDITOR
    assert principal.scopes == _in_declaration_order(Role.AUDITOR)
    assert not principal.has_scope("query:read")


def test_a_role_claim_in_the_token_grants_nothing(world: World) -> None:
    principal = world.requests.authenticate({"Authorization": f"Bearer {world.signed(role='Owner')}"}, None)
    assert principal.role is Role.ANALYST
    assert not principal.has_scope("billing:manage")


def test_a_suspension_applies_to_live_tokens_at_once(world: World) -> None:
    headers = {"Authorization": world.bearer()}
    for status in (UserStatus.SUSPENDED, UserStatus.REMOVED):
        world.store.put_user(replace(world.user, status=status))
        assert _refused(world, headers).reason == "token user missing or not active"
    world.store.put_user(world.user)
    world.store.put_org(replace(world.org, status=OrgStatus.SUSPENDED))
    assert _refused(world, headers).reason == "organization missing or not active"


def test_a_token_whose_organisation_is_not_the_users_is_refused(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.signed(org_id='org_elsewhere')}"}
    assert _refused(world, headers).reason == "token organization does not match the user's"


def test_a_token_for_an_unknown_user_or_environment_is_refused(world: World) -> None:
    _refused(world, {"Authorization": f"Bearer {world.signed(sub='usr_nobody')}"})
    assert _refused(world, {"Authorization": f"Bearer {world.signed(env='prod')}"}).reason == (
        "token env is not a key environment"
    )


def test_an_invalid_bearer_token_is_refused(world: World) -> None:
    for credential in ("Bearer not.a.jwt", f"Bearer {world.api_key}", "Bearer"):
        _refused(world, {"Authorization": credential})


# --- API keys ---------------------------------------------------------------------------------------


def test_an_api_key_authenticates_through_either_header(world: World) -> None:
    for headers in ({"Authorization": f"ApiKey {world.api_key}"}, {"X-API-Key": world.api_key}):
        principal = world.requests.authenticate(headers, "203.0.113.9")
        assert (principal.user_id, principal.auth_method, principal.scopes) == (
            world.user.user_id,
            "api_key",
            ("query:read",),
        )


def test_the_source_address_reaches_the_api_key_allowlist(world: World) -> None:
    hasher = ApiKeyHasher(time_cost=1, memory_cost=8, parallelism=1)
    key, _ = issue_api_key(
        world.store, hasher, org_id=world.org.org_id, user_id=world.user.user_id, allowed_cidrs=["10.0.0.0/8"]
    )
    assert world.requests.authenticate({"X-API-Key": key}, "10.1.2.3").user_id == world.user.user_id
    with pytest.raises(SourceAddressNotAllowed):
        world.requests.authenticate({"X-API-Key": key}, "192.0.2.1")
    with pytest.raises(SourceAddressNotAllowed):
        world.requests.authenticate({"X-API-Key": key}, None)


def test_a_malformed_api_key_is_refused(world: World) -> None:
    # The last character changed (a random key ends in "x" one time in 62: then it becomes "y").
    altered = world.api_key[:-1] + ("y" if world.api_key.endswith("x") else "x")
    for headers in ({"X-API-Key": "hd_live_short"}, {"Authorization": "ApiKey " + altered}):
        _refused(world, headers)
    assert _refused(world, {"X-API-Key": "  "}).reason == "empty X-API-Key header"


# --- which credential ----------------------------------------------------------------------------


def test_a_request_without_credentials_is_refused(world: World) -> None:
    assert _refused(world, {}).reason == "missing credentials"
    assert _refused(world, {"Content-Type": "application/json"}).reason == "missing credentials"


def test_two_different_credentials_are_refused(world: World) -> None:
    second_key, _ = issue_api_key(
        world.store,
        ApiKeyHasher(time_cost=1, memory_cost=8, parallelism=1),
        org_id=world.org.org_id,
        user_id=world.user.user_id,
    )
    for headers in (
        {"Authorization": world.bearer(), "X-API-Key": world.api_key},
        {"Authorization": f"ApiKey {world.api_key}", "X-API-Key": second_key},
        {"Authorization": world.bearer(), "authorization": f"ApiKey {world.api_key}"},
    ):
        assert _refused(world, headers).reason == "more than one credential in the request"


def test_the_same_api_key_in_both_headers_is_one_credential(world: World) -> None:
    headers = {"Authorization": f"ApiKey {world.api_key}", "X-API-Key": world.api_key}
    assert world.requests.authenticate(headers, None).user_id == world.user.user_id


def test_other_authorization_schemes_are_refused(world: World) -> None:
    for value in ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Token abc", "", world.api_key):
        _refused(world, {"Authorization": value})
