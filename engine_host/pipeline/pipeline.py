"""The statement pipeline: the one path every statement takes from the wire to DuckDB and back.

Every statement - user SQL, catalog probes from drivers, SET/SHOW, transaction control - enters
through `StatementPipeline.prepare` and leaves through `execute`, so the governance stages
(guard, table extraction, policy, masking, quotas, audit) have exactly one place to sit. Stages
run in order on a `StatementContext`; each one may rewrite the engine SQL or raise a QueryError.

All methods block (they call DuckDB); the wire layer runs them on worker threads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Protocol

import duckdb
import pyarrow as pa

from engine_host.engine.duckdb_engine import Database, EngineSession, ResultStream, StatementShape
from engine_host.pgcompat.copy.parse import CopyStatement
from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.declared import with_declared
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.parameter_format import ParameterFormatError
from engine_host.pgcompat.types.table import PgType, pg_type_by_oid, pg_type_for_duckdb
from engine_host.pipeline import errors
from engine_host.pipeline.copy import CopyStatements, parse_copy_statement
from engine_host.pipeline.cursors import Audited, Cursors, declares_cursor
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.execution import Execution, GovernedRows
from engine_host.pipeline.governance.guard import MAX_STATEMENT_CHARS
from engine_host.pipeline.governance.pg_semantics import PgSession, search_path_schemas
from engine_host.pipeline.governance.plan_check import check_bound_plan, statement_shape
from engine_host.pipeline.governor import (
    PLAN_CACHE_MAX_CHARS,
    SUPPORTED_DIALECTS,
    GovernedPlan,
    Governor,
    StatementAudit,
)
from engine_host.pipeline.quantified_parameters import array_of, quantified_probe
from engine_host.pipeline.recently_used import RecentlyUsed
from engine_host.pipeline.results import Outcome, ResultColumn, RowSource, format_code
from engine_host.pipeline.session import FAILED_TRANSACTION, Session
from engine_host.pipeline.settings import (
    SessionSettings,
    SettingCommand,
    check_transaction_mode,
    duration_milliseconds,
    parse_setting_command,
)
from engine_host.pipeline.sql_prepared import SqlPreparedStatements, deallocate_all
from engine_host.pipeline.transactions import Transactions, ends_transaction
from hd_core.errors import HdError
from hd_core.models import Principal
from hd_core.policy_eval import Subject

TEXT = 25
OID = 26
OID_ARRAY = 1028


class CatalogAnswers(Protocol):
    """Rewrites driver catalog probes (pg_catalog, information_schema) into SQL DuckDB can answer."""

    database_name: str  # what current_database() answers

    def rewrite(self, sql: str, *, visible: Callable[[str, str], bool] | None = None, user: str | None = None,
                settings: Mapping[str, str] | None = None, backend_pid: int | None = None) -> str | None: ...

    def parameter_types(self, sql: str) -> dict[int, int]: ...


class DataLease(AbstractContextManager["DataLease"], Protocol):
    """What a statement holds on the table files it reads; released when it ends."""

    def release(self) -> None: ...


class TableData(Protocol):
    """Tables whose files must be brought into place before DuckDB binds or runs a statement over them."""

    def hold(self, names: Iterable[str]) -> DataLease:
        """Make the files of these tables (canonical `schema.table`) readable until the lease is released."""
        ...

    def hold_snapshot(self) -> DataLease:
        """What an explicit transaction holds from BEGIN to its end: every table version it may still bind."""
        ...


class Kind(Enum):
    SETTING = "setting"
    TRANSACTION = "transaction"
    CURSOR = "cursor"
    DISCARD = "discard"
    DEALLOCATE = "deallocate"
    PREPARE = "prepare"
    EXECUTE = "execute"
    COPY = "copy"
    ENGINE = "engine"


@dataclass
class StatementContext:
    """A statement on its way through the stages."""

    session: Session
    text: str
    engine_sql: str = ""
    kind: Kind = Kind.ENGINE
    statement_type: str = ""
    is_catalog: bool = False
    plan: GovernedPlan | None = None
    audit: StatementAudit | None = None  # opened by `govern`; an engine statement's record when it runs at once
    subject: Subject | None = None  # who asks, and their hd.* settings, as `govern` found them
    settings: dict[str, str] | None = None


Stage = Callable[[StatementContext], None]


@dataclass
class PreparedStatement:
    """A statement that passed the pipeline's preparation stages and can be described and executed."""

    text: str
    kind: Kind
    engine_sql: str
    statement_type: str
    declared_oids: tuple[int, ...] = ()
    is_catalog: bool = False
    setting: SettingCommand | None = None
    copy: CopyStatement | None = None
    shape: StatementShape | None = field(default=None, repr=False)
    plan: GovernedPlan | None = field(default=None, repr=False)
    # Set by `prepare(..., run_now=True)`: the audit its planning opened and the policy and table
    # versions it planned against. The execution that follows at once takes both over instead of
    # planning the statement a second time (`_admit`); any other execution plans afresh.
    fresh: tuple[StatementAudit, tuple[int, int], Subject, dict[str, str]] | None = field(default=None, repr=False)


_COMMENTS = re.compile(r"\s*(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*", re.DOTALL)


def leading_words(sql: str, count: int = 3) -> list[str]:
    """The first keywords of a statement, upper-cased, skipping comments."""
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        m = _COMMENTS.match(text)
        if not m:
            break
        text = text[m.end():]
    return [word.upper() for word in re.findall(r"[A-Za-z_]+", text[:200])[:count]]


_TX_BEGIN = ("BEGIN", "START")
_TX_END = ("COMMIT", "END", "ROLLBACK", "ABORT")
_ROWS_TAGS = {"INSERT": "INSERT 0", "UPDATE": "UPDATE", "DELETE": "DELETE", "MERGE": "MERGE"}


def statement_kind(sql: str) -> Kind:
    """Which part of the server answers `sql`, from its first keyword (cheap enough for the event loop)."""
    words = leading_words(sql, 1)
    first = words[0] if words else ""
    if first in ("SET", "SHOW", "RESET"):
        return Kind.SETTING
    if first in _TX_BEGIN + _TX_END + ("SAVEPOINT", "RELEASE"):
        return Kind.TRANSACTION
    if first in ("DECLARE", "FETCH", "MOVE", "CLOSE"):
        return Kind.CURSOR
    if first == "DISCARD":
        return Kind.DISCARD
    if first == "DEALLOCATE":
        return Kind.DEALLOCATE
    if first == "PREPARE":
        return Kind.PREPARE
    if first == "EXECUTE":
        return Kind.EXECUTE
    if first == "COPY":
        return Kind.COPY
    return Kind.ENGINE


class StatementPipeline:
    """Prepares and executes statements for sessions on one locked-down DuckDB database."""

    def __init__(self, database: Database, governor: Governor, catalog: CatalogAnswers | None = None,
                 stages: Sequence[Stage] | None = None, table_data: TableData | None = None):
        """`table_data` serves tables from the object store cache; without it every table is local."""
        self._database = database
        self._catalog = catalog
        self._table_data = table_data
        self.governor = governor
        # Statement shapes whose bound plan passed the check (see `verify_plan`).
        self._verified: RecentlyUsed[Hashable, bool] = RecentlyUsed(governor.limits.plan_cache_entries)
        self._pg_sessions: RecentlyUsed[tuple[str, str, str, int], PgSession] = RecentlyUsed(256)
        # Bound statement shapes by (engine SQL, table catalog version), weighed by their text (see `_shape`).
        self._shapes: RecentlyUsed[tuple[str, int], StatementShape] = RecentlyUsed(
            governor.limits.plan_cache_entries, max_weight=PLAN_CACHE_MAX_CHARS, weight=lambda key, _: len(key[0]))
        # Result columns per executed plan and per bound shape (each kept in its value, so an id is
        # never taken for another's).
        self._result_types: RecentlyUsed[tuple[int, bool], tuple[GovernedPlan, pa.Schema, tuple[ResultColumn, ...]]] = (
            RecentlyUsed(governor.limits.plan_cache_entries))
        self._described: RecentlyUsed[tuple[int, bool, tuple[PgType | None, ...]],
                                      tuple[StatementShape, tuple[ResultColumn, ...]]] = RecentlyUsed(
            governor.limits.plan_cache_entries)
        self.stages: list[Stage] = (list(stages) if stages is not None
                                    else [self.classify, self.answer_catalog, self.govern])
        self._transactions = Transactions(self)
        self._cursors = Cursors(self)
        self._copies = CopyStatements(self)
        self._sql_prepared = SqlPreparedStatements(self)

    @property
    def ready(self) -> bool:
        """Whether the policy snapshot is loaded (until then connections are refused with 57P03)."""
        return self.governor.policies.ready

    # --- sessions ------------------------------------------------------------------------

    def open_session(self, principal: Principal, client_address: str, startup: dict[str, str],
                     backend_pid: int = 0) -> Session:
        """A new session with its own DuckDB connection."""
        settings = SessionSettings(_startup_settings(startup), principal.user_id)
        dialect = _dialect_of(settings)
        if dialect not in SUPPORTED_DIALECTS:
            raise _bad_dialect(dialect)
        engine = self._database.session()
        return Session(principal, client_address, startup, settings, engine, backend_pid=backend_pid)

    def subject(self, session: Session) -> Subject:
        return self.governor.subject(session.principal, _settings_map(session), _peer_ip(session.client_address))

    # --- concurrency admission (decided by the wire on the event loop, before a thread is taken) ----

    @staticmethod
    def takes_slot(sql: str) -> bool:
        """Whether running `sql` takes a concurrency slot: what DuckDB runs does; SET, BEGIN, FETCH... do not."""
        return bool(sql.strip(" \t\r\n;")) and statement_kind(sql) in (Kind.ENGINE, Kind.COPY, Kind.EXECUTE)

    async def enter_gate(self, session: Session) -> None:
        """Take a slot for the statements `session` is about to run, waiting on the event loop; raises 53300."""
        await self.governor.gate.enter()
        session.slot_held = True

    def leave_gate(self, session: Session) -> None:
        """Give back the slot `enter_gate` took (once; the session's statements took none of their own)."""
        if session.slot_held:
            session.slot_held = False
            self.governor.gate.release()

    def record_refusal(self, session: Session, sql: str, error: QueryError) -> None:
        """Audit a statement the gate refused before it was prepared; the refusal stands either way."""
        audit = self.governor.new_audit(sql, _dialect(session))
        if statement_kind(sql) is Kind.COPY:
            audit.statement_kind = Kind.COPY.value  # as the COPY's record says when it runs
        audit.deny("concurrency", error)
        self.governor.record_denial(self.subject(session), _settings_map(session), audit)

    # --- stages ---------------------------------------------------------------------------

    def classify(self, ctx: StatementContext) -> None:
        """Decide which part of the server answers the statement."""
        ctx.kind = statement_kind(ctx.text)
        if ctx.kind is Kind.ENGINE:
            ctx.engine_sql = ctx.text

    def answer_catalog(self, ctx: StatementContext) -> None:
        """Route driver catalog probes to the catalog answers (the one place that knows them)."""
        if ctx.kind is not Kind.ENGINE or self._catalog is None:
            return
        session = ctx.session
        decided: list[Callable[[str, str], bool]] = []

        def visible(schema: str, table: str) -> bool:
            # Built on first use: most statements are not catalog queries and never ask.
            if not decided:
                scopes = self.governor.current_scopes(session.principal)
                decided.append(self.governor.visible(self.subject(session), scopes))
            return decided[0](schema, table)

        rewritten = self._catalog.rewrite(ctx.text, visible=visible, user=session.principal.user_id,
                                          settings=_SettingsView(session.settings),
                                          backend_pid=session.backend_pid)
        if rewritten is not None:
            ctx.engine_sql = rewritten
            ctx.is_catalog = True

    def govern(self, ctx: StatementContext) -> None:
        """Parse, guard, check policies and rewrite the statement; what runs is the governed SQL."""
        if ctx.kind is not Kind.ENGINE:
            return
        session = ctx.session
        settings = ctx.settings = _settings_map(session)
        subject = ctx.subject = self.governor.subject(session.principal, settings, _peer_ip(session.client_address))
        audit = ctx.audit = self._statement_audit(session, ctx.text, dialect=_dialect_in(settings))
        try:
            ctx.plan = self._plan(session, ctx.text, audit, ctx.engine_sql if ctx.is_catalog else None, subject)
        except QueryError:
            self.governor.record_denial(subject, settings, audit)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug, or nesting sqlglot cannot follow: an audited refusal
            raise self._refuse_unexpected(session, audit, exc) from None
        ctx.engine_sql = ctx.plan.engine_sql

    def _refuse_unexpected(self, session: Session, audit: StatementAudit, exc: Exception) -> QueryError:
        """An exception no stage expected, as an audited refusal whose reference is the audit record's id."""
        error = errors.unexpected_failure(exc, audit.query_id)
        audit.deny("internal" if error.code == "HD_ERR_INTERNAL" else "guard", error)
        self.governor.record_denial(self.subject(session), _settings_map(session), audit)
        return error

    def _plan(self, session: Session, text: str, audit: StatementAudit, catalog_sql: str | None,
              subject: Subject | None = None) -> GovernedPlan:
        try:
            scopes = self.governor.current_scopes(session.principal)
        except QueryError as exc:  # revoked key, suspended user or organisation: a denial the record must show
            audit.deny("credential", exc)
            raise
        return self.governor.plan(subject or self.subject(session), scopes, text, audit.dialect, audit,
                                  catalog_sql=catalog_sql, overlay=session.local_tables,
                                  verify=lambda plan: self.verify_plan(session, plan),
                                  pg_session=self._pg_session(session))

    def _pg_session(self, session: Session) -> PgSession:
        """What current_user, current_database() and current_schema return for `session`."""
        user = session.principal.user_id
        database = self._catalog.database_name if self._catalog is not None else "hd"
        search_path, tables = session.settings.get("search_path"), self.governor.tables
        # Asked for every statement, and the answer changes only with these: built once per combination.
        key = (user, database, search_path, tables.version)
        found = self._pg_sessions.get(key)
        if found is None:
            schemas = search_path_schemas(search_path, user, tables.schemas())
            found = PgSession(user=user, database=database, schemas=schemas)
            self._pg_sessions.put(key, found)
        return found

    def verify_plan(self, session: Session, plan: GovernedPlan) -> None:
        """Bind the governed SQL in DuckDB and check every scan against the plan (governance/plan_check.py).

        A reference the rewrite missed fails here, at bind time (42P01), before anything runs.
        """
        if not plan.bound_sql:
            return
        if session.transaction_status == FAILED_TRANSACTION:
            raise errors.transaction_aborted()
        shape, parameters = statement_shape(plan.bound_sql)
        # A session with uncommitted DDL binds against its own tables: its verdicts are its own.
        key = None if session.local_tables is not None else (
            shape, plan.table_sources, plan.kind == "catalog", self.governor.tables.version)
        if key is not None and self._verified.get(key):
            return
        self.bind_and_check(session, plan, parameters)
        if key is not None:
            self._verified.put(key, True)

    def bind_and_check(self, session: Session, plan: GovernedPlan, parameters: int) -> None:
        """The check itself, uncached: bind in DuckDB (NULL for each parameter), walk the plan."""
        try:
            with self._hold_data(plan):
                bound = session.engine.bound_plan(plan.bound_sql, [None] * parameters)
        except duckdb.Error as exc:
            raise errors.from_engine_error(exc) from None
        check_bound_plan(bound, dict(plan.table_sources), catalog=plan.kind == "catalog")

    # --- preparation -----------------------------------------------------------------------

    def split(self, session: Session, sql: str) -> list[str]:
        """Split a simple-query string into statements; PG-only syntax DuckDB cannot parse stays whole."""
        if not sql.strip(" \t\r\n;"):
            return []
        if len(sql) > MAX_STATEMENT_CHARS:
            return [sql]  # the guard refuses it, audited, without DuckDB's parser spending seconds on it
        try:
            parts = [text for _, text in session.engine.statement_kinds(sql)]
        except duckdb.Error:
            return [sql]
        if len(parts) > 1:
            error = QueryError("42601", "HD_ERR_MULTIPLE_STATEMENTS",
                               f"a query string may hold one statement; this one holds {len(parts)}",
                               hint="Send each statement in a query of its own.")
            audit = self.governor.new_audit(sql, _dialect(session))
            audit.deny("guard", error)
            self.governor.record_denial(self.subject(session), _settings_map(session), audit)
            raise error
        return parts

    def prepare(self, session: Session, sql: str, declared_oids: Sequence[int] = (), *,
                run_now: bool = False) -> PreparedStatement:
        """Run the preparation stages; raises QueryError if the statement may not or cannot run.

        `run_now`: the caller executes the statement next, before anything else runs on the session
        (a simple query): its execution keeps the audit and plan made here rather than planning again.
        """
        ctx = StatementContext(session=session, text=sql)
        try:
            for stage in self.stages:
                stage(ctx)
        except QueryError:
            raise
        except Exception as exc:  # noqa: BLE001 - raised before `govern` opened the audit (catalog stage)
            raise self._refuse_unexpected(session, self.governor.new_audit(sql, _dialect(session)), exc) from None
        prepared = PreparedStatement(
            text=sql, kind=ctx.kind, engine_sql=ctx.engine_sql, statement_type="",
            declared_oids=tuple(declared_oids), is_catalog=ctx.is_catalog, plan=ctx.plan,
        )
        if ctx.kind is Kind.SETTING:
            prepared.setting = parse_setting_command(sql)
            if prepared.setting is None:
                error = errors.syntax_error("could not parse this SET/SHOW/RESET statement")
                audit = self.governor.new_audit(sql, _dialect(session))
                audit.statement_kind = ctx.kind.value
                self._record_control(session, audit, error)
                raise error
        elif ctx.kind is Kind.COPY:
            try:
                prepared.copy = parse_copy_statement(sql)
            except QueryError as error:
                audit = self.governor.new_audit(sql, _dialect(session))
                audit.statement_kind = ctx.kind.value
                audit.deny("guard", error)
                self._record_control(session, audit, error)
                raise
        elif ctx.kind is Kind.ENGINE:
            prepared.statement_type = (ctx.plan.statement_type if ctx.plan is not None
                                       else self._statement_type(session, ctx.engine_sql))
            if run_now and ctx.audit is not None and ctx.plan is not None:
                assert ctx.subject is not None and ctx.settings is not None
                prepared.fresh = (ctx.audit, self._plan_versions(), ctx.subject, ctx.settings)
        return prepared

    def _plan_versions(self) -> tuple[int, int]:
        """The policy snapshot and table catalog a plan was made against (part of every plan's cache key)."""
        return self.governor.policies.snapshot.version, self.governor.tables.version

    def _statement_type(self, session: Session, sql: str) -> str:
        try:
            kinds = session.engine.statement_kinds(sql)
        except duckdb.Error as exc:
            raise errors.from_engine_error(exc) from None
        if len(kinds) != 1:
            raise errors.syntax_error("cannot insert multiple commands into a prepared statement")
        return kinds[0][0]

    def _shape(self, session: Session, prepared: PreparedStatement) -> StatementShape:
        """What DuckDB's binder says about the statement, bound once per text and table catalog version.

        Drivers send the same unnamed statement for every execution (Parse, Bind, Describe, Execute): its
        shape is bound once, not at every Parse as well as when it runs. The shape depends only on the
        SQL and the catalog it binds against; a session with uncommitted DDL binds against its own
        tables, and one whose transaction failed gets DuckDB's refusal: neither reads the cache. Only a
        statement outside a transaction block stores its shape: it bound against the latest catalog,
        the one the version names (a transaction binds against the catalog as of its start).
        """
        if prepared.shape is None:
            key = None
            if session.local_tables is None and session.transaction_status != FAILED_TRANSACTION:
                key = (prepared.engine_sql, self.governor.tables.version)
                prepared.shape = self._shapes.get(key)
            if prepared.shape is None:
                try:
                    with self._hold_data(prepared.plan):
                        prepared.shape = session.engine.describe(prepared.engine_sql)
                except duckdb.Error as exc:
                    raise errors.from_engine_error(exc) from None
                if key is not None and not session.in_transaction:
                    self._shapes.put(key, prepared.shape)
        return prepared.shape

    def _hold_data(self, plan: GovernedPlan | None) -> DataLease:
        """Bring the files of the tables `plan` reads into place (binding a view reads their metadata too)."""
        if self._table_data is None or plan is None or not plan.tables:
            return _NOTHING_HELD
        try:
            return self._table_data.hold(name for name, _ in plan.tables)
        except HdError as exc:
            raise QueryError("58030", exc.code, str(exc),
                             hint="The table's files could not be read from the object store; "
                                  "retry, and ask an operator to check the data bucket if it persists.") from None

    def hold_snapshot(self) -> DataLease:
        """For an explicit transaction, taken before its BEGIN: DuckDB binds views as of the transaction's
        start, so the table versions current then must stay readable until it ends (pipeline/transactions.py)."""
        return _NOTHING_HELD if self._table_data is None else self._table_data.hold_snapshot()

    def parameter_types(self, session: Session, prepared: PreparedStatement) -> list[PgType]:
        """Declared parameter types where given, DuckDB's inferred ones elsewhere (text when unknown)."""
        if prepared.kind is Kind.CURSOR:  # a DECLARE's parameters are its query's
            query = self._cursors.query_of(session, prepared.text, prepared.declared_oids)
            if query is not None:
                return self.parameter_types(session, query)
        count = len(prepared.declared_oids)
        inferred: tuple[str, ...] = ()
        if prepared.kind is Kind.ENGINE:
            inferred = self._quantified_types(session, prepared, self._shape(session, prepared).parameter_types)
            count = max(count, len(inferred))
        catalog_casts = self._catalog.parameter_types(prepared.text) if prepared.is_catalog and self._catalog else {}
        types = []
        for i in range(count):
            oid = prepared.declared_oids[i] if i < len(prepared.declared_oids) else 0
            oid = oid or catalog_casts.get(i + 1, 0)
            declared = pg_type_by_oid(oid) if oid else None
            if declared is not None:
                types.append(declared)
            elif i < len(inferred):
                types.append(pg_type_for_duckdb(inferred[i]))
            else:
                types.append(_text())
        return types

    def _quantified_types(self, session: Session, prepared: PreparedStatement,
                          inferred: tuple[str, ...]) -> tuple[str, ...]:
        """`inferred`, with an array type for each parameter DuckDB left UNKNOWN as the operand of ANY/ALL
        (and the type the probe gives any other parameter it left UNKNOWN)."""
        if "UNKNOWN" not in inferred:
            return inferred
        probe = quantified_probe(prepared.engine_sql)
        if probe is None:
            return inferred
        sql, numbers = probe
        try:
            with self._hold_data(prepared.plan):
                probed = session.engine.describe(sql).parameter_types
        except duckdb.Error:
            return inferred  # the probe is a guess; the statement's own binding stands
        types = list(inferred)
        for i, probed_type in enumerate(probed[:len(types)]):
            if types[i] == "UNKNOWN":  # the others too: DuckDB types `$2::int` once ANY no longer hides it
                types[i] = (array_of(probed_type) if i + 1 in numbers else probed_type) or "UNKNOWN"
        return tuple(types)

    def result_columns(self, session: Session, prepared: PreparedStatement,
                       params: Sequence[bytes | None] | None = None,
                       param_formats: Sequence[int] = ()) -> list[ResultColumn] | None:
        """The columns the statement will return, or None if it returns no rows. Never executes it.

        With `params` (Describe of a bound portal) the types are those of the statement as it will run.
        """
        if prepared.kind is Kind.SETTING:
            setting = prepared.setting
            if setting is not None and setting.verb == "SHOW":
                return _show_columns(setting.name)
            return None
        if prepared.kind is Kind.CURSOR:
            return self._cursors.fetch_columns(session, prepared.text)
        if prepared.kind is Kind.EXECUTE:
            return self._sql_prepared.result_columns(session, prepared)
        if prepared.kind is not Kind.ENGINE:
            return None
        shape = self._shape(session, prepared)
        if shape.column_types and all(str(t) == "UNKNOWN" for t in shape.column_types):
            # DuckDB cannot type a result whose parameters are untyped; bind again with the portal's
            # values, or with NULL stand-ins for a statement Describe (bare `$n` then reads as text).
            if params is not None:
                values = self._decode_parameters(session, prepared, params, param_formats)
            else:
                values = [None] * len(shape.parameter_types)
            try:
                with self._hold_data(prepared.plan):
                    shape = session.engine.describe(prepared.engine_sql, values)
            except duckdb.Error as exc:
                raise errors.from_engine_error(exc) from None
        if not shape.returns_rows:
            return None
        # Drivers Describe every execution; the columns follow from the shape and the plan's declared types.
        key = (id(shape), prepared.is_catalog, _declared(prepared.plan))
        known = self._described.get(key)
        if known is not None and known[0] is shape:
            return list(known[1])
        to_pg = _catalog_type if prepared.is_catalog else pg_type_for_duckdb
        types = with_declared([to_pg(t) for t in shape.column_types], _declared(prepared.plan))
        columns = [ResultColumn(name, t) for name, t in zip(shape.column_names, types, strict=True)]
        if shape is prepared.shape:  # not a shape bound just now with this portal's values
            self._described.put(key, (shape, tuple(columns)))
        return columns

    # --- execution --------------------------------------------------------------------------

    def execute(self, session: Session, prepared: PreparedStatement,
                params: Sequence[bytes | None] | None = None, param_formats: Sequence[int] = ()) -> Outcome:
        """Execute a prepared statement; blocking. Raises QueryError; the session state stays consistent.

        `params` is None for a simple query (no Bind), the Bind message's values otherwise.

        Every statement gets exactly one audit record: an engine statement from its Execution (or its
        refusal before one), every other kind (SET, SHOW, BEGIN, COMMIT, FETCH...) from `_run_control`.
        """
        if prepared.kind is Kind.COPY:
            return self._run_copy(session, prepared)
        if prepared.kind is Kind.EXECUTE:  # the statement it names is audited as it runs
            return self._sql_prepared.execute(session, prepared)
        if prepared.kind is not Kind.ENGINE:
            return self._run_control(session, prepared, params, param_formats)
        try:
            try:
                if session.transaction_status == FAILED_TRANSACTION:
                    raise errors.transaction_aborted()
                values = self._decode_parameters(session, prepared, params, param_formats)
            except QueryError as exc:
                self.record_unadmitted(session, prepared.text, exc)
                raise
            if session.in_transaction:
                session.transaction_statements += 1
            return self._run_engine(session, prepared, values)
        except QueryError:
            session.statement_failed()
            raise
        except duckdb.Error as exc:
            session.statement_failed()
            raise errors.from_engine_error(exc) from None
        except Exception as exc:  # noqa: BLE001 - a bug outside a governed execution
            session.statement_failed()
            audit = self.governor.new_audit(prepared.text, _dialect(session))
            raise self._refuse_unexpected(session, audit, exc) from None

    def _run_copy(self, session: Session, prepared: PreparedStatement) -> Outcome:
        """COPY TO STDOUT / FROM STDIN (pipeline/copy.py): a governed SELECT or INSERT, audited as one COPY."""
        try:
            if session.transaction_status == FAILED_TRANSACTION:
                error = errors.transaction_aborted()
                audit = self.governor.new_audit(prepared.text, _dialect(session))
                audit.statement_kind = Kind.COPY.value
                self._record_control(session, audit, error)
                raise error
            if session.in_transaction:
                session.transaction_statements += 1
            return self._copies.run(session, prepared)
        except QueryError:
            session.statement_failed()
            raise
        except duckdb.Error as exc:
            session.statement_failed()
            raise errors.from_engine_error(exc) from None

    def record_unadmitted(self, session: Session, text: str, error: QueryError, *, kind: str = "") -> None:
        """Audit a statement refused before admission (its parameters, an aborted transaction): no Execution will."""
        audit = self.governor.new_audit(text, _dialect(session))
        audit.statement_kind = kind
        self._record_control(session, audit, error)

    def _run_control(self, session: Session, prepared: PreparedStatement,
                     params: Sequence[bytes | None] | None = None, param_formats: Sequence[int] = ()) -> Outcome:
        """Run a statement DuckDB does not answer (SET, SHOW, BEGIN, COMMIT, FETCH...) and audit it once.

        Its record is written after it ran, with its outcome. These statements read no table data
        (a cursor's rows are audited by its DECLARE's own record), so a record that cannot be stored
        is logged and counted but does not undo them: a ROLLBACK must work with the audit store down.
        """
        audit = self.governor.new_audit(prepared.text, _dialect(session))
        audit.statement_kind = prepared.kind.value
        # Recorded as the session was when the statement came: a SET of hd.request_id belongs to the request before.
        subject, settings = self.subject(session), _settings_map(session)
        try:
            if session.transaction_status == FAILED_TRANSACTION and not ends_transaction(prepared):
                raise errors.transaction_aborted()
            if prepared.kind is Kind.SETTING:
                outcome = self._run_setting(session, prepared)
            elif prepared.kind is Kind.TRANSACTION:
                outcome = self._transactions.run(session, prepared.text)
            elif prepared.kind is Kind.CURSOR:
                outcome = self._cursors.run(session, prepared.text, params, param_formats, prepared.declared_oids)
            elif prepared.kind is Kind.DISCARD:
                outcome = self._run_discard(session)
            elif prepared.kind is Kind.PREPARE:
                outcome = self._sql_prepared.prepare(session, prepared.text)
            else:
                outcome = self._sql_prepared.deallocate(session, prepared.text)
        except Audited as done:  # a DECLARE or PREPARE whose query was refused or failed: that record stands for it
            session.statement_failed()
            raise done.error from None
        except QueryError as exc:
            session.statement_failed()
            self._record_control(session, audit, exc, as_of=(subject, settings))
            raise
        except duckdb.Error as exc:
            session.statement_failed()
            error = errors.from_engine_error(exc)
            self._record_control(session, audit, error, as_of=(subject, settings))
            raise error from None
        except Exception as exc:  # noqa: BLE001 - a bug in a settings, transaction or cursor statement
            session.statement_failed()
            raise self._refuse_unexpected(session, audit, exc) from None
        if not declares_cursor(prepared):  # a DECLARE's record is its query's, written by its Execution
            self._record_control(session, audit, as_of=(subject, settings))
        return outcome

    def _record_control(self, session: Session, audit: StatementAudit, error: QueryError | None = None, *,
                        as_of: tuple[Subject, dict[str, str]] | None = None) -> None:
        """Store the record of a statement no Execution records; the statement's outcome stands either way."""
        if error is not None and audit.error is None:
            audit.error = {"sqlstate": error.sqlstate, "code": error.code, "message": error.message}
        subject, settings = as_of if as_of is not None else (self.subject(session), _settings_map(session))
        self.governor.record_denial(subject, settings, audit)

    def _decode_parameters(self, session: Session, prepared: PreparedStatement,
                           params: Sequence[bytes | None] | None, formats: Sequence[int]) -> list[object]:
        if not params:
            required = len(prepared.declared_oids)
            if prepared.kind is Kind.ENGINE and not required and "$" in prepared.engine_sql:
                required = len(self._shape(session, prepared).parameter_types)
            if required and params is None:  # a simple query: `$n` names nothing (PostgreSQL's 42P02)
                raise QueryError("42P02", "HD_ERR_UNDEFINED_PARAMETER", "there is no parameter $1",
                                 hint="Send the values with the extended protocol (your driver's parameters), "
                                      "or write them into the statement.")
            if required:
                raise QueryError("08P01", "HD_ERR_PROTOCOL",
                                 f"bind message supplies 0 parameters, but prepared statement requires {required}")
            return []
        types = self.parameter_types(session, prepared)
        if len(params) != len(types):
            raise QueryError(
                "08P01", "HD_ERR_PROTOCOL",
                f"bind message supplies {len(params)} parameters, but prepared statement requires {len(types)}",
            )
        values: list[object] = []
        for i, raw in enumerate(params):
            binary = format_code(formats, i) == 1
            try:
                values.append(decode_parameter(raw, types[i].oid, binary))
            except ParameterFormatError as exc:
                raise QueryError("22P02", "HD_ERR_INVALID_PARAMETER", f"parameter ${i + 1}: {exc}") from None
        return values

    def _admit(self, session: Session, prepared: PreparedStatement, *, take_slot: bool,
               engine: EngineSession | None = None, audited_as: tuple[str, str] | None = None) -> Execution:
        """Re-check the statement against current policy and admit it; the Execution tracks it from here.

        `audited_as` (text, kind): the statement the client sent when `prepared` is what it runs as
        (a COPY's SELECT or INSERT); its record carries that text and kind.
        """
        slot_held = take_slot and session.slot_held  # taken by `enter_gate` for this statement: not again
        take_slot = take_slot and not slot_held
        timeout = self._timeout(session)
        fresh, prepared.fresh = prepared.fresh, None
        if (fresh is not None and audited_as is None and engine is None and prepared.plan is not None
                and fresh[1] == self._plan_versions()):
            # Planned a moment ago for this very execution (a simple query), against the policy and
            # tables still current: that audit (its stages' verdicts, start and deadline) is this
            # statement's one record, and planning it again would only find the same plan. Nothing
            # ran on the session in between, so who asks and their settings are as they were.
            audit, _, subject, settings = fresh
            replan = False
        else:
            settings = _settings_map(session)
            subject = self.governor.subject(session.principal, settings, _peer_ip(session.client_address))
            audit = self._statement_audit(session, audited_as[0] if audited_as else prepared.text, engine,
                                          timeout, dialect=_dialect_in(settings))
            replan = True
        try:
            try:
                plan = (self._plan(session, prepared.text, audit, prepared.engine_sql if prepared.is_catalog else None,
                                   subject) if replan else prepared.plan)
                assert plan is not None
            finally:
                if audited_as is not None:
                    audit.statement_kind = audited_as[1]
            if plan.engine_sql != prepared.engine_sql:  # the policy changed since Parse
                prepared.engine_sql, prepared.shape = plan.engine_sql, None
            prepared.plan = audit.plan = plan
            self.governor.admit(subject, plan, audit, take_slot=take_slot, slot_held=slot_held)
        except QueryError:
            self.governor.record_denial(subject, settings, audit)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug, or nesting sqlglot cannot follow (a re-plan)
            raise self._refuse_unexpected(session, audit, exc) from None
        execution = Execution(self.governor, subject, settings, audit, holds_slot=take_slot,
                              on_timeout=(engine or session.engine).interrupt,
                              timeout_seconds=audit.remaining_seconds(timeout))
        session.track(execution)
        return execution

    def _statement_audit(self, session: Session, text: str, engine: EngineSession | None = None,
                         timeout: float | None = None, *, dialect: str | None = None) -> StatementAudit:
        """A statement's audit, with its timeout counting from now and cancels of `engine` noticed between stages."""
        engine = engine or session.engine
        mark = engine.interrupts
        return self.governor.new_audit(text, dialect or _dialect(session),
                                       timeout_seconds=self._timeout(session) if timeout is None else timeout,
                                       interrupted=lambda: engine.interrupts != mark)

    def _timeout(self, session: Session) -> float:
        """The session's statement_timeout (ms, 0 = none), capped by the host's limit."""
        host = self.governor.limits.statement_timeout_seconds
        try:
            own = _duration_ms(session.settings.get("statement_timeout")) / 1000
        except QueryError:
            own = 0
        return min(own, host) if own > 0 else host

    @contextmanager
    def ending_on_failure(self, session: Session, execution: Execution, own_transaction: bool = False
                          ) -> Iterator[None]:
        """End `execution` with whatever escapes the block (rolled back, slot released, one record), and
        raise it as the client's error: DuckDB's mapped, ours as it is, anything else (a bug) as XX000."""
        try:
            yield
        except duckdb.Error as exc:
            error = execution.engine_error(exc)
            self._abandon(session, own_transaction, execution, error)
            raise error from None
        except QueryError as exc:
            self._abandon(session, own_transaction, execution, exc)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: release the slot, write the record, as any failure
            error = errors.unexpected_failure(exc, execution.audit.query_id)
            self._abandon(session, own_transaction, execution, error)
            raise error from None

    def _run_engine(self, session: Session, prepared: PreparedStatement, values: list[object]) -> Outcome:
        execution = self._admit(session, prepared, take_slot=True)
        if execution.audit.trace is not None:
            execution.audit.trace.open_stage("execute")  # DuckDB and the rows' way out, until the record
        plan = prepared.plan
        assert plan is not None
        # A write outside a transaction block runs in one of its own, committed only once its audit
        # record is stored: a write whose record cannot be written is rolled back (fail closed).
        own_transaction = plan.kind not in ("select", "explain", "catalog") and not session.in_transaction
        with self.ending_on_failure(session, execution, own_transaction):
            execution.on_finish(self._hold_data(plan).release)  # the lease lasts until the rows are sent
            if own_transaction:
                self._engine_command(session, "BEGIN TRANSACTION")
            stype = prepared.statement_type
            # INSERT/UPDATE/DELETE return rows only with RETURNING; ask the binder before the statement runs.
            returning = stype in _ROWS_TAGS and self._shape(session, prepared).returns_rows
            stream = session.engine.run(prepared.engine_sql, values)
            execution.on_finish(stream.close)  # closed before the lease is released
            rows: RowSource = RowSource(stream)
            if plan.kind == "explain":
                rows = RowSource(_client_explain(stream, hide_estimates=bool(plan.filtered_tables)))  # type: ignore[arg-type]
            columns = None
            if stype in ("SELECT", "EXPLAIN") or returning or (stype not in _ROWS_TAGS
                                                                and _has_result_rows(stream.schema)):
                columns = _result_columns(prepared, plan, stream.schema, self._result_types)
            if columns is not None and not own_transaction:
                max_rows = self.governor.max_rows(session.principal.org_id)
                governed = GovernedRows(rows, execution, max_rows=max_rows)
                return Outcome(tag="", columns=columns, rows=governed,
                               row_tag=_ROWS_TAGS.get(stype, "SELECT") if stype in _ROWS_TAGS else "SELECT")
            if columns is not None:  # RETURNING rows of a write: held until the record is stored
                batches = _read_all(rows)
                execution.audit.rows = sum(b.num_rows for b in batches)
                count = execution.audit.rows
            else:
                count = _read_count(rows)
                execution.audit.rows = 0
            if stype in _ROWS_TAGS:
                execution.audit.rows_written = count
            execution.finish()
        if own_transaction:
            self._engine_command(session, "COMMIT")
        if plan.schema_changed:
            self._schema_changed(session, plan)
        if columns is not None:
            return Outcome(tag="", columns=columns, rows=RowSource(_BatchStream(batches)),  # type: ignore[arg-type]
                           row_tag=_ROWS_TAGS.get(stype, "SELECT"))
        if stype in _ROWS_TAGS:
            return Outcome(tag=f"{_ROWS_TAGS[stype]} {count}")
        return Outcome(tag=_ddl_tag(prepared.engine_sql, count))

    def _schema_changed(self, session: Session, plan: GovernedPlan) -> None:
        """After DDL: inside a transaction only this session sees it until COMMIT; outside, everyone does."""
        if session.in_transaction:
            tables = self.governor.tables
            session.engine.apply(lambda cursor: setattr(session, "local_tables", tables.session_view(cursor)))
            session.pending_ddl.append(plan)
        else:
            self.governor.schema_changed(self.subject(session), plan)

    def _abandon(self, session: Session, own_transaction: bool, execution: Execution, error: QueryError) -> None:
        """Undo a failed statement's own transaction and finish its execution with the error."""
        if own_transaction:
            try:
                self._engine_command(session, "ROLLBACK")
            except duckdb.Error:
                pass  # DuckDB already rolled the failed transaction back
        try:
            execution.finish(error)
        except QueryError:
            pass  # the statement fails with `error` either way; the sink's failure is logged

    def _run_setting(self, session: Session, prepared: PreparedStatement) -> Outcome:
        cmd = prepared.setting
        assert cmd is not None
        settings = session.settings
        if cmd.verb == "SHOW":
            if cmd.name.strip().upper() == "ALL":
                return _static_rows(_show_columns("ALL"), [[n, v, ""] for n, v in settings.all()], "SHOW")
            return _static_rows(_show_columns(cmd.name), [[settings.get(cmd.name)]], "SHOW")
        if cmd.verb == "SET TRANSACTION":
            check_transaction_mode(cmd.value)
            return Outcome(tag="SET")
        if cmd.verb == "RESET":
            if cmd.name.strip().upper() == "ALL":
                changed = settings.reset_all()
            else:
                _check_session_setting(cmd.name, None)
                one = settings.reset(cmd.name)
                changed = [one] if one else []
            return Outcome(tag="RESET", parameter_status=[(n, settings.get(n)) for n in changed])
        _check_session_setting(cmd.name, cmd.value)
        reported = settings.set(cmd.name, cmd.value)
        status = [(reported, settings.get(reported))] if reported else []
        return Outcome(tag="SET", parameter_status=status)

    def _engine_command(self, session: Session, sql: str) -> None:
        try:
            session.engine.run(sql).close()
        except duckdb.TransactionException:
            if sql == "ROLLBACK":  # DuckDB already rolled the failed transaction back
                return
            raise

    def _run_discard(self, session: Session) -> Outcome:
        for cursor in session.cursors.values():
            cursor.close()
        session.cursors.clear()
        deallocate_all(session)
        changed = session.settings.reset_all()
        return Outcome(tag="DISCARD ALL", parameter_status=[(n, session.settings.get(n)) for n in changed])

    def describe_cursor(self, session: Session, name: str) -> list[ResultColumn] | None:
        """Columns of a DECLAREd cursor (drivers Describe it as a portal), or None if there is none."""
        return self._cursors.describe(session, name)


# --- module helpers ------------------------------------------------------------------------------


class _SettingsView(Mapping[str, str]):
    """A session's settings (name -> value, sorted by name), read only if something asks.

    The catalog answers read them only for a catalog query; most statements are not one.
    """

    def __init__(self, settings: SessionSettings):
        self._settings = settings
        self._values: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        if self._values is None:
            self._values = dict(self._settings.all())
        return self._values

    def __getitem__(self, name: str) -> str:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


class _NothingHeld(AbstractContextManager["_NothingHeld"]):
    def release(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


_NOTHING_HELD = _NothingHeld()


def _declared(plan: GovernedPlan | None) -> tuple[PgType | None, ...]:
    return plan.declared_types if plan is not None else ()


def _catalog_type(source: object) -> PgType:
    """Catalog answers carry oid columns as DuckDB UINTEGER; drivers (asyncpg) need them typed oid."""
    if isinstance(source, pa.DataType):
        element = source.value_type if pa.types.is_list(source) else None
        oid_like = source == pa.uint32() or element == pa.uint32()
        base = pg_type_for_arrow(source)
    else:
        name = str(source)
        oid_like = name in ("UINTEGER", "UINTEGER[]")
        base = pg_type_for_duckdb(source)
    if not oid_like:
        return base
    found = pg_type_by_oid(OID_ARRAY if base.element is not None else OID)
    assert found is not None
    return found


def _text() -> PgType:
    pgtype = pg_type_by_oid(TEXT)
    assert pgtype is not None
    return pgtype


def _show_columns(name: str) -> list[ResultColumn]:
    if name.strip().upper() == "ALL":
        return [ResultColumn("name", _text()), ResultColumn("setting", _text()), ResultColumn("description", _text())]
    label = "_".join(name.lower().split())
    if label == "transaction_isolation_level":
        label = "transaction_isolation"
    return [ResultColumn(label, _text())]


class _BatchStream:
    """Batches already in memory (SHOW answers, held RETURNING rows) presented like a DuckDB stream."""

    def __init__(self, batches: list[pa.RecordBatch], schema: pa.Schema | None = None):
        self._batches = list(batches)
        self.schema = schema if schema is not None else (batches[0].schema if batches else pa.schema([]))

    def next_batch(self) -> pa.RecordBatch | None:
        return self._batches.pop(0) if self._batches else None

    def close(self) -> None:
        self._batches = []


# DuckDB's row estimates in an EXPLAIN box ("~1,234 rows") and in JSON ("Estimated Cardinality").
_ESTIMATE = re.compile(r"~[\d,.]+(?= rows?\b)|(?<=Estimated Cardinality: )[\d,.]+|(?<=EC: )[\d,.]+")


def _client_explain(stream: ResultStream, *, hide_estimates: bool) -> _BatchStream:
    """The physical plan only (the engine also returns the logical plans the bound-plan check reads).

    Row estimates count every tenant's rows of a table, so a session that sees only some rows
    (a row filter applies) gets the plan without them.
    """
    try:
        batches = list(iter(stream.next_batch, None))
    finally:
        stream.close()
    table = pa.Table.from_batches(batches, stream.schema)
    keys, values = table.column(0).to_pylist(), table.column(1).to_pylist()
    kept = [(k, v) for k, v in zip(keys, values, strict=True) if k == "physical_plan"]
    if hide_estimates:
        kept = [(k, _ESTIMATE.sub(lambda m: "?".ljust(len(m.group(0))), v or "")) for k, v in kept]
    batch = pa.RecordBatch.from_arrays([pa.array([k for k, _ in kept], pa.string()),
                                        pa.array([v for _, v in kept], pa.string())], schema=stream.schema)
    return _BatchStream([batch], stream.schema)


def _static_rows(columns: list[ResultColumn], rows: list[list[str]], row_tag: str) -> Outcome:
    arrays = [pa.array([row[i] for row in rows], pa.string()) for i in range(len(columns))]
    batch = pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])
    source = RowSource(_BatchStream([batch]))  # type: ignore[arg-type]
    return Outcome(tag="", columns=columns, rows=source, row_tag=row_tag)


def _result_columns(prepared: PreparedStatement, plan: GovernedPlan, schema: pa.Schema,
                    known: RecentlyUsed[tuple[int, bool], tuple[GovernedPlan, pa.Schema, tuple[ResultColumn, ...]]]
                    ) -> list[ResultColumn]:
    """The result columns of `schema` as PostgreSQL types, kept per plan (the cache's plans) while the schema stays."""
    key = (id(plan), prepared.is_catalog)
    found = known.get(key)
    if found is not None and found[0] is plan and found[1].equals(schema):
        return list(found[2])
    to_pg = _catalog_type if prepared.is_catalog else pg_type_for_arrow
    types = with_declared([to_pg(f.type) for f in schema], plan.declared_types)
    columns = [ResultColumn(f.name, t) for f, t in zip(schema, types, strict=True)]
    known.put(key, (plan, schema, tuple(columns)))  # the plan is kept with them, so its id is not reused
    return columns


def _has_result_rows(schema: object) -> bool:
    names = list(getattr(schema, "names", []))
    return names not in (["Count"], ["Success"], [])


def _read_count(rows: RowSource) -> int:
    total = 0
    while True:
        batch = rows.read()
        if batch is None:
            return total
        if batch.num_columns and batch.schema.names[0] == "Count":
            total += sum(v or 0 for v in batch.column(0).to_pylist())


def _ddl_tag(sql: str, count: int) -> str:
    words = [w for w in leading_words(sql, 6) if w not in ("OR", "REPLACE", "TEMP", "TEMPORARY", "IF", "NOT",
                                                             "EXISTS", "UNIQUE", "PERSISTENT")]
    if not words:
        return "OK"
    if words[0] in ("CREATE", "DROP", "ALTER") and len(words) > 1:
        if words[0] == "CREATE" and words[1] == "TABLE" and " AS " in f" {sql.upper()} ":
            return f"SELECT {count}"
        return f"{words[0]} {words[1]}"
    return words[0]


# Agent identity may arrive as plain startup parameters; they are kept as `hd.*` settings. Who the
# agent is feeds row filters, masks and ABAC: only the startup packet may say it, and no statement
# may change it (SessionSettings refuses every identity setting, 42501).
_AGENT_STARTUP_NAMES = {"agent_id": "hd.agent_id", "agent_framework": "hd.agent_framework",
                        "framework": "hd.agent_framework", "request_id": "hd.request_id", "priority": "hd.priority"}


def _startup_settings(startup: dict[str, str]) -> dict[str, str]:
    """Startup packet keys that are settings (not user/database/options), plus `-c name=value` options."""
    values = {_AGENT_STARTUP_NAMES.get(k, k): v for k, v in startup.items()
              if k not in ("user", "database", "options", "replication")}
    for m in re.finditer(r"(?:-c\s*|--)([\w.]+)=((?:\\ |\S)+)", startup.get("options", "")):
        values[_AGENT_STARTUP_NAMES.get(m.group(1), m.group(1))] = m.group(2).replace("\\ ", " ")
    return values


def _check_session_setting(name: str, value: str | None) -> None:
    """What SET/RESET may not do beyond what SessionSettings refuses (identity, unknown hd.* names)."""
    key = " ".join(name.lower().split())
    if key == "hd.dialect" and value is not None and value.strip("'\" ").lower() not in SUPPORTED_DIALECTS:
        raise _bad_dialect(value)


def _bad_dialect(value: str) -> QueryError:
    return QueryError("22023", "HD_ERR_UNKNOWN_DIALECT", f"unknown SQL dialect {value!r}",
                      hint=f"Use one of: {', '.join(SUPPORTED_DIALECTS)}.")


@lru_cache(maxsize=256)
def _duration_ms(value: str) -> int:
    """`duration_milliseconds`, remembered: every statement reads its session's statement_timeout."""
    return duration_milliseconds(value)


def _settings_map(session: Session) -> dict[str, str]:
    return session.settings.with_prefix("hd.")


def _dialect(session: Session) -> str:
    return _dialect_of(session.settings)


def _dialect_in(settings: Mapping[str, str]) -> str:
    """The dialect in a session's `hd.*` settings (`_settings_map`), as `_dialect_of` reads it."""
    return settings.get("hd.dialect", "postgres").strip().lower()


def _dialect_of(settings: SessionSettings) -> str:
    return settings.with_prefix("hd.dialect").get("hd.dialect", "postgres").strip().lower()


def _peer_ip(client_address: str) -> str | None:
    """The client's IP address (the wire layer passes the peer host; IPv6 may carry a zone)."""
    host = client_address.rsplit("%", 1)[0].strip("[]")
    return host or None


def _read_all(rows: RowSource) -> list[pa.RecordBatch]:
    batches = []
    while (batch := rows.read()) is not None:
        batches.append(batch)
    return batches
