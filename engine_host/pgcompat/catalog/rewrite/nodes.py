"""Reading and building sqlglot nodes, shared by the rewrite rules."""

from __future__ import annotations

from sqlglot import exp

# sqlglot node classes (by name) for functions this module answers, mapped to the PostgreSQL name.
_TYPED_FUNCTIONS = {
    "CurrentDatabase": "current_database", "CurrentCatalog": "current_catalog", "CurrentVersion": "version",
    "CurrentUser": "current_user", "SessionUser": "session_user", "CurrentRole": "current_role",
    "CurrentSchemas": "current_schemas", "ArraySize": "array_length", "ExplodingGenerateSeries": "generate_series",
    "GenerateSeries": "generate_series", "Explode": "unnest", "Unnest": "unnest",
    "StringToArray": "string_to_array", "CurrentSchema": "current_schema",
}

# int2vector/oidvector columns: PostgreSQL subscripts them from 0, DuckDB lists from 1.
_ZERO_BASED = frozenset({
    "indkey", "indclass", "indcollation", "indoption", "proargtypes", "stxkeys", "partattrs", "partclass",
    "partcollation", "prattrs", "tgattr",
})


_REG_TYPES = frozenset({"regclass", "regtype", "regproc", "regprocedure", "regnamespace", "regrole"})
_TEXT_TYPES = frozenset({"text", "varchar", "name", "char", "bpchar", "character varying"})


def _func_name(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    for cls in type(node).__mro__:
        if cls.__name__ in _TYPED_FUNCTIONS:
            return _TYPED_FUNCTIONS[cls.__name__]
    return None


def _sql_function_name(node: exp.Func) -> str:
    """The DuckDB-level name of any function node, for the deny list."""
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return node.sql_name().lower()


def _cast_target(to: exp.Expr) -> str | None:
    """The PostgreSQL name of a cast's target type when sqlglot does not model it, else None."""
    if isinstance(to, exp.ObjectIdentifier):
        return to.name.lower()
    if not isinstance(to, exp.DataType):
        return None
    if to.this == exp.DType.ARRAY and to.expressions:
        inner = _cast_target(to.expressions[0])
        return inner + "[]" if inner else None
    if to.this == exp.DType.USERDEFINED:
        kind = to.args.get("kind")
        if isinstance(kind, exp.Dot):
            name = kind.expression.name
        elif isinstance(kind, exp.Identifier):
            name = kind.name
        else:
            name = str(kind or "")
        name = name.lower().rsplit(".", 1)[-1]
        return name[3:] if name.startswith("hd_") else name
    return None


def _is_text_cast(node: exp.Expr) -> bool:
    if not isinstance(node, exp.Cast):
        return False
    target = _cast_target(node.to)
    if target is not None:
        return target in _TEXT_TYPES
    return node.to.this in (exp.DType.TEXT, exp.DType.VARCHAR, exp.DType.NAME, exp.DType.CHAR,
                            exp.DType.NCHAR, exp.DType.NVARCHAR, exp.DType.BPCHAR)


def _in_output_position(node: exp.Expr) -> bool:
    """True where PostgreSQL would print a reg* value (as a name) rather than compare it (as an OID)."""
    if node.parent is not None and _is_text_cast(node.parent):
        return True
    while isinstance(node.parent, exp.Alias | exp.Paren):
        node = node.parent
    return isinstance(node.parent, exp.Select) and node.arg_key == "expressions"


def _parameters(node: exp.Expr) -> set[str]:
    return {p.sql() for p in node.find_all(exp.Parameter, exp.Placeholder)}


def _call(name: str, *args: exp.Expr, schema: str | None = None) -> exp.Expr:
    call = exp.Anonymous(this=name, expressions=list(args))
    if schema:
        return exp.Dot(this=exp.to_identifier(schema), expression=call)
    return call


def _length(arr: exp.Expr) -> exp.Expr:
    return _call("len", arr.copy())


def _zero_based(node: exp.Expr) -> bool:
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    return isinstance(node, exp.Column) and node.name.lower() in _ZERO_BASED


def _holds_oid(value: exp.Expr) -> bool:
    """An OID column or a number (psql sends OIDs as string literals such as '16390')."""
    if isinstance(value, exp.Column):
        return True
    if isinstance(value, exp.Literal):
        return not value.is_string or value.name.strip().isdigit()
    return False


def _varchar(value: exp.Expr) -> exp.Expr:
    return exp.Cast(this=value.copy(), to=exp.DataType.build("VARCHAR"))


def _literal_int(node: exp.Expr) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.name)
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        inner = _literal_int(node.this)
        return -inner if inner is not None else None
    return None
