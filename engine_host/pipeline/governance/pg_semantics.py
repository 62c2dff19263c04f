"""PostgreSQL's meaning for what a PostgreSQL client writes, where DuckDB's differs, rewritten into the governed tree.

Runs in the transpile step, on the tree the policy rewrite produced, so the guard, the table extract
and the policy checks saw the client's statement unchanged. Each rewrite only calls functions on the
allow list (hd_core/sql_functions.py) or the rewrite's own `error()`:

- SQL value functions without parentheses (`current_date`, `current_timestamp(0)`, `localtime`, ...)
  become DuckDB calls of the same type (DuckDB reads a bare `current_date` as a column and binds it
  to the output alias PostgreSQL's name gives it);
- the session functions (`current_user`, `current_database()`, `current_schema`, ...) become the
  session's own values as escaped literals: DuckDB's would name the engine's process user and catalog;
- `/` divides integers as integers (truncating toward zero) and raises 22012 on zero for every type,
  as PostgreSQL does (DuckDB returns a double, and Infinity for a float or numeric divided by zero);
- aggregates and functions whose DuckDB type differs from PostgreSQL's are cast to PostgreSQL's
  (`sum(int4)` is int8, not DuckDB's HUGEINT served as numeric; `length()` is int4).

The types come from sqlglot's annotation of a qualified copy of the tree, with the columns of the
governed tables as the table catalog has them; where a type cannot be known the node keeps DuckDB's
meaning (nothing is read that the governed tree did not already read).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema
from sqlglot.tokens import Tokenizer, TokenType

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.pgcompat.gucs import InvalidSetting, split_identifiers
from engine_host.pgcompat.types.table import DUCKDB_SCALARS, SQL_TYPE_NAMES
from engine_host.pipeline.governance import pg_numeric
from engine_host.pipeline.governance.output_names import DATE_PART_MARK, SQL_VALUE_KEYWORDS

log = logging.getLogger(__name__)

# What `error()` raises for a division by zero: pipeline/errors.py maps the text to 22012.
DIVISION_BY_ZERO_MESSAGE = "Division by zero"
_MARK = "hd_typed"
_INTEGERS = frozenset({exp.DType.TINYINT, exp.DType.SMALLINT, exp.DType.INT, exp.DType.BIGINT,
                       exp.DType.UTINYINT, exp.DType.USMALLINT, exp.DType.UINT, exp.DType.UBIGINT,
                       exp.DType.INT128, exp.DType.UINT128})
# Integers PostgreSQL's sum() adds up in an int8 (int2, int4); a sum of int8 is numeric, as DuckDB's HUGEINT is served.
_SUMMED_AS_INT8 = frozenset({exp.DType.TINYINT, exp.DType.SMALLINT, exp.DType.INT, exp.DType.UTINYINT,
                             exp.DType.USMALLINT})
_FLOATS = frozenset({exp.DType.FLOAT, exp.DType.DOUBLE})
_DECIMALS = frozenset({exp.DType.DECIMAL, exp.DType.BIGDECIMAL})
# PostgreSQL's functions that return int4 where DuckDB's return BIGINT.
_INT4_FUNCTIONS: tuple[type[exp.Expr], ...] = (exp.Length, exp.StrPosition, exp.ArraySize, exp.BitLength)


@dataclass(frozen=True)
class PgSession:
    """What PostgreSQL's session functions return for one session."""

    user: str
    database: str
    # The schemas of the session's search_path that exist, in order (current_schemas(false)).
    schemas: tuple[str, ...]

    @property
    def current_schema(self) -> str | None:
        return self.schemas[0] if self.schemas else None


def search_path_schemas(search_path: str, user: str, existing: Collection[str]) -> tuple[str, ...]:
    """The schemas of `search_path` (a setting's text) that exist, in order, `$user` read as `user`.

    As PostgreSQL's fetch_search_path does: a schema that does not exist is skipped, and so is a repeat.
    """
    try:
        items = split_identifiers("search_path", search_path)
    except InvalidSetting:  # refused when it was SET; nothing to resolve
        return ()
    found: list[str] = []
    for item in items:
        schema = user if item == "$user" else item
        if schema in existing and schema not in found:
            found.append(schema)
    return tuple(found)


def apply_pg_semantics(tree: exp.Expr, session: PgSession | None,
                       column_types: Mapping[str, Sequence[tuple[str, str]]], text: str = "") -> None:
    """Rewrite `tree` (the governed tree, the caller's to change) to PostgreSQL's meaning, in place.

    `column_types` maps each governed table (`schema.table`) to its (column, DuckDB type) pairs; `text`
    is what the client wrote (it tells `date_part(...)` from `extract(...)`, one node in sqlglot's tree).
    """
    _type_names(tree)
    mark_date_parts(tree, text)
    if session is not None:
        _session_values(tree, session)
    _clock_functions(tree)
    _typed_rewrites(tree, column_types)


# --- session values -----------------------------------------------------------------------------


def _session_values(tree: exp.Expr, session: PgSession) -> None:
    for node in list(tree.find_all(exp.CurrentUser, exp.SessionUser, exp.CurrentDatabase, exp.CurrentCatalog,
                                   exp.CurrentSchema, exp.CurrentSchemas, exp.Column)):
        value = _session_value(node, session)
        if value is not None:
            node.replace(value)


def _session_value(node: exp.Expr, session: PgSession) -> exp.Expr | None:
    keyword = _value_keyword(node)
    if isinstance(node, (exp.CurrentUser, exp.SessionUser)) or keyword in (
            "user", "current_user", "session_user", "current_role"):
        return exp.Literal.string(session.user)
    if isinstance(node, (exp.CurrentDatabase, exp.CurrentCatalog)) or keyword == "current_catalog":
        return exp.Literal.string(session.database)
    if isinstance(node, exp.CurrentSchema) or keyword == "current_schema":
        schema = session.current_schema
        return exp.Literal.string(schema) if schema is not None else exp.cast(exp.null(), exp.DType.VARCHAR)
    if isinstance(node, exp.CurrentSchemas):
        implicit = _text_array(("pg_catalog", *(s for s in session.schemas if s != "pg_catalog")))
        explicit = _text_array(session.schemas)
        flag = node.this
        if isinstance(flag, exp.Boolean):
            return implicit if flag.this else explicit
        return exp.Case(ifs=[exp.If(this=flag.copy(), true=implicit)], default=explicit)
    return None


def _value_keyword(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Column) and not node.table and isinstance(node.this, exp.Identifier) and (
            not node.this.quoted and node.name.lower() in SQL_VALUE_KEYWORDS):
        return node.name.lower()
    return None


def _text_array(values: Sequence[str]) -> exp.Expr:
    array = exp.Array(expressions=[exp.Literal.string(v) for v in values])
    return exp.cast(array, exp.DataType.build("VARCHAR[]", dialect="duckdb"))


# --- pg_typeof() and ::name -----------------------------------------------------------------------

# PostgreSQL's name (format_type) for each DuckDB base type typeof() prints, as the wire declares it.
_PG_TYPE_NAMES: dict[str, str] = {duck: SQL_TYPE_NAMES.get(pg.name, pg.name) for duck, pg in DUCKDB_SCALARS.items()}
_PG_TYPE_NAMES["DECIMAL"] = "numeric"
_SESSION_NODES: tuple[type[exp.Expr], ...] = (exp.CurrentUser, exp.SessionUser, exp.CurrentDatabase,
                                              exp.CurrentCatalog, exp.CurrentSchema)


def _type_names(tree: exp.Expr) -> None:
    """`pg_typeof(x)` names PostgreSQL's type of x, not DuckDB's; `x::name` is a string (DuckDB has no name)."""
    for cast in list(tree.find_all(exp.Cast)):
        if cast.to.this is exp.DType.NAME:
            cast.set("to", exp.DataType.build("VARCHAR", dialect="duckdb"))
    for node in list(tree.find_all(exp.Anonymous)):
        if str(node.name).lower() == "pg_typeof" and len(node.expressions) == 1:
            node.replace(_pg_typeof(node.expressions[0]))


def _pg_typeof(argument: exp.Expr) -> exp.Expr:
    """The type name PostgreSQL's pg_typeof gives: known from the tree for the session functions and casts to
    varchar or name; else DuckDB's typeof() of the (rewritten) argument mapped to PostgreSQL's name. A string
    column reference is `character varying`, as the catalog declares the tables' string columns."""
    inner = argument.unnest() if isinstance(argument, exp.Paren) else argument
    if isinstance(inner, _SESSION_NODES) or _value_keyword(inner) is not None:
        return exp.Literal.string("name")
    if isinstance(inner, exp.CurrentSchemas):
        return exp.Literal.string("name[]")
    if isinstance(inner, exp.Cast) and inner.to.this is exp.DType.NAME:
        return exp.Literal.string("name")
    if isinstance(inner, exp.Cast) and inner.to.this is exp.DType.VARCHAR:
        return exp.Literal.string("character varying")
    names = dict(_PG_TYPE_NAMES)
    if isinstance(inner, exp.Column):
        names["VARCHAR"] = "character varying"
    duck = exp.Anonymous(this="typeof", expressions=[argument.copy()])
    base = exp.Anonymous(this="regexp_replace", expressions=[duck, exp.Literal.string(r"[(\[].*$"),
                                                             exp.Literal.string("")])
    named = exp.Case(this=base, ifs=[exp.If(this=exp.Literal.string(d), true=exp.Literal.string(p))
                                     for d, p in sorted(names.items())], default=exp.Literal.string("text"))
    is_array = exp.Anonymous(this="ends_with", expressions=[duck.copy(), exp.Literal.string("]")])
    suffix = exp.Case(ifs=[exp.If(this=is_array, true=exp.Literal.string("[]"))], default=exp.Literal.string(""))
    return exp.DPipe(this=named, expression=suffix, safe=True)


# --- current_date, current_timestamp, localtime, ... --------------------------------------------

_CLOCKS: dict[type[exp.Expr], str] = {
    exp.CurrentDate: "current_date", exp.CurrentTimestamp: "get_current_timestamp",
    exp.Localtimestamp: "current_localtimestamp", exp.CurrentTime: "get_current_time",
    exp.Localtime: "current_localtime",
}


def _clock_functions(tree: exp.Expr) -> None:
    for node in list(tree.find_all(*_CLOCKS)):
        precision = node.args.get("this")
        call = exp.Anonymous(this=_CLOCKS[type(node)], expressions=[])
        if isinstance(precision, exp.Literal) and not precision.is_string and type(node) is not exp.CurrentDate:
            node.replace(_rounded(type(node), int(precision.to_py())))
        else:
            node.replace(call)


def _rounded(kind: type[exp.Expr], precision: int) -> exp.Expr:
    """The clock read at `precision` fractional digits, rounded as PostgreSQL rounds (half away from zero)."""
    step = 10 ** (6 - max(0, min(precision, 6)))
    micros = exp.Anonymous(this="epoch_us", expressions=[exp.Anonymous(this="get_current_timestamp", expressions=[])])
    half_up = exp.Paren(this=exp.Add(this=micros, expression=exp.Literal.number(step // 2)))
    rounded = exp.Mul(this=exp.Paren(this=exp.IntDiv(this=half_up, expression=exp.Literal.number(step))),
                      expression=exp.Literal.number(step))
    local = kind in (exp.Localtimestamp, exp.Localtime)  # DuckDB casts no TIMESTAMPTZ to TIME
    instant = exp.Anonymous(this="make_timestamp" if local else "make_timestamptz", expressions=[rounded])
    targets: dict[type[exp.Expr], str] = {exp.CurrentTimestamp: "TIMESTAMPTZ", exp.Localtimestamp: "TIMESTAMP",
                                          exp.CurrentTime: "TIMETZ", exp.Localtime: "TIME"}
    target = targets[kind]
    return exp.cast(instant, exp.DataType.build(target, dialect="duckdb"))


# --- typed rewrites: division, aggregate and function result types ------------------------------

# Arithmetic whose int2 operand meets an integer literal: int4 in PostgreSQL, where DuckDB narrows the literal.
_ARITHMETIC: tuple[type[exp.Expr], ...] = (exp.Add, exp.Sub, exp.Mul, exp.Mod)
_TYPED_NODES: tuple[type[exp.Expr], ...] = (exp.Div, exp.Sum, exp.Avg, exp.Extract, *_INT4_FUNCTIONS, *_ARITHMETIC)
_SMALL_INTEGERS = frozenset({exp.DType.TINYINT, exp.DType.SMALLINT, exp.DType.UTINYINT})


def _typed_rewrites(tree: exp.Expr, column_types: Mapping[str, Sequence[tuple[str, str]]]) -> None:
    targets = [node for node in tree.find_all(*_TYPED_NODES) if not isinstance(node, exp.Func) or (
        type(node) in _TYPED_NODES)]
    if not targets:
        return
    types = _annotate(tree, targets, column_types)
    # Innermost first, so an outer node's rewrite wraps its operands' rewritten forms.
    for index, node in reversed(list(enumerate(targets))):
        operand_types = types.get(index)
        if operand_types is None:
            continue
        replacement = _pg_form(node, operand_types)
        if replacement is not None:
            node.replace(replacement)


def _annotate(tree: exp.Expr, targets: list[exp.Expr],
              column_types: Mapping[str, Sequence[tuple[str, str]]]) -> dict[int, tuple[exp.DataType | None, ...]]:
    """The types of each target's operands, found on a qualified, annotated copy of `tree`."""
    for index, node in enumerate(targets):
        node.meta[_MARK] = index
    try:
        schema = table_schema(column_types)
        copy = tree.copy()
        try:
            qualified = qualify(copy, schema=schema, dialect="duckdb", validate_qualify_columns=False,
                                quote_identifiers=False, identify=False, expand_stars=False)
            annotated = annotate_types(qualified, schema=schema, dialect="duckdb")
        except (SqlglotError, KeyError, ValueError, AttributeError, TypeError) as exc:
            log.debug("types not known for PostgreSQL semantics: %s", exc)
            return {}
        found: dict[int, tuple[exp.DataType | None, ...]] = {}
        sources = _DerivedColumns(annotated)
        for node in annotated.walk():
            mark = node.meta.get(_MARK)
            if isinstance(mark, int) and mark not in found:
                found[mark] = _operand_types(node, sources)
        return found
    finally:
        for node in targets:
            node.meta.pop(_MARK, None)


class _DerivedColumns:
    """What a column of a derived table or CTE stands for: its projection in the subquery (built on first use)."""

    def __init__(self, tree: exp.Expr):
        self._tree = tree
        self._defined: dict[int, exp.Expr] | None = None

    def __call__(self, column: exp.Column) -> exp.Expr | None:
        if self._defined is None:
            self._defined = {}
            with contextlib.suppress(SqlglotError, KeyError, ValueError, AttributeError, TypeError):
                self._collect()
        return self._defined.get(id(column))

    def _collect(self) -> None:
        assert self._defined is not None
        root = build_scope(self._tree)
        for scope in root.traverse() if root is not None else ():
            for column in scope.columns:
                source = scope.sources.get(column.table)
                if isinstance(source, Scope) and isinstance(source.expression, exp.Select):
                    named = [p for p in source.expression.selects if p.alias_or_name == column.name]
                    if len(named) == 1:
                        self._defined[id(column)] = named[0].unalias()


def _operand_types(node: exp.Expr, sources: Callable[[exp.Column], exp.Expr | None] = lambda _: None,
                   ) -> tuple[exp.DataType | None, ...]:
    if isinstance(node, exp.Div):
        return _numeric_type(node.this, sources), _numeric_type(node.expression, sources)
    if isinstance(node, _ARITHMETIC):
        return _type_of(node.this), _type_of(node.expression)
    if isinstance(node, exp.Extract):
        return (_type_of(node.expression),)
    argument = node.this
    if isinstance(argument, exp.Distinct) and argument.expressions:
        argument = argument.expressions[0]
    return (_numeric_type(argument, sources) if isinstance(node, exp.Avg) else _type_of(argument),)


def _numeric_type(node: exp.Expr, sources: Callable[[exp.Column], exp.Expr | None]) -> exp.DataType | None:
    """`node`'s annotated type, a DECIMAL's scale corrected to the value's own (pg_numeric.decimal_scale).

    The precision keeps the annotated integer digits: they size the quotient's column, as before."""
    kind = _type_of(node)
    if kind is None or kind.this is not exp.DType.DECIMAL:
        return kind
    params = [p.this for p in kind.expressions if isinstance(p, exp.DataTypeParam)]
    scale = pg_numeric.decimal_scale(node, sources)
    if scale is None or len(params) != 2 or not all(isinstance(p, exp.Literal) for p in params):
        return kind
    precision, annotated_scale = int(params[0].to_py()), int(params[1].to_py())
    if scale == annotated_scale:
        return kind
    integer_digits = max(precision - annotated_scale, 1)
    if integer_digits + scale > pg_numeric.MAX_DECIMAL_DIGITS:
        return None  # not a DECIMAL DuckDB holds: keep DuckDB's own division
    return exp.DataType.build(f"DECIMAL({integer_digits + scale}, {scale})", dialect="duckdb")


def _type_of(node: exp.Expr | None) -> exp.DataType | None:
    kind = node.type if node is not None else None
    if kind is None or kind.this in (exp.DType.UNKNOWN, exp.DType.NULL):
        return None
    return kind


class SchemaCache:
    """sqlglot MappingSchemas by their content, built once and shared by the statements that read the same tables.

    Building one normalises every table and column name and parses no type yet; each statement built two
    or three from the same columns (~8% of planning a new statement). A schema is read-only to qualify()
    and annotate_types(), but memoises lookups keyed by each statement's table nodes, so it serves at most
    `uses` statements before it is built anew; at most `capacity` are kept (least recently used go first).
    """

    def __init__(self, capacity: int = 64, uses: int = 1000):
        self._capacity = capacity
        self._uses = uses
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[MappingSchema, int]] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], MappingSchema]) -> MappingSchema:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] < self._uses:
                self._entries[key] = (entry[0], entry[1] + 1)
                self._entries.move_to_end(key)
                return entry[0]
        schema = build()
        with self._lock:
            self._entries[key] = (schema, 1)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return schema


SCHEMAS = SchemaCache()


def table_schema(column_types: Mapping[str, Sequence[tuple[str, str]]]) -> MappingSchema | None:
    """The tables' columns as sqlglot's schema (catalog, schema, table, column -> type) for qualify()."""
    if not column_types:
        return None
    key = ("duckdb", tuple(sorted((name, tuple(columns)) for name, columns in column_types.items())))
    return SCHEMAS.get(key, lambda: MappingSchema(_schema(column_types), dialect="duckdb"))


def _schema(column_types: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, object] | None:
    schema: dict[str, dict[str, dict[str, str]]] = {}
    for name, columns in column_types.items():
        database, table = name.split(".", 1)
        schema.setdefault(database, {})[table] = {column: kind for column, kind in columns}
    return {DATA_CATALOG: schema} if schema else None


def _pg_form(node: exp.Expr, full_types: tuple[exp.DataType | None, ...]) -> exp.Expr | None:
    types = tuple(t.this if t is not None else None for t in full_types)
    if isinstance(node, exp.Div):
        return _division(node, types[0], types[1], full_types)
    if isinstance(node, _ARITHMETIC):
        return _int4_arithmetic(node, types[0], types[1])
    argument = types[0]
    if isinstance(node, exp.Extract):
        return _extract(node, argument)
    if isinstance(node, exp.Avg):
        return _average(node, full_types[0])
    if isinstance(node, exp.Sum) and argument in _SUMMED_AS_INT8:
        return exp.cast(node.copy(), exp.DType.BIGINT)
    if isinstance(node, exp.Sum) and argument is exp.DType.FLOAT:
        return exp.cast(node.copy(), exp.DType.FLOAT)
    if isinstance(node, _INT4_FUNCTIONS):
        return exp.cast(node.copy(), exp.DType.INT)
    return None


def _division(node: exp.Div, left: exp.DType | None, right: exp.DType | None,
              full_types: tuple[exp.DataType | None, ...] = (None, None)) -> exp.Expr | None:
    """PostgreSQL's `/`: integer division for two integers (DuckDB's `//` truncates and raises on zero),
    numeric division with PostgreSQL's result scale when an operand is numeric (governance/pg_numeric.py),
    else the quotient with a division by zero raising 22012 instead of DuckDB's Infinity."""
    if _is_decimal_literal(node.this) or _is_decimal_literal(node.expression):  # sqlglot types `1.0` a double
        left = exp.DType.DECIMAL if _is_decimal_literal(node.this) else left
        right = exp.DType.DECIMAL if _is_decimal_literal(node.expression) else right
    if left is None or right is None:
        return None
    dividend, divisor = _int4_literal(node.this.copy()), _int4_literal(node.expression.copy())
    if left in _INTEGERS and right in _INTEGERS:
        return exp.IntDiv(this=dividend, expression=divisor)
    numeric = _numeric_division(node, left, right, full_types)
    if numeric is not None:
        return numeric
    if exp.DType.FLOAT in (left, right) and left is not right:  # float4 with another type divides as float8
        dividend = exp.cast(dividend, exp.DType.DOUBLE)
    if not ({left, right} <= _INTEGERS | _FLOATS | _DECIMALS):
        return None
    raised = exp.Anonymous(this="error", expressions=[exp.Literal.string(DIVISION_BY_ZERO_MESSAGE)])
    zero = exp.EQ(this=divisor.copy(), expression=exp.Literal.number(0))
    return exp.Case(ifs=[exp.If(this=zero, true=raised)],
                    default=exp.Div(this=dividend, expression=divisor, typed=False, safe=False))


def _int4_literal(node: exp.Expr) -> exp.Expr:
    """An integer literal typed int4 as PostgreSQL types it (DuckDB narrows `2` to the other operand's type)."""
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit() and int(node.this) < 2 ** 31:
        return exp.cast(node, exp.DType.INT)
    return node


def _is_decimal_literal(node: exp.Expr) -> bool:
    value = pg_numeric.literal_value(node)
    return value is not None and "." in str(value)


def _numeric_division(node: exp.Div, left: exp.DType, right: exp.DType,
                      full_types: tuple[exp.DataType | None, ...]) -> exp.Expr | None:
    """numeric / numeric (an integer side is numeric too) as PostgreSQL computes it; None if a scale is unknown."""
    if not ({left, right} <= _INTEGERS | _DECIMALS) or exp.DType.DECIMAL not in (left, right):
        return None
    a = pg_numeric.operand(node.this, full_types[0])
    b = pg_numeric.operand(node.expression, full_types[1])
    if a is None or b is None:
        return None
    constant_a, constant_b = pg_numeric.literal_value(node.this), pg_numeric.literal_value(node.expression)
    if constant_a is not None and constant_b is not None and constant_b != 0:
        constant = pg_numeric.constant_quotient(constant_a, constant_b)
        if constant is not None:
            return constant
    quotient = pg_numeric.quotient(node.this, a, node.expression, b)
    return _raising_on_zero(node.expression.copy(), quotient)


def _raising_on_zero(divisor: exp.Expr, quotient: exp.Expr) -> exp.Expr:
    raised = exp.Anonymous(this="error", expressions=[exp.Literal.string(DIVISION_BY_ZERO_MESSAGE)])
    zero = exp.EQ(this=divisor, expression=exp.Literal.number(0))
    return exp.Case(ifs=[exp.If(this=zero, true=raised)], default=quotient)


def _average(node: exp.Avg, argument: exp.DataType | None) -> exp.Expr | None:
    """avg() of an integer or numeric is numeric in PostgreSQL (its sum divided by its count, as numeric_div)."""
    if argument is None or isinstance(node.parent, (exp.Window, exp.Filter)):
        return None
    value = node.this
    operand = pg_numeric.operand(value.expressions[0] if isinstance(value, exp.Distinct) else value, argument)
    if operand is None or argument.this not in _INTEGERS | _DECIMALS:
        return None
    total, count = exp.Sum(this=value.copy()), exp.Count(this=value.copy())
    summed = pg_numeric.NumericOperand(operand.scale, pg_numeric.MAX_DECIMAL_DIGITS - operand.scale, operand.integer)
    counted = pg_numeric.NumericOperand(0, 19, True)
    # An empty group's count is 0 and its average NULL, as PostgreSQL's (no division by zero).
    divisor = exp.Nullif(this=count, expression=exp.Literal.number(0))
    return pg_numeric.quotient(total, summed, divisor, counted, integer_digits=operand.integer_digits)


def _int4_arithmetic(node: exp.Expr, left: exp.DType | None, right: exp.DType | None) -> exp.Expr | None:
    """`int2_col + 1` is int4 in PostgreSQL (the literal is int4); DuckDB types the literal, and the sum, int2."""
    if left in _SMALL_INTEGERS and _is_integer_literal(node.expression):
        node.set("expression", _int4_literal(node.expression.copy()))
    elif right in _SMALL_INTEGERS and _is_integer_literal(node.this):
        node.set("this", _int4_literal(node.this.copy()))
    return None


def _is_integer_literal(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit()


# --- extract() and date_part() ------------------------------------------------------------------

# PostgreSQL 15's extract() is numeric: these fields with a fraction of microseconds (scale), the others whole.
_FRACTIONAL_FIELDS = {"second": 6, "seconds": 6, "millisecond": 3, "milliseconds": 3, "microsecond": 0,
                      "microseconds": 0}
_WHOLE_FIELDS = frozenset({"year", "month", "day", "hour", "minute", "dow", "isodow", "doy", "quarter", "week",
                           "isoyear", "decade", "century", "millennium", "timezone", "timezone_hour",
                           "timezone_minute", "years", "months", "days", "hours", "minutes"})
_DATE_TIME_TYPES = frozenset({exp.DType.DATE, exp.DType.TIMESTAMP, exp.DType.TIMESTAMPTZ, exp.DType.TIMESTAMPNTZ,
                              exp.DType.TIMESTAMPLTZ, exp.DType.TIMESTAMP_S, exp.DType.TIMESTAMP_MS,
                              exp.DType.TIMESTAMP_NS, exp.DType.TIME, exp.DType.TIMETZ, exp.DType.INTERVAL,
                              exp.DType.DATETIME})


def mark_date_parts(tree: exp.Expr, text: str) -> None:
    """Mark the Extract nodes the client wrote as `date_part(...)` (double precision, not numeric).

    sqlglot parses both spellings to one node; the client's text has them in the tree's depth-first order.
    When the counts disagree (a policy's filter added one), no node is marked and all read as extract.
    """
    nodes = list(tree.find_all(exp.Extract, bfs=False))
    if not nodes or not text or any(DATE_PART_MARK in node.meta for node in nodes):
        return
    try:
        tokens = Tokenizer().tokenize(text)
    except SqlglotError:
        return
    spelled = [t.text.lower() for t, following in pairwise(tokens)
               if following.token_type is TokenType.L_PAREN and t.text.lower() in ("extract", "date_part")]
    if len(spelled) != len(nodes):
        return
    for node, name in zip(nodes, spelled, strict=True):
        node.meta[DATE_PART_MARK] = name == "date_part"


def _extract(node: exp.Extract, argument: exp.DType | None) -> exp.Expr | None:
    """extract(field from x) as PostgreSQL 15's numeric, date_part(field, x) as its double precision."""
    field = node.name.lower()
    if argument not in _DATE_TIME_TYPES or not isinstance(node.this, (exp.Var, exp.Literal)):
        return None
    value = node.expression.copy()
    micros: exp.Expr
    if field in _FRACTIONAL_FIELDS:
        micros = exp.Anonymous(this="date_part", expressions=[exp.Literal.string("microseconds"), value])
        scale = _FRACTIONAL_FIELDS[field]
        numeric = _scaled(micros, scale)
    elif field == "epoch" and argument is not exp.DType.TIME and argument is not exp.DType.TIMETZ:
        micros = exp.Anonymous(this="epoch_us", expressions=[value])
        if argument is exp.DType.DATE:  # a date's epoch is whole seconds (scale 0) in PostgreSQL
            micros = exp.IntDiv(this=micros, expression=exp.Literal.number(1_000_000))
            numeric = _scaled(micros, 0)
        else:
            numeric = _scaled(micros, 6)
    elif field in _WHOLE_FIELDS:
        numeric = exp.cast(node.copy(), exp.DataType.build("DECIMAL(18, 0)", dialect="duckdb"))
    else:
        return None
    if node.meta.get(DATE_PART_MARK):
        return exp.cast(numeric, exp.DType.DOUBLE)
    return numeric


def _scaled(micros: exp.Expr, scale: int) -> exp.Expr:
    """A count of microseconds as an exact numeric of `scale` fractional digits of a second (DuckDB's DECIMAL)."""
    whole = exp.cast(micros, exp.DataType.build("DECIMAL(38, 0)", dialect="duckdb"))
    if scale == 0:
        return exp.cast(whole, exp.DataType.build("DECIMAL(18, 0)", dialect="duckdb"))
    step = {6: "0.000001", 3: "0.001"}[scale]  # seconds, milliseconds per microsecond
    product = exp.Mul(this=whole, expression=exp.Literal.number(step))
    return exp.cast(product, exp.DataType.build(f"DECIMAL(38, {scale})", dialect="duckdb"))
