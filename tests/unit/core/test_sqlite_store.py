"""ControlStore contract, run against the SQLite adapter (the DynamoDB adapter joins `store_factory` later)."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hd_core.adapters.sqlite_store import SCHEMA_VERSION, SchemaTooNew, SqliteControlStore
from hd_core.errors import Conflict, NotFound
from hd_core.models import ApiKeyRecord, KeyEnv, Organization, OrgStatus, Role, User, UserStatus, new_id
from hd_core.ports import ControlStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

StoreFactory = Callable[[], ControlStore]


@pytest.fixture(params=["sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the adapter under test on the same backing state each time it is called."""
    opened: list[SqliteControlStore] = []

    def open_store() -> ControlStore:
        store = SqliteControlStore(tmp_path / "control.sqlite3")
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> ControlStore:
    return store_factory()


def _org(name: str = "Acme", created_at: datetime = T0) -> Organization:
    return Organization(new_id("org"), name, OrgStatus.ACTIVE, created_at)


def _user(org: Organization, created_at: datetime = T0, **changes: Any) -> User:
    user = User(new_id("usr"), org.org_id, "a@acme.test", Role.ANALYST, UserStatus.ACTIVE, None, None, created_at)
    return replace(user, **changes)


def _key(org: Organization, user: User, key_id: str = "hd_live_AbCdEfGh", created_at: datetime = T0) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        org_id=org.org_id,
        user_id=user.user_id,
        env=KeyEnv.LIVE,
        key_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        scopes=("query:read", "policies:read"),
        created_at=created_at,
        expires_at=created_at + timedelta(days=90),
        revoked_at=None,
        name="ci",
    )


def test_orgs_round_trip_and_list_oldest_first(store: ControlStore) -> None:
    later = _org("Beta", T0 + timedelta(hours=1))
    earlier = _org("Alpha")
    store.put_org(later)
    store.put_org(earlier)
    assert store.get_org(earlier.org_id) == earlier
    assert store.get_org("org_missing") is None
    assert store.list_orgs() == [earlier, later]


def test_put_org_replaces(store: ControlStore) -> None:
    org = _org()
    store.put_org(org)
    store.put_org(replace(org, status=OrgStatus.SUSPENDED))
    assert store.get_org(org.org_id) == replace(org, status=OrgStatus.SUSPENDED)
    assert len(store.list_orgs()) == 1


def test_users_round_trip_and_list_by_org(store: ControlStore) -> None:
    acme, other = _org(), _org("Other")
    alice = _user(acme, department="finance", region="eu", role=Role.OWNER)
    bob = _user(acme, T0 + timedelta(minutes=1), email="b@acme.test", status=UserStatus.SUSPENDED)
    outsider = _user(other)
    for user in (bob, outsider, alice):
        store.put_user(user)
    assert store.get_user(alice.user_id) == alice
    assert store.get_user("usr_missing") is None
    assert store.list_users(acme.org_id) == [alice, bob]
    assert store.list_users("org_missing") == []
    store.put_user(replace(bob, status=UserStatus.REMOVED))
    assert store.get_user(bob.user_id) == replace(bob, status=UserStatus.REMOVED)


def test_api_keys_round_trip_with_every_field(store: ControlStore) -> None:
    org = _org()
    user = _user(org)
    record = _key(org, user)
    store.put_api_key(record)
    assert store.get_api_key(record.key_id) == record
    assert store.get_api_key("hd_live_missing0") is None


def test_a_key_without_expiry_round_trips(store: ControlStore) -> None:
    org = _org()
    record = replace(_key(org, _user(org)), expires_at=None, env=KeyEnv.TEST, scopes=())
    store.put_api_key(record)
    assert store.get_api_key(record.key_id) == record


def test_put_api_key_never_overwrites_an_existing_key_id(store: ControlStore) -> None:
    org = _org()
    user = _user(org)
    original = _key(org, user)
    store.put_api_key(original)
    with pytest.raises(Conflict):
        store.put_api_key(replace(original, key_hash="$argon2id$attacker", user_id="usr_attacker"))
    assert store.get_api_key(original.key_id) == original


def test_list_api_keys_is_per_org_and_includes_revoked(store: ControlStore) -> None:
    org, other = _org(), _org("Other")
    user = _user(org)
    first = _key(org, user, "hd_live_first000")
    second = _key(org, user, "hd_live_second00", T0 + timedelta(seconds=1))
    store.put_api_key(second)
    store.put_api_key(first)
    store.put_api_key(_key(other, _user(other), "hd_live_others00"))
    store.revoke_api_key(first.key_id, T0 + timedelta(hours=1))
    assert [key.key_id for key in store.list_api_keys(org.org_id)] == [first.key_id, second.key_id]


def test_revoke_sets_the_time_once_and_returns_the_record(store: ControlStore) -> None:
    org = _org()
    record = _key(org, _user(org))
    store.put_api_key(record)
    revoked = store.revoke_api_key(record.key_id, T0 + timedelta(hours=1))
    assert revoked == replace(record, revoked_at=T0 + timedelta(hours=1))
    again = store.revoke_api_key(record.key_id, T0 + timedelta(hours=2))
    assert again.revoked_at == T0 + timedelta(hours=1)
    assert store.get_api_key(record.key_id) == revoked


def test_revoke_unknown_key_is_not_found(store: ControlStore) -> None:
    with pytest.raises(NotFound):
        store.revoke_api_key("hd_live_missing0", T0)


def test_timestamps_come_back_as_utc_whatever_zone_went_in(store: ControlStore) -> None:
    eastern = timezone(timedelta(hours=-5))
    org = _org(created_at=datetime(2026, 3, 1, 7, 0, tzinfo=eastern))
    store.put_org(org)
    stored = store.get_org(org.org_id)
    assert stored is not None
    assert stored.created_at == T0
    assert stored.created_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(store: ControlStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.put_org(_org(created_at=datetime(2026, 1, 1)))  # deliberately naive


def test_settings_get_put_and_put_if_absent(store: ControlStore) -> None:
    assert store.get_setting("default_org_id") is None
    store.put_setting("default_org_id", "org_1")
    store.put_setting("default_org_id", "org_2")
    assert store.get_setting("default_org_id") == "org_2"
    assert store.put_setting_if_absent("pepper", "first") == "first"
    assert store.put_setting_if_absent("pepper", "second") == "first"
    assert store.get_setting("pepper") == "first"


def test_everything_survives_reopening_the_same_file(store_factory: StoreFactory) -> None:
    first = store_factory()
    org = _org()
    user = _user(org)
    key = _key(org, user)
    first.put_org(org)
    first.put_user(user)
    first.put_api_key(key)
    first.put_setting("default_org_id", org.org_id)
    reopened = store_factory()
    assert reopened.get_org(org.org_id) == org
    assert reopened.get_user(user.user_id) == user
    assert reopened.get_api_key(key.key_id) == key
    assert reopened.get_setting("default_org_id") == org.org_id


def test_concurrent_writers_and_readers_on_several_threads(store: ControlStore) -> None:
    org = _org()
    store.put_org(org)
    user = _user(org)
    store.put_user(user)
    errors: list[BaseException] = []
    conflicts: list[str] = []
    contested = _key(org, user, "hd_live_contest0")

    def work(worker: int) -> None:
        try:
            for n in range(25):
                store.put_api_key(_key(org, user, f"hd_live_w{worker:02d}n{n:03d}"))
                assert store.get_org(org.org_id) == org
                store.put_setting(f"worker.{worker}", str(n))
            try:
                store.put_api_key(contested)
            except Conflict:
                conflicts.append(f"worker {worker}")
        except BaseException as error:  # collected and asserted on the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_api_keys(org.org_id)) == 8 * 25 + 1
    assert len(conflicts) == 7  # exactly one thread created the contested key
    assert all(store.get_setting(f"worker.{worker}") == "24" for worker in range(8))


# --- SQLite-specific ---------------------------------------------------------------------------


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
