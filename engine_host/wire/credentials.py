"""What the engine host accepts as a Postgres password: an API key, or a JWT issued by the control API.

A JWT must name its own subject as the Postgres user (so logs and `current_user` tell the truth) and
is checked the way the control API checks it: RS256 only, `exp iat iss aud` required, `kid` matched
against our own keys, and the user and organisation re-read from the store.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.errors import AuthenticationFailed
from hd_core.models import Principal
from hd_core.request_auth import RequestAuthenticator

log = logging.getLogger(__name__)

# A compact JWS: three base64url parts, the header starting with `{"` (base64url "eyJ").
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class EngineCredentials:
    """Turns (user name, password, client address) into a principal, or raises `AuthenticationFailed`."""

    def __init__(self, api_keys: ApiKeyAuthenticator, tokens: RequestAuthenticator | None = None, *,
                 on_failure: Callable[[str], None] | None = None) -> None:
        """`on_failure` is told the HD_ERR_* code of every failed authentication (the auth failure metric)."""
        self._api_keys = api_keys
        self._tokens = tokens
        self._on_failure = on_failure

    def authenticate(self, username: str, password: str, source_ip: str | None = None) -> Principal:
        """The principal this password proves; an API key unless it is shaped like a JWT."""
        try:
            return self._authenticate(username, password, source_ip)
        except AuthenticationFailed as exc:
            self._report_failure(exc.code)
            if exc.lockout is not None:
                # The wire logs no other line for a refusal: the lockout it started is this one.
                log.warning("authentication refused (%s): %s", exc.reason, exc.lockout)
            raise

    def _report_failure(self, code: str) -> None:
        if self._on_failure is None:
            return
        try:
            self._on_failure(code)
        except Exception:  # counting a failure must never turn it into a different error
            log.exception("authentication failure observer failed")

    def _authenticate(self, username: str, password: str, source_ip: str | None) -> Principal:
        if _JWT_SHAPE.fullmatch(password) is None:
            return self._api_keys.authenticate(username, password, source_ip)
        if self._tokens is None:
            raise AuthenticationFailed("jwt presented but this host verifies api keys only")
        principal = self._tokens.authenticate({"Authorization": f"Bearer {password}"}, source_ip)
        if username != principal.user_id:
            raise AuthenticationFailed("jwt subject differs from the postgres user name")
        return principal
