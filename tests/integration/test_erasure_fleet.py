"""GDPR erasure of the fleet hosts' writable tables (hd_core/erasure_fleet.py) on real adapters.

Each backend is a whole control plane: SQLite with the local key file, or DynamoDB and KMS on moto. Each
simulated host is a real DuckDB database with a writable table, deleted from by the real
`HostWritableTables` with a real local query audit sink; a host sees the control store through its own
store object (its own connection), as a fleet instance does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from engine_host.data.table_sources import LocalFolderTables
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from engine_host.runtime.erasure import ErasureWatcher, FleetErasureIdentity, host_erasures
from hd_core import erasure, erasure_fleet, fleet
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.erasure_objects import LocalFolderTableObjects
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.local_audit import LocalFolderAuditSink
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.erasure_fleet import HostErasures
from hd_core.erasure_models import AckStatus, ForgetStatus
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, KeyEnv, Organization, OrgStatus, Principal, Role
from hd_core.policies import TableBinding
from tests.unit.core.test_fleet import CALLER, FLEET, HOST, INSTANCE, RecordingMembership, honest_report

ORG = "org_fleet"  # tests.unit.core.test_fleet's organisation: its honest heartbeat reports for it
OTHER_ORG = "org_other"
SUBJECT = "cust-00042"
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
HEARTBEAT = 900  # seconds, the control plane's default interval
HOST_A, HOST_B, HOST_C = "i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb", "i-0cccccccccccccccc"
REGION = "eu-west-1"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class ControlPlane:
    """One deployment's control state and keys; `open_store` is another process's view of the same state."""

    store: Any
    keys: Any
    open_store: Callable[[], Any]
    trail: IamAuditTrail
    clock: Clock
    data: Path  # the worker's table data (Parquet objects): none here, every declared table is writable

    def services(self) -> erasure.ErasureServices:
        return erasure.ErasureServices(store=self.store, trail=self.trail, keys=self.keys,
                                       objects=LocalFolderTableObjects(self.data),
                                       writable_on_hosts=True, now=self.clock)


@pytest.fixture(scope="module")
def moto_clients() -> Iterator[tuple[Any, Any, str, str, str]]:
    """DynamoDB and KMS on moto for the module: (dynamodb, kms, data key, JWT key, checkpoint key)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
            patch.setenv(name, value)
        with mock_aws():
            kms = boto3.client("kms", region_name=REGION)
            yield (boto3.client("dynamodb", region_name=REGION), kms, kms.create_key()["KeyMetadata"]["Arn"],
                   kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"],
                   kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"])


@pytest.fixture(params=["sqlite", "aws"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlPlane]:
    clock = Clock()
    checkpoints = LocalFolderCheckpointStore(tmp_path / "checkpoints")
    if request.param == "sqlite":
        opened: list[SqliteControlStore] = []

        def open_sqlite() -> SqliteControlStore:
            opened.append(SqliteControlStore(tmp_path / "control.sqlite3"))
            return opened[-1]

        store, keys = open_sqlite(), LocalKeyFile(tmp_path / "keys.json", create_missing=True)
        yield ControlPlane(store, keys, open_sqlite, IamAuditTrail(store, checkpoints, keys), clock, tmp_path)
        for each in opened:
            each.close()
        return
    dynamodb, kms, data_key, jwt_key, checkpoint_key = request.getfixturevalue("moto_clients")
    table = f"hd-control-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**create_table_kwargs(table))
    keys = KmsKeyProvider(kms, jwt_key_ids=[jwt_key], checkpoint_key_id=checkpoint_key, data_key_id=data_key)
    store = DynamoDbControlStore(table, client=dynamodb)
    yield ControlPlane(store, keys, lambda: DynamoDbControlStore(table, client=dynamodb),
                       IamAuditTrail(store, checkpoints, keys), clock, tmp_path)


class SimulatedHost:
    """One fleet host's engine.duckdb with writable tables, and its part of forget requests."""

    def __init__(self, plane: ControlPlane, root: Path, host_id: str, *, subject_column: str = "customer_id",
                 seen: datetime | None = None) -> None:
        self.host_id = host_id
        self.root = root / host_id
        (self.root / "data").mkdir(parents=True)
        self.store = plane.open_store()
        self.database = Database(self.root / "engine.duckdb", allowed_directories=[self.root / "data"])
        self.database.open(setup=[lambda con: self._create(con, subject_column)])
        self.catalog = TableCatalog(self.database.connection)
        self.source = LocalFolderTables(self.root / "data")
        self.audit = LocalFolderAuditSink(self.root / "audit", host_id=host_id)
        self.erasures: HostErasures = host_erasures(FleetErasureIdentity(host_id, ORG, plane.keys), self.store,
                                                    self.database, self.catalog, self.source, self.audit)
        erasure_fleet.record_heartbeat(plane.store, org_id=ORG, host_id=host_id, at=seen or plane.clock(),
                                       heartbeat_seconds=HEARTBEAT)

    @staticmethod
    def _create(con: Any, subject_column: str) -> None:
        con.execute(f"CREATE SCHEMA {DATA_CATALOG}.crm")
        con.execute(f"CREATE TABLE {DATA_CATALOG}.crm.contacts ({subject_column} VARCHAR, n INTEGER)")
        con.execute(f"INSERT INTO {DATA_CATALOG}.crm.contacts VALUES ($1, 1), ($1, 2), ('cust-7', 3), (NULL, 4)",
                    [SUBJECT])
        con.execute(f"CREATE TABLE {DATA_CATALOG}.crm.shared (customer_id VARCHAR, org_id VARCHAR, n INTEGER)")
        con.execute(f"INSERT INTO {DATA_CATALOG}.crm.shared VALUES ($1, '{ORG}', 1), ($1, '{OTHER_ORG}', 2)",
                    [SUBJECT])

    def rows(self, table: str) -> list[int]:
        cursor = self.database.connection.cursor()
        try:
            return [row[0] for row in cursor.execute(f"SELECT n FROM {DATA_CATALOG}.{table} ORDER BY n").fetchall()]
        finally:
            cursor.close()

    def audit_text(self) -> str:
        self.audit.close()
        return "".join(path.read_text() for path in sorted((self.root / "audit").rglob("*.jsonl")))

    def close(self) -> None:
        self.catalog.close()
        self.database.close()


@pytest.fixture
def hosts(plane: ControlPlane, tmp_path: Path) -> Iterator[list[SimulatedHost]]:
    made: list[SimulatedHost] = []
    yield made
    for host in made:
        host.close()


def _declare(store: Any) -> None:
    store.put_policy(TableBinding("tbl_contacts", "crm.contacts", org_id=ORG, subject_column="customer_id"))
    store.put_policy(TableBinding("tbl_shared", "crm.shared", tenant_column="org_id", subject_column="customer_id"))


def _ctx() -> ChangeContext:
    principal = Principal(user_id="usr_dpo", org_id=ORG, role=Role.ADMIN, key_id="hd_test_x", env=KeyEnv.TEST,
                          scopes=("forget:manage",), department=None, region=None)
    return ChangeContext(actor=principal, request_id="req_test")


def _waiting(plane: ControlPlane) -> Any:
    _declare(plane.store)
    svc = plane.services()
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "ticket 5")
    waiting = erasure.run(svc, request.request_id)
    erasure_fleet.publish_host_work(plane.store)  # what the worker does after a run leaves a request waiting
    return waiting


def _trail_text(plane: ControlPlane) -> str:
    return json.dumps([event.after for event in plane.store.list_iam_events(ORG)], default=str)


def test_writable_tables_wait_for_every_live_host_and_complete_with_each_hosts_rows(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path) -> None:
    host_a, host_b = SimulatedHost(plane, tmp_path, HOST_A), SimulatedHost(plane, tmp_path, HOST_B)
    # Last seen more than two heartbeat intervals ago: not live, not waited for (and never asked).
    SimulatedHost(plane, tmp_path, HOST_C, seen=T0 - timedelta(seconds=2 * HEARTBEAT + 1))
    hosts.extend([host_a, host_b])
    svc = plane.services()

    waiting = _waiting(plane)
    assert waiting.status is ForgetStatus.WAITING_FOR_HOSTS, waiting.error
    assert waiting.host_tables == {"crm.contacts": {"column": "customer_id", "tenant_column": None},
                                   "crm.shared": {"column": "customer_id", "tenant_column": "org_id"}}
    assert waiting.subject_sealed is not None and waiting.finished_at is None
    assert erasure_fleet.settle_all(svc) == []
    assert erasure_fleet.read_host_work(plane.store) == [waiting.request_id]

    (ack_a,) = host_a.erasures.apply_outstanding()
    assert ack_a.status is AckStatus.DONE and ack_a.rows_removed == 3
    assert host_a.erasures.apply_outstanding() == []  # never twice
    assert plane.store.get_forget_request(waiting.request_id).status is ForgetStatus.WAITING_FOR_HOSTS
    assert erasure_fleet.settle_all(svc) == []  # host B is live and has not acked
    assert host_b.rows("crm.contacts") == [1, 2, 3, 4]

    (ack_b,) = host_b.erasures.apply_outstanding()
    assert (ack_b.host_id, ack_b.status, ack_b.rows_removed) == (HOST_B, AckStatus.DONE, 3)
    (done,) = erasure_fleet.settle_all(svc)

    assert done.status is ForgetStatus.COMPLETED and done.subject_sealed is None, done.error
    assert done.table_results == {
        "crm.contacts": {"storage": "writable", "rows_removed": 4, "objects_rewritten": 0,
                         "hosts": {HOST_A: 2, HOST_B: 2}},
        "crm.shared": {"storage": "writable", "rows_removed": 2, "objects_rewritten": 0,
                       "hosts": {HOST_A: 1, HOST_B: 1}},
    }
    assert done.rows_removed == 6 and plane.store.get_forget_request(done.request_id) == done
    for host in (host_a, host_b):
        assert host.rows("crm.contacts") == [3, 4]
        assert host.rows("crm.shared") == [2]  # the other organisation's row of the same subject stays
        audit = host.audit_text()
        assert audit.count(done.subject_hmac) == 2 and SUBJECT not in audit  # one record per table's delete
    assert erasure_fleet.read_host_work(plane.store) == []
    trail = _trail_text(plane)
    assert done.subject_hmac in trail and SUBJECT not in trail
    assert [e.event_type for e in plane.store.list_iam_events(ORG)][-1] == IamEventType.FORGET_COMPLETED.value


def test_a_hosts_failure_fails_the_request_and_a_retry_runs_again_on_that_host_only(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path) -> None:
    host_a = SimulatedHost(plane, tmp_path, HOST_A)
    host_b = SimulatedHost(plane, tmp_path, HOST_B, subject_column="client_id")  # no such column here
    hosts.extend([host_a, host_b])
    svc = plane.services()
    waiting = _waiting(plane)
    host_a.erasures.apply_outstanding()
    (failed_ack,) = host_b.erasures.apply_outstanding()
    assert failed_ack.status is AckStatus.FAILED and "customer_id" in failed_ack.error

    (failed,) = erasure_fleet.settle_all(svc)
    assert failed.status is ForgetStatus.FAILED and failed.subject_sealed is not None
    assert f"host {HOST_B}" in failed.error and SUBJECT not in failed.error

    cursor = host_b.database.connection.cursor()
    cursor.execute(f"ALTER TABLE {DATA_CATALOG}.crm.contacts RENAME COLUMN client_id TO customer_id")
    cursor.close()
    host_b.catalog.refresh()
    plane.clock.now += timedelta(minutes=5)
    for host in (host_a, host_b):  # both still heartbeating
        erasure_fleet.record_heartbeat(plane.store, org_id=ORG, host_id=host.host_id, at=plane.clock(),
                                       heartbeat_seconds=HEARTBEAT)
    erasure.retry(svc, _ctx(), ORG, waiting.request_id)
    again = erasure.run(svc, waiting.request_id)
    assert again.status is ForgetStatus.WAITING_FOR_HOSTS and erasure_fleet.settle_all(svc) == []
    assert host_a.erasures.apply_outstanding() == []  # its done ack of the first attempt stands
    (retried,) = host_b.erasures.apply_outstanding()
    (done,) = erasure_fleet.settle_all(svc)

    assert retried.status is AckStatus.DONE and done.status is ForgetStatus.COMPLETED
    assert done.table_results["crm.contacts"]["hosts"] == {HOST_A: 2, HOST_B: 2}  # type: ignore[index]
    assert host_b.rows("crm.contacts") == [3, 4]


def test_a_live_host_that_never_acks_fails_the_request_past_the_sla_and_the_alarm_counts_it(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path) -> None:
    silent = SimulatedHost(plane, tmp_path, HOST_A)
    hosts.append(silent)
    svc = plane.services()
    waiting = _waiting(plane)
    plane.clock.now = waiting.sla_deadline - timedelta(minutes=1)
    erasure_fleet.record_heartbeat(plane.store, org_id=ORG, host_id=HOST_A, at=plane.clock(),
                                   heartbeat_seconds=HEARTBEAT)
    assert erasure_fleet.settle_all(svc) == []  # within the SLA: still waiting
    plane.clock.now = waiting.sla_deadline + timedelta(minutes=1)

    (failed,) = erasure_fleet.settle_all(svc)

    assert failed.status is ForgetStatus.FAILED and HOST_A in failed.error and "SLA" in failed.error
    assert [r.request_id for r in erasure.requests_past_sla(plane.store, plane.clock())] == [failed.request_id]
    assert erasure_fleet.read_host_work(plane.store) == []


def test_with_no_live_host_the_request_completes_at_once_and_names_no_host(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path) -> None:
    hosts.append(SimulatedHost(plane, tmp_path, HOST_A, seen=T0 - timedelta(hours=1)))
    waiting = _waiting(plane)

    (done,) = erasure_fleet.settle_all(plane.services())

    assert done.request_id == waiting.request_id and done.status is ForgetStatus.COMPLETED
    assert done.table_results["crm.contacts"] == {"storage": "absent", "rows_removed": 0, "objects_rewritten": 0,
                                                  "hosts": {}}
    assert hosts[0].rows("crm.contacts") == [1, 2, 3, 4]  # a host that is not live was not asked


def test_an_accepted_heartbeat_registers_the_host_as_live_and_a_refused_one_does_not(plane: ControlPlane) -> None:
    plane.store.put_org(Organization(org_id=ORG, name="Fleet Org", status=OrgStatus.ACTIVE, created_at=T0))
    refused = fleet.accept_heartbeat(honest_report(code_hash="bad0" * 16), caller_arn=CALLER, fleet=FLEET,
                                     membership=RecordingMembership(INSTANCE), store=plane.store, at=T0,
                                     heartbeat_seconds=HEARTBEAT)
    assert not refused.positive and plane.store.list_fleet_hosts(ORG) == []

    verdict = fleet.accept_heartbeat(honest_report(), caller_arn=CALLER, fleet=FLEET,
                                     membership=RecordingMembership(INSTANCE), store=plane.store, at=T0,
                                     heartbeat_seconds=HEARTBEAT)

    assert verdict.positive
    (host,) = plane.store.list_fleet_hosts(ORG)
    assert (host.host_id, host.last_seen, host.heartbeat_seconds) == (HOST, T0, HEARTBEAT)
    assert host.live(T0 + timedelta(seconds=2 * HEARTBEAT)) and not host.live(T0 + timedelta(seconds=2 * HEARTBEAT + 1))
    assert [h.host_id for h in erasure_fleet.live_hosts(plane.store, ORG, T0)] == [HOST]


def test_two_hosts_watchers_erase_their_own_tables_and_the_request_completes_only_after_both(
        moto_clients: Any, tmp_path: Path) -> None:
    """The fleet host's watcher loop on moto: host B watches from before the request, host A starts after it
    (its start does its part before it would serve); the worker's sweep completes it only once both acked."""
    dynamodb, kms, data_key, jwt_key, checkpoint_key = moto_clients
    table = f"hd-control-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**create_table_kwargs(table))
    keys = KmsKeyProvider(kms, jwt_key_ids=[jwt_key], checkpoint_key_id=checkpoint_key, data_key_id=data_key)
    store = DynamoDbControlStore(table, client=dynamodb)
    plane = ControlPlane(store, keys, lambda: DynamoDbControlStore(table, client=dynamodb),
                         IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path / "checkpoints"), keys), Clock(),
                         tmp_path)
    host_a, host_b = SimulatedHost(plane, tmp_path, HOST_A), SimulatedHost(plane, tmp_path, HOST_B)
    svc = plane.services()
    watcher_b = ErasureWatcher(host_b.store, host_b.source.invalidate, interval_seconds=0.05,
                               host_erasures=host_b.erasures)
    watcher_b.start()
    watchers = [watcher_b]
    try:
        waiting = _waiting(plane)
        assert erasure_fleet.settle_all(svc) == []  # publishes the request to the hosts
        deadline = time.monotonic() + 10
        while not store.list_forget_host_acks(waiting.request_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [ack.host_id for ack in store.list_forget_host_acks(waiting.request_id)] == [HOST_B]
        assert erasure_fleet.settle_all(svc) == []  # host A has not acked
        assert host_a.rows("crm.contacts") == [1, 2, 3, 4]

        watcher_a = ErasureWatcher(host_a.store, host_a.source.invalidate, interval_seconds=0.05,
                                   host_erasures=host_a.erasures)
        watcher_a.start()  # its part is done before start returns
        watchers.append(watcher_a)
        assert {ack.host_id for ack in store.list_forget_host_acks(waiting.request_id)} == {HOST_A, HOST_B}
        (done,) = erasure_fleet.settle_all(svc)

        assert done.status is ForgetStatus.COMPLETED and done.subject_sealed is None
        assert done.table_results["crm.contacts"]["hosts"] == {HOST_A: 2, HOST_B: 2}  # type: ignore[index]
        assert host_a.rows("crm.contacts") == host_b.rows("crm.contacts") == [3, 4]
        assert len(store.list_forget_host_acks(waiting.request_id)) == 2
    finally:
        for watcher in watchers:
            watcher.stop()
        host_a.close()
        host_b.close()


def test_the_workers_sweep_runs_publishes_and_then_completes_a_request_waiting_for_hosts(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path) -> None:
    from functions.forget import worker
    from functions.forget.wiring import Erasure, install_erasure

    host = SimulatedHost(plane, tmp_path, HOST_A)
    hosts.append(host)
    _declare(plane.store)
    svc = plane.services()
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
    install_erasure(Erasure(svc, lambda request_id: None))
    try:
        first = worker.sweep()
        assert (first["ran"], first["settled"], first["open"]) == ([request.request_id], [], 1)
        assert erasure_fleet.read_host_work(plane.store) == [request.request_id]
        host.erasures.apply_outstanding()
        second = worker.sweep()
    finally:
        install_erasure(None)

    assert (second["ran"], second["settled"], second["open"]) == ([], [request.request_id], 0)
    assert plane.store.get_forget_request(request.request_id).status is ForgetStatus.COMPLETED
    assert erasure_fleet.read_host_work(plane.store) == []
