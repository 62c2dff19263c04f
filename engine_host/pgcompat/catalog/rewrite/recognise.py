"""Whether a statement is a catalog query: a cheap text check, then what its parsed AST reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import traverse_scope
from sqlglot.tokens import TokenType

from engine_host.pgcompat.catalog.relations import _SPECS, _RelationSpec
from engine_host.pgcompat.catalog.rewrite.nodes import _REG_TYPES, _cast_target, _func_name, _sql_function_name

# Words without which a statement cannot be a catalog query. Checked on the raw text before any
# parsing, so ordinary SQL (the overwhelming majority) costs a few substring searches: plain `in`
# tests on the lower-cased text first (about 1 us), the regex (10x slower) only when one hits.
_HINT_WORDS = (
    "pg_", "information_schema", "version", "current_", "session_user", "reg", "oid", "format_type",
    "_description", "_privilege", "txid_", "inet_", "set_config",
)
_CATALOG_HINT = re.compile(
    r"pg_|information_schema|version\s*\(|current_(?:schema|database|user|role|catalog|setting)|session_user"
    r"|\breg(?:class|type|proc|procedure|namespace|role|oper|operator|config|dictionary|collation)\b"
    r"|\boid\b|format_type|_description\s*\(|_privilege\s*\(|txid_|inet_(?:server|client)|set_config"
    r"|to_reg",
    re.IGNORECASE,
)

# DuckDB functions a catalog query must never smuggle in: they read files, other queries,
# the environment or DuckDB's own unfiltered catalog. Such statements are left to the guard.
_DENIED_FUNCTION = re.compile(
    r"^(?:read_\w*|glob|query|query_table|getenv|duckdb_\w*|pragma_\w*|sniff_\w*|parquet_\w*|iceberg_\w*"
    r"|delta_\w*|which_secret|load_\w*|install_\w*|checkpoint|force_checkpoint|set_variable|getvariable"
    r"|stats|summary|sql_auto_complete|json_execute_serialized_sql|from_substrait\w*|get_substrait\w*"
    r"|test_\w*|enable_\w*|disable_\w*|current_query|error|txid_snapshot\w*)$"
)

# Functions (besides any pg_* name) that make a statement a catalog query.
_CATALOG_FUNCTIONS = frozenset({
    "version", "current_database", "current_catalog", "current_schema", "current_schemas", "current_user",
    "session_user", "current_role", "current_setting", "set_config", "format_type", "obj_description",
    "col_description", "shobj_description", "txid_current", "inet_server_addr", "inet_server_port",
    "inet_client_addr", "inet_client_port", "to_regclass", "to_regtype", "to_regproc", "to_regnamespace",
    "to_regrole", "getdatabaseencoding", "has_table_privilege", "has_schema_privilege",
    "has_database_privilege", "has_column_privilege", "has_any_column_privilege", "has_function_privilege",
    "has_sequence_privilege", "has_language_privilege", "has_tablespace_privilege",
    "has_foreign_data_wrapper_privilege", "has_server_privilege", "has_type_privilege",
})

# Set-returning functions allowed in the FROM clause of a catalog query.
_TABLE_FUNCTIONS = frozenset({
    "generate_series", "unnest", "pg_get_keywords", "pg_show_all_settings", "pg_partition_ancestors",
    "generate_subscripts",
})

# Scalar functions PostgreSQL also accepts in FROM, as a one-row relation whose one column is named by
# the alias (Grafana reads its search_path as `FROM string_to_array(current_setting('search_path'), ',') s`).
SCALAR_FUNCTIONS_IN_FROM = frozenset({
    "string_to_array", "regexp_split_to_array", "current_setting", "current_schemas", "current_schema",
    "current_database", "current_user", "session_user", "version",
})

_UNQUALIFIED = frozenset(spec.relname for spec in _SPECS.values() if spec.schema == "pg_catalog")


@dataclass
class _Classification:
    catalog_tables: dict[int, _RelationSpec] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    has_marker: bool = False


def mentions_catalog(sql: str) -> bool:
    """False for text that cannot be a catalog query (most SQL), decided without parsing."""
    lowered = sql.lower()
    return any(word in lowered for word in _HINT_WORDS) and _CATALOG_HINT.search(sql) is not None


def parse_query(sql: str) -> exp.Query | None:
    """The one query `sql` holds, parsed as PostgreSQL; None for anything else."""
    try:
        statements = [s for s in sqlglot.parse(_patch_array_casts(sql), read="postgres") if s is not None]
    except SqlglotError:
        return None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        return None
    return statements[0]


def classify(tree: exp.Expr, database_name: str) -> _Classification | None:
    """What the statement reads; None if it reads anything that is not the catalog."""
    try:
        scopes = traverse_scope(tree)
    except (SqlglotError, KeyError, ValueError, TypeError, AttributeError, RecursionError):
        return None  # sqlglot cannot scope it, so it is nothing we answer
    cte_refs = {
        id(table) for scope in scopes for table in scope.tables
        if not table.args.get("db") and table.name in scope.cte_sources
    }
    found = _Classification()
    for table in tree.find_all(exp.Table):
        if id(table) in cte_refs:
            continue
        if isinstance(table.this, exp.Func):
            name = _func_name(table.this)
            if name not in _TABLE_FUNCTIONS and name not in SCALAR_FUNCTIONS_IN_FROM:
                return None
            found.has_marker = found.has_marker or bool(name and name.startswith("pg_"))
            continue
        catalog = table.catalog
        if catalog and catalog.lower() != database_name.lower():
            return None
        db = table.db.lower()
        name = table.name if table.this.args.get("quoted") else table.name.lower()
        if db == "pg_catalog" or (not db and name in _UNQUALIFIED):
            key = name
        elif db == "information_schema":
            key = f"information_schema.{name}"
        else:
            return None  # a user relation: never answered here
        spec = _SPECS.get(key)
        if spec is None:
            found.unsupported.append(f"{db or 'pg_catalog'}.{name}")
        else:
            found.catalog_tables[id(table)] = spec
    for func in tree.find_all(exp.Func):
        sql_name = _sql_function_name(func)
        if _DENIED_FUNCTION.match(sql_name):
            return None
        name = _func_name(func) or sql_name
        if name in _CATALOG_FUNCTIONS or name.startswith("pg_"):
            found.has_marker = True
    for cast in tree.find_all(exp.Cast):
        target = _cast_target(cast.to)
        if target and target.rstrip("[]") in _REG_TYPES | {"oid"}:
            found.has_marker = True
    if not (found.catalog_tables or found.unsupported or found.has_marker):
        return None
    return found



def parseable_catalog_text(sql: str) -> str:
    """The text of a catalog query as this module parses it (see `_patch_array_casts`)."""
    return _patch_array_casts(sql)


def _patch_array_casts(sql: str) -> str:
    """Rename `oid[]`, `regtype[]`... in casts so sqlglot parses them (it reads `oid[` as a subscript).

    Works on tokens, not text patterns, so string literals and comments are never touched.
    """
    if "[]" not in sql:
        return sql
    try:
        tokens = sqlglot.Dialect.get_or_raise("postgres").tokenize(sql)
    except SqlglotError:
        return sql
    edits = [
        tok.start for i, tok in enumerate(tokens[:-2])
        if tok.token_type == TokenType.OBJECT_IDENTIFIER
        and tokens[i + 1].token_type == TokenType.L_BRACKET and tokens[i + 2].token_type == TokenType.R_BRACKET
    ]
    for start in reversed(edits):
        sql = sql[:start] + "hd_" + sql[start:]
    return sql
