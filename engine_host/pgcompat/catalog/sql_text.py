"""DuckDB SQL literals and identifiers for generated catalog SQL (values are escaped, never raw)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _lit(value: object) -> str:
    """A DuckDB SQL literal for a Python value (strings are escaped, never interpolated raw)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _values(rows: Iterable[Sequence[object]]) -> str:
    return ", ".join("(" + ", ".join(_lit(v) for v in row) + ")" for row in rows)
