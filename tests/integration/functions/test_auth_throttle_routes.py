"""Brute-force limits over HTTP, on both backends: wrong passwords, TOTP codes and key secrets lock their subject.

During a lockout the right secret is refused exactly like a wrong one (401, same code and message), and
accepted once the lockout ends. The throttle's clock is wound by hand and its numbers are small: 2 free
failures, 1 s backoff, locked for 5 minutes at the 4th failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
import pytest

import hd_core.api_keys as api_keys_module
from engine_host.devmode.control_server import HttpReply
from functions.shared.wiring import install_services
from hd_core.auth_throttle import ThrottleSubject
from hd_core.control_settings import ControlApiSettings
from hd_core.ports import CheckpointStore
from hd_core.services import assemble_services
from hd_core.wipe import DEPLOYMENT_CHAIN_ID
from tests.clocks import HandWoundClock
from tests.integration.functions.conftest import AUDIT_BUCKET, ControlApi

PASSWORD = "correct horse battery staple"
EMAIL = "ana@example.com"
LOCKOUT_AFTER = 4


@dataclass
class Throttled:
    control: ControlApi
    clock: HandWoundClock

    def login(self, password: str = PASSWORD, email: str = EMAIL, **extra: str) -> HttpReply:
        body = {"email": email, "password": password, **extra}
        return self.control.call("POST", "/v1/auth/login", body, anonymous=True)

    def admin_events(self, event_type: str) -> list[dict]:
        events = self.control.ok("GET", f"/v1/environments/{self.control.env_id}/audit/admin?limit=1000")
        return [event for event in events if event["event_type"] == event_type]


def _checkpoints(control: ControlApi, tmp_path_factory: pytest.TempPathFactory) -> CheckpointStore:
    if control.backend == "aws":
        import boto3

        from hd_core.adapters.s3_checkpoints import S3CheckpointStore

        return S3CheckpointStore(boto3.client("s3"), AUDIT_BUCKET)
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore

    return LocalFolderCheckpointStore(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture
def throttled(control: ControlApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Throttled]:
    """The control API of `control` again, with small limits and a hand-wound throttle clock."""
    clock = HandWoundClock(datetime.now(UTC))
    config = ControlApiSettings(
        jwt_issuer="https://hd.test",
        jwt_audience="hardened-duck",
        auth_free_failures=2,
        auth_backoff_base_seconds=1,
        auth_lockout_after=LOCKOUT_AFTER,
        auth_lockout_seconds=300,
        auth_forget_after_seconds=1800,
    )
    services = assemble_services(
        config,
        store=control.services.store,
        keys=control.services.keys,
        checkpoints=_checkpoints(control, tmp_path_factory),
        query_audit=control.services.query_audit,
        now=clock,
    )
    install_services(services)
    control.services = services
    control.ok("POST", f"/v1/organizations/{control.org_id}/users", {"email": EMAIL, "role": "Analyst",
                                                                     "password": PASSWORD})
    yield Throttled(control, clock)


def _fail_until_locked(throttled: Throttled, attempt: object) -> HttpReply:
    """Make `LOCKOUT_AFTER` failing attempts, each after any backoff has passed; the last refusal."""
    refused: HttpReply | None = None
    for _ in range(LOCKOUT_AFTER):
        refused = attempt()  # type: ignore[operator]
        assert refused is not None and refused.status == 401
        throttled.clock.advance(seconds=2)
    assert refused is not None
    return refused


def _same_refusal(first: HttpReply, second: HttpReply) -> bool:
    """The same status, code and message: nothing but the request id tells the two apart."""
    one, two = first.json()["error"], second.json()["error"]
    return first.status == second.status and (one["code"], one["message"]) == (two["code"], two["message"])


def test_wrong_passwords_lock_the_account_and_the_right_one_is_refused_like_them_until_the_lockout_ends(
    throttled: Throttled,
) -> None:
    wrong = _fail_until_locked(throttled, lambda: throttled.login("wrong password!"))
    during = throttled.login()
    assert _same_refusal(during, wrong) and wrong.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"
    throttled.clock.advance(minutes=4, seconds=50)
    assert _same_refusal(throttled.login(), wrong)
    throttled.clock.advance(seconds=10)
    assert throttled.login().status == 200
    [lockout] = throttled.admin_events("auth.lockout")
    user = throttled.control.services.store.get_user_by_email(EMAIL)
    assert user is not None
    assert (lockout["actor"], lockout["target"]) == ("system", user.user_id)
    assert lockout["after"]["subject"] == "login" and lockout["after"]["failures"] == LOCKOUT_AFTER


def test_backoff_refuses_even_the_right_password_between_early_failures(throttled: Throttled) -> None:
    for _ in range(3):
        throttled.login("wrong password!")
    assert throttled.login().status == 401  # 3 failures: blocked for 1 s, whatever is sent
    throttled.clock.advance(seconds=1)
    assert throttled.login().status == 200
    assert throttled.admin_events("auth.lockout") == []


def test_wrong_totp_codes_lock_the_account_and_the_right_code_is_refused_until_the_lockout_ends(
    throttled: Throttled,
) -> None:
    control = throttled.control
    token = throttled.login().json()["access_token"]
    totp = pyotp.TOTP(control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)["secret"])
    control.ok("POST", "/v1/auth/mfa/confirm", {"code": totp.now()}, bearer=token)
    right = totp.at(time.time() + 30)  # the next step's code: the current one was spent confirming
    wrong = "000000" if right != "000000" else "111111"
    refused = _fail_until_locked(throttled, lambda: throttled.login(totp_code=wrong))
    assert refused.json()["error"]["code"] == "HD_ERR_MFA_REQUIRED"  # the password was right, the code not
    during = throttled.login(totp_code=right)
    # Locked: refused before the password is checked, so exactly like a wrong password.
    assert _same_refusal(during, throttled.login("wrong password!"))
    throttled.clock.advance(minutes=5)
    assert throttled.login(totp_code=right).status == 200
    assert len(throttled.admin_events("auth.lockout")) == 1


def _with_other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with the same key id as `key` but a different secret."""
    body = key[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + api_keys_module._checksum(body)


def test_wrong_key_secrets_lock_the_key_id_and_the_right_key_is_refused_until_the_lockout_ends(
    throttled: Throttled,
) -> None:
    control = throttled.control
    created = control.ok("POST", f"/v1/organizations/{control.org_id}/api-keys", {"scopes": ["read_only"]})
    key, key_id = created["api_key"], created["key"]["key_id"]
    assert control.call("GET", "/v1/auth/whoami", key=key).status == 200
    wrong = _fail_until_locked(
        throttled, lambda: control.call("GET", "/v1/auth/whoami", key=_with_other_secret(key), source_ip="203.0.113.9")
    )
    during = control.call("GET", "/v1/auth/whoami", key=key)
    assert _same_refusal(during, wrong) and wrong.json()["error"]["code"] == "HD_ERR_AUTH_FAILED"
    assert control.call("GET", "/v1/auth/whoami").status == 200  # the Owner's other key is not affected
    throttled.clock.advance(minutes=5)
    assert control.ok("GET", "/v1/auth/whoami", key=key)["key_id"] == key_id
    [lockout] = throttled.admin_events("auth.lockout")
    assert lockout["target"] == key_id
    assert (lockout["after"]["subject"], lockout["after"]["source_ip"]) == ("api_key", "203.0.113.9")


def test_an_unknown_email_is_locked_like_a_real_one_and_audited_without_the_name(throttled: Throttled) -> None:
    unknown = _fail_until_locked(throttled, lambda: throttled.login(email="nobody@example.com"))
    assert _same_refusal(unknown, throttled.login("wrong password!"))
    assert throttled.login(email="nobody@example.com").status == 401
    [event] = [
        event for event in throttled.control.services.store.list_iam_events(DEPLOYMENT_CHAIN_ID)
        if event.event_type == "auth.lockout"
    ]
    assert event.target == ThrottleSubject.login("nobody@example.com").key
    assert "nobody" not in str(event.after)
    assert throttled.admin_events("auth.lockout") == []  # nothing in the organisation's own trail


def test_guessing_the_current_password_through_a_session_counts_against_the_login_limits(
    throttled: Throttled,
) -> None:
    control = throttled.control
    token = throttled.login().json()["access_token"]

    def guess() -> HttpReply:
        return control.call("PUT", "/v1/auth/password",
                            {"current_password": "wrong password!", "new_password": "another long password"},
                            bearer=token)

    _fail_until_locked(throttled, guess)
    right = {"current_password": PASSWORD, "new_password": "another long password"}
    assert control.call("PUT", "/v1/auth/password", right, bearer=token).status == 401  # locked: even the right one
    assert throttled.login().status == 401  # the same subject as login
    assert len(throttled.admin_events("auth.lockout")) == 1


def test_guessing_totp_codes_to_remove_ones_own_mfa_counts_against_the_login_limits(throttled: Throttled) -> None:
    control = throttled.control
    token = throttled.login().json()["access_token"]
    totp = pyotp.TOTP(control.ok("POST", "/v1/auth/mfa/enroll", bearer=token)["secret"])
    control.ok("POST", "/v1/auth/mfa/confirm", {"code": totp.now()}, bearer=token)
    token = throttled.login(totp_code=totp.at(time.time() + 30)).json()["access_token"]  # enrolling ended sessions
    right = totp.at(time.time() + 60)
    wrong = "000000" if right != "000000" else "111111"
    _fail_until_locked(throttled, lambda: control.call("POST", "/v1/auth/mfa/reset", {"code": wrong}, bearer=token))
    assert control.call("POST", "/v1/auth/mfa/reset", {"code": right}, bearer=token).status == 401
    user = control.services.store.get_user_by_email(EMAIL)
    assert user is not None and user.mfa_enabled
