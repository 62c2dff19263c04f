"""Deterministic masks computed once, when a table's native copy is built, not on every row a statement reads.

The `hash` mask is HMAC-SHA256 under the session environment's key (engine/masking.py): DuckDB's
`sha256` per value makes a masked read of 1M rows ~20x slower than the unmasked one. Its value is a
pure function of (raw value, environment key), and `partial`'s ('***' and the last n characters) of
the raw value alone, so both are computed once per copy, into extra columns of the copy, and read
like any other column. Measured on 1M rows (id, email, ssn; DuckDB alone, best of 5): raw 20.8 ms;
stored hash instead of ssn 31.6 ms; computing `partial` of email on top of that 52.4 ms - building
a million new strings costs as much as reading them, so `partial` is stored too. `full` and `null`
are constants and stay in the query. Stored columns are written uncompressed: DuckDB's DICT_FSST
decoding of 64 random hex characters took 36 ms per million values against 16.5 ms uncompressed
(the raw 11-character ssn: 18.8 ms), for ~64 MB more per hashed column and million rows.

Design, and why:
- **What is stored is what was asked for.** The governor asks `StoredMasks.lookup` for the
  deterministic masks a session's policy puts on a table (at plan time, on a plan cache miss). A mask
  (column, function, environment or visible characters) seen for the first time is remembered and
  its table is queued for a rebuild; every later copy of that table is built with it. Until then the
  plan computes the mask in the query, exactly as before.
- **Stored in the copy, never in a name a client can reach.** The builder (its own DuckDB instance,
  native_tables.py) computes `hd_keys.main.hd_mask_hash_<env>(CAST(col AS VARCHAR))` (and `partial`'s
  expression) with the very macro the query would call, re-created from the engine's definition in
  an in-memory `hd_keys` of the builder: the key is never written to the file (only the HMAC values,
  which any session of that environment reads anyway), and equal SQL gives equal values, NULLs
  included. Columns whose text form depends on a session setting (TIMESTAMPTZ depends on TimeZone)
  are never stored. The copy's view `hd_data.<schema>.<table>` lists the table's own columns only.
- **Plans never name a copy.** A plan reads stored values through a *mask view*
  `hd_masks_<n>.<schema>.<table>`: the table's own columns plus one column per stored mask. Each mask
  view lives in an in-memory database of its own, attached once and never detached while the host
  runs, and its columns never change; a new stored column gets a new mask view (a new `<n>`), which
  bumps `version`, part of the governor's plan-cache key. Every swap of the table (a new copy, a
  fallback to Parquet, an eviction) re-points all its mask views, before the data view, at the same
  version: a stored column where that copy holds it, else the mask computed in the view. So a plan,
  cached or prepared, stays valid across swaps and always reads the version its lease pins. Naming
  the copy's catalog in the plan instead would fail to bind whenever the copy was swapped out between
  planning and the statement's lease, and a transaction that already read a database cannot see
  views created there later (DuckDB's catalog is versioned per transaction), hence one database
  per mask view, and an ATTACH (seen by every transaction at once) per new one.
- **Keys.** A stored hash is read through `CASE WHEN hd_keys.main.hd_mask_key_id_<env>() = '<id it was
  computed under>' THEN <stored> ELSE <macro> END`; DuckDB folds the constant test away at planning, so
  a current key costs nothing and a changed key computes in the query until the next copy.
- **Governance is unchanged.** The rewrite still replaces the table by a governed subquery with the
  row filter on raw columns; only the masked projection reads `__hd_src."<mask column>"` instead of
  the mask expression. A mask view resolves to the same scan (the copy or the Parquet files of a
  table the plan lists) that the bound-plan check already accepts. Clients cannot name a mask view
  (the guard refuses every `hd_` name) nor see its columns; EXPLAIN statements keep computing the
  redacted macro, since a mask view's definition carries the key in its fallback.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb

from engine_host.engine.masking import CATALOG as KEYS_CATALOG
from engine_host.engine.masking import ENVIRONMENTS, key_id_macro_name, macro_name
from engine_host.engine.views import quote_identifier, sql_string
from hd_core.policies import MaskFunction

log = logging.getLogger(__name__)

MASK_VIEW_PREFIX = "hd_masks_"
# Types whose text form (what the hash is computed over) depends on no session setting.
_STORABLE_TYPES = frozenset({
    "VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S",
    "TIMESTAMP_MS", "TIMESTAMP_NS", "UUID", "BLOB", "INTERVAL",
})


@dataclass(frozen=True, order=True)
class StoredMask:
    """One precomputable mask of `column`: its keyed hash under environment `env`'s key, or `partial`."""

    column: str
    function: str  # MaskFunction.HASH.value or MaskFunction.PARTIAL.value
    env: str = ""  # hash: whose key
    visible_chars: int = 0  # partial: how many trailing characters show

    @classmethod
    def hash(cls, column: str, env: str) -> StoredMask:
        return cls(column, MaskFunction.HASH.value, env=env)

    @classmethod
    def partial(cls, column: str, visible_chars: int) -> StoredMask:
        return cls(column, MaskFunction.PARTIAL.value, visible_chars=max(int(visible_chars), 0))

    @property
    def keyed(self) -> bool:
        return self.function == MaskFunction.HASH.value


@dataclass(frozen=True)
class StoredColumns:
    """What a plan reads instead of computing: `catalog.<schema>.<table>` and the column of each mask."""

    catalog: str
    columns: Mapping[StoredMask, str]


@dataclass(frozen=True)
class KeyMaterial:
    """The engine's hash macros as DuckDB holds them (definition text) and the id of each key."""

    definitions: Mapping[str, str]  # env -> macro body
    key_ids: Mapping[str, str]  # env -> key id


@dataclass(frozen=True)
class CopyLayout:
    """What one native copy holds besides the table's own columns."""

    columns: tuple[str, ...]  # the table's own columns, in order
    stored: Mapping[StoredMask, str]  # mask -> its column in the copy
    key_ids: Mapping[str, str]  # env -> id of the key the stored values were computed under
    considered: frozenset[StoredMask]  # every wanted mask this copy was built for (stored or not storable)


@dataclass(frozen=True)
class Target:
    """What a table's views read now: a native copy (catalog + layout) or, with none, its Parquet source."""

    schema: str
    table: str
    fallback_sql: str
    catalog: str | None = None
    layout: CopyLayout | None = None


@dataclass
class _MaskView:
    catalog: str
    columns: dict[StoredMask, str]


@dataclass
class _TableMasks:
    wanted: set[StoredMask] = field(default_factory=set)
    views: list[_MaskView] = field(default_factory=list)


def stored_column_name(mask: StoredMask) -> str:
    """A precomputed column's name in the copy (and in its mask views)."""
    if mask.keyed:
        return f"__hd_mask {mask.env} {mask.column}"
    return f"__hd_mask {mask.function} {mask.visible_chars} {mask.column}"


def mask_sql(mask: StoredMask, column_sql: str) -> str:
    """What the rewrite evaluates for the mask (rewrite.mask_expression; `column_sql` reads the raw value)."""
    if mask.keyed:
        return f"{KEYS_CATALOG}.main.{macro_name(mask.env)}(CAST({column_sql} AS VARCHAR))"
    return f"('***' || RIGHT(CAST({column_sql} AS VARCHAR), {mask.visible_chars}))"


def read_key_material(con: duckdb.DuckDBPyConnection) -> KeyMaterial:
    """The hash macros' definitions and key ids from the engine's connection (both in one read)."""
    names = {macro_name(env): env for env in ENVIRONMENTS}
    ids = {key_id_macro_name(env): env for env in ENVIRONMENTS}
    rows = con.execute(
        "SELECT function_name, macro_definition FROM duckdb_functions() "
        "WHERE database_name = $1 AND function_type = 'macro'", [KEYS_CATALOG]).fetchall()
    definitions = {names[name]: str(body) for name, body in rows if name in names}
    key_ids = {}
    for name, body in rows:
        if name in ids:
            value = str(body).strip()
            key_ids[ids[name]] = value[1:-1] if value.startswith("'") and value.endswith("'") else value
    envs = set(definitions) & set(key_ids)
    return KeyMaterial({e: definitions[e] for e in envs}, {e: key_ids[e] for e in envs})


class StoredMasks:
    """The masks wanted stored per table, the mask views serving them, and what plans may read (thread-safe)."""

    def __init__(self, on_wanted: Callable[[str], None]) -> None:
        """`on_wanted(table)` runs (outside any lock here) when a table is asked for a mask it has not stored."""
        self._on_wanted = on_wanted
        self._lock = threading.Lock()
        self._tables: dict[str, _TableMasks] = {}
        self._serial = itertools.count(1)
        self._version = 0

    @property
    def version(self) -> int:
        """Changes whenever a plan could read more stored columns than before (part of the plan-cache key)."""
        return self._version

    # --- plan time (the governor) --------------------------------------------------------------------------

    def lookup(self, table: str, wanted: Iterable[StoredMask]) -> StoredColumns | None:
        """The mask view and columns to read for the `wanted` masks of `table` it serves (None: compute them).

        A mask never asked for before is remembered, and the table is queued for a copy that stores it.
        """
        wanted = set(wanted)
        if not wanted:
            return None
        with self._lock:
            masks = self._tables.setdefault(table, _TableMasks())
            new = wanted - masks.wanted
            masks.wanted |= new
            view = masks.views[-1] if masks.views else None
            columns = {m: view.columns[m] for m in wanted if view is not None and m in view.columns}
        if new:
            self._on_wanted(table)
        return StoredColumns(view.catalog, columns) if view is not None and columns else None

    def wanted(self, table: str) -> frozenset[StoredMask]:
        with self._lock:
            masks = self._tables.get(table)
            return frozenset(masks.wanted) if masks is not None else frozenset()

    # --- build time (native_tables.py, in the builder's own DuckDB instance) -------------------------------

    def prepare_builder(self, builder: duckdb.DuckDBPyConnection, keys: KeyMaterial) -> None:
        """Re-create the engine's hash macros in an in-memory `hd_keys` of the builder (never in its file)."""
        builder.execute(f"ATTACH ':memory:' AS {KEYS_CATALOG}")
        for env, body in keys.definitions.items():
            builder.execute(f"CREATE MACRO {KEYS_CATALOG}.main.{macro_name(env)}(v) AS {body}")

    def layout(self, table: str, columns: Sequence[tuple[str, str]], keys: KeyMaterial, *, rows: int,
               room: int) -> CopyLayout:
        """What a copy of `table` with these own (name, type) columns and `rows` rows stores: each wanted,
        storable mask, as long as their bytes fit in `room` (so storing masks never costs a table its copy;
        the cheapest first, and those left out are computed in the query)."""
        types = dict(columns)
        considered = self.wanted(table)
        candidates = sorted((m for m in considered if (not m.keyed or m.env in keys.definitions)
                             and _storable(types.get(m.column)) and stored_column_name(m) not in types),
                            key=lambda m: (_stored_width(m), m))
        stored: dict[StoredMask, str] = {}
        for mask in candidates:
            room -= rows * _stored_width(mask)
            if room < 0:
                log.info("%s: %d masked column(s) not stored: the copy would outgrow the native cache",
                         table, len(candidates) - len(stored))
                break
            stored[mask] = stored_column_name(mask)
        return CopyLayout(columns=tuple(c for c, _ in columns), stored=stored,
                          key_ids={m.env: keys.key_ids[m.env] for m in stored if m.keyed}, considered=considered)

    @staticmethod
    def copy_statements(target: str, source_sql: str, layout: CopyLayout) -> list[str]:
        """The builder's statements for a copy with `layout`'s stored columns (each one uncompressed)."""
        added = [f"ALTER TABLE {target} ADD COLUMN {quote_identifier(name)} VARCHAR USING COMPRESSION uncompressed"
                 for _, name in sorted(layout.stored.items())]
        values = "".join(f", {mask_sql(m, quote_identifier(m.column))}" for m, _ in sorted(layout.stored.items()))
        return [f"CREATE TABLE {target} AS SELECT * FROM {source_sql} LIMIT 0", *added,
                f"INSERT INTO {target} SELECT *{values} FROM {source_sql}"]

    # --- swap time (native_tables.py, holding its lock) ---------------------------------------------------

    @staticmethod
    def data_view_source(catalog: str, schema: str, table: str, layout: CopyLayout | None) -> str | None:
        """What the data view selects from a copy that holds stored columns (None: the copy as it is)."""
        if layout is None or not layout.stored:
            return None
        own = ", ".join(quote_identifier(c) for c in layout.columns)
        return f"(SELECT {own} FROM {_qualified(catalog, schema, table)})"

    def repoint(self, con: duckdb.DuckDBPyConnection, name: str, target: Target) -> None:
        """Point every mask view of `name` at `target`, after adding one if `target` stores a mask none has."""
        with self._lock:
            masks = self._tables.get(name)
            if masks is None:
                return
            stored = set(target.layout.stored) if target.layout is not None else set()
            latest = masks.views[-1] if masks.views else None
            created = None
            if stored - set(latest.columns if latest is not None else ()):
                columns = dict(latest.columns) if latest is not None else {}
                columns.update({m: stored_column_name(m) for m in stored})
                created = _MaskView(f"{MASK_VIEW_PREFIX}{next(self._serial)}", columns)
            views = list(masks.views) + ([created] if created is not None else [])
        if created is not None:
            con.execute(f"ATTACH ':memory:' AS {quote_identifier(created.catalog)}")
            con.execute(f"CREATE SCHEMA {quote_identifier(created.catalog)}.{quote_identifier(target.schema)}")
        for view in views:
            _define(con, view, target)
        if created is not None:
            with self._lock:
                masks.views.append(created)
                self._version += 1

    def drop(self, con: duckdb.DuckDBPyConnection, schema: str, table: str) -> None:
        """The table is gone: drop its mask views (a later `repoint` creates them again), so a plan that
        still reads one fails as a missing table, never on a copy detached under it."""
        with self._lock:
            masks = self._tables.get(f"{schema}.{table}")
            catalogs = [v.catalog for v in masks.views] if masks is not None else []
        for catalog in catalogs:
            con.execute(f"DROP VIEW IF EXISTS {_qualified(catalog, schema, table)}")

    def views(self, name: str) -> list[str]:
        """The mask view catalogs of `name` (tests)."""
        with self._lock:
            masks = self._tables.get(name)
            return [v.catalog for v in masks.views] if masks is not None else []


def _stored_width(mask: StoredMask) -> int:
    """Bytes per row a stored mask takes, uncompressed (the string, its length and offset)."""
    return (64 if mask.keyed else 3 + mask.visible_chars) + 8


def _storable(type_name: str | None) -> bool:
    return type_name is not None and (type_name in _STORABLE_TYPES or type_name.startswith("DECIMAL("))


def _qualified(catalog: str, schema: str, table: str) -> str:
    return ".".join(quote_identifier(p) for p in (catalog, schema, table))


def _define(con: duckdb.DuckDBPyConnection, view: _MaskView, target: Target) -> None:
    """`CREATE OR REPLACE VIEW` of one mask view over `target`; if it cannot bind, one that refuses to read."""
    name = _qualified(view.catalog, target.schema, target.table)
    layout = target.layout if target.catalog is not None else None
    items = []
    for mask, column in sorted(view.columns.items()):
        computed = mask_sql(mask, quote_identifier(mask.column))
        if layout is not None and mask in layout.stored and mask.keyed:
            current = f"{KEYS_CATALOG}.main.{key_id_macro_name(mask.env)}()"
            value = (f"CASE WHEN {current} = {sql_string(layout.key_ids[mask.env])} "
                     f"THEN {quote_identifier(layout.stored[mask])} ELSE {computed} END")
        elif layout is not None and mask in layout.stored:
            value = quote_identifier(layout.stored[mask])
        else:
            value = computed
        items.append(f"{value} AS {quote_identifier(column)}")
    if target.catalog is not None:  # the copy's own columns (it may hold stored ones besides)
        own = ", ".join(quote_identifier(c) for c in layout.columns) if layout is not None else "*"
        source = _qualified(target.catalog, target.schema, target.table)
    else:
        own, source = "*", target.fallback_sql
    try:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {own}, {', '.join(items)} FROM {source}")
        return
    except duckdb.Error as exc:
        log.warning("mask view %s cannot read %s.%s now: %s", view.catalog, target.schema, target.table, exc)
    # The source lost a masked column: reading the view fails (as the computed mask would), never
    # returns a wrong or unmasked value, and never points at a copy about to be detached.
    message = sql_string(f"HD_ERR_MASK_UNAVAILABLE: a masked column of {target.schema}.{target.table} "
                         "cannot be read now")
    refusing = ", ".join(f"CAST(error({message}) AS VARCHAR) AS {quote_identifier(c)}"
                         for _, c in sorted(view.columns.items()))
    try:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT *, {refusing} FROM {source}")
    except duckdb.Error as exc:  # then binding fails on the old definition: closed, as it should be
        log.error("mask view %s could not be redefined: %s", view.catalog, exc)
