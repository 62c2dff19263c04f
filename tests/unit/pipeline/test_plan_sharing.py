"""Which sessions share a governed plan (issue 17 items 3 and 4): only those the snapshot cannot tell apart.

A real Governor over a real DuckDB catalog and SQLite control store; the policy snapshot is swapped
between statements the way the policy watcher swaps it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.table_catalog import TableCatalog
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governor import AuditWriter, GovernedPlan, Governor, StatementAudit
from hd_core.adapters.local_audit import LocalFolderAuditSink
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.metering import UsageMeter
from hd_core.models import Role
from hd_core.permissions import ROLE_SCOPES
from hd_core.policies import ColumnTag, MaskFunction, MaskRule, PhiGrant, PiiType, PolicySnapshot, RowFilter
from hd_core.policy_eval import Subject

SQL = "SELECT id, email, region FROM customers"
ANALYST = Subject(user_id="u1", org_id="acme", role=Role.ANALYST, scopes=tuple(ROLE_SCOPES[Role.ANALYST]),
                  key_id="k1", env="live")


class _Snapshots:
    """The policy source a PolicyState reads: whatever snapshot the test set last."""

    def __init__(self) -> None:
        self.current = PolicySnapshot(version=1)

    def policy_version(self) -> int:
        return self.current.version

    def policy_snapshot(self) -> PolicySnapshot:
        return self.current


@dataclasses.dataclass
class _Host:
    governor: Governor
    snapshots: _Snapshots

    def use(self, **policies: object) -> None:
        """Make a new snapshot (a new version) with `policies` current."""
        self.snapshots.current = PolicySnapshot(version=self.snapshots.current.version + 1, **policies)  # type: ignore[arg-type]
        self.governor.policies.load()

    def plan(self, subject: Subject, sql: str = SQL, **kwargs: object) -> GovernedPlan:
        return self.governor.plan(subject, subject.scopes, sql, "postgres", _audit(sql), **kwargs)  # type: ignore[arg-type]


def _audit(sql: str = SQL) -> StatementAudit:
    return StatementAudit(query_id="q_test", sql=sql, dialect="postgres", started=time.perf_counter())


def _agent(agent_id: str | None = None, framework: str | None = None, **changes: object) -> Subject:
    return dataclasses.replace(ANALYST, agent_id=agent_id, agent_framework=framework, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Host]:
    from engine_host.pipeline.policy_state import PolicyState

    folder: Path = tmp_path_factory.mktemp("plan-sharing")
    con = duckdb.connect()
    con.execute(f"ATTACH ':memory:' AS {DATA_CATALOG}")
    con.execute(f"CREATE TABLE {DATA_CATALOG}.main.customers (id INTEGER, email VARCHAR, region VARCHAR)")
    store = SqliteControlStore(folder / "control.db")
    snapshots = _Snapshots()
    policies = PolicyState(snapshots)
    policies.load()
    sink = LocalFolderAuditSink(folder, host_id="h")
    governor = Governor(policies=policies, tables=TableCatalog(con), store=store, audit=AuditWriter(sink),
                        meter=UsageMeter(store), default_org_id="acme")
    yield _Host(governor, snapshots)
    sink.close()
    con.close()


@pytest.fixture(autouse=True)
def _no_policies(host: _Host) -> None:
    host.use()


def test_agents_no_policy_names_share_the_plan_of_a_session_without_an_agent(host: _Host) -> None:
    host.use(masks=(MaskRule("m1", "acme", "main.customers", "email", MaskFunction.FULL),))
    first = host.plan(_agent())
    for agent in ("agent-1", "agent-2", "agent-3"):
        assert host.plan(_agent(agent, "langchain", department="sales", region="eu")) is first
    assert first.masked_columns == ("main.customers.email",)


def test_an_agent_a_mask_names_never_shares_a_plan_with_one_it_does_not(host: _Host) -> None:
    host.use(masks=(MaskRule("m1", "acme", "main.customers", "email", MaskFunction.FULL, agent_ids=("agent-x",)),))
    other = host.plan(_agent("agent-y"))  # computed first, so a shared plan would reach agent-x unmasked
    named = host.plan(_agent("agent-x"))
    assert other.masked_columns == () and named.masked_columns == ("main.customers.email",)
    assert named.engine_sql != other.engine_sql
    assert host.plan(_agent("agent-y")) is other and host.plan(_agent()) is other


def test_a_framework_a_mask_names_is_matched_as_the_mask_matches_it(host: _Host) -> None:
    host.use(masks=(MaskRule("m1", "acme", "main.customers", "email", MaskFunction.NULL,
                             agent_frameworks=("LangChain",)),))
    plain = host.plan(_agent("a1", "crewai"))
    masked = host.plan(_agent("a1", " langchain "))
    assert plain.masked_columns == () and masked.masked_columns == ("main.customers.email",)
    assert host.plan(_agent("a2", "LANGCHAIN")).masked_columns == ("main.customers.email",)


@pytest.mark.parametrize("placeholder, attribute", [
    ("agent_id", "agent_id"), ("agent_framework", "agent_framework"), ("department", "department"),
    ("region", "region"),
])
def test_a_row_filter_reading_an_attribute_gives_each_value_its_own_plan(
        host: _Host, placeholder: str, attribute: str) -> None:
    host.use(row_filters=(RowFilter("f1", "acme", "main.customers", f"region = {{{placeholder}}}"),))
    plans = {value: host.plan(dataclasses.replace(ANALYST, **{attribute: value})) for value in ("eu", "us")}
    assert "'eu'" in plans["eu"].engine_sql and "'us'" not in plans["eu"].engine_sql
    assert "'us'" in plans["us"].engine_sql and "'eu'" not in plans["us"].engine_sql
    assert "NULL" in host.plan(ANALYST).engine_sql  # no value: no rows


def test_a_phi_grant_limited_to_an_agent_counts_only_for_that_agent(host: _Host) -> None:
    host.use(phi_grants=(PhiGrant("g1", "acme", "u1", agent_id="agent-phi"),),
             column_tags=(ColumnTag("t1", "acme", "main.customers", "email", PiiType.PHI),))
    granted = host.plan(_agent("agent-phi"))
    assert granted.phi_columns == ("main.customers.email",) and granted.phi_grants == (("g1",), ())
    for other in (_agent("agent-z"), _agent()):  # computed after the granted plan: sharing it would leak PHI
        with pytest.raises(QueryError) as refused:
            host.plan(other)
        assert refused.value.code == "HD_ERR_PHI_ACCESS_REQUIRED"


def test_a_policy_change_that_names_an_agent_invalidates_the_plan_it_shared(host: _Host) -> None:
    shared = host.plan(_agent("agent-x"))
    assert host.plan(_agent()) is shared and shared.masked_columns == ()
    host.use(masks=(MaskRule("m1", "acme", "main.customers", "email", MaskFunction.FULL, agent_ids=("agent-x",)),))
    assert host.plan(_agent("agent-x")).masked_columns == ("main.customers.email",)
    assert host.plan(_agent()).masked_columns == ()


def test_a_shared_plan_is_the_plan_computed_for_the_session_itself(host: _Host) -> None:
    """For every session of the matrix, what it gets from the cache equals a fresh plan for its own attributes."""
    host.use(
        masks=(MaskRule("m1", "acme", "main.customers", "email", MaskFunction.FULL, agent_ids=("agent-x",)),
               MaskRule("m2", "acme", "main.customers", "id", MaskFunction.NULL, agent_frameworks=("crewai",))),
        row_filters=(RowFilter("f1", "acme", "main.customers", "region = {department}"),),
        phi_grants=(PhiGrant("g1", "acme", "u1", agent_id="agent-y"),),
    )
    governor = host.governor
    snapshot = governor.policies.snapshot
    sessions = [_agent(agent, framework, department=department, region=region)
                for agent in (None, "agent-x", "agent-y", "agent-z")
                for framework in (None, "crewai", "langchain")
                for department in (None, "d1") for region in (None, "r1")]
    for subject in sessions:
        got = host.plan(subject)
        role = Role(subject.role)
        own = governor._policy_plan(  # the stages themselves, with the session's real attributes
            snapshot, subject, role, subject.scopes, False, *_parsed_refs(governor, SQL), None)
        assert (got.engine_sql, got.masked_columns, got.filtered_tables, got.phi_grants) == (
            own.engine_sql, own.masked_columns, own.filtered_tables, own.phi_grants), subject


def _parsed_refs(governor: Governor, sql: str) -> tuple[object, object, object]:
    from engine_host.pipeline.governance.guard import check_statement, parse_statement
    from engine_host.pipeline.governance.tables import NameLookup, extract_tables

    parsed = parse_statement(sql, "postgres")
    info = check_statement(parsed)
    refs = extract_tables(parsed, lambda c, s, t: governor.tables.resolve(c, s, t, None), NameLookup(("main",)))
    return parsed, info, refs


# --- concurrent misses -------------------------------------------------------------------------


class _Gate:
    """A bound-plan check that holds its statement until released, counting how often it ran."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._fail = fail
        self._lock = threading.Lock()

    def __call__(self, plan: GovernedPlan) -> None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        if self._fail:
            raise QueryError("42P01", "HD_ERR_BOUND_PLAN", "refused by the bound-plan check")


def _wait_for(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_concurrent_misses_on_one_key_compute_the_plan_once(host: _Host) -> None:
    gate = _Gate()
    sql = "SELECT id FROM customers WHERE id = 1"
    with ThreadPoolExecutor(8) as pool:
        audits = [_audit(sql) for _ in range(8)]
        futures = [pool.submit(host.governor.plan, _agent(f"agent-{n}"), ANALYST.scopes, sql, "postgres", audit,
                               verify=gate) for n, audit in enumerate(audits)]
        assert gate.entered.wait(5)
        _wait_for(lambda: host.governor._plan_flights.in_flight() == 1)
        time.sleep(0.1)  # the others are now waiting on the flight, not computing
        gate.release.set()
        plans = [future.result(10) for future in futures]
    assert gate.calls == 1
    assert all(plan is plans[0] for plan in plans)
    reasons = sorted(v["reason"] for a in audits for v in a.verdicts if v["stage"] == "plan")
    assert reasons.count("rewrite shared with a concurrent statement") + reasons.count("rewrite cache hit") == 7


def test_a_failed_plan_is_not_shared_each_waiter_gets_its_own_error(host: _Host) -> None:
    gate = _Gate(fail=True)
    sql = "SELECT id FROM customers WHERE id = 2"
    with ThreadPoolExecutor(4) as pool:
        audits = [_audit(sql) for _ in range(4)]
        futures = [pool.submit(host.governor.plan, ANALYST, ANALYST.scopes, sql, "postgres", audit, verify=gate)
                   for audit in audits]
        assert gate.entered.wait(5)
        time.sleep(0.1)
        gate.release.set()
        errors = [future.exception(10) for future in futures]
    assert all(isinstance(error, QueryError) and error.code == "HD_ERR_BOUND_PLAN" for error in errors)
    assert len({id(error) for error in errors}) == 4  # not one exception object raised in four threads
    assert gate.calls == 4  # each waiter ran the stages itself
    for audit in audits:  # and each audit record says where its own statement was refused
        assert audit.verdicts[-1]["stage"] == "plan_check" and audit.verdicts[-1]["decision"] == "deny"


def test_a_cancelled_waiter_stops_waiting_while_the_plan_is_still_computed(host: _Host) -> None:
    gate = _Gate()
    sql = "SELECT id FROM customers WHERE id = 3"
    cancelled = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(host.governor.plan, ANALYST, ANALYST.scopes, sql, "postgres", _audit(sql), verify=gate)
        assert gate.entered.wait(5)
        waiter_audit = _audit(sql)
        waiter_audit.interrupted = cancelled.is_set
        waiter = pool.submit(host.governor.plan, ANALYST, ANALYST.scopes, sql, "postgres", waiter_audit,
                             verify=gate)
        time.sleep(0.1)
        cancelled.set()
        error = waiter.exception(5)  # released although the leader is still held
        assert isinstance(error, QueryError) and error.code == "HD_ERR_CANCELED"
        assert not leader.done()
        gate.release.set()
        assert leader.result(5).engine_sql
    assert gate.calls == 1
