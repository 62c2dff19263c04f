"""The PostgreSQL type of each result column where PostgreSQL declares one DuckDB's result cannot tell.

DuckDB has one string type, so its result says VARCHAR (sent as text, OID 25) for what PostgreSQL
declares as `character varying` (a table column, `'a'::varchar`), `name` (current_user,
current_database(), ...) or `name[]` (current_schemas()). The difference is decided here, at plan
time, on the governed tree before the PostgreSQL-semantics rewrite replaces the session functions
by literals: for each output column, the type to declare instead of the one the result's Arrow type
gives, or None to keep that one. Expressions (concatenation, lower(), string_agg ...) stay text, as
in PostgreSQL.

A table column whose DuckDB type is VARCHAR is declared `character varying`, as the catalog
(information_schema.columns, pg_attribute) describes every such column, Parquet-backed or not, so
that RowDescription and the catalog agree. Only the declared type changes: the value bytes of
varchar and name are those of text, in both formats.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from engine_host.pgcompat.types.declared import NAME, NAME_ARRAY, REGTYPE, VARCHAR, varchar_type
from engine_host.pgcompat.types.table import PgType
from engine_host.pipeline.governance.output_names import SQL_VALUE_KEYWORDS
from engine_host.pipeline.governance.pg_semantics import table_schema

log = logging.getLogger(__name__)

_NAME_FUNCTIONS: tuple[type[exp.Expr], ...] = (exp.CurrentUser, exp.SessionUser, exp.CurrentDatabase,
                                               exp.CurrentCatalog, exp.CurrentSchema)
# How deep a column reference is followed through subqueries and CTEs (each level is one scope).
_MAX_DEPTH = 32


def declared_types(tree: exp.Expr, column_types: Mapping[str, Sequence[tuple[str, str]]]
                   ) -> tuple[PgType | None, ...]:
    """Per output column of `tree`, the PostgreSQL type to declare instead of the result's own; () if unknown.

    `column_types` maps each governed table (`schema.table`) to its (column, DuckDB type) pairs.
    """
    if not isinstance(tree, exp.Query) or not _may_declare(tree, column_types):
        return ()
    schema = table_schema(column_types)
    try:
        qualified = qualify(tree.copy(), schema=schema, dialect="duckdb", validate_qualify_columns=False,
                            quote_identifiers=False, identify=False, expand_stars=True)
        root = build_scope(qualified)
    except (SqlglotError, KeyError, ValueError, AttributeError, TypeError) as exc:
        log.debug("result column types not known: %s", exc)
        return ()
    if root is None:
        return ()
    declared = _scope_types(root, column_types, 0)
    return declared if any(t is not None for t in declared) else ()


def _may_declare(tree: exp.Expr, column_types: Mapping[str, Sequence[tuple[str, str]]]) -> bool:
    """Whether any output column could be declared: a varchar column in a read table, or a node below that
    _expression_type declares (cheap to find; qualifying a copy of the tree is not)."""
    if any(str(kind).upper() == "VARCHAR" for columns in column_types.values() for _, kind in columns):
        return True
    for node in tree.walk():
        if isinstance(node, (*_NAME_FUNCTIONS, exp.CurrentSchemas)) or (
                type(node) is exp.Cast and _cast_type(node.to) is not None) or (
                isinstance(node, exp.Anonymous) and str(node.name).lower() == "pg_typeof") or (
                isinstance(node, exp.Column) and node.name.lower() in SQL_VALUE_KEYWORDS):
            return True
    return False


def _scope_types(scope: Scope, column_types: Mapping[str, Sequence[tuple[str, str]]],
                 depth: int) -> tuple[PgType | None, ...]:
    """The declared type of each projection of `scope`; a star that stayed unexpanded makes all unknown."""
    if depth > _MAX_DEPTH:
        return ()
    if scope.set_operation_scopes:
        # A set operation's column is varchar only when every branch's is (PostgreSQL resolves the types).
        branches = [_scope_types(s, column_types, depth + 1) for s in scope.set_operation_scopes]
        width = len(branches[0])
        if width == 0 or any(len(b) != width for b in branches):
            return ()
        return tuple(branches[0][i] if all(b[i] == branches[0][i] for b in branches) else None
                     for i in range(width))
    select = scope.expression
    if not isinstance(select, exp.Select):
        return ()
    projections = select.expressions
    if any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
           for p in projections):
        return ()
    return tuple(_expression_type(p, scope, column_types, depth) for p in projections)


def _expression_type(node: exp.Expr, scope: Scope, column_types: Mapping[str, Sequence[tuple[str, str]]],
                     depth: int) -> PgType | None:
    while isinstance(node, (exp.Alias, exp.Paren)):
        node = node.this
    if isinstance(node, exp.Cast) and type(node) is exp.Cast:
        return _cast_type(node.to)
    if isinstance(node, _NAME_FUNCTIONS):
        return NAME
    if isinstance(node, exp.CurrentSchemas):
        return NAME_ARRAY
    if isinstance(node, exp.Anonymous) and str(node.name).lower() == "pg_typeof":
        return REGTYPE
    if isinstance(node, exp.Column):
        if not node.table and not node.this.quoted and node.name.lower() in SQL_VALUE_KEYWORDS:
            return NAME
        return _column_type(node, scope, column_types, depth)
    return None


def _cast_type(to: exp.DataType) -> PgType | None:
    if to.this is exp.DType.NAME:
        return NAME
    if to.this is exp.DType.VARCHAR:
        params = to.expressions
        if len(params) == 1 and isinstance(params[0].this, exp.Literal) and params[0].this.is_int:
            return varchar_type(int(params[0].this.to_py()))
        return VARCHAR if not params else None
    return None


def _column_type(column: exp.Column, scope: Scope, column_types: Mapping[str, Sequence[tuple[str, str]]],
                 depth: int) -> PgType | None:
    source = scope.sources.get(column.table)
    if isinstance(source, exp.Table):
        name = f"{source.db}.{source.name}" if source.db else source.name
        kind = dict(column_types.get(name, ())).get(column.name)
        return VARCHAR if kind is not None and str(kind).upper() == "VARCHAR" else None
    if isinstance(source, Scope):
        inner = source.expression
        names = _output_names(inner)
        if column.name not in names or names.count(column.name) != 1:
            return None
        types = _scope_types(source, column_types, depth + 1)
        return types[names.index(column.name)] if len(types) == len(names) else None
    return None


def _output_names(query: exp.Expr) -> list[str]:
    while isinstance(query, exp.SetOperation):
        query = query.this
    return [p.alias_or_name for p in query.expressions] if isinstance(query, exp.Select) else []
