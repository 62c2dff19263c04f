"""The names PostgreSQL gives unaliased result columns (its FigureColname), read from the client's tree.

PostgreSQL names a column after the last identifier of a column reference, the function as written
(`count`, `string_agg`, `now`), a keyword for some syntax (`case`, `coalesce`, `exists`, `array`), a
cast's operand or else its type (`1::int` is `int4`), and `?column?` for everything else. DuckDB
names columns after their SQL text, and sqlglot renames functions (`string_agg` -> `group_concat`),
so the name is decided here, on the client's nodes, before the tree is generated as DuckDB SQL.
"""

from __future__ import annotations

from sqlglot import exp

from engine_host.pipeline.governance.guard import written_name

UNKNOWN_COLUMN_NAME = "?column?"
# Set on an Extract node the client wrote as date_part(...) (sqlglot parses both spellings to Extract).
DATE_PART_MARK = "hd_date_part"

# Syntax PostgreSQL parses into a node of its own, named by a keyword, not by how it was written.
_KEYWORD_NAMES: dict[type[exp.Expr], str] = {
    exp.Case: "case", exp.If: "case", exp.Coalesce: "coalesce", exp.Nullif: "nullif", exp.Greatest: "greatest",
    exp.Least: "least", exp.Exists: "exists", exp.Array: "array", exp.Extract: "extract",
    exp.Substring: "substring", exp.StrPosition: "position", exp.GroupConcat: "string_agg",
    exp.CurrentDate: "current_date", exp.Localtime: "localtime", exp.Localtimestamp: "localtimestamp",
    exp.CurrentTime: "current_time", exp.CurrentUser: "current_user", exp.SessionUser: "session_user",
    exp.CurrentCatalog: "current_catalog", exp.CurrentSchema: "current_schema",
    exp.CurrentDatabase: "current_database", exp.CurrentSchemas: "current_schemas", exp.Overlay: "overlay",
    # `interval '1 day'` is a cast to interval.
    exp.Interval: "interval",
}
# Bare keywords sqlglot reads as a column (`SELECT user`): SQL value functions in PostgreSQL.
SQL_VALUE_KEYWORDS = frozenset({"user", "current_user", "session_user", "current_role", "current_catalog",
                                "current_schema"})
# A cast's name when its operand has none: the type's internal name, as pg_type spells it.
_TYPE_NAMES: dict[exp.DType, str] = {
    exp.DType.INT: "int4", exp.DType.SMALLINT: "int2", exp.DType.BIGINT: "int8", exp.DType.TEXT: "text",
    exp.DType.VARCHAR: "varchar", exp.DType.CHAR: "bpchar", exp.DType.BOOLEAN: "bool",
    exp.DType.DOUBLE: "float8", exp.DType.FLOAT: "float4", exp.DType.DECIMAL: "numeric",
    exp.DType.DATE: "date", exp.DType.TIME: "time", exp.DType.TIMETZ: "timetz", exp.DType.TIMESTAMP: "timestamp",
    exp.DType.TIMESTAMPTZ: "timestamptz", exp.DType.INTERVAL: "interval", exp.DType.JSON: "json",
    exp.DType.JSONB: "jsonb", exp.DType.UUID: "uuid", exp.DType.VARBINARY: "bytea", exp.DType.NAME: "name",
}


def name_outputs(tree: exp.Query, text: str) -> None:
    """Give unaliased top-level projections of `tree` the names PostgreSQL would, as quoted aliases."""
    select: exp.Expr = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if not isinstance(select, exp.Select):
        return
    named: list[exp.Expr] = []
    for projection in select.expressions:
        if isinstance(projection, (exp.Alias, exp.Star)) or _is_star_like(projection):
            named.append(projection)
            continue
        name = postgres_name(projection, text)
        if isinstance(projection, exp.Column) and projection.name == name and projection.this.quoted:
            named.append(projection)
            continue
        named.append(exp.alias_(projection, exp.to_identifier(name, quoted=True)))
    select.set("expressions", named)


def _is_star_like(node: exp.Expr) -> bool:
    if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
        return True
    return (isinstance(node, exp.Func) and type(node).__name__ == "Columns") or (
        isinstance(node, exp.Anonymous) and str(node.name).lower() in ("columns", "unpack"))


def postgres_name(node: exp.Expr, text: str) -> str:
    """The name PostgreSQL gives the result column of expression `node` (`text`: what the client wrote)."""
    name = _figure_name(node, text)
    return name if name is not None else UNKNOWN_COLUMN_NAME


def _figure_name(node: exp.Expr, text: str) -> str | None:
    while isinstance(node, (exp.Paren, exp.Window, exp.Filter, exp.WithinGroup)):
        node = node.this
    if isinstance(node, exp.Cast) and type(node) in (exp.Cast, exp.TryCast):
        inner = _figure_name(node.this, text)
        return inner if inner is not None else _type_name(node.to)
    if isinstance(node, exp.Column):
        if isinstance(node.this, exp.Star):
            return None
        if not node.table and not node.this.quoted and node.name.lower() in SQL_VALUE_KEYWORDS:
            return node.name.lower()
        return node.name
    if isinstance(node, exp.Dot):
        return node.name or None
    if isinstance(node, exp.Bracket):
        return _figure_name(node.this, text)
    if isinstance(node, exp.Subquery):
        query = node.unnest()
        if isinstance(query, exp.Select) and query.expressions:
            first = query.expressions[0]
            return first.alias if isinstance(first, exp.Alias) else _figure_name(first, text)
        return None
    if isinstance(node, exp.Func) and node.meta.get("start") is not None:
        return written_name(node, text)  # called by name: `substr`, `strpos`, `now`, `btrim`
    if isinstance(node, exp.Extract) and node.meta.get(DATE_PART_MARK):
        return "date_part"
    keyword = _KEYWORD_NAMES.get(type(node))
    if keyword is not None:
        return keyword
    if isinstance(node, exp.CurrentTimestamp):
        return "current_timestamp"
    if isinstance(node, exp.Trim):
        position = str(node.args.get("position") or "").upper()
        return {"LEADING": "ltrim", "TRAILING": "rtrim"}.get(position, "btrim")
    if isinstance(node, exp.Anonymous):
        return written_name(node, text)
    return None


def _type_name(to: exp.DataType) -> str | None:
    name = _TYPE_NAMES.get(to.this)
    if name is not None:
        return name
    if to.this is exp.DType.USERDEFINED:
        return to.args.get("kind") or None
    return to.this.value.lower()
