"""How the `hd` command line shows API answers to a person: fixed-width tables and `label  value` records.

Values come from other users (names, SQL text), so everything shown passes through `printable`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ELLIPSIS = "…"

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


@dataclass(frozen=True)
class ListingColumn:
    """One table column: its header, the row field it shows and the width beyond which values are cut."""

    header: str
    key: str
    max_width: int = 32


def render_table(columns: Sequence[ListingColumn], rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width columns under a header row; values longer than their column's width end in `…`."""
    cells = [[fit(cell_text(row.get(column.key)), column.max_width) for column in columns] for row in rows]
    widths = [max([len(column.header), *(len(row[i]) for row in cells)]) for i, column in enumerate(columns)]
    lines = [[column.header for column in columns], *cells]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def render_listing(columns: Sequence[ListingColumn], rows: Sequence[Mapping[str, Any]], *, empty: str) -> str:
    """The table of `rows`, or the sentence `empty` when there are none (a bare header row reads as a fault)."""
    return render_table(columns, rows) if rows else empty


def render_record(fields: Sequence[tuple[str, str]], record: Mapping[str, Any]) -> str:
    """One entity as `label  value` lines, values in full (ids and hashes are copied from here)."""
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label.ljust(width)}  {cell_text(record.get(key))}" for label, key in fields)


def fit(text: str, width: int) -> str:
    """`text` cut to `width` characters, the last one `…` when something was cut."""
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def cell_text(value: object) -> str:
    """How a JSON value reads in a table: `-` for null, lists comma-separated, timestamps to the second."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(item) for item in value) or "-"
    if isinstance(value, dict):
        return printable(json.dumps(value, sort_keys=True))
    if isinstance(value, str) and _ISO_TIMESTAMP.match(value):
        return _short_time(value)
    return printable(str(value))


def printable(text: str) -> str:
    """`text` with each run of control characters replaced by one space."""
    # Values come from other users (names, SQL text): a newline would break the table and an escape
    # sequence could rewrite the operator's terminal.
    return _CONTROL_CHARACTERS.sub(" ", text)


def _short_time(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return printable(value)
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M:%S}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
