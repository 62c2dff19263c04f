"""Credentials that cannot widen themselves, MFA resets, and sessions that end with what ended them (issue 13).

Through the HTTP API: a key or session never sets a password alone, an administrator's reset must be
changed before it logs in, keys made by keys stay inside them, only an Owner strips an Owner's or
Admin's second factor (and nobody their own without it), and a password change, an MFA change, a
suspension or a revoked refresh family ends every access and refresh token issued before it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyotp

from hd_core import api_keys as api_keys_module
from tests.integration.functions.conftest import ControlApi

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase"
RESET_PASSWORD = "temporary reset passphrase"


def _users(control: ControlApi) -> str:
    return f"/v1/organizations/{control.org_id}/users"


def _invite(control: ControlApi, email: str, role: str = "Analyst", password: str | None = PASSWORD) -> dict:
    return control.ok("POST", _users(control), {"email": email, "role": role, "password": password})


def _login(control: ControlApi, email: str, password: str = PASSWORD, **extra: str) -> dict:
    return control.ok("POST", "/v1/auth/login", {"email": email, "password": password, **extra}, anonymous=True)


def _login_status(control: ControlApi, email: str, password: str, **extra: str) -> tuple[int, str]:
    reply = control.call("POST", "/v1/auth/login", {"email": email, "password": password, **extra}, anonymous=True)
    return reply.status, reply.json()["error"]["code"] if reply.status >= 400 else ""


def _refresh_status(control: ControlApi, refresh_token: str) -> int:
    return control.call("POST", "/v1/auth/refresh", {"refresh_token": refresh_token}, anonymous=True).status


def _whoami_status(control: ControlApi, access_token: str) -> int:
    return control.call("GET", "/v1/auth/whoami", bearer=access_token).status


def _key(control: ControlApi, body: dict, **kwargs: object) -> dict:
    return control.ok("POST", f"/v1/organizations/{control.org_id}/api-keys", body, **kwargs)


def _event_types(control: ControlApi) -> list[str]:
    events = control.ok("GET", f"/v1/environments/{control.env_id}/audit/admin?limit=1000")
    return [event["event_type"] for event in events]


def _enrol(control: ControlApi, email: str) -> pyotp.TOTP:
    token = _login(control, email)["access_token"]
    totp = pyotp.TOTP(control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)["secret"])
    control.ok("POST", "/v1/auth/mfa/confirm", {"code": totp.now()}, bearer=token)
    return totp


def _next_code(totp: pyotp.TOTP) -> str:
    """The next step's code: accepted (one step of drift) where the current one was already spent."""
    return totp.at(time.time() + 30)


# --- item 3: a narrow credential cannot widen itself ---------------------------------------------


def test_a_read_only_key_cannot_set_its_users_password(control: ControlApi) -> None:
    narrow = _key(control, {"scopes": ["read_only"]})["api_key"]
    body = {"current_password": "anything at all", "new_password": NEW_PASSWORD}
    refused = control.call("PUT", "/v1/auth/password", body, key=narrow)
    # The Owner has no password: there is no current one to prove, so a key alone never sets one.
    assert refused.status == 401 and refused.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"
    assert control.call("PUT", "/v1/auth/password", {"password": NEW_PASSWORD}, key=narrow).status == 422
    owner = control.services.store.get_user(control.owner_id)
    assert owner is not None and owner.password_hash is None


def test_an_agent_key_with_a_wrong_current_password_changes_nothing(control: ControlApi) -> None:
    ana = _invite(control, "ana@example.com")
    agent = _key(control, {"user_id": ana["user_id"], "scopes": ["agent"]})["api_key"]
    body = {"current_password": "not the password", "new_password": NEW_PASSWORD}
    assert control.call("PUT", "/v1/auth/password", body, key=agent).status == 401
    assert _login_status(control, "ana@example.com", NEW_PASSWORD) == (401, "HD_ERR_AUTH_FAILED")
    assert _login(control, "ana@example.com")["access_token"]
    assert "user.password_set" not in _event_types(control)


def test_changing_a_password_needs_the_current_one_and_ends_every_session(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    first, second = _login(control, "ana@example.com"), _login(control, "ana@example.com")
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    changed = control.ok("PUT", "/v1/auth/password", body, bearer=first["access_token"])
    assert changed["mfa_enabled"] is False
    for session in (first, second):
        assert _whoami_status(control, session["access_token"]) == 401
        assert _refresh_status(control, session["refresh_token"]) == 401
    assert _login_status(control, "ana@example.com", PASSWORD) == (401, "HD_ERR_AUTH_FAILED")
    fresh = _login(control, "ana@example.com", NEW_PASSWORD)
    assert _whoami_status(control, fresh["access_token"]) == 200
    assert _refresh_status(control, fresh["refresh_token"]) == 200
    assert "user.password_set" in _event_types(control)


def test_an_admin_reset_must_be_changed_before_it_logs_in(control: ControlApi) -> None:
    ana = _invite(control, "ana@example.com")
    before = _login(control, "ana@example.com")
    url = f"{_users(control)}/{ana['user_id']}/password"
    control.ok("PUT", url, {"password": RESET_PASSWORD})
    assert _whoami_status(control, before["access_token"]) == 401
    assert _refresh_status(control, before["refresh_token"]) == 401
    assert _login_status(control, "ana@example.com", RESET_PASSWORD) == (403, "HD_ERR_PASSWORD_CHANGE_REQUIRED")
    assert _login_status(control, "ana@example.com", PASSWORD) == (401, "HD_ERR_AUTH_FAILED")
    change = {"email": "ana@example.com", "current_password": RESET_PASSWORD}
    same = control.call("POST", "/v1/auth/password/change", {**change, "new_password": RESET_PASSWORD}, anonymous=True)
    assert same.status == 400
    wrong = {"email": "ana@example.com", "current_password": "not the reset one", "new_password": NEW_PASSWORD}
    assert control.call("POST", "/v1/auth/password/change", wrong, anonymous=True).status == 401
    control.ok("POST", "/v1/auth/password/change", {**change, "new_password": NEW_PASSWORD}, anonymous=True)
    assert _whoami_status(control, _login(control, "ana@example.com", NEW_PASSWORD)["access_token"]) == 200
    types = _event_types(control)
    assert types.index("user.password_reset") < types.index("user.password_set")


def test_a_password_change_without_a_session_needs_the_totp_code_of_an_enrolled_user(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    totp = _enrol(control, "ana@example.com")
    body = {"email": "ana@example.com", "current_password": PASSWORD, "new_password": NEW_PASSWORD}
    refused = control.call("POST", "/v1/auth/password/change", body, anonymous=True)
    assert refused.status == 401 and refused.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"
    control.ok("POST", "/v1/auth/password/change", {**body, "totp_code": _next_code(totp)}, anonymous=True)
    assert _login_status(control, "ana@example.com", NEW_PASSWORD) == (401, "HD_ERR_MFA_REQUIRED")


def test_password_resets_stay_within_the_resetting_credential(control: ControlApi) -> None:
    admin = _invite(control, "adam@example.com", role="Admin")
    ana = _invite(control, "ana@example.com")
    admin_token = _login(control, "adam@example.com")["access_token"]
    reset = {"password": RESET_PASSWORD}
    # An Admin cannot reset the Owner's password, nobody resets their own this way.
    owner_reset = control.call("PUT", f"{_users(control)}/{control.owner_id}/password", reset, bearer=admin_token)
    assert owner_reset.status == 403
    own = control.call("PUT", f"{_users(control)}/{admin['user_id']}/password", reset, bearer=admin_token)
    assert own.status == 403
    # A key with users:manage but not the Analyst's query scopes cannot become the Analyst through a reset.
    manager = _key(control, {"scopes": ["users:manage"]})["api_key"]
    narrow = control.call("PUT", f"{_users(control)}/{ana['user_id']}/password", reset, key=manager)
    assert narrow.status == 403 and "query:write" in narrow.json()["error"]["message"]
    # An Analyst's credential is not an administrator's at all.
    analyst_token = _login(control, "ana@example.com")["access_token"]
    assert control.call("PUT", f"{_users(control)}/{admin['user_id']}/password", reset,
                        bearer=analyst_token).status == 403
    assert _login(control, "ana@example.com")["access_token"]
    assert "user.password_reset" not in _event_types(control)


def test_a_key_made_by_a_key_inherits_its_expiry_allow_list_and_scopes(control: ControlApi) -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    parent = _key(control, {"scopes": ["read_only"], "expires_at": expires.isoformat(),
                            "allowed_cidrs": ["10.0.0.0/8"]})
    inside = {"key": parent["api_key"], "source_ip": "10.1.2.3"}
    child = _key(control, {"scopes": ["read_only"]}, **inside)["key"]
    assert datetime.fromisoformat(child["expires_at"]) == datetime.fromisoformat(parent["key"]["expires_at"])
    assert child["allowed_cidrs"] == ["10.0.0.0/8"]
    narrower = _key(control, {"scopes": ["query:read"], "allowed_cidrs": ["10.1.0.0/16"]}, **inside)["key"]
    assert narrower["allowed_cidrs"] == ["10.1.0.0/16"]
    url = f"/v1/organizations/{control.org_id}/api-keys"
    later = (expires + timedelta(days=30)).isoformat()
    for body in (
        {"scopes": ["read_only"], "expires_at": later},
        {"scopes": ["read_only"], "allowed_cidrs": ["192.0.2.0/24"]},
        {"scopes": ["read_only"], "allowed_cidrs": ["0.0.0.0/0"]},
        {"scopes": ["query:write"]},
    ):
        refused = control.call("POST", url, body, **inside)  # type: ignore[arg-type]
        assert refused.status == 403 and refused.json()["error"]["code"] == "HD_ERR_FORBIDDEN", body
    # A key without an expiry cannot be rotated by a key that has one: the new key would outlive its maker.
    unbounded = _key(control, {"scopes": ["read_only"]})["key"]["key_id"]
    assert control.call("POST", f"{url}/{unbounded}/rotate", **inside).status == 403  # type: ignore[arg-type]


# --- item 4: MFA resets ----------------------------------------------------------------------------


def test_an_admin_cannot_reset_an_owners_mfa_and_the_owner_still_needs_the_code(control: ControlApi) -> None:
    owner = _invite(control, "olga@example.com", role="Owner")
    totp = _enrol(control, "olga@example.com")
    _invite(control, "adam@example.com", role="Admin")
    admin_token = _login(control, "adam@example.com")["access_token"]
    refused = control.call("DELETE", f"{_users(control)}/{owner['user_id']}/mfa", bearer=admin_token)
    assert refused.status == 403
    assert _login_status(control, "olga@example.com", PASSWORD) == (401, "HD_ERR_MFA_REQUIRED")
    assert _login(control, "olga@example.com", totp_code=_next_code(totp))["access_token"]
    assert "user.mfa_reset" not in _event_types(control)


def test_a_session_cannot_strip_its_own_mfa_without_the_current_code(control: ControlApi) -> None:
    owner = _invite(control, "olga@example.com", role="Owner")
    totp = _enrol(control, "olga@example.com")
    session = _login(control, "olga@example.com", totp_code=_next_code(totp))
    admin_route = control.call("DELETE", f"{_users(control)}/{owner['user_id']}/mfa",
                               bearer=session["access_token"])
    assert admin_route.status == 403
    wrong = control.call("POST", "/v1/auth/mfa/reset", {"code": _wrong_code(totp)}, bearer=session["access_token"])
    assert wrong.status == 401 and wrong.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"
    assert control.call("POST", "/v1/auth/mfa/enroll", bearer=session["access_token"]).status == 409
    stored = control.services.store.get_user(owner["user_id"])
    assert stored is not None and stored.mfa_enabled


def test_re_proving_the_code_resets_your_own_mfa_audited(control: ControlApi) -> None:
    ana = _invite(control, "ana@example.com")
    totp = _enrol(control, "ana@example.com")
    # An API key keeps working across MFA changes (it is not a session), so it carries the re-proof here.
    key = _key(control, {"user_id": ana["user_id"], "scopes": ["read_only"]})["api_key"]
    wrong = control.call("POST", "/v1/auth/mfa/reset", {"code": _wrong_code(totp)}, key=key)
    assert wrong.status == 401
    reset = control.ok("POST", "/v1/auth/mfa/reset", {"code": _next_code(totp)}, key=key)
    assert reset["mfa_enabled"] is False
    assert _whoami_status(control, _login(control, "ana@example.com")["access_token"]) == 200
    assert _event_types(control).count("user.mfa_reset") == 1


def _wrong_code(totp: pyotp.TOTP) -> str:
    """A code valid at no step the server would accept now."""
    valid = {totp.at(time.time() + drift) for drift in (-30, 0, 30)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


def test_an_owner_resets_an_admins_mfa_audited_and_their_sessions_end(control: ControlApi) -> None:
    admin = _invite(control, "adam@example.com", role="Admin")
    totp = _enrol(control, "adam@example.com")
    session = _login(control, "adam@example.com", totp_code=_next_code(totp))
    reset = control.ok("DELETE", f"{_users(control)}/{admin['user_id']}/mfa")
    assert reset["mfa_enabled"] is False
    assert _whoami_status(control, session["access_token"]) == 401
    assert _refresh_status(control, session["refresh_token"]) == 401
    assert _whoami_status(control, _login(control, "adam@example.com")["access_token"]) == 200
    assert "user.mfa_reset" in _event_types(control)


# --- item 5: sessions end with what ended them ------------------------------------------------------


def test_a_reactivated_users_old_sessions_stay_dead(control: ControlApi) -> None:
    ana = _invite(control, "ana@example.com")
    session = _login(control, "ana@example.com")
    control.ok("POST", f"{_users(control)}/{ana['user_id']}/suspend")
    control.ok("POST", f"{_users(control)}/{ana['user_id']}/reactivate")
    assert _whoami_status(control, session["access_token"]) == 401
    assert _refresh_status(control, session["refresh_token"]) == 401
    assert _whoami_status(control, _login(control, "ana@example.com")["access_token"]) == 200


def test_a_revoked_refresh_family_takes_its_access_tokens_with_it(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    first = _login(control, "ana@example.com")
    second = control.ok("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]}, anonymous=True)
    assert _whoami_status(control, second["access_token"]) == 200
    assert _refresh_status(control, first["refresh_token"]) == 401  # reuse: the family is revoked
    assert _whoami_status(control, first["access_token"]) == 401
    assert _whoami_status(control, second["access_token"]) == 401
    assert _whoami_status(control, _login(control, "ana@example.com")["access_token"]) == 200


def test_enrolling_mfa_ends_the_sessions_opened_without_it(control: ControlApi) -> None:
    _invite(control, "ana@example.com")
    before = _login(control, "ana@example.com")
    totp = _enrol(control, "ana@example.com")
    assert _whoami_status(control, before["access_token"]) == 401
    assert _refresh_status(control, before["refresh_token"]) == 401
    after = _login(control, "ana@example.com", totp_code=_next_code(totp))
    assert _whoami_status(control, after["access_token"]) == 200


# --- item 8: the allow list is no oracle -----------------------------------------------------------


def _same_key_id_other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with the key id of `key` and another secret."""
    body = key[:-7] + ("A" if key[-7] != "A" else "B")  # the last random character, after the key id
    return body + api_keys_module._checksum(body)


def test_a_key_from_outside_its_allow_list_answers_exactly_like_a_wrong_secret(control: ControlApi) -> None:
    key = _key(control, {"scopes": ["read_only"], "allowed_cidrs": ["10.1.0.0/16"]})["api_key"]
    wrong_secret = _same_key_id_other_secret(key)
    outside = control.call("GET", "/v1/auth/whoami", key=key, source_ip="192.0.2.9")
    forged = control.call("GET", "/v1/auth/whoami", key=wrong_secret, source_ip="10.1.2.3")
    assert outside.status == forged.status == 401
    assert {**outside.json()["error"], "request_id": ""} == {**forged.json()["error"], "request_id": ""}
    assert outside.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"
    assert control.call("GET", "/v1/auth/whoami", key=key, source_ip="10.1.2.3").status == 200
