"""Who is calling the control API: one credential per request, checked against current state.

A request carries exactly one of `Authorization: Bearer <access token>`, `Authorization: ApiKey
<key>` or `X-API-Key: <key>`. A bearer token proves who the user is; what they may do comes from
the store at every request (their current role, user and organisation status), so a demotion or a
suspension takes effect at once rather than when the token expires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hd_core.api_keys import ApiKeyAuthenticator, key_id_of
from hd_core.errors import AuthenticationFailed
from hd_core.models import ALL_SCOPES, KeyEnv, OrgStatus, Principal, UserStatus
from hd_core.permissions import effective_scopes
from hd_core.ports import ControlStore
from hd_core.tokens import JwtVerifier, check_session_current

_AUTHORIZATION = "authorization"
_X_API_KEY = "x-api-key"


class RequestAuthenticator:
    """Turns the headers (and source address) of an HTTP request into a `Principal`."""

    def __init__(self, store: ControlStore, api_keys: ApiKeyAuthenticator, jwt_verifier: JwtVerifier) -> None:
        self._store = store
        self._api_keys = api_keys
        self._jwt = jwt_verifier

    def authenticate(self, headers: Mapping[str, str], source_ip: str | None) -> Principal:
        """The caller's principal; raises `AuthenticationFailed` (or `SourceAddressNotAllowed`)."""
        scheme, credential = _single_credential(headers)
        if scheme == "bearer":
            return self._jwt_principal(credential)
        return self._api_keys.authenticate(key_id_of(credential), credential, source_ip)

    def _jwt_principal(self, token: str) -> Principal:
        claims = self._jwt.verify(token)
        user = self._store.get_user(_claim(claims, "sub"))
        if user is None or user.status != UserStatus.ACTIVE:
            raise AuthenticationFailed("token user missing or not active")
        # Read with the user on every request (and every engine login): an ended session ends at once.
        check_session_current(claims, user.tokens_valid_after)
        if user.org_id != _claim(claims, "org_id"):
            raise AuthenticationFailed("token organization does not match the user's")
        org = self._store.get_org(user.org_id)
        if org is None or org.status != OrgStatus.ACTIVE:
            raise AuthenticationFailed("organization missing or not active")
        try:
            env = KeyEnv(_claim(claims, "env"))
        except ValueError:
            raise AuthenticationFailed("token env is not a key environment") from None
        return Principal(
            user_id=user.user_id,
            org_id=org.org_id,
            role=user.role,
            key_id=f"jwt:{_claim(claims, 'jti')}",
            env=env,
            # The role as stored now, not as it was when the token was issued.
            scopes=effective_scopes(ALL_SCOPES, user.role),
            department=user.department,
            region=user.region,
            auth_method="jwt",
        )


def _single_credential(headers: Mapping[str, str]) -> tuple[str, str]:
    """(scheme, credential) with scheme `bearer` or `apikey`, if the request carries exactly one credential."""
    values = _header_values(headers)
    found: set[tuple[str, str]] = set()
    for value in values.get(_AUTHORIZATION, ()):
        found.add(_parse_authorization(value))
    for value in values.get(_X_API_KEY, ()):
        key = value.strip()
        if not key:
            raise AuthenticationFailed("empty X-API-Key header")
        found.add(("apikey", key))
    if not found:
        raise AuthenticationFailed("missing credentials")
    if len(found) > 1:
        raise AuthenticationFailed("more than one credential in the request")
    return found.pop()


def _header_values(headers: Mapping[str, str]) -> dict[str, set[str]]:
    """Header values by lower-cased name; names differing only in case are the same header (RFC 9110)."""
    values: dict[str, set[str]] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in (_AUTHORIZATION, _X_API_KEY) and value is not None:
            values.setdefault(lowered, set()).add(value)
    return values


def _parse_authorization(value: str) -> tuple[str, str]:
    scheme, _, credential = value.strip().partition(" ")
    scheme, credential = scheme.lower(), credential.strip()
    if scheme not in ("bearer", "apikey"):
        raise AuthenticationFailed("unsupported authorization scheme")
    if not credential or " " in credential:
        raise AuthenticationFailed("malformed authorization header")
    return scheme, credential


def _claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise AuthenticationFailed(f"token claim {name} missing or not a string")
    return value
