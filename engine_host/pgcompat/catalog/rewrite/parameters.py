"""The PostgreSQL types a catalog query casts its `$n` parameters to."""

from __future__ import annotations

import re

from sqlglot import exp

from engine_host.pgcompat.catalog.rewrite.nodes import _REG_TYPES, _cast_target, _literal_int
from engine_host.pgcompat.types.table import TYPE_BY_NAME

# PostgreSQL spellings of type names in casts -> catalog type names.
_TYPE_ALIASES = {
    "int": "int4", "integer": "int4", "smallint": "int2", "bigint": "int8", "real": "float4",
    "double": "float8", "double precision": "float8", "boolean": "bool", "character varying": "varchar",
    "character": "bpchar", "decimal": "numeric", "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp", "time with time zone": "timetz",
    "time without time zone": "time",
}


def _parameter_types(tree: exp.Expr) -> dict[int, int]:
    """`$n::type` casts of the original statement, as PostgreSQL type OIDs (reg* types excluded:
    their parameters carry names, and text is what clients should send for them)."""
    found: dict[int, int] = {}
    for cast in tree.find_all(exp.Cast):
        if not isinstance(cast.this, exp.Parameter):
            continue
        target = _cast_target(cast.to) or re.sub(r"\(.*?\)", "", cast.to.sql("postgres")).strip().lower()
        array = target.endswith("[]")
        base = target[:-2] if array else target
        base = _TYPE_ALIASES.get(base, base)
        pg_type = TYPE_BY_NAME.get(base)
        if pg_type is None or base in _REG_TYPES:
            continue
        number = _literal_int(cast.this.this)
        if number is not None:
            found.setdefault(number, pg_type.array if array else pg_type.oid)
    return found
