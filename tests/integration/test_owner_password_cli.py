"""`hd set-owner-password`: the local Owner, made without a password, gets one from the state folder, audited."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from engine_host.cli.owner_password import run_set_owner_password
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.auth import prove_password
from hd_core.bootstrap import bootstrap_local_owner
from hd_core.errors import AuthenticationFailed
from hd_core.models import utc_now


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state folder as `hd dev`'s first start leaves it: control store, Owner, local key file."""
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        owner = bootstrap_local_owner(store, ApiKeyHasher())
        assert owner.user.email == "owner@localhost" and owner.user.password_hash is None
    LocalKeyFile(tmp_path / "keys" / "local-keys.json", create_missing=True).check()
    return tmp_path


def _run(state: Path, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine_host.cli", "set-owner-password", "--state-dir", str(state),
                           *extra], input=stdin, capture_output=True, text=True, timeout=120)


def _logs_in(state: Path, password: str) -> bool:
    with SqliteControlStore(state / "control.sqlite3", create=False) as store:
        try:
            prove_password(store, ApiKeyHasher(), email="owner@localhost", password=password, totp_code=None,
                           at=utc_now())
        except AuthenticationFailed:
            return False
    return True


def _password_events(state: Path) -> list[tuple[str, str]]:
    with SqliteControlStore(state / "control.sqlite3", create=False) as store:
        org_id = store.get_setting("default_org_id")
        assert org_id is not None
        return [(e.event_type, e.actor) for e in store.list_iam_events(org_id)]


def test_a_first_password_read_from_stdin_logs_the_owner_in_and_is_audited(state: Path) -> None:
    done = _run(state, "a first long password\n")

    assert done.returncode == 0, done.stderr
    assert "owner@localhost" in done.stdout and "Traceback" not in done.stderr
    assert _logs_in(state, "a first long password")
    events = _password_events(state)
    assert [kind for kind, _ in events] == ["user.password_set"] and events[0][1].startswith("local:")
    assert list((state / "audit" / "iam-checkpoints").rglob("*.json"))  # the trail's head is signed


def test_a_set_password_is_replaced_only_with_the_current_one(state: Path) -> None:
    assert run_set_owner_password(state, replace=False, stdin=io.StringIO("a first long password\n")) == 0

    again = _run(state, "another long password\n")
    assert again.returncode == 1 and "already has a password" in again.stderr and "--replace" in again.stderr
    wrong = _run(state, "a wrong guess here\nanother long password\n", "--replace")
    assert wrong.returncode == 1 and "current password is wrong" in wrong.stderr
    for refused in (again, wrong):
        assert refused.stderr.strip().splitlines()[-1].startswith("hd set-owner-password: ")
        assert "Traceback" not in refused.stderr
    assert _logs_in(state, "a first long password") and not _logs_in(state, "another long password")

    replaced = _run(state, "a first long password\nanother long password\n", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert _logs_in(state, "another long password") and not _logs_in(state, "a first long password")
    assert [kind for kind, _ in _password_events(state)] == ["user.password_set"] * 2


def test_a_short_or_missing_password_changes_nothing(state: Path) -> None:
    assert run_set_owner_password(state, replace=False, stdin=io.StringIO("short\n")) == 1
    assert run_set_owner_password(state, replace=False, stdin=io.StringIO("")) == 1
    assert run_set_owner_password(state, replace=True, stdin=io.StringIO("only one line here\n")) == 1
    assert _password_events(state) == []


def test_without_a_local_install_it_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_set_owner_password(tmp_path / "nothing", replace=False, stdin=io.StringIO("a long password here\n")) == 1
    assert "start `hd dev` once" in capsys.readouterr().err
