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
from botocore.config import Config
from botocore.exceptions import NoRegionError
from botocore.stub import Stubber
from moto import mock_aws

from engine_host.data.table_sources import LocalFolderTables
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from engine_host.runtime.erasure import ErasureWatcher, FleetErasureIdentity, host_erasures
from hd_core import erasure, erasure_fleet, fleet
from hd_core.adapters.dynamodb_schema import TTL_ATTRIBUTE, create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.ec2_fleet import Ec2FleetMembership
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


def test_with_no_registered_host_the_request_completes_at_once_and_names_no_host(plane: ControlPlane) -> None:
    waiting = _waiting(plane)

    (done,) = erasure_fleet.settle_all(plane.services())

    assert done.request_id == waiting.request_id and done.status is ForgetStatus.COMPLETED
    assert done.table_results["crm.contacts"] == {"storage": "absent", "rows_removed": 0, "objects_rewritten": 0,
                                                  "hosts": {}}


# --- hosts that stopped heartbeating: waited for until they ack or EC2 says they are gone ------------------

SILENT_SINCE = T0 - timedelta(hours=1)  # four heartbeat intervals: not live


@pytest.fixture(scope="module")
def ec2(moto_clients: Any) -> Any:
    """EC2 on moto, in the module's mock (the SQLite backend asks it as well: the worker always asks EC2)."""
    return boto3.client("ec2", region_name=REGION)


class CountingMembership(Ec2FleetMembership):
    """The EC2 adapter, counting the instances it is asked about (a silent host is asked once per sweep)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.asked: list[str] = []

    def describe_instance(self, instance_id: str) -> Any:
        self.asked.append(instance_id)
        return super().describe_instance(instance_id)


def _launch(ec2: Any) -> str:
    return str(ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"])


def test_a_silent_host_whose_instance_runs_keeps_the_request_waiting_past_the_sla_until_it_acks(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path, ec2: Any) -> None:
    live = SimulatedHost(plane, tmp_path, HOST_A)
    silent = SimulatedHost(plane, tmp_path, _launch(ec2), seen=SILENT_SINCE)  # partitioned, still running
    hosts.extend([live, silent])
    svc, instances = plane.services(), CountingMembership(ec2)
    first = _waiting(plane)
    second = erasure.run(svc, erasure.submit(svc, _ctx(), ORG, "cust-7", "ticket 6").request_id)
    erasure_fleet.publish_host_work(plane.store)
    assert len(live.erasures.apply_outstanding()) == 2

    assert erasure_fleet.settle_all(svc, instances) == []
    assert instances.asked == [silent.host_id]  # once for both requests, and never about the live host
    waiting = plane.store.get_forget_request(first.request_id)
    assert waiting.status is ForgetStatus.WAITING_FOR_HOSTS and waiting.subject_sealed is not None
    assert f"{silent.host_id} (last heartbeat {SILENT_SINCE.isoformat()}, instance running)" in waiting.error
    assert HOST_A not in waiting.error and SUBJECT not in waiting.error
    assert set(erasure_fleet.read_host_work(plane.store)) == {first.request_id, second.request_id}

    plane.clock.now = first.sla_deadline + timedelta(minutes=1)
    erasure_fleet.record_heartbeat(plane.store, org_id=ORG, host_id=HOST_A, at=plane.clock(),
                                   heartbeat_seconds=HEARTBEAT)
    assert erasure_fleet.settle_all(svc, instances) == []  # past the SLA: still waiting, never failed
    assert plane.store.get_forget_request(first.request_id).status is ForgetStatus.WAITING_FOR_HOSTS
    assert {r.request_id for r in erasure.requests_past_sla(plane.store, plane.clock())} == {
        first.request_id, second.request_id}  # what the SLA alarm counts
    assert silent.rows("crm.contacts") == [1, 2, 3, 4]

    acks = silent.erasures.apply_outstanding()  # it reaches the control plane again: its erasure poll
    assert {(ack.request_id, ack.status) for ack in acks} == {(first.request_id, AckStatus.DONE),
                                                              (second.request_id, AckStatus.DONE)}
    done = {r.request_id: r for r in erasure_fleet.settle_all(svc, instances)}

    assert done[first.request_id].status is ForgetStatus.COMPLETED and done[first.request_id].error == ""
    assert done[first.request_id].subject_sealed is None
    assert done[first.request_id].table_results["crm.contacts"]["hosts"] == {  # type: ignore[index]
        HOST_A: 2, silent.host_id: 2}
    assert silent.rows("crm.contacts") == [4]  # both subjects' rows
    assert erasure_fleet.read_host_work(plane.store) == []


def test_a_silent_host_whose_instance_is_gone_is_dropped_from_the_registry_and_the_request_completes(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path, ec2: Any) -> None:
    live = SimulatedHost(plane, tmp_path, HOST_A)
    terminated = SimulatedHost(plane, tmp_path, _launch(ec2), seen=SILENT_SINCE)
    unknown = SimulatedHost(plane, tmp_path, HOST_C, seen=SILENT_SINCE)  # EC2 no longer knows it
    stopped = SimulatedHost(plane, tmp_path, _launch(ec2), seen=SILENT_SINCE)  # its volumes outlive the stop
    hosts.extend([live, terminated, unknown, stopped])
    ec2.terminate_instances(InstanceIds=[terminated.host_id])
    ec2.stop_instances(InstanceIds=[stopped.host_id])
    svc, instances = plane.services(), CountingMembership(ec2)
    waiting = _waiting(plane)
    live.erasures.apply_outstanding()

    assert erasure_fleet.settle_all(svc, instances) == []
    assert "instance stopped" in plane.store.get_forget_request(waiting.request_id).error
    assert [h.host_id for h in plane.store.list_fleet_hosts(ORG)] == sorted([HOST_A, stopped.host_id])
    ec2.terminate_instances(InstanceIds=[stopped.host_id])
    (done,) = erasure_fleet.settle_all(svc, instances)

    assert done.status is ForgetStatus.COMPLETED and done.error == "" and done.subject_sealed is None
    assert done.table_results["crm.contacts"]["hosts"] == {HOST_A: 2}  # type: ignore[index]
    assert [h.host_id for h in plane.store.list_fleet_hosts(ORG)] == [HOST_A]
    assert sorted(instances.asked) == sorted([terminated.host_id, unknown.host_id, stopped.host_id,
                                              stopped.host_id])  # a gone host is never asked about again
    for host in (terminated, unknown, stopped):
        assert host.rows("crm.contacts") == [1, 2, 3, 4]  # never asked to erase: its instance is gone


def test_an_ec2_that_cannot_be_asked_keeps_the_request_waiting_for_the_silent_host(
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path, ec2: Any) -> None:
    gone = SimulatedHost(plane, tmp_path, _launch(ec2), seen=SILENT_SINCE)
    hosts.append(gone)
    ec2.terminate_instances(InstanceIds=[gone.host_id])
    svc = plane.services()
    waiting = _waiting(plane)
    denied = boto3.client("ec2", region_name=REGION)
    stubber = Stubber(denied)
    stubber.add_client_error("describe_instances", service_error_code="UnauthorizedOperation", http_status_code=403)
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1)
    unreachable = boto3.client("ec2", region_name=REGION, endpoint_url="http://127.0.0.1:9", config=config)

    for instances in (Ec2FleetMembership(denied), Ec2FleetMembership(unreachable), None):
        with stubber:
            assert erasure_fleet.settle_all(svc, instances) == []
        still = plane.store.get_forget_request(waiting.request_id)
        assert still.status is ForgetStatus.WAITING_FOR_HOSTS and still.subject_sealed is not None
        why = "no EC2 to ask" if instances is None else "EC2 could not be asked"  # None: `hd dev`, no fleet
        assert f"{gone.host_id} (last heartbeat {SILENT_SINCE.isoformat()}, {why})" in still.error
    assert [h.host_id for h in plane.store.list_fleet_hosts(ORG)] == [gone.host_id]
    (done,) = erasure_fleet.settle_all(svc, Ec2FleetMembership(ec2))  # EC2 answers again: terminated
    assert done.status is ForgetStatus.COMPLETED and plane.store.list_fleet_hosts(ORG) == []


def test_a_registry_entry_in_dynamodb_never_expires_on_its_own(moto_clients: Any) -> None:
    dynamodb = moto_clients[0]
    table = f"hd-control-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(**create_table_kwargs(table))
    erasure_fleet.record_heartbeat(DynamoDbControlStore(table, client=dynamodb), org_id=ORG, host_id=HOST_A,
                                   at=T0, heartbeat_seconds=HEARTBEAT)

    item = dynamodb.get_item(TableName=table, Key={"PK": {"S": f"HOST#{HOST_A}"}, "SK": {"S": "HOST"}})["Item"]

    assert TTL_ATTRIBUTE not in item  # a stopped host may come back after days: only the worker removes it


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
        plane: ControlPlane, hosts: list[SimulatedHost], tmp_path: Path, ec2: Any) -> None:
    from functions.forget import worker
    from functions.forget.wiring import Erasure, install_erasure

    host = SimulatedHost(plane, tmp_path, HOST_A)
    gone = SimulatedHost(plane, tmp_path, HOST_C, seen=SILENT_SINCE)  # EC2 does not know it: terminated long ago
    hosts.extend([host, gone])
    _declare(plane.store)
    svc = plane.services()
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
    install_erasure(Erasure(svc, lambda request_id: None, fleet_instances=Ec2FleetMembership(ec2)))
    try:
        first = worker.sweep()
        assert (first["ran"], first["settled"], first["open"]) == ([request.request_id], [], 1)
        assert erasure_fleet.read_host_work(plane.store) == [request.request_id]
        host.erasures.apply_outstanding()
        second = worker.sweep()
    finally:
        install_erasure(None)

    assert (second["ran"], second["settled"], second["open"]) == ([], [request.request_id], 0)
    assert [h.host_id for h in plane.store.list_fleet_hosts(ORG)] == [HOST_A]
    assert plane.store.get_forget_request(request.request_id).status is ForgetStatus.COMPLETED
    assert erasure_fleet.read_host_work(plane.store) == []


def test_the_workers_ec2_lookup_builds_its_client_only_when_first_asked(ec2: Any) -> None:
    from functions.forget.wiring import Ec2OnFirstUse

    gone = _launch(ec2)
    ec2.terminate_instances(InstanceIds=[gone])
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_DEFAULT_REGION")
        patch.delenv("AWS_REGION", raising=False)
        lookup = Ec2OnFirstUse()  # the API function builds this too, and may have no region: no client yet
        with pytest.raises(NoRegionError):
            lookup.describe_instance(gone)
    found = lookup.describe_instance(gone)
    assert found is not None and (found.instance_id, found.state) == (gone, "terminated")
