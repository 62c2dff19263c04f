"""GDPR erasure's domain (hd_core/erasure.py) on real adapters: a SQLite store, local key file, a data folder, moto S3.

The host-level path (psycopg through the cache, `hd forget`, writable tables) is tests/e2e/test_erasure.py;
here are the rules that need a clock or a bucket's versions: the shared-table tenant rule, retention, the
SLA, a failed run that can be run again, and the epoch engine hosts poll.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from engine_host.runtime.erasure import ErasureWatcher
from hd_core import erasure
from hd_core.adapters.erasure_objects import LocalFolderTableObjects, S3TableObjects
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.erasure_models import ForgetStatus
from hd_core.errors import InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.models import ChangeContext, KeyEnv, Principal, Role
from hd_core.policies import TableBinding

ORG = "org_erase"
OTHER_ORG = "org_other"
SUBJECT = "cust-00042"
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def _rows(data: bytes) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(data)).to_pylist()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteControlStore]:
    opened = SqliteControlStore(tmp_path / "control.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _services(store: SqliteControlStore, tmp_path: Path, objects: Any, clock: Clock,
              retention: timedelta = timedelta(0)) -> erasure.ErasureServices:
    keys = LocalKeyFile(tmp_path / "keys.json", create_missing=True)
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), keys)
    return erasure.ErasureServices(store=store, trail=trail, keys=keys, objects=objects, version_retention=retention,
                                   now=clock)


def _ctx(org_id: str = ORG) -> ChangeContext:
    principal = Principal(user_id="usr_dpo", org_id=org_id, role=Role.ADMIN, key_id="hd_test_x", env=KeyEnv.TEST,
                          scopes=("forget:manage",), department=None, region=None)
    return ChangeContext(actor=principal, request_id="req_test")


def test_a_shared_table_loses_only_the_requesting_organisations_rows_of_the_subject(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    data = tmp_path / "data"
    (data / "crm" / "customers").mkdir(parents=True)
    path = data / "crm" / "customers" / "part-0.parquet"
    path.write_bytes(_parquet([
        {"customer_id": SUBJECT, "org_id": ORG, "n": 1}, {"customer_id": SUBJECT, "org_id": OTHER_ORG, "n": 2},
        {"customer_id": "cust-7", "org_id": ORG, "n": 3}, {"customer_id": None, "org_id": ORG, "n": 4}]))
    untouched = data / "crm" / "customers" / "part-1.parquet"
    untouched.write_bytes(_parquet([{"customer_id": "cust-8", "org_id": ORG, "n": 5}]))
    before_untouched = untouched.stat().st_mtime_ns
    store.put_policy(TableBinding("tbl_shared", "crm.customers", tenant_column="org_id", subject_column="customer_id"))
    store.put_policy(TableBinding("tbl_other", "crm.other", org_id=OTHER_ORG, subject_column="customer_id"))
    svc = _services(store, tmp_path, LocalFolderTableObjects(data), clock)

    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "ticket 77")
    assert request.status is ForgetStatus.PENDING and request.subject_sealed
    done = erasure.run(svc, request.request_id)

    assert done.status is ForgetStatus.COMPLETED, done.error
    assert done.tables == ("crm.customers",)  # another organisation's own table is not this request's
    assert done.table_results == {"crm.customers": {"storage": "parquet", "rows_removed": 1, "objects_rewritten": 1}}
    assert [row["n"] for row in _rows(path.read_bytes())] == [2, 3, 4]
    assert untouched.stat().st_mtime_ns == before_untouched
    assert done.subject_sealed is None and store.get_forget_request(done.request_id) == done
    assert not list(path.parent.glob(".hd-erasure-*"))
    assert erasure.read_invalidation(store) == (1, ["crm.customers"])


def test_the_subject_hmac_is_keyed_per_deployment_and_organisation(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    svc = _services(store, tmp_path, None, clock)
    key = erasure.subject_key(store, svc.keys)
    assert erasure.subject_key(store, svc.keys) == key  # stored wrapped, unwrapped the same every time
    assert erasure.subject_hmac(key, ORG, SUBJECT) != erasure.subject_hmac(key, OTHER_ORG, SUBJECT)
    assert erasure.subject_hmac(b"\x00" * 32, ORG, SUBJECT) != erasure.subject_hmac(key, ORG, SUBJECT)
    stored = store.get_setting("erasure.subject_key_wrapped") or ""
    assert key.hex() not in stored


def test_the_reason_never_keeps_the_subject_id_and_refusals_name_what_to_change(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    svc = _services(store, tmp_path, None, clock)
    with pytest.raises(InvalidRequest, match="control or formatting characters"):
        erasure.submit(svc, _ctx(), ORG, "a\x00b", "")
    with pytest.raises(InvalidRequest, match="1 to 256"):
        erasure.submit(svc, _ctx(), ORG, "   ", "")
    with pytest.raises(NotFound):
        erasure.submit(svc, _ctx(), OTHER_ORG, SUBJECT, "")
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, f"customer {SUBJECT.upper()} asked, ticket 9")
    assert request.reason == "customer [subject] asked, ticket 9"
    with pytest.raises(NotFound):
        erasure.get_request(store, _ctx(OTHER_ORG), OTHER_ORG, request.request_id)


def test_a_declared_table_nobody_here_can_reach_fails_the_request_and_a_later_run_completes_it(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store.put_policy(TableBinding("tbl_leads", "sales.leads", org_id=ORG, subject_column="lead_id"))
    svc = _services(store, tmp_path, LocalFolderTableObjects(data), clock)  # no engine: writable tables unreachable
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
    failed = erasure.run(svc, request.request_id)
    assert failed.status is ForgetStatus.FAILED
    assert "sales.leads" in failed.error and SUBJECT not in failed.error
    assert failed.subject_sealed == request.subject_sealed  # kept: the request can run again
    (data / "sales" / "leads").mkdir(parents=True)
    (data / "sales" / "leads" / "a.parquet").write_bytes(_parquet([{"lead_id": SUBJECT}, {"lead_id": "l2"}]))
    done = erasure.run(svc, request.request_id)
    assert done.status is ForgetStatus.COMPLETED and done.rows_removed == 1
    events = [str(event.event_type) for event in store.list_iam_events(ORG)]
    assert events == ["forget.requested", "forget.failed", "forget.completed"]
    assert erasure.run(svc, request.request_id) == done  # a completed request is not run twice


def test_a_file_without_the_subject_column_fails_the_request(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    data = tmp_path / "data"
    (data / "crm" / "people").mkdir(parents=True)
    (data / "crm" / "people" / "a.parquet").write_bytes(_parquet([{"person": SUBJECT}]))
    store.put_policy(TableBinding("tbl_people", "crm.people", org_id=ORG, subject_column="person_id"))
    svc = _services(store, tmp_path, LocalFolderTableObjects(data), clock)
    failed = erasure.run(svc, erasure.submit(svc, _ctx(), ORG, SUBJECT, "").request_id)
    assert failed.status is ForgetStatus.FAILED and "person_id" in failed.error


def test_an_open_request_past_72_hours_counts_against_the_sla(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    svc = _services(store, tmp_path, None, clock)
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
    clock.now = T0 + timedelta(hours=71)
    assert erasure.requests_past_sla(store, clock.now) == []
    clock.now = T0 + timedelta(hours=72, seconds=1)
    assert [r.request_id for r in erasure.requests_past_sla(store, clock.now)] == [request.request_id]
    store.update_forget_request(replace(request, status=ForgetStatus.COMPLETED, subject_sealed=None),
                                from_status=ForgetStatus.PENDING)
    assert erasure.requests_past_sla(store, clock.now) == []


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket="hd-erasure-data")
        client.put_bucket_versioning(Bucket="hd-erasure-data", VersioningConfiguration={"Status": "Enabled"})
        yield client


def test_old_s3_versions_holding_the_subject_go_after_the_retention(
        store: SqliteControlStore, tmp_path: Path, clock: Clock, s3: Any) -> None:
    key = "wh/crm/people/part-0.parquet"
    s3.put_object(Bucket="hd-erasure-data", Key=key, Body=_parquet([{"person_id": SUBJECT, "v": 1}]))
    s3.put_object(Bucket="hd-erasure-data", Key=key, Body=_parquet([{"person_id": SUBJECT, "v": 2},
                                                                    {"person_id": "p2", "v": 2}]))
    store.put_policy(TableBinding("tbl_people", "crm.people", org_id=ORG, subject_column="person_id"))
    svc = _services(store, tmp_path, S3TableObjects(s3, "hd-erasure-data", "wh/"), clock,
                    retention=timedelta(hours=24))
    done = erasure.run(svc, erasure.submit(svc, _ctx(), ORG, SUBJECT, "").request_id)
    assert done.status is ForgetStatus.COMPLETED and done.rows_removed == 1
    assert len(done.purge_versions) == 2 and done.purge_after == T0 + timedelta(hours=24)
    assert len(s3.list_object_versions(Bucket="hd-erasure-data", Prefix=key)["Versions"]) == 3

    clock.now = T0 + timedelta(hours=23)
    assert erasure.purge_due_versions(svc) == 0
    clock.now = T0 + timedelta(hours=24)
    assert erasure.purge_due_versions(svc) == 1
    versions = s3.list_object_versions(Bucket="hd-erasure-data", Prefix=key)["Versions"]
    assert len(versions) == 1 and versions[0]["IsLatest"]
    body = s3.get_object(Bucket="hd-erasure-data", Key=key)["Body"].read()
    assert _rows(body) == [{"person_id": "p2", "v": 2}]
    settled = store.get_forget_request(done.request_id)
    assert settled is not None and settled.purge_versions == () and store.list_unsettled_forget_requests() == []


def test_a_concurrent_write_to_an_object_fails_the_erasure_instead_of_being_overwritten(
        store: SqliteControlStore, tmp_path: Path, clock: Clock, s3: Any) -> None:
    key = "wh/crm/people/part-0.parquet"
    s3.put_object(Bucket="hd-erasure-data", Key=key, Body=_parquet([{"person_id": SUBJECT}]))
    objects = S3TableObjects(s3, "hd-erasure-data", "wh/")
    _, info = objects.read("crm/people/part-0.parquet")
    s3.put_object(Bucket="hd-erasure-data", Key=key, Body=_parquet([{"person_id": "written-meanwhile"}]))
    from hd_core.object_source import ObjectChanged

    with pytest.raises(ObjectChanged):
        objects.replace("crm/people/part-0.parquet", b"new", if_match=info.etag)


def test_engine_hosts_invalidate_once_per_erasure_epoch(store: SqliteControlStore) -> None:
    seen: list[list[str]] = []
    watcher = ErasureWatcher(store, seen.append, interval_seconds=3600)
    store.put_setting(erasure.INVALIDATION_SETTING, '{"epoch": 4, "tables": ["a.b"]}')
    watcher.start()  # what was announced before the host started is already in its copies
    try:
        assert watcher.check() is False
        store.put_setting(erasure.INVALIDATION_SETTING, '{"epoch": 5, "tables": ["crm.people"]}')
        assert watcher.check() is True and seen == [["crm.people"]]
        assert watcher.check() is False
    finally:
        watcher.stop()


def test_the_worker_sweep_runs_pending_requests_retries_failed_ones_hourly_and_counts_the_sla(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    from functions.forget import worker
    from functions.forget.wiring import Erasure, install_erasure

    store.put_policy(TableBinding("tbl_leads", "sales.leads", org_id=ORG, subject_column="lead_id"))
    svc = _services(store, tmp_path, None, clock)  # no data location configured: declared tables are unreachable
    install_erasure(Erasure(svc, lambda request_id: None))  # AWS: the API records, the sweep runs
    try:
        first = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
        swept = worker.sweep()
        assert swept["ran"] == [first.request_id] and swept["past_sla"] == []
        failed = store.get_forget_request(first.request_id)
        assert failed is not None and failed.status is ForgetStatus.FAILED
        assert "HD_ERASURE_DATA_URL" in failed.error
        clock.now = T0 + timedelta(minutes=30)
        assert worker.sweep()["ran"] == []  # a failed request is retried an hour after its last attempt
        clock.now = T0 + timedelta(hours=73)
        swept = worker.sweep()
        assert swept["ran"] == [first.request_id] and swept["past_sla"] == [first.request_id]
        still = store.get_forget_request(first.request_id)
        assert still is not None and still.subject_sealed == first.subject_sealed  # kept for the next attempt
    finally:
        install_erasure(None)


def test_a_host_whose_store_cannot_be_read_at_start_still_starts_and_catches_up(store: SqliteControlStore) -> None:
    class Unreachable:
        """The store as an engine host sees it while DynamoDB is unreachable, then again reachable."""

        down = True

        def get_setting(self, name: str) -> str | None:
            if self.down:
                raise OSError("control table unreachable")
            return store.get_setting(name)

    flaky = Unreachable()
    seen: list[list[str]] = []
    watcher = ErasureWatcher(flaky, seen.append, interval_seconds=3600)  # type: ignore[arg-type]
    watcher.start()  # logged, not raised: erasure must never keep a host from serving
    watcher.stop()
    store.put_setting(erasure.INVALIDATION_SETTING, '{"epoch": 2, "tables": ["crm.people"]}')
    flaky.down = False
    assert watcher.check() is True and seen == [["crm.people"]]


def test_a_request_failing_after_one_swap_still_tells_the_hosts_to_drop_the_table(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    folder = tmp_path / "data" / "crm" / "people"
    folder.mkdir(parents=True)
    for part in ("a", "b"):
        (folder / f"{part}.parquet").write_bytes(_parquet([{"person_id": SUBJECT}, {"person_id": f"keep-{part}"}]))
    store.put_policy(TableBinding("tbl_people", "crm.people", org_id=ORG, subject_column="person_id"))

    class WrittenMeanwhile(LocalFolderTableObjects):
        """Someone writes b.parquet after the erasure read it and swapped a.parquet: its swap fails."""

        def replace(self, key: str, data: bytes, *, if_match: str) -> Any:
            if key.endswith("b.parquet"):
                (folder / "b.parquet").write_bytes(_parquet([{"person_id": "written-meanwhile"}]))
            return super().replace(key, data, if_match=if_match)

    svc = _services(store, tmp_path, WrittenMeanwhile(tmp_path / "data"), clock)
    failed = erasure.run(svc, erasure.submit(svc, _ctx(), ORG, SUBJECT, "").request_id)
    assert failed.status is ForgetStatus.FAILED and "changed" in failed.error
    assert _rows((folder / "a.parquet").read_bytes()) == [{"person_id": "keep-a"}]
    # a.parquet was swapped: hosts holding a cached copy of the table must drop it, though the request failed.
    assert erasure.read_invalidation(store) == (1, ["crm.people"])


def test_a_file_the_erasure_cannot_filter_fails_the_request_before_any_object_changes(
        store: SqliteControlStore, tmp_path: Path, clock: Clock) -> None:
    folder = tmp_path / "data" / "crm" / "people"
    folder.mkdir(parents=True)
    first = _parquet([{"person_id": SUBJECT}, {"person_id": "keep"}])
    (folder / "a.parquet").write_bytes(first)
    (folder / "b.parquet").write_bytes(_parquet([{"email": "no subject column"}]))
    store.put_policy(TableBinding("tbl_people", "crm.people", org_id=ORG, subject_column="person_id"))
    svc = _services(store, tmp_path, LocalFolderTableObjects(tmp_path / "data"), clock)
    failed = erasure.run(svc, erasure.submit(svc, _ctx(), ORG, SUBJECT, "").request_id)
    assert failed.status is ForgetStatus.FAILED and "person_id" in failed.error
    assert (folder / "a.parquet").read_bytes() == first and erasure.read_invalidation(store) == (0, [])
