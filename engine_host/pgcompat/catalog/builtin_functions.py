"""pg_proc's builtin rows: the DuckDB functions a client may call, with PostgreSQL-typed signatures.

PostgreSQL lists its builtin functions in pg_proc, and clients read them there (pgcli completes
function names and arguments from it). The engine's builtins are DuckDB's, and a client may call
only those on the allow list (hd_core.sql_functions): those, and nothing else, are listed, one row per
overload as DuckDB declares it, in pg_catalog, with argument and result types mapped to the
PostgreSQL types the wire would use. An overload with a type no PostgreSQL client can send or read
(GEOMETRY, nanosecond time zones) is left out. Operators (`+`, `||`) are pg_operator's business in
PostgreSQL, not pg_proc's, and are left out too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from engine_host.pgcompat.types.table import BUILTIN_TYPES, catalog_type_oid_for_duckdb
from hd_core.sql_functions import ALLOWED_FUNCTIONS

# OIDs of builtin function rows: ordinals above this base, in (name, signature) order, so stable for
# one DuckDB version; below the synthetic OIDs (relations.OID_STRIDE's range, from 2^30) and far above
# the OIDs DuckDB hands its own catalog entries.
BUILTIN_PROC_OID_BASE = 1 << 29

_ANYELEMENT, _ANYARRAY, _TEXT, _NUMERIC, _JSON = 2283, 2277, 25, 1700, 114
# DuckDB's type parameters and catch-alls: PostgreSQL's polymorphic pseudo-types stand for them.
_GENERIC = frozenset({"ANY", "T", "K", "V", "LAMBDA", "TUPLE", '"NULL"', "INVALID", "TYPE", "LIST", "ARRAY"})
_NESTED = re.compile(r"^(?:STRUCT|MAP|UNION|TUPLE)\b|^VARIANT$")
_ARRAY_SUFFIX = re.compile(r"\[[0-9A-Z]*\]$")
_ARRAY_OF = {t.oid: t.array for t in BUILTIN_TYPES if t.array and t.typtype == "b"}
_KINDS = {"scalar": "f", "macro": "f", "aggregate": "a", "window": "w"}
_VOLATILITY = {"CONSISTENT": "i", "CONSISTENT_WITHIN_QUERY": "s", "VOLATILE": "v"}


@dataclass(frozen=True)
class BuiltinFunction:
    """One pg_proc row for a callable builtin overload."""

    oid: int
    name: str
    kind: str
    volatility: str
    result: int
    arg_types: tuple[int, ...]
    arg_names: tuple[str, ...]
    variadic: int


def pg_type_oid(duck_type: str | None) -> int | None:
    """The PostgreSQL type a DuckDB function signature's type stands for; None when no client type does."""
    if duck_type is None:
        return _ANYELEMENT
    if _ARRAY_SUFFIX.search(duck_type):
        element = pg_type_oid(_ARRAY_SUFFIX.sub("", duck_type))
        if element is None:
            return None
        return _ANYARRAY if element == _ANYELEMENT else _ARRAY_OF.get(element, _ANYARRAY)
    if duck_type in _GENERIC:
        return _ANYELEMENT
    if duck_type == "VARCHAR":
        return _TEXT  # PostgreSQL's string functions take and return text
    if duck_type.startswith("DECIMAL"):
        return _NUMERIC
    if _NESTED.match(duck_type):
        return _JSON  # nested values reach clients as json (pgcompat/types/table.py)
    return catalog_type_oid_for_duckdb(duck_type)


def callable_builtins(con: duckdb.DuckDBPyConnection) -> list[BuiltinFunction]:
    """The builtin overloads a client may call, read from `con`'s DuckDB, in a stable order."""
    rows = con.execute(
        "SELECT function_name, function_type, stability, return_type, parameters, parameter_types, varargs "
        "FROM duckdb_functions() WHERE database_name = 'system' AND internal "
        "AND function_type IN ('scalar', 'macro', 'aggregate', 'window')").fetchall()
    seen: set[tuple[str, str, tuple[int, ...]]] = set()
    found: list[tuple[str, str, str, int, tuple[int, ...], tuple[str, ...], int]] = []
    for name, kind, stability, result, names, types, varargs in rows:
        if name not in ALLOWED_FUNCTIONS or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            continue
        mapped = [pg_type_oid(t) for t in (types or [None] * len(names or []))]
        result_oid = pg_type_oid(result)
        variadic = pg_type_oid(varargs) if varargs is not None else 0
        if result_oid is None or variadic is None or any(m is None for m in mapped):
            continue
        arg_types = tuple(m for m in mapped if m is not None)
        if variadic:
            arg_types += (_ARRAY_OF.get(variadic, _ANYARRAY) if variadic != _ANYELEMENT else _ANYARRAY,)
        key = (name, _KINDS[kind], arg_types)
        if key in seen:
            continue
        seen.add(key)
        arg_names = tuple(str(n) for n in (names or []))
        if variadic:
            arg_names += ("variadic",)
        found.append((name, _KINDS[kind], _VOLATILITY.get(stability, "v"), result_oid, arg_types, arg_names,
                      variadic))
    found.sort(key=lambda f: (f[0], f[1], f[4]))
    return [BuiltinFunction(BUILTIN_PROC_OID_BASE + i, *f) for i, f in enumerate(found)]


def insert_builtins(con: duckdb.DuckDBPyConnection, table: str, functions: list[BuiltinFunction]) -> None:
    """Fill `table` (builtin_proc's columns) with one statement over column lists; a VALUES list of
    thousands of rows binds for most of a second, and Arrow would import pandas."""
    columns = [[f.oid for f in functions], [f.name for f in functions], [f.kind for f in functions],
               [f.volatility for f in functions], [f.result for f in functions],
               [list(f.arg_types) for f in functions], [list(f.arg_names) for f in functions],
               [f.variadic for f in functions]]
    con.execute(f"INSERT INTO {table} SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5), "
                "unnest(CAST($6 AS UINTEGER[][])), unnest(CAST($7 AS VARCHAR[][])), unnest($8)", columns)
