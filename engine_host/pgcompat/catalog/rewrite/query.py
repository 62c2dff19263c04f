"""The rewrite of one catalog query: each AST node handed to the rule for its kind."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from engine_host.pgcompat.catalog.relations import SCHEMA, _RelationSpec
from engine_host.pgcompat.catalog.rewrite.arrays import _array_literal
from engine_host.pgcompat.catalog.rewrite.casts import _CAST_TYPES
from engine_host.pgcompat.catalog.rewrite.functions import (
    _CONSTANTS,
    _MACRO_NAMES,
    _MACROS,
    _SESSION_PID,
    _SESSION_SETTING,
    _SESSION_USER,
    _TEMPLATE_ARG,
    _TEMPLATES,
    int4_series,
)
from engine_host.pgcompat.catalog.rewrite.nodes import (
    _REG_TYPES,
    _call,
    _cast_target,
    _func_name,
    _holds_oid,
    _in_output_position,
    _length,
    _literal_int,
    _parameters,
    _varchar,
    _zero_based,
)
from engine_host.pgcompat.catalog.rewrite.operators import _OPERATORS
from engine_host.pgcompat.catalog.rewrite.output_names import name_outputs
from engine_host.pgcompat.catalog.rewrite.parameters import _parameter_types
from engine_host.pgcompat.catalog.rewrite.recognise import SCALAR_FUNCTIONS_IN_FROM, _Classification
from engine_host.pgcompat.catalog.rewrite.session import SESSION_SEARCH_PATH, SESSION_SETTINGS_MAP
from engine_host.pgcompat.catalog.sql_text import _lit

if TYPE_CHECKING:
    from engine_host.pgcompat.catalog.responder import CatalogResponder

# The session's search_path (filled in per session by rewrite/session.py), and what is read from it:
# PostgreSQL looks a relation name up in pg_catalog first (unless the path places it), then along the
# path; a relation is visible when no relation of its name comes earlier (namespace.c).
_PATH = f"{SESSION_SEARCH_PATH}()"
_NAMESPACES = f"(SELECT nspname FROM {SCHEMA}.pg_namespace)"
_EXISTING_PATH = (f"(SELECT coalesce(list(__hd_p.s ORDER BY __hd_p.i), CAST([] AS VARCHAR[])) FROM (SELECT "
                  f"unnest({_PATH}) AS s, generate_subscripts({_PATH}, 1) AS i) AS __hd_p "
                  f"WHERE __hd_p.s IN {_NAMESPACES})")
_WITH_CATALOG = (f"CASE WHEN list_contains({_EXISTING_PATH}, 'pg_catalog') THEN {_EXISTING_PATH} "
                 f"ELSE list_prepend('pg_catalog', {_EXISTING_PATH}) END")


def _rank(nsp: str) -> str:
    return (f"CASE WHEN {nsp} = 'pg_catalog' AND NOT list_contains({_PATH}, 'pg_catalog') THEN 0 "
            f"ELSE list_position({_PATH}, {nsp}) END")


_CLASS_NAMES = f"SELECT oid AS __hd_oid, relname AS __hd_relname, relnamespace AS __hd_nsp FROM {SCHEMA}.pg_class"
_NAMESPACE_NAMES = f"SELECT oid AS __hd_oid, nspname AS __hd_nspname FROM {SCHEMA}.pg_namespace"
_TABLE_IS_VISIBLE = f"""(SELECT any_value({_rank("__hd_n.__hd_nspname")} IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM ({_CLASS_NAMES}) AS __hd_c2
        JOIN ({_NAMESPACE_NAMES}) AS __hd_n2 ON __hd_n2.__hd_oid = __hd_c2.__hd_nsp
        WHERE __hd_c2.__hd_relname = __hd_c.__hd_relname
        AND {_rank("__hd_n2.__hd_nspname")} < {_rank("__hd_n.__hd_nspname")}))
    FROM ({_CLASS_NAMES}) AS __hd_c JOIN ({_NAMESPACE_NAMES}) AS __hd_n ON __hd_n.__hd_oid = __hd_c.__hd_nsp
    WHERE __hd_c.__hd_oid = __hd_arg0)"""
# The hd_pg macros that read the search_path installed with the catalog, and their per-session forms.
_PATH_MACROS = {
    "is_visible_schema": f"(__hd_arg0 = 'pg_catalog' OR list_contains({_PATH}, __hd_arg0))",
    "qualified_name": f"CASE WHEN __hd_arg0 = 'pg_catalog' OR list_contains({_PATH}, __hd_arg0) "
                      f"THEN {SCHEMA}.quote_ident(__hd_arg1) "
                      f"ELSE {SCHEMA}.quote_ident(__hd_arg0) || '.' || {SCHEMA}.quote_ident(__hd_arg1) END",
}


# SQL keywords that stand for the session's user; sqlglot reads some of them (`user`) as column names.
_USER_KEYWORDS = frozenset({"user", "current_user", "session_user", "current_role"})


@dataclass
class _Translation:
    """A catalog query rewritten for DuckDB, before session values and visibility are applied."""

    tree: exp.Expr
    session_dependent: bool
    parameter_types: dict[int, int] = field(default_factory=dict)
    plain_sql: str | None = None


class _Translator:
    """Recognises catalog queries and turns them into DuckDB SQL over the hd_pg views (thread-safe)."""

    def __init__(self, responder: CatalogResponder):
        self._r = responder
        self.templates = {name: sqlglot.parse_one(sql, read="duckdb") for name, sql in _TEMPLATES.items()}
        self.templates["pg_table_is_visible"] = sqlglot.parse_one(_TABLE_IS_VISIBLE, read="duckdb")
        self.templates.update({name: sqlglot.parse_one(sql, read="duckdb") for name, sql in _PATH_MACROS.items()})
        self.templates["current_schemas_true"] = sqlglot.parse_one(_WITH_CATALOG, read="duckdb")
        self.templates["current_schemas_false"] = sqlglot.parse_one(_EXISTING_PATH, read="duckdb")

    # classification

    # translation

    def translate(self, tree: exp.Expr, found: _Classification) -> _Translation:
        if found.unsupported:
            names = ", ".join(sorted(set(found.unsupported)))
            message = f"catalog relation {names} is not available in Hardened Duck"
            return _Translation(sqlglot.parse_one(f"SELECT error({_lit(message)})", read="duckdb"), False)
        return _QueryRewrite(self._r, self.templates, found.catalog_tables).run(tree)


def _printed_as_text(node: exp.Expr) -> bool:
    """Whether a reg*[] value ends up cast to text or text[] (through COALESCE), or is a select item."""
    while isinstance(node.parent, exp.Coalesce | exp.Paren):
        node = node.parent
    parent = node.parent
    if isinstance(parent, exp.Cast):
        to = parent.to
        element = to.expressions[0] if to.this == exp.DType.ARRAY and to.expressions else to
        return element.this in (exp.DType.TEXT, exp.DType.VARCHAR, exp.DType.NAME)
    return _in_output_position(node)


class _QueryRewrite:
    """The AST transformation of one catalog query (one instance per query: it carries state)."""

    def __init__(self, responder: CatalogResponder, templates: Mapping[str, exp.Expr],
                 catalog_tables: Mapping[int, _RelationSpec]):
        self._r = responder
        self._templates = templates
        self._catalog_tables = catalog_tables
        self._session_dependent = False

    def run(self, tree: exp.Expr) -> _Translation:
        parameter_types = _parameter_types(tree)
        name_outputs(tree)
        # Children before parents, so each handler sees already-translated arguments but the
        # original parent (which decides e.g. whether a ::regclass is printed or compared).
        for node in reversed(list(tree.walk(bfs=False))):
            self._rewrite(node)
        return _Translation(tree, self._session_dependent, parameter_types)


    def _rewrite(self, node: exp.Expr) -> None:
        if isinstance(node, exp.Table):
            self._table(node)
        elif isinstance(node, exp.Column):
            self._column(node)
        elif isinstance(node, exp.Dot):
            if isinstance(node.this, exp.Identifier) and node.this.name.lower() in ("pg_catalog", "information_schema"):
                node.replace(node.expression)
        elif isinstance(node, exp.Collate):
            node.replace(node.this)  # PostgreSQL collation names mean nothing to DuckDB
        elif isinstance(node, exp.Operator):
            self._operator(node)
        elif isinstance(node, exp.Cast):
            self._cast(node)
        elif isinstance(node, exp.Bracket):
            self._subscript(node)
        elif isinstance(node, exp.EQ | exp.NEQ | exp.Coalesce):
            self._array_literal_operands(node)
        elif isinstance(node, exp.Any | exp.All) or (isinstance(node, exp.Anonymous) and node.name.lower() == "all"):
            self._quantified_array_literal(node)
        if isinstance(node, exp.CurrentSchema):
            # The first schema of the path that exists (NULL when none does), as PostgreSQL answers.
            node.replace(exp.Bracket(this=self._template("current_schemas_false"),
                                     expressions=[exp.Literal.number(1)], offset=1))
        elif isinstance(node, exp.Func) and not isinstance(node.parent, exp.Table):
            self._function(node)

    # relations

    def _table(self, table: exp.Table) -> None:
        if isinstance(table.this, exp.Func):
            self._table_function(table)
            return
        spec = self._catalog_tables.get(id(table))
        if spec is None:
            return
        alias = table.alias or spec.relname
        table.set("catalog", None)
        table.set("db", exp.to_identifier(SCHEMA))
        table.set("this", exp.to_identifier(spec.view))
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        if spec.view == "pg_settings":
            self._session_settings(table)

    def _session_settings(self, table: exp.Table) -> None:
        """pg_settings shows the session's values (a SET statement_timeout = '2min' reads 120000)."""
        self._session_dependent = True
        setting = exp.Coalesce(this=exp.Bracket(this=_call(SESSION_SETTINGS_MAP), expressions=[exp.column("name")]),
                               expressions=[exp.column("setting")])
        inner = exp.Select(expressions=[exp.Star(replace=[exp.alias_(setting, "setting")])]).from_(
            exp.Table(this=exp.to_identifier("pg_settings"), db=exp.to_identifier(SCHEMA)))
        table.replace(exp.Subquery(this=inner, alias=table.args["alias"].copy()))

    def _table_function(self, table: exp.Table) -> None:
        func = table.this
        name = _func_name(func)
        alias = table.args.get("alias")
        table.set("db", None)
        table.set("catalog", None)
        if name in ("pg_get_keywords", "pg_show_all_settings"):
            view = "pg_get_keywords" if name == "pg_get_keywords" else "pg_settings"
            table.set("this", exp.to_identifier(view))
            table.set("db", exp.to_identifier(SCHEMA))
            if not alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
            return
        if name in SCALAR_FUNCTIONS_IN_FROM:
            self._scalar_relation(table, func, name)
            return
        if name == "pg_partition_ancestors":
            # No partitioning in DuckDB: a relation's only ancestor is itself.
            args = func.expressions
            columns = [c.name for c in (alias.columns if alias else [])] or ["relid"]
            select = exp.select(exp.alias_(self._regclass_oid(args[0]), columns[0]))
            if table.args.get("ordinality"):
                select = select.select(exp.alias_(exp.Literal.number(1), columns[1] if len(columns) > 1 else "n"))
            new_alias = exp.TableAlias(this=exp.to_identifier(alias.name if alias else name))
            table.replace(exp.Subquery(this=select, alias=new_alias))
            return
        if name == "generate_series":
            table.set("this", int4_series(func) or func)
        if name == "generate_subscripts":
            low, high = self._subscript_bounds(func)
            table.set("this", _call("generate_series", low, high))
        if alias is not None and not alias.columns:
            # PostgreSQL names the single column of `FROM f(...) AS x` x as well; DuckDB would not.
            alias.set("columns", [alias.this.copy()])

    def _scalar_relation(self, table: exp.Table, func: exp.Func, name: str) -> None:
        """`FROM f(...) AS s` for a scalar f: PostgreSQL's one row, its column named s (or f)."""
        alias = table.args.get("alias")
        relation = alias.name if alias is not None and alias.name else name
        column = alias.columns[0].name if alias is not None and alias.columns else relation
        select = exp.select(exp.alias_(func, column, quoted=True, copy=False))
        table.replace(exp.Subquery(this=select, alias=exp.TableAlias(this=exp.to_identifier(relation, quoted=True))))
        self._function(func)

    def _column(self, column: exp.Column) -> None:
        if column.args.get("db") and column.db.lower() in ("pg_catalog", "information_schema"):
            column.set("db", None)
            column.set("catalog", None)
        elif not column.table and not column.this.args.get("quoted") and column.name.lower() in _USER_KEYWORDS:
            user = self._session_user()
            if isinstance(column.parent, exp.Select) and column.arg_key == "expressions":
                user = exp.alias_(user, column.name.lower(), quoted=True)  # `SELECT user` is named user
            column.replace(user)

    # expressions

    def _operator(self, node: exp.Operator) -> None:
        op = str(node.args.get("operator") or "").strip()
        op = op.split(".", 1)[1] if op.lower().startswith("pg_catalog.") else op
        build = _OPERATORS.get(op)
        if build is not None:
            node.replace(exp.Paren(this=build(node.this, node.expression)))

    def _cast(self, cast: exp.Cast) -> None:
        target = _cast_target(cast.to)
        if target is None:
            literal = cast.this
            if cast.to.this == exp.DType.ARRAY and isinstance(literal, exp.Literal) and literal.is_string:
                array = _array_literal(literal.name)
                if array is not None:
                    cast.set("this", array)
            return
        value = cast.this
        base = target[:-2] if target.endswith("[]") else target
        if target == "regtype[]" and _printed_as_text(cast):
            cast.replace(self._type_names(value))
            return
        if base in _REG_TYPES and not target.endswith("[]"):
            cast.replace(self._reg_cast(base, value, _in_output_position(cast)))
            return
        duck = _CAST_TYPES.get(base) or ("UINTEGER" if base in _REG_TYPES else None)
        if duck is None:
            return
        if isinstance(value, exp.Literal) and value.is_string and target.endswith("[]"):
            array = _array_literal(value.name)
            if array is not None:
                cast.set("this", array)
        cast.set("to", exp.DataType.build(duck + ("[]" if target.endswith("[]") else ""), dialect="duckdb"))

    def _type_names(self, oids: exp.Expr) -> exp.Expr:
        """`oids::regtype[]` printed: the list of type names (no lambda: format_type reads a table)."""
        names = sqlglot.parse_one(
            f"CASE WHEN __hd_arg0 IS NULL THEN NULL ELSE coalesce((SELECT list({SCHEMA}.format_type(__hd_u.t, NULL) "
            "ORDER BY __hd_u.i) FROM (SELECT unnest(CAST(__hd_arg0 AS UINTEGER[])) AS t, "
            "generate_subscripts(CAST(__hd_arg0 AS UINTEGER[]), 1) AS i) AS __hd_u), CAST([] AS VARCHAR[])) END",
            read="duckdb")
        for column in list(names.find_all(exp.Column)):
            if column.name == "__hd_arg0" and not column.table:
                column.replace(oids.copy())
        return exp.Paren(this=names)

    def _regclass_oid(self, value: exp.Expr) -> exp.Expr:
        """The OID a relation name or number stands for; numbers need no catalog lookup."""
        if _holds_oid(value):
            return self._uint(value)
        return self._template("regclass_oid", value)

    def _reg_cast(self, kind: str, value: exp.Expr, as_name: bool) -> exp.Expr:
        """`value::regclass` and friends: an OID where compared, a name where printed."""
        holds_oid = _holds_oid(value)
        if kind == "regclass":
            oid = self._regclass_oid(value)
            return self._template("regclass_name", oid) if as_name else oid
        if kind == "regtype":
            oid = self._uint(value) if holds_oid else _call("regtype_oid", _varchar(value), schema=SCHEMA)
            return _call("format_type", oid, exp.null(), schema=SCHEMA) if as_name else oid
        if kind == "regnamespace":
            oid = self._uint(value) if holds_oid else _call("regnamespace_oid", _varchar(value), schema=SCHEMA)
            return _call("regnamespace_name", oid, schema=SCHEMA) if as_name else oid
        if kind == "regrole":
            oid = self._uint(value) if holds_oid else _call("regrole_oid", _varchar(value), schema=SCHEMA)
            return _call("pg_get_userbyid", oid, schema=SCHEMA) if as_name else oid
        # regproc/regprocedure: catalog columns of these types already hold names.
        if isinstance(value, exp.Literal) and value.is_string:
            return exp.Literal.string(re.sub(r"(?i)^pg_catalog\.", "", value.name))
        if isinstance(value, exp.Column) and value.name.lower().endswith("oid"):
            return _call("regproc_name", self._uint(value), schema=SCHEMA)
        return _varchar(value)

    def _uint(self, value: exp.Expr) -> exp.Expr:
        return exp.Cast(this=value, to=exp.DataType.build("UINTEGER", dialect="duckdb"))

    def _subscript(self, node: exp.Bracket) -> None:
        if not _zero_based(node.this) or len(node.expressions) != 1:
            return
        index = node.expressions[0]
        value = _literal_int(index)
        # sqlglot stores PostgreSQL literal subscripts shifted to 0-based; other expressions as written.
        position = exp.Literal.number(value + 2) if value is not None else exp.Add(
            this=exp.Paren(this=index.copy()), expression=exp.Literal.number(1))
        node.replace(_call("list_extract", node.this.copy(), position))

    def _array_literal_operands(self, node: exp.Expr) -> None:
        """`conkey = '{1}'` and `coalesce(a, '{}')`: PostgreSQL array literals DuckDB cannot cast."""
        operands = node.expressions if isinstance(node, exp.Coalesce) else [node.this, node.expression]
        if isinstance(node, exp.Coalesce):
            operands = [node.this, *operands]
        if all(isinstance(o, exp.Literal) and o.is_string for o in operands):
            return
        for operand in operands:
            if isinstance(operand, exp.Literal) and operand.is_string:
                array = _array_literal(operand.name)
                if array is not None:
                    operand.replace(array)

    def _quantified_array_literal(self, node: exp.Expr) -> None:
        """`relkind = ANY('{r,p}')`: psycopg's client-side binding (pgspecial's \\dt) writes lists so.

        sqlglot reads `ALL('{...}')` as a call of a function named ALL, hence the Anonymous case.
        """
        operand = node.expressions[0] if isinstance(node, exp.Anonymous) and len(node.expressions) == 1 else node.this
        operand = operand.this if isinstance(operand, exp.Paren) else operand
        if isinstance(operand, exp.Literal) and operand.is_string:
            array = _array_literal(operand.name)
            if array is not None:
                operand.replace(array)

    def _subscript_bounds(self, func: exp.Expr) -> tuple[exp.Expr, exp.Expr]:
        args = func.expressions if isinstance(func, exp.Anonymous) else [func.this, func.expression]
        arr, dim = args[0], args[1] if len(args) > 1 else exp.Literal.number(1)
        offset = 0 if _zero_based(arr) else 1
        high = exp.Case(ifs=[exp.If(
            this=exp.EQ(this=dim.copy(), expression=exp.Literal.number(1)),
            true=exp.Add(this=_length(arr), expression=exp.Literal.number(offset - 1)),
        )])
        return exp.Literal.number(offset), high

    # functions

    def _function(self, node: exp.Func) -> None:
        name = _func_name(node)
        if name is None:
            return
        args = list(node.expressions) if isinstance(node, exp.Anonymous) else [
            a for a in (node.args.get("this"), node.args.get("expression")) if isinstance(a, exp.Expr)
        ]
        new = self._answer(name, node, args)
        if new is None:
            return
        lost = [a for a in args if _parameters(a) - _parameters(new)]
        if lost:
            # Every $n must stay in the statement or the client's Bind no longer matches it.
            keep = exp.and_(*[exp.NullSafeEQ(this=a.copy(), expression=a.copy()) for a in lost])
            new = exp.Case(ifs=[exp.If(this=keep, true=new)])
        node.replace(new)

    def _answer(self, name: str, node: exp.Func, args: list[exp.Expr]) -> exp.Expr | None:
        r = self._r
        if name == "version":
            return exp.Literal.string(r.version_text)
        if name in ("current_database", "current_catalog"):
            return exp.Literal.string(r.database_name)
        if name in ("current_user", "session_user", "current_role", "user", "getpgusername"):
            return self._session_user()
        if name == "current_schemas":
            if not args:
                return None
            return exp.If(this=args[0].copy(), true=self._template("current_schemas_true"),
                          false=self._template("current_schemas_false"))
        if name == "current_setting":
            if args and isinstance(args[0], exp.Literal) and args[0].is_string:
                self._session_dependent = True
                return _call(_SESSION_SETTING, args[0].copy())
            return _call("current_setting", args[0].copy(), schema=SCHEMA) if args else None
        if name == "pg_backend_pid":
            self._session_dependent = True
            return _call(_SESSION_PID)
        if name in ("txid_current", "pg_current_xact_id"):
            return _call("txid_current")
        if name in ("pg_postmaster_start_time", "pg_conf_load_time"):
            return exp.Cast(this=exp.Literal.string(r.started_at), to=exp.DataType.build("TIMESTAMPTZ"))
        if name in _CONSTANTS:
            return sqlglot.parse_one(_CONSTANTS[name], read="duckdb")
        if name.startswith("pg_stat_get_"):
            return exp.Cast(this=exp.null(), to=exp.DataType.build("BIGINT"))  # no statistics collector
        if name.startswith("has_") and name.endswith("_privilege"):
            return exp.true()  # what a session may see is decided by the visibility filter
        if name == "pg_get_expr":
            return _varchar(args[0]) if args else None
        if name in _TEMPLATES:
            if name == "pg_get_indexdef" and len(args) < 2:
                args = [args[0], exp.Literal.number(0)]
            if name in ("pg_get_viewdef", "obj_description") and args and not isinstance(args[0], exp.Column):
                args = [self._regclass_oid(args[0]), *args[1:]]
            return self._template(name, *args)
        if name == "to_regclass":
            return self._regclass_oid(args[0]) if args else None
        if name in _MACROS:
            wanted = _MACROS[name]
            call_args = [a.copy() for a in args[:wanted]]
            while len(call_args) < wanted:
                call_args.append(exp.null())
            return _call(_MACRO_NAMES.get(name, name), *call_args, schema=SCHEMA)
        if name in ("json_build_object", "jsonb_build_object"):
            return _call("json_object", *[a.copy() for a in args])
        if name in ("array_upper", "array_lower", "array_length", "cardinality", "array_ndims"):
            return self._array_bound(name, args)
        if name == "generate_subscripts":
            low, high = self._subscript_bounds(node)
            return exp.Unnest(expressions=[_call("generate_series", low, high)])
        if name == "pg_partition_ancestors":
            return exp.Unnest(expressions=[exp.Array(expressions=[self._regclass_oid(args[0])])])
        if name == "pg_partition_root":
            return self._regclass_oid(args[0])
        return None

    def _array_bound(self, name: str, args: list[exp.Expr]) -> exp.Expr:
        arr = args[0]
        offset = 0 if _zero_based(arr) else 1
        if name == "cardinality":
            return _length(arr)
        non_empty: exp.Expr = exp.GT(this=_length(arr), expression=exp.Literal.number(0))
        if len(args) > 1:
            non_empty = exp.and_(exp.EQ(this=args[1].copy(), expression=exp.Literal.number(1)), non_empty)
        value: exp.Expr
        if name == "array_upper":
            value = exp.Add(this=_length(arr), expression=exp.Literal.number(offset - 1))
        elif name == "array_lower":
            value = exp.Literal.number(offset)
        elif name == "array_ndims":
            value = exp.Literal.number(1)
        else:
            value = _length(arr)
        return exp.Case(ifs=[exp.If(this=non_empty, true=value)])

    def _template(self, name: str, *args: exp.Expr) -> exp.Expr:
        tree = self._templates[name].copy()
        for column in list(tree.find_all(exp.Column)):
            match = _TEMPLATE_ARG.match(column.name)
            if match and not column.table:
                column.replace(args[int(match.group(1))].copy())
        self._per_session_path(tree)
        return exp.Paren(this=tree)

    def _per_session_path(self, tree: exp.Expr) -> None:
        """Read the session's search_path where a template reads the one installed with the catalog."""
        for dot in list(tree.find_all(exp.Dot)):
            call = dot.expression
            if (isinstance(dot.this, exp.Identifier) and dot.this.name == SCHEMA and isinstance(call, exp.Anonymous)
                    and call.name in _PATH_MACROS):
                dot.replace(self._template(call.name, *call.expressions))
        if any(isinstance(c, exp.Anonymous) and c.name == SESSION_SEARCH_PATH for c in tree.find_all(exp.Anonymous)):
            self._session_dependent = True

    def _session_user(self) -> exp.Expr:
        self._session_dependent = True
        return _call(_SESSION_USER)
