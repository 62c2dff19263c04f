"""The engine's side of policy previews (hd_core/policy_preview.py): rows a role would see, and explain.

Both run the governor's own plan-time stages (guard, table extract, policy check and rewrite,
ABAC) against a policy snapshot given by the caller: the snapshot in force for explain, the
snapshot with the new policy added for a dry run. Nothing is re-implemented, so an explanation
says what the wire would do. Nothing is audited either: no statement of a client runs, and a dry
run's counts are the admin's (its API call is in the control API's log).

Statements that create tables are not explained: planning one claims the new name for its
organisation (hd_core/table_owners.py), which an explanation must not do.

In AWS the control API has no engine: a fleet host's `PreviewWorker` answers the preview requests
the policies Lambda stores (hd_core/policy_previews.py) with this same code, always as a session of
the organisation that asked, so an answer sees exactly what the in-process path would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from engine_host.engine.duckdb_engine import Database
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import check_statement
from engine_host.pipeline.governance.tables import NameLookup, TableRef, extract_tables
from engine_host.pipeline.governor import GovernedPlan, Governor, _cross_tenant, _parse
from hd_core import policy_eval, policy_previews
from hd_core.models import Role, utc_now
from hd_core.policies import PolicySnapshot
from hd_core.policy_codec import from_document
from hd_core.policy_preview import ROLES, Explanation, TableGovernance, as_json, session_subject, with_object
from hd_core.policy_previews import PreviewRequest, PreviewRequestStore, question_field

log = logging.getLogger(__name__)

# Kinds whose planning records a table owner (Governor._claim): never planned for a preview.
_CREATING = frozenset({"create_table", "create_table_as", "create_schema"})
_DIALECT = "postgres"


class _Refused(Exception):
    def __init__(self, stage: str, error: QueryError) -> None:
        super().__init__(error.message)
        self.stage = stage
        self.error = error


class EnginePolicyPreview:
    """`hd_core.policy_preview.PolicyEngine` over one engine host's governor and database."""

    def __init__(self, governor: Governor, database: Database) -> None:
        self._governor = governor
        self._database = database
        self._lock = threading.Lock()  # one count at a time on the preview's own connection
        self._cursor: Any = None

    def visible_rows(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, table: str) -> int | None:
        """`SELECT count(*)` of `table`, governed for `subject` under `snapshot`; None when refused."""
        try:
            plan, _ = self._plan(snapshot, subject, f"SELECT count(*) FROM {_quoted(table)}", utc_now())
        except _Refused:
            return None
        with self._lock:
            if self._cursor is None:
                self._cursor = self._database.connection.cursor()
            row = self._cursor.execute(plan.engine_sql).fetchone()
        return int(row[0]) if row else 0

    def explain(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, sql: str) -> Explanation:
        """The governed plan of `sql` for `subject`: per table, the row filters and masks; or the refusal."""
        now = utc_now()
        role = policy_eval.effective_role(snapshot, subject, now)
        try:
            plan, refs = self._plan(snapshot, subject, sql, now)
        except _Refused as refused:
            error = refused.error
            return Explanation(
                user_id=subject.user_id, role=role, verdict="refused",
                refusal={"stage": refused.stage, "sqlstate": error.sqlstate, "code": error.code,
                         "message": error.message, **({"hint": error.hint} if error.hint else {})},
            )
        tables = tuple(self._table(snapshot, subject, role, ref) for ref in refs)
        return Explanation(
            user_id=subject.user_id, role=role, verdict="allowed", statement_kind=plan.kind, tables=tables,
            masked_columns=plan.masked_columns, governed_sql=plan.engine_sql,
        )

    def _plan(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, sql: str,
              now: datetime) -> tuple[GovernedPlan, list[TableRef]]:
        governor = self._governor
        role = policy_eval.effective_role(snapshot, subject, now)
        phi = policy_eval.phi_access(snapshot, subject, now)
        stage = "guard"
        try:
            parsed = _parse(sql, _DIALECT, catalog=False)
            info = check_statement(parsed, catalog=False)
            if info.kind in _CREATING:
                raise QueryError("0A000", "HD_ERR_EXPLAIN_UNSUPPORTED",
                                 "explain covers statements on existing tables, not ones that create tables")
            stage = "tables"
            lookup = NameLookup(("main",), hidden=lambda name: governor._belongs_elsewhere(snapshot, subject.org_id,
                                                                                          name),
                                refuse_hidden=_cross_tenant)
            refs = extract_tables(parsed, lambda catalog, schema, table: governor.tables.resolve(catalog, schema,
                                                                                                 table), lookup)
            stage = "policy"
            plan = governor._policy_plan(snapshot, subject, role, subject.scopes, phi, parsed, info, refs, None, None)
            stage = "abac"
            Governor._check_abac(snapshot, subject, role, plan, now)
        except QueryError as error:
            raise _Refused(stage, error) from None
        return plan, refs

    def _table(self, snapshot: PolicySnapshot, subject: policy_eval.Subject, role: Role,
               ref: TableRef) -> TableGovernance:
        table = ref.name
        filters = [{"rule_id": rule.rule_id, "filter": rule.filter}
                   for rule in policy_eval.row_filters_for(snapshot, subject, role, table)]
        binding = policy_eval.binding_for(snapshot, table)
        if binding is not None and binding.tenant_column:
            filters.insert(0, {"rule_id": "tenant", "filter": f"{binding.tenant_column} = '{subject.org_id}'"})
        masks = [{"column": column, "function": rule.function.value, "rule_id": rule.rule_id,
                  **({"visible_chars": rule.visible_chars} if rule.function.value == "partial" else {})}
                 for column, rule in sorted(policy_eval.masks_for(snapshot, subject, role, table).items())]
        return TableGovernance(table=table, action=ref.action.value, row_filters=tuple(filters), masks=tuple(masks))

    def close(self) -> None:
        with self._lock:
            if self._cursor is not None:
                self._cursor.close()
                self._cursor = None


def _quoted(table: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def answer_preview(engine: EnginePolicyPreview, snapshot: PolicySnapshot, request: PreviewRequest) -> dict[str, object]:
    """The answer to one fleet preview request: row counts per role, or an explanation; never a row value.

    Every session is the requesting organisation's (`request.org_id`), as in the in-process path, so the
    governor's tenant rules decide what is counted exactly as they would for a statement of that organisation.
    """
    org_id = request.org_id
    if request.kind == policy_previews.DRY_RUN:
        obj = from_document(question_field(request, "document"))
        if getattr(obj, "org_id", None) != org_id:
            raise ValueError("the candidate policy names another organisation than the request")
        table = str(question_field(request, "table"))
        after = with_object(snapshot, obj)
        rows: dict[str, object] = {}
        for role in ROLES:
            subject = session_subject(str(question_field(request, "user_id")), org_id, role,
                                      _text(request, "department"), _text(request, "region"),
                                      _text(request, "source_ip"))
            rows[role.value] = [engine.visible_rows(snapshot, subject, table),
                                engine.visible_rows(after, subject, table)]
        return {"rows": rows}
    if request.kind == policy_previews.EXPLAIN:
        subject = session_subject(str(question_field(request, "user_id")), org_id,
                                  Role(question_field(request, "role")), _text(request, "department"),
                                  _text(request, "region"))
        answer: dict[str, object] = as_json(engine.explain(snapshot, subject, str(question_field(request, "sql"))))
        return answer
    raise ValueError(f"unknown preview kind {request.kind!r}")


def _text(request: PreviewRequest, name: str) -> str | None:
    value = request.question.get(name)
    return None if value is None else str(value)


class PreviewWorker:
    """A fleet host's thread answering the policy previews the control API stores (hd_core/policy_previews.py).

    It asks the store for pending requests every `interval_seconds` (one small Query) and answers those its
    conditional claim wins, against the snapshot `snapshot()` gives (the store's current one).
    """

    def __init__(self, store: PreviewRequestStore, host_id: str, engine: EnginePolicyPreview,
                 snapshot: Callable[[], PolicySnapshot], *,
                 interval_seconds: float = policy_previews.POLL_INTERVAL_SECONDS) -> None:
        self._store = store
        self._host_id = host_id
        self._engine = engine
        self._snapshot = snapshot
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        """Answer what is pending now; the number of requests this host answered."""
        return policy_previews.serve_pending(
            self._store, self._host_id, lambda request: answer_preview(self._engine, self._snapshot(), request))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hd-policy-previews", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._engine.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the store may be back next tick; a preview caller times out clearly meanwhile
                log.warning("could not serve policy previews", exc_info=True)
