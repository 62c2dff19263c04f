"""Sealed secrets: TOTP seeds at rest open only for their owner, with the deployment's keys."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.errors import KeyUnavailable
from hd_core.sealed_secrets import SEALED_PREFIX, SecretSealer, is_sealed


@pytest.fixture
def sealer(tmp_path: Path) -> SecretSealer:
    return SecretSealer(LocalKeyFile(tmp_path / "keys.json"))


def test_a_sealed_secret_opens_for_its_owner_and_never_shows_the_secret(sealer: SecretSealer) -> None:
    secret = pyotp.random_base32()
    sealed = sealer.seal("usr_a", secret)
    assert is_sealed(sealed) and sealed.startswith(SEALED_PREFIX) and secret not in sealed
    assert sealer.unseal("usr_a", sealed) == secret
    assert sealer.seal("usr_a", secret) != sealed  # a fresh data key and nonce every time


def test_a_sealed_secret_copied_onto_another_user_does_not_open(sealer: SecretSealer) -> None:
    sealed = sealer.seal("usr_a", pyotp.random_base32())
    with pytest.raises(KeyUnavailable):
        sealer.unseal("usr_b", sealed)


def test_a_tampered_or_malformed_sealed_secret_does_not_open(sealer: SecretSealer) -> None:
    sealed = sealer.seal("usr_a", pyotp.random_base32())
    flipped = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    for bad in (flipped, SEALED_PREFIX + "not:base64!", SEALED_PREFIX + "x", "JBSWY3DPEHPK3PXP"):
        with pytest.raises(KeyUnavailable):
            sealer.unseal("usr_a", bad)


def test_another_deployments_keys_cannot_open_it(sealer: SecretSealer, tmp_path: Path) -> None:
    sealed = sealer.seal("usr_a", pyotp.random_base32())
    with pytest.raises(KeyUnavailable):
        SecretSealer(LocalKeyFile(tmp_path / "other-keys.json")).unseal("usr_a", sealed)


def test_login_with_a_sealed_secret_and_no_key_to_open_it_is_refused(sealer: SecretSealer, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from hd_core import auth
    from hd_core.adapters.sqlite_store import SqliteControlStore
    from hd_core.api_keys import ApiKeyHasher
    from hd_core.errors import MfaRequired
    from hd_core.models import Organization, OrgStatus, Role, User, UserStatus
    from hd_core.tokens import JwtIssuer

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    hasher = ApiKeyHasher(time_cost=1, memory_cost=1024)
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    store.put_org(Organization(org_id="org_a", name="A", status=OrgStatus.ACTIVE, created_at=now))
    store.put_user(User(user_id="usr_a", org_id="org_a", email="a@example.com", role=Role.ANALYST,
                        status=UserStatus.ACTIVE, department=None, region=None, created_at=now,
                        password_hash=hasher.hash("a long enough password")))
    secret, _ = auth.begin_mfa_enrolment(store, "usr_a", sealer=sealer)
    totp = pyotp.TOTP(secret)
    auth.confirm_mfa_enrolment(store, "usr_a", totp.at(now), sealer=sealer, now=lambda: now)
    later = now + timedelta(seconds=60)
    issuer = JwtIssuer(LocalKeyFile(tmp_path / "keys.json"), issuer="https://hd.test", audience="hd", now=lambda: later)
    credentials = {"email": "a@example.com", "password": "a long enough password", "totp_code": totp.at(later)}
    with pytest.raises(MfaRequired):
        auth.login(store, hasher, issuer, **credentials, now=lambda: later)  # no sealer: fail closed
    assert auth.login(store, hasher, issuer, **credentials, sealer=sealer, now=lambda: later).access_token
    store.close()
