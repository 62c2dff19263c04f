"""ControlStore contract, run against the SQLite adapter (the DynamoDB adapter joins `store_factory` later)."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hd_core.adapters.sqlite_store import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, SqliteControlStore
from hd_core.errors import Conflict, NotFound
from hd_core.models import ApiKeyRecord, KeyEnv, Organization, OrgStatus, Role, UsageDelta, User, UserStatus, new_id
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    ColumnTag,
    JitGrant,
    MaskFunction,
    MaskRule,
    PhiGrant,
    PiiType,
    PolicyKind,
    PolicyObject,
    PolicySnapshot,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)
from hd_core.policy_codec import kind_of, object_id
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


# --- governance policies -------------------------------------------------------------------------


def _one_policy_of_each_kind(org_id: str) -> list[PolicyObject]:
    window = TimeWindow("09:00", "17:00", "Europe/Berlin", ("mon", "tue"), outside=True)
    return [
        MaskRule(new_id("mask"), org_id, "crm.customers", "ssn", MaskFunction.PARTIAL, 2, (Role.ADMIN,), ("a-1",)),
        RowFilter(new_id("rowf"), org_id, "crm.customers", "region = {region}", (Role.OWNER,)),
        AbacPolicy(
            new_id("abac"),
            org_id,
            "office hours",
            "deny",
            ("select",),
            ("crm.*",),
            AbacConditions(time_window=window, roles=(Role.ANALYST,), not_source_cidrs=("10.0.0.0/8",)),
            "reason",
        ),
        JitGrant(new_id("jit"), org_id, "usr_1", Role.ADMIN, "incident", T0, T0 + timedelta(hours=1), "usr_2"),
        ColumnTag(new_id("tag"), org_id, "crm.customers", "email", PiiType.EMAIL),
        PhiGrant(new_id("phi"), org_id, "usr_1", "agent-1", T0 + timedelta(days=1), "care"),
        TableBinding(new_id("tbl"), f"t_{org_id.lower()}.events", org_id=org_id),
        QuotaLimit(new_id("quota"), org_id, 100.0, 5000, 2.5),
    ]


def test_policy_version_starts_at_zero_with_an_empty_snapshot(store: ControlStore) -> None:
    assert store.policy_version() == 0
    assert store.policy_snapshot() == PolicySnapshot(version=0)
    assert store.list_policies() == []


def test_every_kind_round_trips_through_put_get_and_the_snapshot(store: ControlStore) -> None:
    objects = _one_policy_of_each_kind("org_a")
    for obj in objects:
        store.put_policy(obj)
    for obj in objects:
        assert store.get_policy(kind_of(obj), object_id(obj)) == obj
    assert store.policy_snapshot() == PolicySnapshot.of(len(objects), sorted(objects, key=_kind_then_id))


def test_a_shared_table_binding_without_org_round_trips(store: ControlStore) -> None:
    binding = TableBinding("tbl_shared", "shared.events", org_id=None, tenant_column="org_id")
    store.put_policy(binding)
    assert store.get_policy(PolicyKind.TABLE_BINDING, "tbl_shared") == binding
    assert store.list_policies(kind=PolicyKind.TABLE_BINDING) == [binding]


def test_version_bumps_on_every_write_and_is_returned_by_it(store: ControlStore) -> None:
    rule = _one_policy_of_each_kind("org_a")[0]
    assert isinstance(rule, MaskRule)
    assert store.put_policy(rule) == 1
    assert store.put_policy(replace(rule, function=MaskFunction.FULL)) == 2  # a replacement is a change too
    assert store.put_policy(replace(rule, function=MaskFunction.FULL)) == 3  # even an identical rewrite
    assert store.delete_policy(PolicyKind.MASK, rule.rule_id) == 4
    assert store.policy_version() == 4
    assert store.policy_snapshot().version == 4


def test_put_replaces_an_object_of_the_same_kind_and_id(store: ControlStore) -> None:
    rule = MaskRule("mask_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    store.put_policy(rule)
    store.put_policy(replace(rule, function=MaskFunction.NULL))
    assert store.list_policies() == [replace(rule, function=MaskFunction.NULL)]


def test_the_same_id_in_two_kinds_is_two_objects(store: ControlStore) -> None:
    tag = ColumnTag("x_1", "org_a", "crm.customers", "email", PiiType.EMAIL)
    rule = MaskRule("x_1", "org_a", "crm.customers", "ssn", MaskFunction.PARTIAL)
    store.put_policy(tag)
    store.put_policy(rule)
    assert store.get_policy(PolicyKind.COLUMN_TAG, "x_1") == tag
    assert store.get_policy(PolicyKind.MASK, "x_1") == rule


def test_deleting_a_missing_policy_is_not_found_and_changes_no_version(store: ControlStore) -> None:
    store.put_policy(QuotaLimit("quota_1", "org_a"))
    with pytest.raises(NotFound):
        store.delete_policy(PolicyKind.QUOTA, "quota_missing")
    with pytest.raises(NotFound):
        store.delete_policy(PolicyKind.MASK, "quota_1")  # right id, wrong kind
    assert store.policy_version() == 1
    assert store.get_policy(PolicyKind.QUOTA, "quota_1") is not None
    assert store.get_policy(PolicyKind.QUOTA, "quota_missing") is None


def test_list_policies_filters_by_org_and_kind_ordered_by_kind_then_id(store: ControlStore) -> None:
    ours, theirs = _one_policy_of_each_kind("org_a"), _one_policy_of_each_kind("org_b")
    for obj in reversed(ours + theirs):
        store.put_policy(obj)
    assert store.list_policies() == sorted(ours + theirs, key=_kind_then_id)
    assert store.list_policies("org_a") == sorted(ours, key=_kind_then_id)
    masks = [obj for obj in ours if isinstance(obj, MaskRule)]
    assert store.list_policies("org_a", PolicyKind.MASK) == masks
    assert len(store.list_policies(kind=PolicyKind.MASK)) == 2
    assert store.list_policies("org_missing") == []


def test_policies_and_their_version_survive_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    objects = _one_policy_of_each_kind("org_a")
    for obj in objects:
        first.put_policy(obj)
    reopened = store_factory()
    assert reopened.policy_version() == len(objects)
    assert reopened.policy_snapshot() == first.policy_snapshot()


def test_concurrent_policy_writes_each_get_their_own_version(store: ControlStore) -> None:
    versions: list[int] = []
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(20):
                rule = MaskRule(f"mask_{worker}_{n}", "org_a", "crm.customers", "ssn", MaskFunction.FULL)
                versions.append(store.put_policy(rule))
        except BaseException as error:  # collected and asserted on the main thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == list(range(1, 121))
    snapshot = store.policy_snapshot()
    assert (snapshot.version, len(snapshot.masks)) == (120, 120)


def test_the_snapshot_version_always_matches_its_content_under_concurrent_writes(store: ControlStore) -> None:
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            snapshot = store.policy_snapshot()
            seen.append((snapshot.version, len(snapshot.quotas)))

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(60):
        store.put_policy(QuotaLimit(f"quota_{n:03d}", f"org_{n}"))
    stop.set()
    reader.join()
    assert seen and all(version == count for version, count in seen)  # each put added exactly one quota


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite3"
    raw = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("INSERT INTO settings (name, value) VALUES ('default_org_id', 'org_old')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with SqliteControlStore(path) as store:
        assert store.get_setting("default_org_id") == "org_old"
        assert store.policy_version() == 0
        assert store.put_policy(QuotaLimit("quota_1", "org_old")) == 1


# --- metering ------------------------------------------------------------------------------------


def _usage(day: date, user_id: str = "usr_1", agent_id: str | None = None, **amounts: Any) -> UsageDelta:
    figures = {"statements": 1, "credits": 0.5, "rows": 10, "bytes": 100} | amounts
    return UsageDelta("org_a", day, user_id, agent_id, **figures)


def test_usage_sums_into_org_day_user_agent_buckets(store: ControlStore) -> None:
    day = date(2026, 3, 4)
    store.add_usage([_usage(day), _usage(day), _usage(day, agent_id="agent-1"), _usage(day, user_id="usr_2")])
    store.add_usage([_usage(day, statements=3, credits=1.25, rows=5, bytes=7)])
    assert store.usage("org_a", day, day) == [
        UsageDelta("org_a", day, "usr_1", None, 5, 2.25, 25, 207),
        UsageDelta("org_a", day, "usr_1", "agent-1", 1, 0.5, 10, 100),
        UsageDelta("org_a", day, "usr_2", None, 1, 0.5, 10, 100),
    ]


def test_usage_is_per_org_and_limited_to_the_inclusive_day_range(store: ControlStore) -> None:
    days = [date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 31), date(2026, 4, 1)]
    store.add_usage([_usage(day) for day in days])
    store.add_usage([replace(_usage(days[1]), org_id="org_b")])
    assert [bucket.day for bucket in store.usage("org_a", date(2026, 3, 1), date(2026, 3, 31))] == days[1:3]
    assert store.usage("org_missing", days[0], days[-1]) == []


def test_usage_writes_do_not_change_the_policy_version(store: ControlStore) -> None:
    store.add_usage([_usage(date(2026, 3, 4))])
    assert store.policy_version() == 0


def test_adding_no_usage_is_a_no_op(store: ControlStore) -> None:
    store.add_usage([])
    assert store.usage("org_a", date(2000, 1, 1), date(2100, 1, 1)) == []


def test_concurrent_add_usage_from_threads_sums_correctly(store: ControlStore) -> None:
    day = date(2026, 3, 4)
    errors: list[BaseException] = []

    def meter(worker: int) -> None:
        try:
            for _ in range(50):
                store.add_usage([_usage(day, credits=0.25), _usage(day, agent_id=f"agent-{worker % 2}")])
        except BaseException as error:  # collected and asserted on the main thread
            errors.append(error)

    threads = [threading.Thread(target=meter, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    buckets = {bucket.agent_id: bucket for bucket in store.usage("org_a", day, day)}
    assert buckets[None].statements == 400
    assert buckets[None].credits == pytest.approx(100.0)
    assert buckets[None].rows == 4000
    assert buckets["agent-0"].statements == buckets["agent-1"].statements == 200
    assert buckets["agent-0"].bytes == 20_000


def _kind_then_id(obj: PolicyObject) -> tuple[str, str]:
    return (kind_of(obj).value, object_id(obj))
