"""What only the SQLite adapter promises: its file, its schema migrations, and safety across processes.

The behaviour every `ControlStore` shares is specified once, for all adapters, in `tests/contract`.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from hd_core.adapters.sqlite_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ControlStoreDamaged,
    ControlStoreUnusable,
    MigrationFailed,
    SchemaTooNew,
    SqliteControlStore,
)
from hd_core.errors import Conflict
from hd_core.models import ApiKeyRecord, IamEvent, KeyEnv, Organization, OrgStatus, Role, User, UserStatus, new_id
from hd_core.policies import QuotaLimit
from tests.harness import overwrite_sqlite_page, sqlite_root_page

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _org() -> Organization:
    return Organization(new_id("org"), "Acme", OrgStatus.ACTIVE, T0)


def _user(org: Organization, email: str = "a@acme.test") -> User:
    return User(new_id("usr"), org.org_id, email, Role.ANALYST, UserStatus.ACTIVE, None, None, T0)


def _key(org: Organization, user: User, key_id: str = "hd_live_AbCdEfGh") -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        org_id=org.org_id,
        user_id=user.user_id,
        env=KeyEnv.LIVE,
        key_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        scopes=("query:read",),
        created_at=T0,
        expires_at=None,
        revoked_at=None,
        name="ci",
    )


def _database_at_schema(path: Path, version: int) -> sqlite3.Connection:
    """A raw database file migrated by hand to `version`, as an older release left it."""
    raw = sqlite3.connect(path)
    for step in MIGRATIONS[:version]:
        for statement in step:
            raw.execute(statement)
    raw.execute(f"PRAGMA user_version = {version:d}")
    raw.commit()
    return raw


def test_the_file_is_private_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "control.sqlite3"
    SqliteControlStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    SqliteControlStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(SchemaTooNew):
        SqliteControlStore(path)


def test_a_failed_write_leaves_no_open_transaction(tmp_path: Path) -> None:
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        org = _org()
        record = _key(org, _user(org))
        store.put_api_key(record)
        with pytest.raises(Conflict):
            store.put_api_key(record)
        store.put_setting("after", "conflict")  # would fail with "cannot start a transaction within a transaction"
        assert store.get_setting("after") == "conflict"


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    raw = _database_at_schema(path, 1)
    raw.execute("INSERT INTO settings (name, value) VALUES ('default_org_id', 'org_old')")
    raw.commit()
    raw.close()
    with SqliteControlStore(path) as store:
        assert store.get_setting("default_org_id") == "org_old"
        assert store.policy_version() == 0
        assert store.put_policy(QuotaLimit("quota_1", "org_old")) == 1


def test_a_schema_2_database_gains_the_new_fields_with_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    raw = _database_at_schema(path, 2)
    raw.execute("INSERT INTO orgs VALUES ('org_old', 'Old', 'active', ?)", (T0.isoformat(timespec="microseconds"),))
    raw.execute(
        "INSERT INTO users VALUES ('usr_old', 'org_old', 'Ada@Old.example', 'Owner', 'active', NULL, NULL, ?)",
        (T0.isoformat(timespec="microseconds"),),
    )
    raw.execute(
        "INSERT INTO api_keys VALUES ('hd_live_OldKey00', 'org_old', 'usr_old', 'live', 'h', '[]', ?, NULL, NULL, 'k')",
        (T0.isoformat(timespec="microseconds"),),
    )
    raw.commit()
    raw.close()
    with SqliteControlStore(path) as store:
        org, user, key = store.get_org("org_old"), store.get_user("usr_old"), store.get_api_key("hd_live_OldKey00")
        assert org is not None and not org.mfa_required
        assert user is not None
        assert (user.name, user.password_hash, user.mfa_enabled, user.external_ids) == ("", None, False, ())
        assert key is not None and (key.allowed_cidrs, key.rotated_to, key.expiry_recorded_at) == ((), None, None)
        assert store.get_user_by_email("ada@old.example") == user  # old rows got their lookup key
        with pytest.raises(Conflict):
            store.put_user(_user(_org(), email="ADA@old.example"))


def test_an_upgrade_that_cannot_apply_leaves_the_file_at_its_old_version(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    raw = _database_at_schema(path, 2)
    for user_id, email in (("usr_1", "Dup@acme.test"), ("usr_2", "dup@acme.test")):
        raw.execute(
            "INSERT INTO users VALUES (?, 'org_1', ?, 'Analyst', 'active', NULL, NULL, ?)",
            (user_id, email, T0.isoformat(timespec="microseconds")),
        )
    raw.commit()
    raw.close()
    with pytest.raises(MigrationFailed, match="version 3"):
        SqliteControlStore(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "email_key" not in {row[1] for row in raw.execute("PRAGMA table_info(users)")}
    raw.close()


def test_an_in_memory_store_works_without_a_file() -> None:
    with SqliteControlStore(":memory:") as store:
        org = _org()
        store.put_org(org)
        assert store.get_org(org.org_id) == org


# --- several processes on one file ---------------------------------------------------------------


def _append_events_with_retry(path: str, writer: int, count: int, start: Barrier) -> None:
    """A separate process appending `count` events to one chain, re-reading the head after each lost race."""
    with SqliteControlStore(path) as store:
        start.wait()
        for n in range(count):
            while True:
                head = store.iam_chain_head("org_1")
                seq = 1 if head is None else head.seq + 1
                event = IamEvent(
                    chain_id="org_1",
                    seq=seq,
                    event_id=f"evt_{writer}_{n}",
                    event_type="user.invited",
                    actor="system",
                    target="usr_1",
                    before=None,
                    after={"n": n},
                    at=T0 + timedelta(seconds=n),
                    request_id=f"req_{writer}_{n}",
                    prev_hash="0" * 64,
                    hash=f"{writer}-{n}",
                )
                try:
                    store.append_iam_event(event)
                    break
                except Conflict:
                    continue


def test_processes_sharing_the_file_never_fork_the_iam_chain(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    SqliteControlStore(path).close()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    writers = [
        context.Process(target=_append_events_with_retry, args=(str(path), writer, 15, start)) for writer in range(3)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
    assert [process.exitcode for process in writers] == [0, 0, 0]
    with SqliteControlStore(path) as store:
        events = store.list_iam_events("org_1")
    assert [event.seq for event in events] == list(range(1, 46))
    assert len({event.event_id for event in events}) == 45


def test_writing_a_failure_deletes_every_expired_failure_record(tmp_path: Path) -> None:
    """SQLite has no TTL: records of names tried once (unknown emails, made-up key ids) go at the next failure."""
    hour = timedelta(hours=1)
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        for number in range(50):
            store.record_auth_failure(f"login:{number}", T0, forget_before=T0 - hour, expires_at=T0 + hour)
        store.record_auth_failure("api_key:late", T0 + hour, forget_before=T0, expires_at=T0 + 2 * hour)
        assert store.get_auth_failures("login:0") is None
        assert store.get_auth_failures("api_key:late") is not None
        count = store._connection.execute("SELECT count(*) FROM auth_failures").fetchone()[0]
    assert count == 1


def _filled_store(path: Path) -> bytes:
    with SqliteControlStore(path) as store:
        for number in range(200):
            store.put_setting(f"setting_{number}", "x" * 500)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "finding"),
    [
        pytest.param(lambda data: b"\x13" * 100 + data[100:], "not a database", id="garbage-header"),
        pytest.param(lambda data: data[: len(data) // 2], "malformed", id="truncated"),
        pytest.param(lambda data: overwrite_sqlite_page(data, sqlite_root_page(data, "settings")), "quick_check",
                     id="corrupt-middle-page"),
    ],
)
def test_a_damaged_file_is_refused_on_open_and_left_as_found(
    tmp_path: Path, damage: Callable[[bytes], bytes], finding: str
) -> None:
    path = tmp_path / "control.sqlite3"
    damaged = damage(_filled_store(path))
    path.write_bytes(damaged)

    with pytest.raises(ControlStoreDamaged) as refused:
        SqliteControlStore(path)

    assert finding in str(refused.value) and str(path) in str(refused.value)
    assert "\n" not in str(refused.value)
    assert path.read_bytes() == damaged
    assert not (tmp_path / "control.sqlite3-wal").exists()


def test_without_create_a_missing_file_is_refused_and_not_made(tmp_path: Path) -> None:
    with pytest.raises(ControlStoreUnusable, match="does not exist"):
        SqliteControlStore(tmp_path / "control.sqlite3", create=False)
    assert not (tmp_path / "control.sqlite3").exists()
