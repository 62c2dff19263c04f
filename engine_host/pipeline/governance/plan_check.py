"""The bound-plan check: what DuckDB's binder resolved must be exactly what the governed plan reads.

The rewrite is one line of defence; this is the next. Before a statement's governed SQL first runs,
DuckDB binds it (EXPLAIN, unoptimised logical plan: the binder's output, before any optimisation
could fold a scan away) and every scan in that plan is checked:

- a table scan must name `hd_data.<schema>.<table>` for a table the governed plan lists (the same
  tables the audit record lists);
- a Parquet scan is allowed only when the governed plan reads a Parquet-backed table (the scan
  of a view over Parquet files does not carry the view's name, so it is checked by kind);
- a scan of `hd_native_<n>.<schema>.<table>` (the native copy such a table's view reads once it is
  materialised, engine_host/data/native_tables.py) is allowed only when the governed plan lists
  `<schema>.<table>` as a Parquet-backed table: each attached copy holds exactly one table, under
  that table's own name. A governed read of precomputed hash masks goes through the table's mask
  view (`hd_masks_<n>.<schema>.<table>`, engine_host/data/stored_masks.py); the binder inlines the
  view, so what is checked is the scan it resolves to - that same copy, or the table's Parquet files -
  and a mask view of a table the plan does not list fails exactly like that table would. The mask
  view's extra columns are the copy's own stored columns: no extra source, nothing more to allow;
- any other source must be one of a short allow list of operators that read no stored data
  (constants, VALUES, CTE scans, `range`, `generate_series`, `unnest`, ...).

Anything else - a catalog function, a file reader, a table the plan does not list, an operator a
future DuckDB adds - refuses the statement with 42501 HD_ERR_PLAN_REJECTED. Catalog statements
(answered from our `hd_pg` views) may read catalog machinery but never a data relation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.views import NATIVE_CATALOG_PREFIX
from engine_host.pipeline.errors import QueryError

# Plan sources that read no stored relation.
_NEUTRAL_SOURCES = frozenset({
    "DUMMY_SCAN", "EMPTY_RESULT", "COLUMN_DATA_SCAN", "CHUNK_SCAN", "EXPRESSION_GET", "EXPRESSION_SCAN",
    "CTE_SCAN", "REC_CTE_SCAN", "REC_KEY_CTE_SCAN", "DELIM_SCAN", "DELIM_GET", "CTE_REF",
})
# Table functions a client may call (the guard's allow list), as operator names.
_GENERATORS = frozenset({"RANGE", "GENERATE_SERIES", "UNNEST"})
_PARQUET_SCANS = frozenset({"READ_PARQUET", "PARQUET_SCAN"})
_TABLE_SCANS = frozenset({"SEQ_SCAN", "TABLE_SCAN", "INDEX_SCAN"})
# What a catalog answer reads: our hd_pg tables in the default catalog and DuckDB's catalog functions.
_CATALOG_SOURCE_PREFIXES = ("DUCKDB_", "PRAGMA_")


# Quoted identifiers (kept), string literals, numbers and parameters, in generated DuckDB SQL.
_TOKENS = re.compile(r"""("(?:[^"]|"")*")|('(?:[^']|'')*')|\$(\d+)|(\?)|\b\d+(?:\.\d*)?(?:[eE][-+]?\d+)?\b""")


def statement_shape(sql: str) -> tuple[str, int]:
    """`sql` with its literals blanked out, and how many parameters it takes.

    Which relations a statement binds does not depend on its literal values (a string is never a
    table name once the guard refused string-as-table and the functions that take one), so the
    bound-plan verdict of one shape holds for every statement of that shape: a point lookup is
    checked once, not once per key.
    """
    count = 0

    def blank(match: re.Match[str]) -> str:
        nonlocal count
        identifier, string, numbered, anonymous = match.groups()
        if identifier is not None:
            return identifier
        if string is not None:
            return "''"
        if numbered is not None:
            count = max(count, int(numbered))
            return match.group(0)
        if anonymous is not None:
            count += 1
            return "?"
        return "0"

    return _TOKENS.sub(blank, sql), count


def plan_rejected(reason: str) -> QueryError:
    return QueryError("42501", "HD_ERR_PLAN_REJECTED",
                      "the statement was refused: its plan reads something its governed form does not "
                      f"({reason})",
                      hint="Query tables by name; the statement and reason are in the audit record.")


def check_bound_plan(plan: list[dict[str, Any]], tables: Mapping[str, bool], *, catalog: bool = False) -> None:
    """Refuse a bound plan that scans anything but `tables` (canonical name -> Parquet-backed) and neutral sources.

    With `catalog`, the statement is a catalog answer: it may read catalog machinery, never data.
    """
    reads_parquet = any(tables.values())
    for name, info, is_source in _operators(plan):
        table = info.get("Table")
        if isinstance(table, str):
            _check_table(table, tables, catalog)
            continue
        if name in _PARQUET_SCANS:
            if catalog or not reads_parquet:
                raise plan_rejected(f"a Parquet scan outside the tables it names: {name}")
            continue
        if name in _TABLE_SCANS:
            raise plan_rejected(f"a table scan of an unnamed relation: {name}")
        function = info.get("Function")
        if isinstance(function, str) and function.upper() not in _GENERATORS | _PARQUET_SCANS:
            if not (catalog and function.upper().startswith(_CATALOG_SOURCE_PREFIXES)):
                raise plan_rejected(f"the table function {function.lower()}")
        if is_source and name not in _NEUTRAL_SOURCES | _GENERATORS:
            if not (catalog and name.startswith(_CATALOG_SOURCE_PREFIXES)):
                raise plan_rejected(f"the source {name.lower()}")


def _check_table(table: str, tables: Mapping[str, bool], catalog: bool) -> None:
    parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p for p in _NAME_PART.findall(table)]
    if len(parts) == 3 and parts[0] == DATA_CATALOG:
        name = f"{parts[1]}.{parts[2]}".lower()
        if catalog or name not in tables:
            raise plan_rejected(f"a table the statement does not name: {name}")
        return
    if len(parts) == 3 and _NATIVE_CATALOG.fullmatch(parts[0]):
        name = f"{parts[1]}.{parts[2]}".lower()
        if catalog or not tables.get(name, False):
            raise plan_rejected(f"a table copy the statement does not name: {name}")
        return
    if not catalog:
        raise plan_rejected(f"a relation outside the warehouse's tables: {table}")


_NATIVE_CATALOG = re.compile(re.escape(NATIVE_CATALOG_PREFIX) + r"[1-9][0-9]*")
# One part of a qualified name as DuckDB prints it: "quoted" (doubled quotes inside) or bare.
_NAME_PART = re.compile(r'"(?:[^"]|"")*"|[^."]+')


def _operators(plan: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(operator name, extra info, is a source) for every node of a JSON EXPLAIN plan."""
    stack = list(plan)
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            raise plan_rejected("the plan could not be read")
        children = node.get("children") or []
        info = node.get("extra_info")
        yield str(node.get("name", "")).strip().upper(), info if isinstance(info, dict) else {}, not children
        stack.extend(children)
