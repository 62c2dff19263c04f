"""The governance stages of the statement pipeline, in DESIGN.md's order, for one engine host.

`plan` (at Parse / simple-query time) runs the stages that depend only on the statement, the
policy snapshot and the session's attributes: parse and guard, table extract, tenancy and policy
check (role, scopes, PHI), row filters and masks rewritten into the plan, transpile to DuckDB.
Its result is cached per (statement text, policy version, catalog version, the session attributes the
snapshot's rules can read: governance/plan_subject.py), and concurrent misses on one key compute it once.

`admit` (at every execution) re-checks what can change between executions of one prepared
statement: organisation/user/key status, the rate limit, ABAC deny rules (time windows, source
address), the quota, then takes a concurrency slot and arms the statement timeout.

`finish` (when the last row has gone, or the statement failed) meters the statement and writes
its audit record. A record that cannot be written fails the statement: rows are held back until
the record is stored (see `GovernedRows`).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from sqlglot import exp

from engine_host.data.stored_masks import StoredMask, StoredMasks
from engine_host.engine.masking import ENVIRONMENTS, macro_name
from engine_host.engine.table_catalog import TableCatalog, TableInfo
from engine_host.pgcompat.catalog import parseable_catalog_text
from engine_host.pgcompat.types.table import PgType
from engine_host.pipeline.errors import QueryError, read_only_table, unknown_relation
from engine_host.pipeline.gates import ConcurrencyGate, RateLimiter, Watchdog
from engine_host.pipeline.governance.columns import referenced_columns
from engine_host.pipeline.governance.guard import (
    ParsedStatement,
    StatementInfo,
    check_statement,
    parse_statement,
    unknown_table,
)
from engine_host.pipeline.governance.pg_semantics import PgSession
from engine_host.pipeline.governance.phi_outputs import patient_key_outputs
from engine_host.pipeline.governance.plan_subject import PolicyReadsCache, plan_subject
from engine_host.pipeline.governance.result_types import declared_types
from engine_host.pipeline.governance.rewrite import MaskSpec, StoredMaskColumns, TablePolicy, apply_policies
from engine_host.pipeline.governance.tables import NameLookup, TableRef, extract_tables
from engine_host.pipeline.governance.transpile import transpile
from engine_host.pipeline.policy_state import PolicyState
from engine_host.pipeline.recently_used import RecentlyUsed
from engine_host.pipeline.single_flight import SingleFlight
from hd_core import policy_eval
from hd_core.audit import QueryAuditRecord, format_audit_ts
from hd_core.errors import HdError, RowFilterInvalid
from hd_core.metering import UsageMeter, check_quota, credits_for, estimate_credits
from hd_core.models import OrgStatus, Principal, Role, UserStatus, utc_now
from hd_core.permissions import ROLE_SCOPES, effective_scopes, scopes_for_action
from hd_core.phi_disclosures import DisclosedPatients, disclosure_record
from hd_core.policies import Action, MaskFunction, PiiType, PolicyKind, PolicySnapshot
from hd_core.ports import AuditSink, ControlStore
from hd_core.redaction import redact_sql

if TYPE_CHECKING:
    from engine_host.ops.tracing import StatementTrace, StatementTracer
from hd_core.row_filters import parse_row_filter, resolve_row_filter
from hd_core.table_owners import record_owner
from hd_core.text_redaction import redact_error_detail, redact_error_message

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# sqlglot warns with the statement's full text when it falls back to parsing a Command; statement
# text can hold personal data, which must reach only the redacted audit record, never the logs.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

SUPPORTED_DIALECTS = ("postgres", "duckdb", "snowflake", "bigquery", "redshift")
# Characters of SQL (client text + governed text) the plan cache may hold in all.
PLAN_CACHE_MAX_CHARS = 64 * 1024 * 1024
# Statements longer than this are redacted for their audit record each time, not cached.
_REDACTION_CACHED_CHARS = 16 * 1024
_STATUS_TTL_SECONDS = 1.0
# How long a statement waits for a concurrent statement computing the same plan before computing it itself.
PLAN_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class HostLimits:
    """Per-host limits; every one has a default that suits a laptop and a fleet member alike."""

    max_concurrent_statements: int = 100
    max_queued_statements: int = 200
    queue_wait_seconds: float = 5.0
    statements_per_second: float = 500.0
    statement_timeout_seconds: float = 300.0
    plan_cache_entries: int = 4096


@dataclass(frozen=True)
class GovernedPlan:
    """A statement that passed the plan-time stages: what to run and what the audit record needs."""

    engine_sql: str
    kind: str
    tables: tuple[tuple[str, Action], ...]
    masked_columns: tuple[str, ...]
    filtered_tables: tuple[str, ...]
    scan_estimate: int
    created_table: str | None = None
    dropped_table: str | None = None
    schema_changed: bool = False
    # The statement DuckDB binds for the bound-plan check (engine_sql without a leading EXPLAIN).
    bound_sql: str = ""
    # Each table the plan reads, and whether it is Parquet-backed (for the bound-plan check).
    table_sources: tuple[tuple[str, bool], ...] = ()
    # Per result column, the PostgreSQL type to declare where the result's own (Arrow) type says text but
    # PostgreSQL declares varchar, name, name[] or regtype (governance/result_types.py); () when none differs.
    declared_types: tuple[PgType | None, ...] = ()
    # PHI accounting (hd_core/phi_disclosures.py): the PHI-tagged columns read unmasked, the (PHI, JIT) grants
    # that allowed it, the tables among them that declare a patient key, and where each one's key is in the
    # result (None: not traceable).
    phi_columns: tuple[str, ...] = ()
    phi_grants: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    patient_key_tables: tuple[str, ...] = ()
    patient_key_outputs: tuple[tuple[str, int], ...] | None = None

    @property
    def statement_type(self) -> str:
        """DuckDB's statement type for the governed SQL (known from the guard; no second parse)."""
        return _DUCKDB_STATEMENT_TYPES.get(self.kind, "SELECT")


# Statement kinds whose bound plan is checked: those that read or write rows (DDL without a query reads none).
# What a statement may do only to a table whose data the engine holds (not to a Parquet-backed one).
_CHANGES = frozenset({Action.INSERT, Action.UPDATE, Action.DELETE, Action.ALTER, Action.DROP})
_BOUND_KINDS = frozenset({"select", "insert", "update", "delete", "create_table_as", "catalog"})

_DUCKDB_STATEMENT_TYPES = {
    "select": "SELECT", "catalog": "SELECT", "explain": "EXPLAIN", "insert": "INSERT", "update": "UPDATE",
    "delete": "DELETE", "create_table": "CREATE", "create_table_as": "CREATE", "create_schema": "CREATE",
    "drop_table": "DROP", "alter_table": "ALTER",
}


@dataclass
class StatementAudit:
    """What is known about one statement on its way through; becomes its audit record."""

    query_id: str
    sql: str
    dialect: str
    started: float
    verdicts: list[dict[str, str]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    plan: GovernedPlan | None = None
    credits: float = 0.0
    rows: int = 0
    bytes: int = 0
    rows_written: int = 0
    error: dict[str, str] | None = None
    engine_error_detail: str | None = None
    statement_kind: str = ""
    # When the statement must have finished (time.perf_counter()), and whether its client (or the
    # host's shutdown) asked to cancel it: checked between the stages that run in Python.
    deadline: float | None = None
    interrupted: Callable[[], bool] | None = field(default=None, repr=False)
    # Stage timings for the statement's spans; None unless HD_OTEL_ENDPOINT is set (engine_host/ops/tracing.py).
    trace: StatementTrace | None = field(default=None, repr=False)
    # The patients whose keys the result carried (HMACs only), when its plan can trace them.
    patients: DisclosedPatients | None = field(default=None, repr=False)

    def checkpoint(self) -> None:
        """Raise 57014 if the statement was cancelled or its statement_timeout has passed."""
        if self.interrupted is not None and self.interrupted():
            raise QueryError("57014", "HD_ERR_CANCELED", "canceling statement due to user request")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise QueryError("57014", "HD_ERR_STATEMENT_TIMEOUT", "canceling statement due to statement timeout",
                             hint="Narrow the query, or raise statement_timeout for this session.")

    def remaining_seconds(self, timeout_seconds: float) -> float:
        """What is left of `timeout_seconds` for the engine after the stages before it (at least 1 ms)."""
        if self.deadline is None or timeout_seconds <= 0:
            return timeout_seconds
        return max(0.001, self.deadline - time.perf_counter())

    def allow(self, stage: str, reason: str = "") -> None:
        self.verdicts.append({"stage": stage, "decision": "allow", "reason": reason})

    def deny(self, stage: str, error: QueryError) -> None:
        if isinstance(error, HiddenRefusal):
            reason, code = f"{error.audit_code}: {error.audit_reason}", error.audit_code
        else:
            reason, code = f"{error.code}: {error.message}", error.code
        self.verdicts.append({"stage": stage, "decision": "deny", "reason": reason})
        self.error = {"sqlstate": error.sqlstate, "code": code, "message": error.message}


class _QueryIds:
    """Query ids (`q_` + 80 random bits from the OS), the random bytes read 256 ids at a time.

    One os.urandom call per statement is a system call that gives up the GIL, and with it the
    statement's thread, to whichever thread is waiting; the bytes are the same either way.
    """

    _BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._next = 0
        self._pid = os.getpid()

    def next(self) -> str:
        with self._lock:
            if self._next >= len(self._pool) or self._pid != os.getpid():  # a forked child draws its own
                self._pool, self._next, self._pid = secrets.token_bytes(10 * self._BATCH), 0, os.getpid()
            chunk = self._pool[self._next:self._next + 10]
            self._next += 10
        return "q_" + chunk.hex()


_QUERY_IDS = _QueryIds()


class HiddenRefusal(QueryError):
    """A refusal the client sees as `shown` while the audit record keeps the real reason."""

    def __init__(self, shown: QueryError, audit_code: str, audit_reason: str):
        super().__init__(shown.sqlstate, shown.code, shown.message, hint=shown.hint)
        self.audit_code = audit_code
        self.audit_reason = audit_reason


def _cross_tenant(name: str, node: exp.Table) -> HiddenRefusal:
    """Another organisation's table, answered exactly like a missing one; the audit record says why."""
    return HiddenRefusal(unknown_table(node), "HD_ERR_CROSS_TENANT",
                         f"cross_tenant: {name} belongs to another organisation")


class Governor:
    """Holds the host's governance state: policy snapshot, table catalog, gates, meter and audit sink."""

    def __init__(self, *, policies: PolicyState, tables: TableCatalog, store: ControlStore, audit: AuditWriter,
                 meter: UsageMeter, default_org_id: str, limits: HostLimits | None = None,
                 on_schema_change: Callable[[], None] | None = None, now: Callable[[], datetime] = utc_now,
                 stored_masks: StoredMasks | None = None, tracer: StatementTracer | None = None):
        """`stored_masks`: masks the native copies precompute (engine_host/data/stored_masks.py);
        `tracer`: spans of every statement (engine_host/ops/tracing.py), None when tracing is off."""
        self.policies = policies
        self.tracer = tracer
        self.stored_masks = stored_masks
        self.tables = tables
        self.store = store
        self.audit = audit
        self.meter = meter
        self.default_org_id = default_org_id
        self.limits = limits or HostLimits()
        self.gate = ConcurrencyGate(self.limits.max_concurrent_statements, self.limits.max_queued_statements,
                                    self.limits.queue_wait_seconds)
        self.rates = RateLimiter()
        self.watchdog = Watchdog()
        self._on_schema_change = on_schema_change
        self._now = now
        # Weighed by the SQL text each plan holds: 4,096 statements of 1 MiB would otherwise pin 8 GiB.
        self._plans: RecentlyUsed[tuple[object, ...], GovernedPlan] = RecentlyUsed(
            self.limits.plan_cache_entries, max_weight=PLAN_CACHE_MAX_CHARS,
            weight=lambda key, plan: len(str(key[0])) + len(plan.engine_sql))
        # Concurrent misses on one key compute it once; the others wait at most this long, then compute.
        self._plan_flights: SingleFlight[tuple[object, ...], GovernedPlan] = SingleFlight(PLAN_WAIT_SECONDS)
        self._policy_reads = PolicyReadsCache()
        self._filters: dict[tuple[int, str], object] = {}
        self._status: dict[str, tuple[float, tuple[str, ...] | QueryError]] = {}

    # --- who is asking ------------------------------------------------------------------------

    def subject(self, principal: Principal, settings: Mapping[str, str], source_ip: str | None) -> policy_eval.Subject:
        return policy_eval.Subject(
            user_id=principal.user_id, org_id=principal.org_id, role=principal.role, scopes=principal.scopes,
            key_id=principal.key_id, env=str(principal.env), department=principal.department,
            region=principal.region, agent_id=settings.get("hd.agent_id") or None,
            agent_framework=settings.get("hd.agent_framework") or None, source_ip=source_ip,
        )

    def current_scopes(self, principal: Principal) -> tuple[str, ...]:
        """The credential's scopes narrowed by the user's current role; raises if it may no longer be used.

        Re-read at most once a second per key, so a suspended user, a suspended organisation or a
        revoked key stops working within about a second on every open session.
        """
        now = time.monotonic()
        cached = self._status.get(principal.key_id)
        if cached is None or now - cached[0] > _STATUS_TTL_SECONDS:
            cached = (now, self._read_status(principal))
            self._status[principal.key_id] = cached
        if isinstance(cached[1], QueryError):
            raise cached[1]
        return cached[1]

    def _read_status(self, principal: Principal) -> tuple[str, ...] | QueryError:
        org = self.store.get_org(principal.org_id)
        if org is None or org.status != OrgStatus.ACTIVE:
            return QueryError("42501", "HD_ERR_ORG_INACTIVE", "this organisation is suspended",
                              hint="Ask the organisation's owner or Hardened Duck support to reactivate it.")
        user = self.store.get_user(principal.user_id)
        key = self.store.get_api_key(principal.key_id) if principal.key_id else None
        now = self._now()
        if user is None or user.status != UserStatus.ACTIVE or (
                key is not None and ((key.revoked_at is not None and key.revoked_at <= now)
                                     or (key.expires_at is not None and key.expires_at <= now))):
            return QueryError("28000", "HD_ERR_CREDENTIAL_REVOKED",
                              "this credential is no longer valid (revoked, expired, or the user was removed)",
                              hint="Reconnect with a current API key.")
        return effective_scopes(principal.scopes, user.role)

    # --- plan-time stages ---------------------------------------------------------------------

    def plan(self, subject: policy_eval.Subject, scopes: tuple[str, ...], sql: str, dialect: str,
             audit: StatementAudit, *, catalog_sql: str | None = None,
             overlay: Mapping[str, TableInfo] | None = None,
             verify: Callable[[GovernedPlan], None] | None = None,
             pg_session: PgSession | None = None) -> GovernedPlan:
        """Run parse/guard, table extract, policy check, rewrite, transpile and `verify` (cached).

        `overlay` is the session's own table list while its transaction holds uncommitted DDL.
        `pg_session` holds the values PostgreSQL's session functions return (current_user, ...).
        `verify` is the bound-plan check; a plan is cached only once it passed.
        """
        snapshot = self.policies.snapshot
        now = self._now()
        # The plan is computed from, and keyed by, only what the snapshot's plan-time rules can read of the
        # session (governance/plan_subject.py): agents no policy names share the plan of a session with none.
        subject = plan_subject(subject, self._policy_reads.reads(snapshot))
        role = policy_eval.effective_role(snapshot, subject, now)
        phi = policy_eval.phi_access(snapshot, subject, now)
        key = (sql, dialect, catalog_sql, snapshot.version, self.tables.version, subject.org_id,
               subject.user_id, role, subject.agent_id, subject.agent_framework, subject.department,
               subject.region, subject.env, scopes, phi,
               None if overlay is None else tuple(sorted((k, v.columns) for k, v in overlay.items())), pg_session,
               # More precomputed mask columns readable: plans made before may read them now.
               self.stored_masks.version if self.stored_masks is not None else 0)
        cached = self._plans.get(key)
        if cached is not None:
            audit.allow("plan", "rewrite cache hit")
            return cached

        def compute() -> GovernedPlan:
            # Another statement may have stored it between our lookup and our turn.
            stored = self._plans.get(key)
            if stored is not None:
                audit.allow("plan", "rewrite cache hit")
                return stored
            return self._compute_plan(key, snapshot, subject, role, scopes, phi, sql, dialect, audit,
                                      catalog_sql, overlay, verify, pg_session)

        waited = time.perf_counter()
        plan, shared = self._plan_flights.run(key, compute, audit.checkpoint)
        if shared:
            audit.timings_ms["plan_wait"] = round((time.perf_counter() - waited) * 1000, 3)
            audit.allow("plan", "rewrite shared with a concurrent statement")
        return plan

    def _compute_plan(self, key: tuple[object, ...], snapshot: PolicySnapshot, subject: policy_eval.Subject,
                      role: Role, scopes: tuple[str, ...], phi: bool, sql: str, dialect: str,
                      audit: StatementAudit, catalog_sql: str | None, overlay: Mapping[str, TableInfo] | None,
                      verify: Callable[[GovernedPlan], None] | None, pg_session: PgSession | None) -> GovernedPlan:
        """The plan-time stages for one statement, and the plan cached under `key` once `verify` passed."""
        started = time.perf_counter()
        parsed = self._stage(audit, "guard", lambda: _parse(sql, dialect, catalog=catalog_sql is not None))
        info = self._stage(audit, "guard", lambda: check_statement(parsed, catalog=catalog_sql is not None))
        audit.statement_kind = info.kind
        if catalog_sql is not None:
            # Its session functions are `name` typed as PostgreSQL declares them (SELECT current_user).
            plan = GovernedPlan(engine_sql=catalog_sql, kind="catalog", tables=(), masked_columns=(),
                                filtered_tables=(), scan_estimate=0, bound_sql=catalog_sql,
                                declared_types=declared_types(parsed.tree, {}))
        else:
            def resolve(catalog: str | None, schema: str | None, table: str) -> str | None:
                return self.tables.resolve(catalog, schema, table, overlay)

            # Unqualified names are looked up along the session's search_path (its existing schemas).
            lookup = NameLookup(pg_session.schemas if pg_session is not None else ("main",),
                                hidden=lambda name: self._belongs_elsewhere(snapshot, subject.org_id, name),
                                refuse_hidden=_cross_tenant)
            refs = self._stage(audit, "tables", lambda: extract_tables(parsed, resolve, lookup))
            plan = self._stage(audit, "policy", lambda: self._policy_plan(
                snapshot, subject, role, scopes, phi, parsed, info, refs, overlay, pg_session))
        audit.timings_ms["plan"] = round((time.perf_counter() - started) * 1000, 3)
        if verify is not None:
            checked = time.perf_counter()
            self._stage(audit, "plan_check", lambda: verify(plan))
            audit.timings_ms["plan_check"] = round((time.perf_counter() - checked) * 1000, 3)
        self._plans.put(key, plan)
        return plan

    @staticmethod
    def _stage(audit: StatementAudit, name: str, run: Callable[[], _T]) -> _T:
        trace = audit.trace
        began = time.time_ns() if trace is not None else 0
        try:
            # Each stage is linear in the statement's size (and the size is capped), so a check
            # before each one bounds how long a timed-out or cancelled statement keeps its thread.
            audit.checkpoint()
            result = run()
        except QueryError as exc:
            audit.deny(name, exc)
            if trace is not None:
                trace.stage(name, began, exc)
            raise
        audit.allow(name)
        if trace is not None:
            trace.stage(name, began)
        return result

    def _policy_plan(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, role: Role,
                     scopes: tuple[str, ...], phi: bool, parsed: ParsedStatement, info: StatementInfo,
                     refs: list[TableRef], overlay: Mapping[str, TableInfo] | None,
                     pg_session: PgSession | None = None) -> GovernedPlan:
        kind = info.kind
        # Tenancy first: another organisation's table must answer exactly like a missing one, before
        # any other check could answer differently for it.
        tenant_columns = {ref.name: self._check_tenancy(snapshot, subject.org_id, ref) for ref in refs}
        self._check_role_and_scopes(role, scopes, kind, refs)
        self._check_writable(refs, overlay)
        policies: dict[str, TablePolicy] = {}
        filtered: list[str] = []
        for name, tenant_column in tenant_columns.items():
            policy = self._table_policy(snapshot, subject, role, name, tenant_column, overlay)
            policies[name] = policy
            if policy.row_filter is not None:
                filtered.append(name)
        columns = {name: [c for c, _ in table.columns] for name in policies
                   if (table := self.tables.get(name, overlay)) is not None}
        read = referenced_columns(parsed, refs, columns)
        masked = sorted(f"{t}.{c}" for t, cols in read.items() for c in cols if c in policies[t].masks)
        if not phi:
            self._check_phi(snapshot, subject.org_id, read, policies)
        phi_read = self._phi_read(snapshot, subject.org_id, read, policies)
        patient_keys = {t: key for t in phi_read
                        if (key := policy_eval.patient_key_column(snapshot, subject.org_id, t)) is not None}
        outputs = patient_key_outputs(
            parsed, refs, tuple(sorted(patient_keys)), patient_keys, columns,
            {t: tuple(policies[t].masks) for t in patient_keys}) if patient_keys else None
        tree = apply_policies(parsed, refs, policies)
        column_types = {name: table.columns for name in policies if (table := self.tables.get(name, overlay))}
        transpiled = transpile(tree, parsed, session=pg_session, column_types=column_types)
        bound_sql = transpiled.sql
        engine_sql = f"EXPLAIN {bound_sql}" if parsed.explain else bound_sql
        created = next((r.name for r in refs if r.action is Action.CREATE), None)
        if created is None and kind in ("create_table", "create_table_as"):
            created = _created_name(parsed)
        if created is not None:
            self._claim(subject.org_id, created)
        dropped = next((r.name for r in refs if r.action is Action.DROP), None)
        estimate = sum(table.estimated_rows for r in refs if (table := self.tables.get(r.name, overlay)) is not None)
        return GovernedPlan(
            engine_sql=engine_sql, kind=kind, tables=tuple((r.name, r.action) for r in refs),
            masked_columns=tuple(masked), filtered_tables=tuple(filtered), scan_estimate=estimate,
            created_table=created, dropped_table=dropped,
            schema_changed=kind in ("create_table", "create_table_as", "create_schema", "drop_table", "alter_table"),
            bound_sql=bound_sql if (info.explained or kind) in _BOUND_KINDS else "",
            table_sources=self._table_sources(refs, overlay),
            declared_types=transpiled.declared_types,
            phi_columns=tuple(sorted(f"{t}.{c}" for t, cols in phi_read.items() for c in cols)),
            phi_grants=policy_eval.active_grant_ids(snapshot, subject, self._now()) if phi_read else ((), ()),
            patient_key_tables=tuple(sorted(patient_keys)), patient_key_outputs=outputs,
        )

    def _table_sources(self, refs: list[TableRef], overlay: Mapping[str, TableInfo] | None) -> tuple[
            tuple[str, bool], ...]:
        """(table, is Parquet-backed) for each table a plan reads."""
        sources = set()
        for ref in refs:
            info = self.tables.get(ref.name, overlay)
            sources.add((ref.name, info is not None and not info.writable))
        return tuple(sorted(sources))

    def _check_writable(self, refs: list[TableRef], overlay: Mapping[str, TableInfo] | None) -> None:
        """Refuse a change to a read-only (Parquet-backed) table in one line that says how to get a writable copy.

        42809 (wrong_object_type) is what PostgreSQL answers for ALTER, DROP or TRUNCATE of a relation
        that is not a table it can change; 25006 would tell clients the *transaction* is read-only, and
        some retry such errors on another server.
        """
        for ref in refs:
            if ref.action not in _CHANGES:
                continue
            info = self.tables.get(ref.name, overlay)
            if info is not None and not info.writable:
                raise read_only_table(ref.name, ref.action)

    @staticmethod
    def _check_role_and_scopes(role: Role, scopes: tuple[str, ...], kind: str, refs: list[TableRef]) -> None:
        actions = {r.action for r in refs} or {Action.SELECT}
        if kind in ("create_table", "create_table_as", "create_schema"):
            actions.add(Action.CREATE)
        for action in sorted(actions):
            needed = scopes_for_action(action)
            if needed not in ROLE_SCOPES[role]:
                raise QueryError("42501", "HD_ERR_ROLE_NOT_PERMITTED",
                                 f"the {role.value} role may not {action.value} ({needed} is not part of the role)",
                                 hint="Ask an admin for a role that includes it, or a just-in-time grant.")
            if needed not in scopes:
                raise QueryError("42501", "HD_ERR_SCOPE_MISSING",
                                 f"this API key lacks the {needed} scope needed to {action.value}",
                                 hint=f"Use a key issued with {needed}.")

    def _check_tenancy(self, snapshot: PolicySnapshot, org_id: str, ref: TableRef) -> str | None:
        """The tenant column to filter on for a shared table; another org's table is refused as missing.

        The client gets exactly the answer a missing table gives (42P01, same message shape); only
        the audit record says why.
        """
        binding = policy_eval.binding_for(snapshot, ref.name)
        if binding is not None and binding.tenant_column:
            return binding.tenant_column
        if self._belongs_elsewhere(snapshot, org_id, ref.name):
            raise _cross_tenant(ref.name, ref.node)
        return None

    def _belongs_elsewhere(self, snapshot: PolicySnapshot, org_id: str, table: str) -> bool:
        """Whether `table` is another organisation's (a shared table with a tenant column is everyone's)."""
        binding = policy_eval.binding_for(snapshot, table)
        if binding is not None and binding.tenant_column:
            return False
        owner = binding.org_id if binding is not None and binding.org_id else self.default_org_id
        return owner != org_id

    def _claim(self, org_id: str, table: str) -> None:
        """Record `org_id` as the owner of a table it is about to create, before the CREATE runs.

        Claimed first so that two organisations creating one name (on two hosts) cannot both end up
        owning it; a name another organisation owns is refused exactly like a missing table.
        """
        binding = record_owner(self.store, table, org_id)
        if binding.tenant_column or binding.org_id != org_id:
            raise HiddenRefusal(unknown_relation(table), "HD_ERR_CROSS_TENANT",
                                f"cross_tenant: {table} belongs to another organisation")

    def _table_policy(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, role: Role, table: str,
                      tenant_column: str | None, overlay: Mapping[str, TableInfo] | None) -> TablePolicy:
        info = self.tables.get(table, overlay)
        columns = info.columns if info is not None else ()
        env = subject.env if subject.env in ENVIRONMENTS else "live"
        hash_macro = macro_name(env)
        masks = {column: MaskSpec(rule.function, rule.visible_chars, hash_macro)
                 for column, rule in policy_eval.masks_for(snapshot, subject, role, table).items()}
        stored = None
        storable = [StoredMask.hash(column, env) if spec.function is MaskFunction.HASH
                    else StoredMask.partial(column, spec.visible_chars)
                    for column, spec in masks.items() if spec.function in (MaskFunction.HASH, MaskFunction.PARTIAL)]
        if storable and self.stored_masks is not None and info is not None and not info.writable:
            found = self.stored_masks.lookup(table, storable)
            if found is not None:
                stored = StoredMaskColumns(found.catalog, {m.column: name for m, name in found.columns.items()})
        conditions: list[exp.Expr] = []
        if tenant_column:
            conditions.append(exp.EQ(this=exp.column(tenant_column), expression=exp.Literal.string(subject.org_id)))
        values = {"user_id": subject.user_id, "org_id": subject.org_id, "agent_id": subject.agent_id,
                  "agent_framework": subject.agent_framework, "department": subject.department,
                  "region": subject.region}
        for rule in policy_eval.row_filters_for(snapshot, subject, role, table):
            cache_key = (snapshot.version, rule.rule_id)
            parsed = self._filters.get(cache_key)
            if parsed is None:
                try:
                    parsed = self._filters[cache_key] = parse_row_filter(rule.filter)
                except RowFilterInvalid as exc:
                    # A stored filter today's rules refuse (written before they existed, or edited in
                    # the store): the table is closed to those it applies to until an admin fixes it.
                    log.error("row filter %s on %s cannot be applied: %s", rule.rule_id, table, exc)
                    raise QueryError("55000", exc.code,
                                     f"a row filter on {table} is invalid, so the table cannot be read",
                                     hint="Ask an admin to fix or replace the row filter "
                                          "(hd local-policy list).") from None
            conditions.append(exp.Paren(this=resolve_row_filter(parsed, values)))  # type: ignore[arg-type]
        row_filter = exp.and_(*conditions) if conditions else None
        return TablePolicy(table=table, columns=columns, masks=masks, row_filter=row_filter, stored=stored)

    @staticmethod
    def _phi_read(snapshot: PolicySnapshot, org_id: str, read: Mapping[str, set[str]],
                  policies: Mapping[str, TablePolicy]) -> dict[str, list[str]]:
        """table -> the PHI-tagged columns the statement reads from it unmasked (what a disclosure names)."""
        found = {}
        for table, cols in read.items():
            tags = policy_eval.column_tags_for(snapshot, org_id, table)
            exposed = sorted(c for c in cols if tags.get(c) == PiiType.PHI and c not in policies[table].masks)
            if exposed:
                found[table] = exposed
        return found

    @staticmethod
    def _check_phi(snapshot: PolicySnapshot, org_id: str, read: Mapping[str, set[str]],
                   policies: Mapping[str, TablePolicy]) -> None:
        for table, cols in read.items():
            tags = policy_eval.column_tags_for(snapshot, org_id, table)
            exposed = sorted(c for c in cols if tags.get(c) == PiiType.PHI and c not in policies[table].masks)
            if exposed:
                raise QueryError(
                    "42501", "HD_ERR_PHI_ACCESS_REQUIRED",
                    f"reading unmasked PHI ({', '.join(f'{table}.{c}' for c in exposed)}) needs a phi_access grant",
                    hint="Leave these columns out, or ask an admin for a phi_access grant.",
                )

    # --- execution-time stages ------------------------------------------------------------------

    def admit(self, subject: policy_eval.Subject, plan: GovernedPlan, audit: StatementAudit, *,
              take_slot: bool = True, slot_held: bool = False) -> None:
        """Rate limit, ABAC, quota; then (with `take_slot`) a concurrency slot, released with `release`.

        `slot_held`: the connection took the slot on the event loop already (`ConcurrencyGate.enter`).
        """
        snapshot = self.policies.snapshot
        now = self._now()
        role = policy_eval.effective_role(snapshot, subject, now)
        quota = policy_eval.quota_for(snapshot, subject.org_id)
        rate = (quota.statements_per_second if quota and quota.statements_per_second
                else self.limits.statements_per_second)
        self._stage(audit, "rate_limit", lambda: self.rates.take(subject.key_id or subject.user_id, rate))
        if plan.kind != "catalog":
            self._stage(audit, "abac", lambda: self._check_abac(snapshot, subject, role, plan, now))
            estimate = estimate_credits(plan.scan_estimate)
            audit.credits = estimate

            def quota_check() -> None:
                if quota is None or quota.monthly_credits is None:
                    return
                used = self.meter.month_to_date_credits(subject.org_id, now)
                try:
                    check_quota(quota.monthly_credits, used, estimate)
                except HdError as exc:
                    raise QueryError("53400", exc.code, str(exc),
                                     hint="Ask an admin to raise the monthly credit limit.") from None

            self._stage(audit, "quota", quota_check)
        if take_slot:
            self._stage(audit, "concurrency", self.gate.acquire)
        elif slot_held:
            audit.allow("concurrency")

    @staticmethod
    def _check_abac(snapshot: PolicySnapshot, subject: policy_eval.Subject, role: Role, plan: GovernedPlan,
                    now: datetime) -> None:
        checks: list[tuple[str | None, Action]] = list(plan.tables) or [(None, Action.SELECT)]
        for table, action in checks:
            denial = policy_eval.abac_denial(snapshot, subject, role, action, table, now)
            if denial is not None:
                reason = f" ({denial.reason})" if denial.reason else ""
                raise QueryError("42501", "HD_ERR_ABAC_DENIED",
                                 f"denied by policy {denial.name!r}{reason}",
                                 hint="Ask an admin which conditions the policy sets.")

    def release(self) -> None:
        self.gate.release()

    def max_rows(self, org_id: str) -> int | None:
        quota = policy_eval.quota_for(self.policies.snapshot, org_id)
        return quota.max_rows_per_query if quota is not None else None

    def schema_changed(self, subject: policy_eval.Subject, plan: GovernedPlan) -> None:
        """After successful DDL: refresh the table list, and record who owns a new table."""
        self.tables.refresh()
        if self._on_schema_change is not None:
            self._on_schema_change()
        changed = plan.created_table is not None  # its owner was recorded when it was planned
        if plan.dropped_table:
            binding = policy_eval.binding_for(self.policies.snapshot, plan.dropped_table)
            if binding is not None and binding.org_id == subject.org_id and not binding.tenant_column:
                self.store.delete_policy(PolicyKind.TABLE_BINDING, binding.binding_id)
                changed = True
        if changed:
            self.policies.load()

    # --- catalog visibility -----------------------------------------------------------------------

    def visible(self, subject: policy_eval.Subject, scopes: tuple[str, ...]) -> Callable[[str, str], bool]:
        """Which relations the catalog may list for this session: its org's tables, if it may list tables."""
        snapshot = self.policies.snapshot
        if "tables:list" not in scopes:
            return lambda schema, table: False

        def visible(schema: str, table: str) -> bool:
            name = f"{schema}.{table}".lower()
            binding = policy_eval.binding_for(snapshot, name)
            if binding is not None and binding.tenant_column:
                return True
            owner = binding.org_id if binding is not None and binding.org_id else self.default_org_id
            return owner == subject.org_id

        return visible

    # --- audit and metering -------------------------------------------------------------------------

    def new_audit(self, sql: str, dialect: str, *, timeout_seconds: float = 0,
                  interrupted: Callable[[], bool] | None = None) -> StatementAudit:
        """The audit of a statement starting now; `timeout_seconds` (0: none) counts from now."""
        started = time.perf_counter()
        # A query id is a correlation reference, not a credential: 80 random bits, cheaply made.
        return StatementAudit(query_id=_QUERY_IDS.next(), sql=sql, dialect=dialect, started=started,
                              deadline=started + timeout_seconds if timeout_seconds > 0 else None,
                              interrupted=interrupted, trace=self.tracer.begin() if self.tracer is not None else None)

    def record(self, subject: policy_eval.Subject, settings: Mapping[str, str], audit: StatementAudit, *,
               final: bool = True) -> None:
        """Write the statement's audit record and (when `final`) meter it; raises QueryError if not stored."""
        elapsed_ms = (time.perf_counter() - audit.started) * 1000
        audit.timings_ms["total"] = round(elapsed_ms, 3)
        if audit.plan is not None:
            audit.credits = credits_for(audit.plan.scan_estimate, audit.rows, audit.bytes, elapsed_ms)
        if final and audit.plan is not None and audit.error is None:
            self.meter.record(subject.org_id, subject.user_id, subject.agent_id, audit.credits, audit.rows,
                              audit.bytes, self._now())
        if final and audit.trace is not None:  # the statement ends with this record: so does its trace
            with audit.trace.recording(audit):
                self.audit.write(subject, settings, audit)
            return
        self.audit.write(subject, settings, audit)


    def record_denial(self, subject: policy_eval.Subject, settings: Mapping[str, str], audit: StatementAudit) -> None:
        """Audit a refused statement; the refusal stands even if the record cannot be written."""
        try:
            self.record(subject, settings, audit)
        except QueryError:
            pass  # already logged by the writer; the statement is refused either way


class AuditWriter:
    """Turns a StatementAudit into the query audit record and stores it through the AuditSink (fail closed).

    `on_record` sees each record once it is stored, `on_write_failure` each record that was not (the
    host's metrics); an observer that raises is logged and never changes the statement's outcome.
    """

    def __init__(self, sink: AuditSink, now: Callable[[], datetime] = utc_now, *,
                 on_record: Callable[[Mapping[str, object]], None] | None = None,
                 on_write_failure: Callable[[], None] | None = None, phi_key: bytes | None = None):
        """`phi_key`: the HMAC key of patient keys (hd_core.phi_disclosures.disclosure_key); None records none."""
        self._sink = sink
        self.phi_key = phi_key
        self._now = now
        self._on_record = on_record
        self._on_write_failure = on_write_failure

    def write(self, subject: policy_eval.Subject, settings: Mapping[str, str], audit: StatementAudit) -> None:
        plan = audit.plan
        record = QueryAuditRecord(
            ts=format_audit_ts(self._now()), query_id=audit.query_id, org_id=subject.org_id,
            user_id=subject.user_id, key_id=subject.key_id, role=str(subject.role), source_ip=subject.source_ip,
            key_env=subject.env, agent_id=subject.agent_id, agent_framework=subject.agent_framework,
            request_id=settings.get("hd.request_id") or None, priority=settings.get("hd.priority") or None,
            dialect=audit.dialect, sql_redacted=_redacted(audit.sql, audit.dialect),
            statement_kind=audit.statement_kind or (plan.kind if plan else None),
            tables=sorted({t for t, _ in plan.tables}) if plan else [], rows_returned=audit.rows,
            bytes_returned=audit.bytes, rows_written=audit.rows_written,
            masked_columns=list(plan.masked_columns) if plan else [],
            row_filters_applied=list(plan.filtered_tables) if plan else [], timings_ms=dict(audit.timings_ms),
            credits=audit.credits,
        )
        if plan is not None and plan.phi_columns and audit.rows > 0:
            record.phi_columns_returned = list(plan.phi_columns)
            record.phi_disclosure = disclosure_record(
                grant_ids=plan.phi_grants, traceable=plan.patient_key_outputs is not None,
                has_patient_key=bool(plan.patient_key_tables), patients=audit.patients)
        # Reasons, messages and engine details can quote literals and row values: the record keeps their shape only.
        for verdict in audit.verdicts:
            reason = verdict["reason"]
            redacted = _allow_reason(reason) if verdict["decision"] == "allow" else redact_error_message(reason)
            record.add_verdict(verdict["stage"], verdict["decision"], redacted)  # type: ignore[arg-type]
        if audit.error is not None:
            detail = audit.engine_error_detail
            record.fail(sqlstate=audit.error["sqlstate"], code=audit.error["code"],
                        message=redact_error_message(audit.error["message"]),
                        engine_error_detail=redact_error_detail(detail) if detail is not None else None)
        document = record.to_dict()
        try:
            self._sink.write(document)
        except HdError as exc:
            log.error("audit record %s could not be written: %s", audit.query_id, exc)
            self._observe(self._on_write_failure)
            raise QueryError("58030", "HD_ERR_AUDIT_UNAVAILABLE",
                             "the audit record could not be written, so the statement was not run to completion "
                             f"and no rows were returned (reference {audit.query_id})",
                             hint="Ask an operator to check the audit storage; retry once it is writable.") from None
        except Exception:
            self._observe(self._on_write_failure)
            raise
        if self._on_record is not None:
            on_record = self._on_record
            self._observe(lambda: on_record(document))

    @staticmethod
    def _observe(observer: Callable[[], None] | None) -> None:
        if observer is None:
            return
        try:
            observer()
        except Exception:  # observers only watch: a broken one must not fail or alter the statement
            log.exception("audit record observer failed")


def _parse(sql: str, dialect: str, *, catalog: bool) -> ParsedStatement:
    try:
        return parse_statement(sql, dialect)
    except QueryError:
        if not catalog:
            raise
        # Driver catalog queries use casts such as `$1::oid[]` that sqlglot reads only once patched,
        # exactly as the catalog layer itself parses them.
        return parse_statement(parseable_catalog_text(sql), dialect)


@lru_cache(maxsize=64)
def _allow_reason(reason: str) -> str:
    """An allow verdict's reason, redacted: a few fixed texts from this module, so each is redacted once.

    (Deny reasons quote errors, which can hold values: those are redacted each time and never kept.)
    """
    return redact_error_message(reason)


def _redacted(sql: str, dialect: str) -> str:
    """Redaction depends only on the text, and drivers repeat the same statements: parse each once.

    Long statements are not cached: 4,096 of them could pin gigabytes, and they are rarely repeated.
    """
    return _redacted_cached(sql, dialect) if len(sql) <= _REDACTION_CACHED_CHARS else redact_sql(sql, dialect)


@lru_cache(maxsize=4096)
def _redacted_cached(sql: str, dialect: str) -> str:
    return redact_sql(sql, dialect)


def _created_name(parsed: ParsedStatement) -> str | None:
    table = parsed.tree.find(exp.Table)
    if table is None:
        return None
    return f"{(table.db or 'main').lower()}.{table.name.lower()}"
