"""The tables the engine hosts serve, with their columns and types, recorded where the control plane can read them.

A policy is checked against the live catalog before it is stored (`hd_core.policy_catalog`), but
the control plane never opens the data: the engine host records each table's schema in the
control store after every catalog refresh, next to the owner it records (`hd_core.table_owners`).
One setting per table (`catalog.table.<schema.table>`) keeps every write small and independent;
a table the host no longer serves is marked dropped rather than deleted (settings have no delete).

A host compares against what it recorded itself, so a refresh writes only what changed; after a
restart it reads each table's record once. A table dropped while no host was running keeps its
record until a host that served it drops it again: the check then accepts a policy on a table
that is gone, which binds nothing until the table returns.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hd_core.ports import SettingsStore

SETTING_PREFIX = "catalog.table."

Columns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TableSchema:
    """One table as the engine serves it: `schema.table` and its (column, DuckDB type) pairs in order."""

    table: str
    columns: Columns

    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


def setting_name(table: str) -> str:
    """The control-store setting that holds `table`'s schema."""
    return SETTING_PREFIX + table.lower()


def table_schema(store: SettingsStore, table: str) -> TableSchema | None:
    """The recorded schema of `table`, or None when no host serves it (never recorded, or dropped)."""
    value = store.get_setting(setting_name(table))
    columns = _decode(value)
    return None if columns is None else TableSchema(table.lower(), columns)


def _encode(columns: Columns | None) -> str:
    if columns is None:
        return json.dumps({"dropped": True})
    return json.dumps({"columns": [[name, data_type] for name, data_type in columns]}, separators=(",", ":"))


def _decode(value: str | None) -> Columns | None:
    if value is None:
        return None
    try:
        document = json.loads(value)
        if document.get("dropped"):
            return None
        return tuple((str(name), str(data_type)) for name, data_type in document["columns"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable: treated as unknown, so a policy naming it needs "pending" (fails closed)


class CatalogRecorder:
    """Records one engine host's tables in the control store, writing only what changed since its last look."""

    def __init__(self, store: SettingsStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._recorded: dict[str, Columns | None] = {}

    def record(self, tables: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
        """Record `tables` (every table the host serves now); returns the names whose record changed.

        Tables this recorder recorded before and that are gone now are marked dropped.
        """
        current = {name.lower(): tuple((c.lower(), t) for c, t in columns) for name, columns in tables.items()}
        changed = []
        with self._lock:
            wanted: dict[str, Columns | None] = dict(current)
            wanted.update({name: None for name, cols in self._recorded.items()
                           if name not in current and cols is not None})
            for name, columns in sorted(wanted.items()):
                if name not in self._recorded:
                    self._recorded[name] = _decode(self._store.get_setting(setting_name(name)))
                if self._recorded[name] == columns:
                    continue
                self._store.put_setting(setting_name(name), _encode(columns))
                self._recorded[name] = columns
                changed.append(name)
        return changed
