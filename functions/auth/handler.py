"""Auth Lambda: password + TOTP login, rotating refresh tokens, OIDC federation, JWKS, MFA and passwords.

Login, refresh, federation, JWKS and the OpenAPI document are the only routes that take no credential,
besides MFA enrolment and confirmation, which also accept email and password in the body instead: a
user whose organisation requires MFA cannot log in before enrolling, so the password proves who enrols.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, Field

from functions.shared.http import authorize, build_app, documented, request_id
from functions.shared.lambda_entry import lambda_entry
from functions.shared.request_fields import EmailAddress, PathId
from functions.shared.wiring import services
from hd_core import auth, credential_admin
from hd_core.federation import federated_login
from hd_core.models import ApiScope, KeyEnv, Role, User
from hd_core.tokens import jwks_document

SERVICE = "hd-auth"

router = Router()
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


class LoginIn(BaseModel):
    email: EmailAddress
    password: str = Field(min_length=1, max_length=1024)
    totp_code: str | None = Field(default=None, pattern=r"^[0-9]{6,8}$")
    env: KeyEnv = KeyEnv.LIVE


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class FederateIn(BaseModel):
    token: str = Field(min_length=1, max_length=16384, description="An OIDC ID token from a configured issuer")
    env: KeyEnv = KeyEnv.LIVE


class TokenPairOut(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class MfaEnrolmentOut(BaseModel):
    secret: str = Field(description="Base32 TOTP secret: shown once, for authenticator apps")
    provisioning_uri: str


class MfaPasswordProofIn(BaseModel):
    """Email and password, sent with no credential header: they prove who enrols (a first enrolment, no session)."""

    email: EmailAddress
    password: str = Field(min_length=1, max_length=1024)


class MfaCodeIn(BaseModel):
    """The code from the authenticator, for a caller with a session."""

    code: str = Field(pattern=r"^[0-9]{6,8}$")


class MfaPasswordCodeIn(MfaPasswordProofIn):
    """The code from the authenticator with email and password: confirms a first enrolment and logs in."""

    code: str = Field(pattern=r"^[0-9]{6,8}$")


class CredentialStateOut(BaseModel):
    user_id: str
    mfa_enabled: bool


class PasswordChangeIn(BaseModel):
    """The caller's current password proves the change: a session or API key alone never sets one."""

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=12, max_length=1024)


class PasswordChangeWithPasswordIn(PasswordChangeIn):
    """Email, current password and (if enrolled) a TOTP code, sent with no credential header."""

    email: EmailAddress
    totp_code: str | None = Field(default=None, pattern=r"^[0-9]{6,8}$")


class PasswordResetIn(BaseModel):
    """A password an administrator sets; the user must replace it before it logs them in."""

    password: str = Field(min_length=12, max_length=1024)


class WhoAmIOut(BaseModel):
    user_id: str
    org_id: str
    role: Role
    auth_method: str
    key_id: str
    env: KeyEnv
    scopes: list[str]


class Jwk(BaseModel):
    kty: str
    use: str
    alg: str
    kid: str
    n: str
    e: str


class JwksOut(BaseModel):
    keys: list[Jwk]


def pair_out(pair: auth.TokenPair) -> TokenPairOut:
    return TokenPairOut(
        access_token=pair.access_token,
        token_type=pair.token_type,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )


@router.post("/v1/auth/login", responses=documented(200, TokenPairOut, "Tokens"))
def login(body: LoginIn) -> TokenPairOut:
    svc = services()
    pair = auth.login(
        svc.store,
        svc.hasher,
        svc.jwt_issuer,
        email=body.email,
        password=body.password,
        totp_code=body.totp_code,
        env=body.env,
        sealer=svc.secrets,
        throttle=svc.auth_throttle,
    )
    return pair_out(pair)


@router.post("/v1/auth/refresh", responses=documented(200, TokenPairOut, "The next tokens"))
def refresh(body: RefreshIn) -> TokenPairOut:
    svc = services()
    return pair_out(auth.refresh(svc.store, svc.jwt_issuer, body.refresh_token, trail=svc.trail,
                                 request_id=request_id(router)))


@router.post("/v1/auth/federate", responses=documented(200, TokenPairOut, "Tokens for the linked user"))
def federate(body: FederateIn) -> TokenPairOut:
    svc = services()
    return pair_out(federated_login(svc.store, svc.federation, svc.jwt_issuer, body.token, env=body.env))


@router.get("/.well-known/jwks.json", responses=documented(200, JwksOut, "Current and previous signing keys"))
def jwks() -> JwksOut:
    return JwksOut.model_validate(jwks_document(services().jwt_keys))


@router.get("/v1/openapi.json", responses=documented(200, dict[str, Any], "This API's OpenAPI document"))
def openapi_document() -> dict[str, Any]:
    return _openapi()


@router.get("/v1/auth/whoami", responses=documented(200, WhoAmIOut, "The caller's identity"))
def whoami() -> WhoAmIOut:
    principal = authorize(router, org_id=None).actor
    return WhoAmIOut(
        user_id=principal.user_id,
        org_id=principal.org_id,
        role=principal.role,
        auth_method=principal.auth_method,
        key_id=principal.key_id,
        env=principal.env,
        scopes=list(principal.scopes),
    )


@router.post("/v1/auth/mfa/enroll", responses=documented(200, MfaEnrolmentOut, "A TOTP secret to confirm"))
def begin_mfa() -> MfaEnrolmentOut:
    """Start TOTP enrolment for the caller; each call replaces a pending secret (409 once enrolled)."""
    secret, uri = auth.begin_mfa_enrolment(
        services().store, authorize(router, org_id=None).actor.user_id, sealer=services().secrets
    )
    return MfaEnrolmentOut(secret=secret, provisioning_uri=uri)


@router.post(
    "/v1/auth/mfa/enroll-with-password",
    responses=documented(200, MfaEnrolmentOut, "A TOTP secret to confirm"),
    description="First enrolment without a session (the organisation requires MFA, so the user cannot log in yet): "
    "email and password prove who enrols; 409 once enrolled.",
)
def begin_mfa_with_password(body: MfaPasswordProofIn) -> MfaEnrolmentOut:
    svc = services()
    secret, uri = auth.begin_mfa_enrolment_with_password(
        svc.store, svc.hasher, email=body.email, password=body.password, sealer=svc.secrets,
        throttle=svc.auth_throttle,
    )
    return MfaEnrolmentOut(secret=secret, provisioning_uri=uri)


@router.post("/v1/auth/mfa/confirm", responses=documented(200, CredentialStateOut, "MFA is now required at login"))
def confirm_mfa(body: MfaCodeIn) -> CredentialStateOut:
    ctx = authorize(router, org_id=None)
    svc = services()
    after = auth.confirm_own_mfa_enrolment(svc.store, svc.trail, ctx, body.code, sealer=svc.secrets)
    return CredentialStateOut(user_id=after.user_id, mfa_enabled=after.mfa_enabled)


@router.post(
    "/v1/auth/mfa/confirm-with-password",
    responses=documented(200, TokenPairOut, "MFA is confirmed and the user is logged in"),
    description="Confirm a first enrolment started with enroll-with-password, and log in.",
)
def confirm_mfa_with_password(body: MfaPasswordCodeIn) -> TokenPairOut:
    svc = services()
    result = auth.confirm_mfa_enrolment_with_password(
        svc.store,
        svc.hasher,
        svc.jwt_issuer,
        email=body.email,
        password=body.password,
        code=body.code,
        sealer=svc.secrets,
        throttle=svc.auth_throttle,
        trail=svc.trail,
        request_id=request_id(router),
    )
    return pair_out(result.tokens)


@router.delete(
    "/v1/organizations/<org_id>/users/<user_id>/mfa",
    responses=documented(200, CredentialStateOut, "MFA was reset and the user's sessions ended"),
    description="Another user's MFA (only an Owner resets an Owner's or Admin's); your own goes through "
    "POST /v1/auth/mfa/reset with a current code.",
)
def reset_mfa(org_id: PathId, user_id: PathId) -> CredentialStateOut:
    ctx = authorize(router, org_id=org_id, scope=ApiScope.USERS_MANAGE.value)
    svc = services()
    return _credential_state(credential_admin.reset_user_mfa(svc.store, svc.trail, ctx, org_id, user_id))


@router.post(
    "/v1/auth/mfa/reset",
    responses=documented(200, CredentialStateOut, "MFA was removed and every session ended"),
    description="Remove your own TOTP factor, re-proven by a current code from it.",
)
def reset_own_mfa(body: MfaCodeIn) -> CredentialStateOut:
    ctx = authorize(router, org_id=None)
    svc = services()
    return _credential_state(credential_admin.reset_own_mfa(
        svc.store, svc.trail, ctx, body.code, sealer=svc.secrets, throttle=svc.auth_throttle))


@router.put(
    "/v1/auth/password",
    responses=documented(200, CredentialStateOut, "The caller's password was changed and every session ended"),
    description="Needs the current password: a session or API key alone never sets a password.",
)
def change_password(body: PasswordChangeIn) -> CredentialStateOut:
    ctx = authorize(router, org_id=None)
    svc = services()
    after = credential_admin.change_own_password(
        svc.store, svc.trail, ctx, svc.hasher, current_password=body.current_password, new_password=body.new_password,
        throttle=svc.auth_throttle,
    )
    return _credential_state(after)


@router.post(
    "/v1/auth/password/change",
    responses=documented(200, CredentialStateOut, "The password was changed and every session ended"),
    description="No session needed: email, current password and TOTP code (if enrolled) prove the change. "
    "The way to replace a password an administrator reset, which cannot log in.",
)
def change_password_with_password(body: PasswordChangeWithPasswordIn) -> CredentialStateOut:
    svc = services()
    after = credential_admin.change_password_with_password(
        svc.store,
        svc.trail,
        svc.hasher,
        email=body.email,
        current_password=body.current_password,
        new_password=body.new_password,
        totp_code=body.totp_code,
        request_id=request_id(router),
        sealer=svc.secrets,
    )
    return _credential_state(after)


@router.put(
    "/v1/organizations/<org_id>/users/<user_id>/password",
    responses=documented(200, CredentialStateOut, "The password was reset and the user's sessions ended"),
    description="An Owner's or Admin's reset (an Admin's or Owner's password takes an Owner): the user must "
    "change it (POST /v1/auth/password/change) before it logs them in.",
)
def reset_password(org_id: PathId, user_id: PathId, body: PasswordResetIn) -> CredentialStateOut:
    ctx = authorize(router, org_id=org_id, scope=ApiScope.USERS_MANAGE.value)
    svc = services()
    after = credential_admin.reset_password(svc.store, svc.trail, ctx, svc.hasher, org_id, user_id, body.password)
    return _credential_state(after)


def _credential_state(user: User) -> CredentialStateOut:
    return CredentialStateOut(user_id=user.user_id, mfa_enabled=user.mfa_enabled)


@lru_cache(maxsize=1)
def _openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    return document


app = build_app(router, service=SERVICE)
lambda_handler = lambda_entry(app, SERVICE)
