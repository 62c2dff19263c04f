"""Auth routes: password login, JWT use, rotating refresh tokens with reuse detection, JWKS, MFA (with first
enrolment proven by password, and each TOTP code accepted once)."""

from __future__ import annotations

import base64
import json
import time

import pyotp

from tests.integration.functions.conftest import ControlApi

PASSWORD = "correct horse battery staple"


def _invite(control: ControlApi, email: str, role: str = "Analyst", password: str | None = PASSWORD) -> dict:
    body = {"email": email, "role": role, "password": password}
    return control.ok("POST", f"/v1/organizations/{control.org_id}/users", body)


def _login(control: ControlApi, email: str, **extra: str) -> dict:
    return control.ok("POST", "/v1/auth/login", {"email": email, "password": PASSWORD, **extra}, anonymous=True)


def _next_code(totp: pyotp.TOTP) -> str:
    """The code of the next 30 s step: accepted (one step of drift) where the current one was already spent."""
    return totp.at(time.time() + 30)


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_login_returns_an_rs256_jwt_with_the_required_claims_and_a_refresh_token(control: ControlApi) -> None:
    user = _invite(control, "ana@example.com")
    tokens = _login(control, "ana@example.com")
    claims = _claims(tokens["access_token"])
    assert {"sub", "org_id", "role", "env", "iat", "exp", "iss", "aud"} <= claims.keys()
    assert claims["sub"] == user["user_id"] and claims["role"] == "Analyst"
    assert claims["exp"] - claims["iat"] == 3600
    assert tokens["refresh_token"] and tokens["refresh_expires_in"] == 7 * 24 * 3600
    me = control.ok("GET", "/v1/auth/whoami", bearer=tokens["access_token"])
    assert me["user_id"] == user["user_id"] and me["auth_method"] == "jwt"


def test_jwks_serves_the_key_that_signed_the_token(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    jwks = control.ok("GET", "/.well-known/jwks.json", anonymous=True)
    assert header["alg"] == "RS256"
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}


def test_wrong_password_and_unknown_email_get_the_same_generic_401(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    wrong = control.call("POST", "/v1/auth/login", {"email": "ana@example.com", "password": "x" * 12}, anonymous=True)
    unknown = control.call("POST", "/v1/auth/login", {"email": "nobody@example.com", "password": PASSWORD},
                           anonymous=True)
    assert wrong.status == unknown.status == 401
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]
    assert wrong.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    first = _login(control, "ana@example.com")
    second = control.ok("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]}, anonymous=True)
    assert second["refresh_token"] != first["refresh_token"]
    replay = control.call("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]}, anonymous=True)
    assert replay.status == 401 and replay.json()["error"]["code"] == "HD_ERR_REFRESH_TOKEN_REUSED"
    # The thief's copy and the owner's newer token both die with the family.
    after = control.call("POST", "/v1/auth/refresh", {"refresh_token": second["refresh_token"]}, anonymous=True)
    assert after.status == 401
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    assert "auth.refresh_token_reused" in {event["event_type"] for event in events}


def test_a_suspended_users_jwt_stops_working_at_once(control: ControlApi) -> None:
    user = _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    control.ok("POST", f"/v1/organizations/{control.org_id}/users/{user['user_id']}/suspend")
    assert control.call("GET", "/v1/auth/whoami", bearer=token).status == 401


def test_a_tampered_or_unsigned_token_is_refused(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    header, payload, signature = token.split(".")
    claims = _claims(token)
    claims["role"] = "Owner"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert control.call("GET", "/v1/auth/whoami", bearer=f"{header}.{forged}.{signature}").status == 401
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    assert control.call("GET", "/v1/auth/whoami", bearer=f"{none_header}.{payload}.").status == 401


def test_mfa_enrolment_then_login_needs_the_totp_code(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    enrolment = control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)
    totp = pyotp.TOTP(enrolment["secret"])
    confirmed = control.ok("POST", "/v1/auth/mfa/confirm", {"code": totp.now()}, bearer=token)
    assert confirmed["mfa_enabled"] is True
    without = control.call("POST", "/v1/auth/login", {"email": "ana@example.com", "password": PASSWORD},
                           anonymous=True)
    assert without.status == 401 and without.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"
    assert _login(control, "ana@example.com", totp_code=_next_code(totp))["access_token"]


def test_a_totp_code_logs_in_once(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    totp = pyotp.TOTP(control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)["secret"])
    control.ok("POST", "/v1/auth/mfa/confirm", {"code": totp.now()}, bearer=token)
    code = _next_code(totp)
    assert _login(control, "ana@example.com", totp_code=code)["access_token"]
    replay = control.call("POST", "/v1/auth/login", {"email": "ana@example.com", "password": PASSWORD,
                                                     "totp_code": code}, anonymous=True)
    assert replay.status == 401 and replay.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"


def test_a_new_user_of_an_mfa_org_enrols_with_the_password_then_logs_in_with_a_code(control: ControlApi) -> None:
    user = _invite(control, "ana@example.com")
    control.ok("PATCH", f"/v1/organizations/{control.org_id}", {"mfa_required": True})
    proof = {"email": "ana@example.com", "password": PASSWORD}
    enrolment = control.ok("POST", "/v1/auth/mfa/enroll-with-password", proof, anonymous=True)
    assert enrolment["provisioning_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(enrolment["secret"])
    tokens = control.ok("POST", "/v1/auth/mfa/confirm-with-password", {**proof, "code": totp.now()}, anonymous=True)
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    assert control.ok("GET", "/v1/auth/whoami", bearer=tokens["access_token"])["user_id"] == user["user_id"]
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    enrolled = [event for event in events if event["event_type"] == "user.mfa_enrolled"]
    assert [(event["actor"], event["target"]) for event in enrolled] == [(user["user_id"], user["user_id"])]
    assert (enrolled[0]["before"]["mfa_enabled"], enrolled[0]["after"]["mfa_enabled"]) == (False, True)
    without = control.call("POST", "/v1/auth/login", proof, anonymous=True)
    assert without.status == 401 and without.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"
    assert _login(control, "ana@example.com", totp_code=_next_code(totp))["access_token"]


def test_password_proven_enrolment_refuses_a_wrong_password_like_login(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    control.ok("PATCH", f"/v1/organizations/{control.org_id}", {"mfa_required": True})
    login = control.call("POST", "/v1/auth/login", {"email": "ana@example.com", "password": "x" * 12}, anonymous=True)
    refusals = [
        control.call("POST", "/v1/auth/mfa/enroll-with-password", {"email": "ana@example.com", "password": "x" * 12},
                     anonymous=True),
        control.call("POST", "/v1/auth/mfa/enroll-with-password", {"email": "bo@example.com", "password": PASSWORD},
                     anonymous=True),
        control.call("POST", "/v1/auth/mfa/confirm-with-password",
                     {"email": "ana@example.com", "password": "x" * 12, "code": "123456"}, anonymous=True),
    ]
    for refused in refusals:
        assert refused.status == 401
        assert refused.json()["error"] == {**login.json()["error"], "request_id": refused.json()["error"]["request_id"]}


def test_password_proven_enrolment_of_an_enrolled_user_is_a_conflict(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    proof = {"email": "ana@example.com", "password": PASSWORD}
    totp = pyotp.TOTP(control.ok("POST", "/v1/auth/mfa/enroll-with-password", proof, anonymous=True)["secret"])
    control.ok("POST", "/v1/auth/mfa/confirm-with-password", {**proof, "code": totp.now()}, anonymous=True)
    again = control.call("POST", "/v1/auth/mfa/enroll-with-password", proof, anonymous=True)
    assert again.status == 409 and again.json()["error"]["code"] == "HD_ERR_CONFLICT"


def test_mfa_enrolment_without_a_credential_or_with_half_a_password_proof_is_refused(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    assert control.call("POST", "/v1/auth/mfa/enroll", anonymous=True).status == 401
    assert control.call("POST", "/v1/auth/mfa/confirm", {"code": "123456"}, anonymous=True).status == 401
    half = control.call("POST", "/v1/auth/mfa/enroll-with-password", {"email": "ana@example.com"}, anonymous=True)
    assert half.status == 422 and half.json()["error"]["code"] == "HD_ERR_VALIDATION"


def test_organisation_mfa_enforcement_refuses_users_without_mfa(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    control.ok("PATCH", f"/v1/organizations/{control.org_id}", {"mfa_required": True})
    refused = control.call("POST", "/v1/auth/login", {"email": "ana@example.com", "password": PASSWORD},
                           anonymous=True)
    assert refused.status == 401 and refused.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"


def test_a_refreshed_token_keeps_the_environment_it_logged_in_to(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    first = _login(control, "ana@example.com", env="test")
    assert _claims(first["access_token"])["env"] == "test"
    second = control.ok("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]}, anonymous=True)
    assert _claims(second["access_token"])["env"] == "test"


def test_the_totp_secret_is_stored_sealed_not_in_clear(control: ControlApi) -> None:
    user = _invite(control, "ana@example.com")
    token = _login(control, "ana@example.com")["access_token"]
    secret = control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)["secret"]
    stored = control.services.store.get_user(user["user_id"])
    assert stored is not None and stored.mfa_secret is not None
    assert stored.mfa_secret.startswith("hdsealed:v1:") and secret not in stored.mfa_secret
    control.ok("POST", "/v1/auth/mfa/confirm", {"code": pyotp.TOTP(secret).now()}, bearer=token)
    assert _login(control, "ana@example.com", totp_code=_next_code(pyotp.TOTP(secret)))["access_token"]
