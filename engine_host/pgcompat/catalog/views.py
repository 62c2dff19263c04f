"""The hd_pg schema: static tables, macros and the PostgreSQL-shaped catalog views, as DDL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import duckdb

from engine_host.engine.views import PARQUET_VIEW_MARKERS
from engine_host.pgcompat.catalog.builtin_functions import callable_builtins, insert_builtins
from engine_host.pgcompat.catalog.relations import (
    _SPECS,
    _USER_SCOPE,
    BTREE_AM_OID,
    DATABASE_OID,
    HEAP_AM_OID,
    INFORMATION_SCHEMA_OID,
    OID_STRIDE,
    OWNER_ROLE_OID,
    PG_CATALOG_OID,
    SCHEMA,
    _duck_type,
    _pg_type_oid,
    _user_scope,
)
from engine_host.pgcompat.catalog.sql_text import _ident, _lit, _values
from engine_host.pgcompat.types.table import (
    BUILTIN_TYPES,
    DUCKDB_SCALARS,
    JSON,
    NUMERIC,
    TEXT,
    catalog_type_oid_for_duckdb,
)

_TYPES = BUILTIN_TYPES


@dataclass(frozen=True)
class _Settings:
    """What the installed catalog reports about the server."""

    server_version: str
    database_name: str
    owner: str
    search_path: tuple[str, ...]
    version_text: str
    settings: Mapping[str, str]
    keywords: tuple[tuple[str, str], ...]


class _CatalogBuilder:
    """Builds the DDL of the hd_pg schema: static tables, macros, then the catalog views."""

    def __init__(self, cfg: _Settings):
        self.cfg = cfg
        self.search_path = _lit(list(cfg.search_path))

    def statements(self) -> list[str]:
        out = [f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"]
        out += self._static_tables()
        out += self._macros()
        out += self._base_views()
        out += self._catalog_views()
        out += self._lookup_macros()
        return out

    # static data

    def _static_tables(self) -> list[str]:
        types = [
            (t.oid, t.name, t.typlen, t.byval, t.typtype, t.category, t.preferred, t.delim, t.elem, t.array,
             t.typinput, _derived(t.typinput, "out"),
             "-" if t.typtype == "p" else _derived(t.typinput, "recv"),
             "-" if t.typtype == "p" else _derived(t.typinput, "send"),
             t.align, t.storage, t.collation,
             "array_subscript_handler" if t.category == "A" and t.typtype == "b" else "-", t.display)
            for t in _TYPES
        ]
        relations = [
            (s.oid, s.relname, INFORMATION_SCHEMA_OID if s.schema == "information_schema" else PG_CATALOG_OID,
             s.kind, len(s.columns))
            for s in _SPECS.values()
        ]
        columns = [
            (s.oid, name, i + 1, _pg_type_oid(pg_type), 1 if pg_type.endswith("[]") else 0)
            for s in _SPECS.values() for i, (name, pg_type) in enumerate(s.columns)
        ]
        settings = [(name, value, _setting_type(value)) for name, value in sorted(self.cfg.settings.items())]
        return [
            f"CREATE OR REPLACE TABLE {SCHEMA}.type_data AS SELECT * FROM (VALUES {_values(types)}) AS t("
            "oid, typname, typlen, typbyval, typtype, typcategory, typispreferred, typdelim, typelem, "
            "typarray, typinput, typoutput, typreceive, typsend, typalign, typstorage, typcollation, "
            "typsubscript, display)",
            f"CREATE OR REPLACE TABLE {SCHEMA}.catalog_relations AS SELECT * FROM (VALUES {_values(relations)})"
            " AS t(oid, relname, relnamespace, relkind, relnatts)",
            f"CREATE OR REPLACE TABLE {SCHEMA}.catalog_columns AS SELECT * FROM (VALUES {_values(columns)})"
            " AS t(attrelid, attname, attnum, atttypid, attndims)",
            f"CREATE OR REPLACE TABLE {SCHEMA}.settings AS SELECT * FROM (VALUES {_values(settings)})"
            " AS t(name, setting, vartype)",
            f"CREATE OR REPLACE TABLE {SCHEMA}.keywords AS SELECT * FROM (VALUES {_values(self.cfg.keywords)})"
            " AS t(word, catcode)",
            # Filled by install_catalog (builtin_functions.insert_builtins).
            f"CREATE OR REPLACE TABLE {SCHEMA}.builtin_proc (oid UINTEGER, proname VARCHAR, prokind VARCHAR, "
            "provolatile VARCHAR, prorettype UINTEGER, proargtypes UINTEGER[], proargnames VARCHAR[], "
            "provariadic UINTEGER)",
        ]

    # macros that only compute (no catalog reads), needed by the views

    def _macros(self) -> list[str]:
        # One string rather than a list literal or a regex: macros are expanded (and bound) at every
        # call site, and this one is called in lambdas over every column of every constraint.
        keywords = "|" + "|".join(w for w, code in self.cfg.keywords if code != "U") + "|"
        sp = self.search_path
        # MAP lookups rather than CASE: a macro argument is expanded once per CASE branch, and a
        # 180-branch CASE over a regex made every catalog query that touched columns take seconds.
        base_oid = "MAP {" + ", ".join(f"'{duck}': {oid}" for duck, oid in _DUCK_BASE_TYPES) + "}"
        array_oid = "MAP {" + ", ".join(f"{t.oid}: {t.array}" for t in _TYPES if t.array and t.typtype == "b") + "}"
        m = f"CREATE OR REPLACE MACRO {SCHEMA}."
        return [
            # PostgreSQL quotes identifiers that are not lower-case plain words or that are keywords.
            m + "quote_ident(s) AS CASE WHEN s IS NULL THEN NULL "
            f"WHEN regexp_full_match(s, '[a-z_][a-z0-9_$]*') AND NOT contains({_lit(keywords)}, '|' || s || '|') "
            "THEN s ELSE '\"' || replace(s, '\"', '\"\"') || '\"' END",
            m + f"ident_list(l) AS array_to_string(list_transform(l, lambda x: {SCHEMA}.quote_ident(x)), ', ')",
            m + f"qualified_name(nsp, rel) AS CASE WHEN nsp = 'pg_catalog' OR list_contains({sp}, nsp) "
            f"THEN {SCHEMA}.quote_ident(rel) ELSE {SCHEMA}.quote_ident(nsp) || '.' || {SCHEMA}.quote_ident(rel) END",
            # Part k (1 = schema, 2 = name) of a possibly qualified, possibly quoted relation name.
            m + "ident_part(s, k) AS CASE WHEN s IS NULL THEN NULL ELSE (SELECT CASE WHEN g = '' THEN NULL "
            "WHEN starts_with(g, '\"') THEN replace(g[2:-2], '\"\"', '\"') ELSE lower(g) END FROM (SELECT "
            "regexp_extract(s, '^\\s*(?:(\"(?:[^\"]|\"\")*\"|[^\".]+)\\.)?(\"(?:[^\"]|\"\")*\"|[^\".]+)\\s*$', k)"
            " AS g)) END",
            m + "is_visible_schema(nsp) AS nsp = 'pg_catalog' OR list_contains(" + sp + ", nsp)",
            # DuckDB column types -> PostgreSQL type OID and typmod.
            m + "duck_elem(dt) AS regexp_replace(dt, '(\\[[0-9]*\\])+$', '')",
            m + f"duck_dims(dt) AS length(substr(dt, length({SCHEMA}.duck_elem(dt)) + 1)) "
            f"- length(replace(substr(dt, length({SCHEMA}.duck_elem(dt)) + 1), '[', ''))",
            # Nested types are sent as json by the wire layer (pgcompat/types/table.py), so described as json.
            m + f"duck_base_oid(e) AS CAST(CASE WHEN starts_with(e, 'DECIMAL') THEN {NUMERIC.oid} "
            "WHEN starts_with(e, 'STRUCT') OR starts_with(e, 'MAP(') OR starts_with(e, 'UNION(') "
            f"OR e = 'VARIANT' THEN {JSON.oid} ELSE coalesce({base_oid}[e], {TEXT.oid}) END AS UINTEGER)",
            m + f"duck_type_oid(dt) AS CAST(CASE WHEN {SCHEMA}.duck_elem(dt) <> dt THEN "
            f"coalesce({array_oid}[{SCHEMA}.duck_base_oid({SCHEMA}.duck_elem(dt))], 1009) "
            f"ELSE {SCHEMA}.duck_base_oid(dt) END AS UINTEGER)",
            m + f"duck_typmod(dt) AS CAST(CASE WHEN starts_with({SCHEMA}.duck_elem(dt), 'DECIMAL(') THEN "
            f"CAST(regexp_extract({SCHEMA}.duck_elem(dt), 'DECIMAL\\(([0-9]+),', 1) AS INTEGER) * 65536 + "
            f"CAST(regexp_extract({SCHEMA}.duck_elem(dt), ',([0-9]+)\\)', 1) AS INTEGER) + 4 "
            f"WHEN {SCHEMA}.duck_elem(dt) = 'TIMESTAMP_S' THEN 0 WHEN {SCHEMA}.duck_elem(dt) = 'TIMESTAMP_MS' "
            "THEN 3 ELSE -1 END AS INTEGER)",
            # format_type: SQL-standard names plus the type modifier, as PostgreSQL prints them.
            m + "format_mod(t, base, md) AS CASE WHEN md IS NULL OR md < 0 THEN base "
            "WHEN t = 1043 AND md >= 4 THEN 'character varying(' || (md - 4) || ')' "
            "WHEN t = 1042 AND md >= 4 THEN 'character(' || (md - 4) || ')' "
            "WHEN t = 1700 AND md >= 4 THEN 'numeric(' || ((md - 4) // 65536) || ',' || ((md - 4) % 65536) || ')' "
            "WHEN t = 1114 THEN 'timestamp(' || md || ') without time zone' "
            "WHEN t = 1184 THEN 'timestamp(' || md || ') with time zone' "
            "WHEN t = 1083 THEN 'time(' || md || ') without time zone' "
            "WHEN t = 1266 THEN 'time(' || md || ') with time zone' "
            "WHEN t IN (1560, 1562) THEN base || '(' || md || ')' ELSE base END",
            m + "pg_get_userbyid(o) AS CASE WHEN o IS NULL THEN NULL "
            f"WHEN o = {OWNER_ROLE_OID} THEN {_lit(self.cfg.owner)} ELSE 'unknown (OID=' || o || ')' END",
            m + "pg_encoding_to_char(e) AS CASE e WHEN 6 THEN 'UTF8' WHEN 0 THEN 'SQL_ASCII' ELSE '' END",
            m + "pg_size_pretty(b) AS CASE WHEN b IS NULL THEN NULL WHEN abs(b) < 10240 THEN b || ' bytes' "
            "WHEN abs(b) < 10485760 THEN round(b / 1024) || ' kB' "
            "WHEN abs(b) < 10737418240 THEN round(b / 1048576) || ' MB' "
            "WHEN abs(b) < 10995116277760 THEN round(b / 1073741824) || ' GB' "
            "ELSE round(b / 1099511627776) || ' TB' END",
            # information_schema._pg_expandarray(anyarray): one (x, n) row per element, x the element and
            # n its 1-based position (pgjdbc's getPrimaryKeys and getIndexInfo read `(...).n` and `.x`).
            m + "_pg_expandarray(a) AS unnest(list_transform(a, lambda __hd_e, __hd_i: "
            "struct_pack(x := __hd_e, n := CAST(__hd_i AS INTEGER))))",
            # The body of `CREATE VIEW name AS body;`, which is what PostgreSQL stores as the definition.
            m + "view_body(s) AS regexp_replace(regexp_replace(s, "
            "'^\\s*CREATE\\s+(?:OR\\s+REPLACE\\s+)?(?:TEMP(?:ORARY)?\\s+)?VIEW\\s+.*?\\s+AS\\s+', '', 'is'), "
            "';\\s*$', '')",
        ]

    # internal views over DuckDB's catalog, carrying the owning relation for visibility

    def _base_views(self) -> list[str]:
        v = f"CREATE OR REPLACE VIEW {SCHEMA}."
        s = SCHEMA
        # Parquet tables are DuckDB views over the data folder; to clients they are tables, and the
        # marker comment (not a path-revealing view definition) is how they are recognised.
        # Both kinds (local folder, object-store cache) are tables whose definitions show file paths.
        parquet_marker = "(" + ", ".join("'" + m.replace("'", "''") + "'" for m in sorted(PARQUET_VIEW_MARKERS)) + ")"
        return [
            v + f"""hd_ns AS
            SELECT CAST({PG_CATALOG_OID} AS UINTEGER) AS oid, 'pg_catalog' AS nspname
            UNION ALL SELECT CAST({INFORMATION_SCHEMA_OID} AS UINTEGER), 'information_schema'
            UNION ALL SELECT CAST(oid AS UINTEGER), schema_name FROM duckdb_schemas() WHERE {_USER_SCOPE}""",
            # Constraints DuckDB reports, numbered per table for stable synthetic OIDs. Kept free of
            # macros: every view is re-bound on each use, and pg_class reads this one.
            v + f"""hd_con_base AS
            SELECT {_synthetic_oid('c.table_oid', 'c.ord')} AS oid,
                -- PostgreSQL's names (DuckDB says t_id_pkey and t_a_id_fkey, the second with the
                -- referenced columns too): clients show them and compare them with the index names.
                CASE c.constraint_type WHEN 'PRIMARY KEY' THEN c.table_name || '_pkey'
                    WHEN 'FOREIGN KEY' THEN c.table_name || '_' || array_to_string(c.constraint_column_names, '_')
                        || '_fkey'
                    ELSE c.constraint_name END AS conname,
                CAST(c.schema_oid AS UINTEGER) AS connamespace,
                CASE c.constraint_type WHEN 'PRIMARY KEY' THEN 'p' WHEN 'UNIQUE' THEN 'u'
                    WHEN 'FOREIGN KEY' THEN 'f' ELSE 'c' END AS contype,
                CAST(c.table_oid AS UINTEGER) AS conrelid, c.constraint_column_indexes AS column_indexes,
                c.constraint_column_names AS column_names, c.referenced_table,
                c.referenced_column_names AS ref_column_names, c.expression AS check_expr,
                c.schema_name AS hd_schema, c.table_name AS hd_table,
                CASE WHEN c.constraint_type = 'FOREIGN KEY' THEN c.referenced_table END AS hd_ref_table
            FROM (SELECT *, row_number() OVER (PARTITION BY table_oid ORDER BY constraint_index) AS ord
                  FROM duckdb_constraints() WHERE {_USER_SCOPE}
                  AND constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY', 'CHECK')) AS c""",
            v + f"""hd_con AS
            WITH cols AS (
                SELECT table_oid, list(lower(column_name) ORDER BY column_index) AS names
                FROM duckdb_columns() WHERE {_USER_SCOPE} GROUP BY table_oid),
            tabs AS (SELECT table_oid, schema_name, table_name FROM duckdb_tables() WHERE {_USER_SCOPE})
            SELECT k.*,
                CAST(coalesce(ref.table_oid, 0) AS UINTEGER) AS confrelid,
                list_transform(k.column_indexes, lambda i: CAST(i + 1 AS SMALLINT)) AS conkey,
                CASE WHEN k.contype = 'f' THEN list_transform(k.ref_column_names,
                    lambda n: CAST(list_position(rc.names, lower(n)) AS SMALLINT)) END AS confkey,
                CASE k.contype
                    WHEN 'p' THEN 'PRIMARY KEY (' || {s}.ident_list(k.column_names) || ')'
                    WHEN 'u' THEN 'UNIQUE (' || {s}.ident_list(k.column_names) || ')'
                    WHEN 'f' THEN 'FOREIGN KEY (' || {s}.ident_list(k.column_names) || ') REFERENCES '
                        || {s}.qualified_name(k.hd_schema, k.referenced_table)
                        || '(' || {s}.ident_list(k.ref_column_names) || ')'
                    ELSE 'CHECK (' || k.check_expr || ')' END AS condef,
                -- The index a constraint uses: its own for PRIMARY KEY/UNIQUE, for a foreign key the
                -- referenced table's PRIMARY KEY/UNIQUE index on the referenced columns (as in PostgreSQL).
                CAST(CASE WHEN k.contype IN ('p', 'u') THEN k.oid WHEN k.contype = 'f' THEN coalesce((
                    SELECT min(u.oid) FROM {s}.hd_con_base AS u
                    WHERE u.conrelid = ref.table_oid AND u.contype IN ('p', 'u')
                    AND list_transform(u.column_names, lambda x: lower(x))
                        = list_transform(k.ref_column_names, lambda x: lower(x))), 0) ELSE 0 END AS UINTEGER)
                    AS conindid
            FROM {s}.hd_con_base AS k
            LEFT JOIN tabs AS ref ON ref.schema_name = k.hd_schema AND ref.table_name = k.referenced_table
            LEFT JOIN cols AS rc ON rc.table_oid = ref.table_oid""",
            # Indexes: DuckDB's own, plus the ones PostgreSQL would create for PRIMARY KEY/UNIQUE.
            v + f"""hd_idx_base AS
            SELECT CAST(i.index_oid AS UINTEGER) AS oid, i.index_name AS relname,
                CAST(i.schema_oid AS UINTEGER) AS relnamespace, CAST(i.table_oid AS UINTEGER) AS table_oid,
                i.is_unique, false AS is_primary, false AS from_constraint,
                CAST(i.expressions AS VARCHAR[]) AS raw_exprs, i.comment,
                i.schema_name AS hd_schema, i.table_name AS hd_table
            FROM duckdb_indexes() AS i WHERE {_user_scope('i')}
            UNION ALL
            SELECT k.oid, k.conname, k.connamespace, k.conrelid, true, k.contype = 'p', true, k.column_names, NULL,
                k.hd_schema, k.hd_table
            FROM {s}.hd_con_base AS k WHERE k.contype IN ('p', 'u')""",
            v + f"""hd_idx AS
            WITH cols AS (
                SELECT table_oid, list(lower(column_name) ORDER BY column_index) AS names
                FROM duckdb_columns() WHERE {_USER_SCOPE} GROUP BY table_oid),
            idx AS (
                SELECT b.*, CASE WHEN b.from_constraint THEN list_transform(b.raw_exprs,
                    lambda x: {s}.quote_ident(x)) ELSE b.raw_exprs END AS exprs
                FROM {s}.hd_idx_base AS b)
            SELECT idx.*,
                list_transform(idx.exprs, lambda e: CAST(coalesce(list_position(cols.names, lower(
                    CASE WHEN starts_with(e, '"') THEN replace(e[2:-2], '""', '"') ELSE e END)), 0) AS SMALLINT))
                    AS indkey,
                'CREATE ' || CASE WHEN idx.is_unique THEN 'UNIQUE ' ELSE '' END || 'INDEX '
                    || {s}.quote_ident(idx.relname) || ' ON ' || {s}.quote_ident(idx.hd_schema) || '.'
                    || {s}.quote_ident(idx.hd_table) || ' USING btree (' || array_to_string(idx.exprs, ', ')
                    || ')' AS indexdef
            FROM idx LEFT JOIN cols ON cols.table_oid = idx.table_oid""",
            v + f"""hd_rel AS
            SELECT CAST(t.table_oid AS UINTEGER) AS oid, t.table_name AS relname,
                CAST(t.schema_oid AS UINTEGER) AS relnamespace, 'r' AS relkind, CAST({HEAP_AM_OID} AS UINTEGER)
                AS relam, CAST(t.column_count AS SMALLINT) AS relnatts,
                CAST(t.check_constraint_count AS SMALLINT) AS relchecks,
                t.index_count > 0 OR t.has_primary_key OR t.table_oid IN (
                    SELECT table_oid FROM duckdb_constraints() WHERE constraint_type = 'UNIQUE') AS relhasindex,
                -- Never a count: a table's rows belong to every tenant of it, and a session may see
                -- only some (row filters). -1 is PostgreSQL's "no statistics yet".
                CAST(-1 AS FLOAT) AS reltuples, t.comment AS description,
                t.schema_name AS hd_schema, t.table_name AS hd_table
            FROM duckdb_tables() AS t WHERE {_user_scope('t')} AND NOT t.temporary
            UNION ALL
            SELECT CAST(view_oid AS UINTEGER), view_name, CAST(schema_oid AS UINTEGER),
                CASE WHEN comment IN {parquet_marker} THEN 'r' ELSE 'v' END,
                CAST(CASE WHEN comment IN {parquet_marker} THEN {HEAP_AM_OID} ELSE 0 END AS UINTEGER),
                CAST(column_count AS SMALLINT), CAST(0 AS SMALLINT), false,
                CAST(CASE WHEN comment IN {parquet_marker} THEN -1 ELSE 0 END AS FLOAT),
                CASE WHEN comment IN {parquet_marker} THEN NULL ELSE comment END, schema_name, view_name
            FROM duckdb_views() WHERE NOT internal AND {_USER_SCOPE}
            UNION ALL
            SELECT CAST(sequence_oid AS UINTEGER), sequence_name, CAST(schema_oid AS UINTEGER), 'S',
                CAST(0 AS UINTEGER), CAST(3 AS SMALLINT), CAST(0 AS SMALLINT), false, CAST(1 AS FLOAT), comment,
                schema_name, sequence_name
            FROM duckdb_sequences() WHERE {_USER_SCOPE}
            UNION ALL
            SELECT oid, relname, relnamespace, 'i', CAST({BTREE_AM_OID} AS UINTEGER),
                CAST(len(raw_exprs) AS SMALLINT), CAST(0 AS SMALLINT), false, CAST(0 AS FLOAT), comment,
                hd_schema, hd_table
            FROM {s}.hd_idx_base
            UNION ALL
            SELECT CAST(oid AS UINTEGER), relname, CAST(relnamespace AS UINTEGER), relkind,
                CAST(CASE WHEN relkind = 'r' THEN {HEAP_AM_OID} ELSE 0 END AS UINTEGER), CAST(relnatts AS SMALLINT),
                CAST(0 AS SMALLINT), false, CAST(0 AS FLOAT), NULL, NULL, NULL
            FROM {s}.catalog_relations""",
            v + f"""hd_att AS
            SELECT a.*, coalesce(t.typlen, -1) AS typlen, coalesce(t.typbyval, false) AS typbyval,
                coalesce(t.typalign, 'i') AS typalign, coalesce(t.typstorage, 'x') AS typstorage,
                CAST(coalesce(t.typcollation, 0) AS UINTEGER) AS typcollation
            FROM (
                SELECT CAST(c.table_oid AS UINTEGER) AS attrelid, c.column_name AS attname,
                    CAST(c.column_index AS SMALLINT) AS attnum, {s}.duck_type_oid(c.data_type) AS atttypid,
                    {s}.duck_typmod(c.data_type) AS atttypmod, CAST({s}.duck_dims(c.data_type) AS INTEGER)
                    AS attndims, NOT c.is_nullable AS attnotnull, c.column_default IS NOT NULL AS atthasdef,
                    c.column_default, CASE WHEN c.is_generated THEN 's' ELSE '' END AS attgenerated,
                    c.comment, c.data_type AS duck_type, c.numeric_precision, c.numeric_scale,
                    c.schema_name AS hd_schema, c.table_name AS hd_table
                FROM duckdb_columns() AS c WHERE {_user_scope('c')}
                UNION ALL
                SELECT CAST(attrelid AS UINTEGER), attname, CAST(attnum AS SMALLINT), CAST(atttypid AS UINTEGER),
                    -1, CAST(attndims AS INTEGER), false, false, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL
                FROM {s}.catalog_columns) AS a
            LEFT JOIN {s}.type_data AS t ON t.oid = a.atttypid""",
            v + f"""hd_desc AS
            SELECT oid AS objoid, CAST(1259 AS UINTEGER) AS classoid, 0 AS objsubid, description,
                hd_schema, hd_table
            FROM {s}.hd_rel WHERE description IS NOT NULL AND description <> ''
            UNION ALL
            SELECT attrelid, CAST(1259 AS UINTEGER), CAST(attnum AS INTEGER), comment, hd_schema, hd_table
            FROM {s}.hd_att WHERE comment IS NOT NULL AND comment <> ''""",
            v + f"""hd_viewdef AS
            SELECT CAST(view_oid AS UINTEGER) AS oid, schema_name, view_name, {s}.view_body(sql) AS definition,
                schema_name AS hd_schema, view_name AS hd_table
            FROM duckdb_views() WHERE NOT internal AND {_USER_SCOPE}
                -- A Parquet table is a table to clients; its view text (file paths) is machinery.
                AND coalesce(comment NOT IN {parquet_marker}, true)""",
            v + f"""hd_seq AS
            SELECT CAST(sequence_oid AS UINTEGER) AS oid, schema_name, sequence_name, start_value, min_value,
                max_value, increment_by, cycle, last_value, schema_name AS hd_schema, sequence_name AS hd_table
            FROM duckdb_sequences() WHERE {_USER_SCOPE}""",
            # User macros (SQL functions of unknown argument types), then the callable builtins
            # (builtin_functions.py), which are pg_catalog's.
            v + f"""hd_proc AS
            SELECT CAST(f.function_oid AS UINTEGER) AS oid, f.function_name AS proname,
                CAST(s.oid AS UINTEGER) AS pronamespace, f.function_type = 'table_macro' AS proretset,
                CAST(len(f.parameters) AS SMALLINT) AS pronargs, f.parameters AS proargnames,
                f.macro_definition AS prosrc, s.schema_name AS nspname, 'f' AS prokind, 'v' AS provolatile,
                CAST(CASE WHEN f.function_type = 'table_macro' THEN 2249 ELSE 2283 END AS UINTEGER) AS prorettype,
                CAST(list_transform(f.parameters, lambda x: 2283) AS UINTEGER[]) AS proargtypes,
                CAST(14 AS UINTEGER) AS prolang, CAST(0 AS UINTEGER) AS provariadic
            FROM duckdb_functions() AS f JOIN duckdb_schemas() AS s
                ON s.database_name = f.database_name AND s.schema_name = f.schema_name
            WHERE NOT f.internal AND {_user_scope('f')}
            UNION ALL
            SELECT b.oid, b.proname, CAST({PG_CATALOG_OID} AS UINTEGER), false, CAST(len(b.proargtypes) AS SMALLINT),
                b.proargnames, b.proname, 'pg_catalog', b.prokind, b.provolatile, b.prorettype, b.proargtypes,
                CAST(12 AS UINTEGER), b.provariadic
            FROM {s}.builtin_proc AS b""",
            v + f"""hd_types AS
            SELECT CAST(oid AS UINTEGER) AS oid, typname, CAST({PG_CATALOG_OID} AS UINTEGER) AS typnamespace,
                typlen, typbyval, typtype, typcategory, typispreferred, typdelim, CAST(typelem AS UINTEGER)
                AS typelem, CAST(typarray AS UINTEGER) AS typarray, typinput, typoutput, typreceive, typsend,
                typalign, typstorage, CAST(typcollation AS UINTEGER) AS typcollation, typsubscript, display
            FROM {s}.type_data
            UNION ALL
            SELECT CAST(type_oid AS UINTEGER), type_name, CAST(schema_oid AS UINTEGER), 4, true, 'e', 'E', false,
                ',', CAST(0 AS UINTEGER), CAST(0 AS UINTEGER), 'enum_in', 'enum_out', 'enum_recv', 'enum_send',
                'i', 'p', CAST(0 AS UINTEGER), '-', {s}.quote_ident(type_name)
            FROM duckdb_types() WHERE NOT internal AND logical_type = 'ENUM' AND {_USER_SCOPE}""",
        ]

    # the PostgreSQL-shaped views

    def _relation(self, name: str, source: str, exprs: Mapping[str, str], *, owner: str | None = None,
                  ref: bool = False) -> str:
        """`CREATE VIEW` for catalog relation `name` with columns cast to the PostgreSQL shape.

        `owner` is the alias of the source carrying the visibility columns (see `_wrap_visible`).
        """
        spec = _SPECS[name]
        unknown = set(exprs) - {c for c, _ in spec.columns}
        if unknown:  # a typo here would silently become a NULL column; fail the install instead
            raise ValueError(f"{name}: no such columns {sorted(unknown)}")
        cols = [f"CAST({exprs.get(c, 'NULL')} AS {_duck_type(t)}) AS {_ident(c)}" for c, t in spec.columns]
        if owner:
            cols += [f"{owner}.hd_schema AS hd_schema", f"{owner}.hd_table AS hd_table"]
            if ref:
                cols += [f"{owner}.hd_ref_table AS hd_ref_table"]
        body = f"SELECT {', '.join(cols)}" + (f" FROM {source}" if source else "")
        if not source and not exprs:
            body += " WHERE false"
        return f"CREATE OR REPLACE VIEW {SCHEMA}.{spec.view} AS {body}"

    def _catalog_views(self) -> list[str]:
        populated = self._populated()
        out = [populated.get(name) or self._relation(name, "", {}) for name in _SPECS]
        return out

    def _populated(self) -> dict[str, str]:
        s, cfg, r = SCHEMA, self.cfg, self._relation
        owner = _lit(cfg.owner)
        db = _lit(cfg.database_name)
        nsp = f"JOIN {s}.hd_ns AS n ON n.oid = "
        views = [
            r("pg_class", f"{s}.hd_rel AS c", {
                "oid": "c.oid", "relname": "c.relname", "relnamespace": "c.relnamespace", "reltype": "0",
                "reloftype": "0", "relowner": str(OWNER_ROLE_OID), "relam": "c.relam",
                "relfilenode": "CASE WHEN c.relkind IN ('r', 'i', 'S') THEN c.oid ELSE 0 END",
                "reltablespace": "0", "relpages": "0", "reltuples": "c.reltuples", "relallvisible": "0",
                "reltoastrelid": "0", "relhasindex": "c.relhasindex", "relisshared": "false",
                "relpersistence": "'p'", "relkind": "c.relkind", "relnatts": "c.relnatts",
                "relchecks": "c.relchecks", "relhasrules": "false", "relhastriggers": "false",
                "relhassubclass": "false", "relrowsecurity": "false", "relforcerowsecurity": "false",
                "relispopulated": "true", "relreplident": "CASE WHEN c.relkind = 'r' THEN 'd' ELSE 'n' END",
                "relispartition": "false", "relrewrite": "0", "relfrozenxid": "0", "relminmxid": "0",
            }, owner="c"),
            r("pg_namespace", f"{s}.hd_ns AS n", {
                "oid": "n.oid", "nspname": "n.nspname", "nspowner": str(OWNER_ROLE_OID)}),
            r("pg_attribute", f"{s}.hd_att AS a", {
                "attrelid": "a.attrelid", "attname": "a.attname", "atttypid": "a.atttypid",
                "attstattarget": "-1", "attlen": "a.typlen", "attnum": "a.attnum", "attndims": "a.attndims",
                "attcacheoff": "-1", "atttypmod": "a.atttypmod", "attbyval": "a.typbyval",
                "attalign": "a.typalign", "attstorage": "a.typstorage", "attcompression": "''",
                "attnotnull": "a.attnotnull", "atthasdef": "a.atthasdef", "atthasmissing": "false",
                "attidentity": "''", "attgenerated": "a.attgenerated", "attisdropped": "false",
                "attislocal": "true", "attinhcount": "0", "attcollation": "a.typcollation",
            }, owner="a"),
            r("pg_attrdef", f"{s}.hd_att AS a WHERE a.column_default IS NOT NULL", {
                "oid": _synthetic_oid("a.attrelid", "a.attnum"), "adrelid": "a.attrelid",
                "adnum": "a.attnum", "adbin": "a.column_default"}, owner="a"),
            r("pg_constraint", f"{s}.hd_con AS k", {
                "oid": "k.oid", "conname": "k.conname", "connamespace": "k.connamespace", "contype": "k.contype",
                "condeferrable": "false", "condeferred": "false", "convalidated": "true", "conrelid": "k.conrelid",
                "contypid": "0", "conindid": "k.conindid",
                "conparentid": "0", "confrelid": "k.confrelid",
                "confupdtype": "CASE WHEN k.contype = 'f' THEN 'a' ELSE ' ' END",
                "confdeltype": "CASE WHEN k.contype = 'f' THEN 'a' ELSE ' ' END",
                "confmatchtype": "CASE WHEN k.contype = 'f' THEN 's' ELSE ' ' END", "conislocal": "true",
                "coninhcount": "0", "connoinherit": "false", "conkey": "k.conkey", "confkey": "k.confkey",
                "conbin": "k.check_expr"}, owner="k", ref=True),
            r("pg_index", f"{s}.hd_idx AS i", {
                "indexrelid": "i.oid", "indrelid": "i.table_oid", "indnatts": "len(i.exprs)",
                "indnkeyatts": "len(i.exprs)", "indisunique": "i.is_unique", "indnullsnotdistinct": "false",
                "indisprimary": "i.is_primary", "indisexclusion": "false", "indimmediate": "true",
                "indisclustered": "false", "indisvalid": "true", "indcheckxmin": "false", "indisready": "true",
                "indislive": "true", "indisreplident": "false", "indkey": "i.indkey",
                "indcollation": "list_transform(i.indkey, lambda x: 0)",
                "indclass": "list_transform(i.indkey, lambda x: 0)",
                "indoption": "list_transform(i.indkey, lambda x: 0)",
                "indexprs": "CASE WHEN list_contains(i.indkey, 0) THEN array_to_string(i.exprs, ', ') END",
            }, owner="i"),
            r("pg_description", f"{s}.hd_desc AS d", {
                "objoid": "d.objoid", "classoid": "d.classoid", "objsubid": "d.objsubid",
                "description": "d.description"}, owner="d"),
            r("pg_type", f"{s}.hd_types AS t", {
                "oid": "t.oid", "typname": "t.typname", "typnamespace": "t.typnamespace",
                "typowner": str(OWNER_ROLE_OID), "typlen": "t.typlen", "typbyval": "t.typbyval",
                "typtype": "t.typtype", "typcategory": "t.typcategory", "typispreferred": "t.typispreferred",
                "typisdefined": "true", "typdelim": "t.typdelim", "typrelid": "0",
                "typsubscript": "t.typsubscript", "typelem": "t.typelem", "typarray": "t.typarray",
                "typinput": "t.typinput", "typoutput": "t.typoutput", "typreceive": "t.typreceive",
                "typsend": "t.typsend", "typmodin": "'-'", "typmodout": "'-'", "typanalyze": "'-'",
                "typalign": "t.typalign", "typstorage": "t.typstorage", "typnotnull": "false",
                "typbasetype": "0", "typtypmod": "-1", "typndims": "0", "typcollation": "t.typcollation"}),
            r("pg_enum", f"""(SELECT type_oid, labels, unnest(generate_series(1, len(labels))) AS i
                FROM duckdb_types() WHERE NOT internal AND logical_type = 'ENUM' AND {_USER_SCOPE}) AS e""", {
                "oid": _synthetic_oid("e.type_oid", "e.i"), "enumtypid": "e.type_oid", "enumsortorder": "e.i",
                "enumlabel": "e.labels[e.i]"}),
            r("pg_range", f"(VALUES {_values(_RANGES)}) AS rg(t, sub, multi)", {
                "rngtypid": "rg.t", "rngsubtype": "rg.sub", "rngmultitypid": "rg.multi", "rngcollation": "0",
                "rngsubopc": "0", "rngcanonical": "'-'", "rngsubdiff": "'-'"}),
            r("pg_am", f"(VALUES (2, 'heap', 'heap_tableam_handler', 't'), ({BTREE_AM_OID}, 'btree', "
              "'bthandler', 'i')) AS am(oid, amname, amhandler, amtype)",
              {"oid": "am.oid", "amname": "am.amname", "amhandler": "am.amhandler", "amtype": "am.amtype"}),
            r("pg_database", "", {
                "oid": str(DATABASE_OID), "datname": db, "datdba": str(OWNER_ROLE_OID), "encoding": "6",
                "datlocprovider": "'c'", "datistemplate": "false", "datallowconn": "true", "datconnlimit": "-1",
                "datfrozenxid": "0", "datminmxid": "1", "dattablespace": "1663", "datcollate": "'C'",
                "datctype": "'C'"}),
            r("pg_tablespace", "(VALUES (1663, 'pg_default'), (1664, 'pg_global')) AS ts(oid, name)", {
                "oid": "ts.oid", "spcname": "ts.name", "spcowner": str(OWNER_ROLE_OID)}),
            r("pg_collation", "(VALUES (100, 'default', 'd'), (950, 'C', 'c'), (951, 'POSIX', 'c')) AS co(oid, "
              "name, provider)", {
                "oid": "co.oid", "collname": "co.name", "collnamespace": str(PG_CATALOG_OID),
                "collowner": str(OWNER_ROLE_OID), "collprovider": "co.provider", "collisdeterministic": "true",
                "collencoding": "-1", "collcollate": "CASE WHEN co.oid = 100 THEN NULL ELSE co.name END",
                "collctype": "CASE WHEN co.oid = 100 THEN NULL ELSE co.name END"}),
            r("pg_language", "(VALUES (12, 'internal'), (13, 'c'), (14, 'sql')) AS l(oid, name)", {
                "oid": "l.oid", "lanname": "l.name", "lanowner": str(OWNER_ROLE_OID), "lanispl": "false",
                "lanpltrusted": "l.oid = 14", "lanplcallfoid": "0", "laninline": "0", "lanvalidator": "0"}),
            r("pg_roles", "", {
                "rolname": owner, "rolsuper": "false", "rolinherit": "true", "rolcreaterole": "false",
                "rolcreatedb": "false", "rolcanlogin": "true", "rolreplication": "false", "rolconnlimit": "-1",
                "rolpassword": "'********'", "rolbypassrls": "false", "oid": str(OWNER_ROLE_OID)}),
            r("pg_user", "", {
                "usename": owner, "usesysid": str(OWNER_ROLE_OID), "usecreatedb": "false", "usesuper": "false",
                "userepl": "false", "usebypassrls": "false", "passwd": "'********'"}),
            r("pg_tables", f"{s}.hd_rel AS c {nsp}c.relnamespace WHERE c.relkind = 'r'", {
                "schemaname": "n.nspname", "tablename": "c.relname", "tableowner": owner,
                "hasindexes": "c.relhasindex", "hasrules": "false", "hastriggers": "false",
                "rowsecurity": "false"}, owner="c"),
            r("pg_views", f"{s}.hd_viewdef AS v", {
                "schemaname": "v.schema_name", "viewname": "v.view_name", "viewowner": owner,
                "definition": "v.definition"}, owner="v"),
            r("pg_indexes", f"{s}.hd_idx AS i", {
                "schemaname": "i.hd_schema", "tablename": "i.hd_table", "indexname": "i.relname",
                "indexdef": "i.indexdef"}, owner="i"),
            r("pg_sequence", f"{s}.hd_seq AS q", {
                "seqrelid": "q.oid", "seqtypid": "20", "seqstart": "q.start_value", "seqincrement": "q.increment_by",
                "seqmax": "q.max_value", "seqmin": "q.min_value", "seqcache": "1", "seqcycle": "q.cycle"},
              owner="q"),
            r("pg_sequences", f"{s}.hd_seq AS q", {
                "schemaname": "q.schema_name", "sequencename": "q.sequence_name", "sequenceowner": owner,
                "data_type": "'bigint'", "start_value": "q.start_value", "min_value": "q.min_value",
                "max_value": "q.max_value", "increment_by": "q.increment_by", "cycle": "q.cycle",
                "cache_size": "1", "last_value": "q.last_value"}, owner="q"),
            r("pg_proc", f"{s}.hd_proc AS p", {
                "oid": "p.oid", "proname": "p.proname", "pronamespace": "p.pronamespace",
                "proowner": str(OWNER_ROLE_OID), "prolang": "p.prolang", "procost": "1", "prorows": "0",
                "provariadic": "p.provariadic", "prosupport": "'-'", "prokind": "p.prokind", "prosecdef": "false",
                "proleakproof": "false", "proisstrict": "false", "proretset": "p.proretset",
                "provolatile": "p.provolatile", "proparallel": "'u'", "pronargs": "p.pronargs",
                "pronargdefaults": "0", "prorettype": "p.prorettype", "proargtypes": "p.proargtypes",
                "proallargtypes": "CASE WHEN p.provariadic <> 0 THEN p.proargtypes END",
                "proargmodes": "CASE WHEN p.provariadic <> 0 THEN list_transform(p.proargtypes, lambda x, i: "
                               "CASE WHEN i = len(p.proargtypes) THEN 'v' ELSE 'i' END) END",
                "proargnames": "p.proargnames", "prosrc": "p.prosrc"}),
            r("pg_settings", f"{s}.settings AS g", {
                "name": "g.name", "setting": "g.setting", "category": "'Hardened Duck'", "short_desc": "''",
                "context": "'user'", "vartype": "g.vartype", "source": "'default'", "boot_val": "g.setting",
                "reset_val": "g.setting", "pending_restart": "false"}),
            # information_schema
            r("information_schema.information_schema_catalog_name", "", {"catalog_name": db}),
            r("information_schema.schemata", f"{s}.hd_ns AS n", {
                "catalog_name": db, "schema_name": "n.nspname", "schema_owner": owner}),
            r("information_schema.tables", f"{s}.hd_rel AS c {nsp}c.relnamespace WHERE c.relkind IN ('r', 'v')", {
                "table_catalog": db, "table_schema": "n.nspname", "table_name": "c.relname",
                "table_type": "CASE WHEN c.relkind = 'v' THEN 'VIEW' ELSE 'BASE TABLE' END",
                "is_insertable_into": "CASE WHEN c.relkind = 'r' THEN 'YES' ELSE 'NO' END", "is_typed": "'NO'"},
              owner="c"),
            r("information_schema.views", f"{s}.hd_viewdef AS v", {
                "table_catalog": db, "table_schema": "v.schema_name", "table_name": "v.view_name",
                "view_definition": "v.definition", "check_option": "'NONE'", "is_updatable": "'NO'",
                "is_insertable_into": "'NO'", "is_trigger_updatable": "'NO'", "is_trigger_deletable": "'NO'",
                "is_trigger_insertable_into": "'NO'"}, owner="v"),
            r("information_schema.columns", f"""{s}.hd_att AS a JOIN {s}.hd_rel AS c ON c.oid = a.attrelid
                {nsp}c.relnamespace LEFT JOIN {s}.type_data AS t ON t.oid = a.atttypid
                WHERE c.relkind IN ('r', 'v')""", {
                "table_catalog": db, "table_schema": "n.nspname", "table_name": "c.relname",
                "column_name": "a.attname", "ordinal_position": "a.attnum", "column_default": "a.column_default",
                "is_nullable": "CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END",
                "data_type": "CASE WHEN t.typcategory = 'A' THEN 'ARRAY' WHEN a.atttypid = 1042 THEN 'character' "
                             "ELSE coalesce(t.display, 'USER-DEFINED') END",
                "numeric_precision": "CASE a.atttypid WHEN 21 THEN 16 WHEN 23 THEN 32 WHEN 20 THEN 64 "
                                     "WHEN 700 THEN 24 WHEN 701 THEN 53 WHEN 1700 THEN CASE WHEN a.atttypmod >= 4 "
                                     "THEN (a.atttypmod - 4) // 65536 END END",
                "numeric_precision_radix": "CASE WHEN a.atttypid IN (21, 23, 20, 700, 701) THEN 2 "
                                           "WHEN a.atttypid = 1700 THEN 10 END",
                "numeric_scale": "CASE WHEN a.atttypid IN (21, 23, 20) THEN 0 WHEN a.atttypid = 1700 AND "
                                 "a.atttypmod >= 4 THEN (a.atttypmod - 4) % 65536 END",
                "datetime_precision": "CASE WHEN a.atttypid IN (1082) THEN 0 WHEN a.atttypid IN (1083, 1114, "
                                      "1184, 1266, 1186) THEN CASE WHEN a.atttypmod >= 0 THEN a.atttypmod "
                                      "ELSE 6 END END",
                "udt_catalog": db, "udt_schema": "'pg_catalog'", "udt_name": "t.typname",
                "dtd_identifier": "a.attnum", "is_self_referencing": "'NO'", "is_identity": "'NO'",
                "identity_cycle": "'NO'",
                "is_generated": "CASE WHEN a.attgenerated = 's' THEN 'ALWAYS' ELSE 'NEVER' END",
                "generation_expression": "CASE WHEN a.attgenerated = 's' THEN a.column_default END",
                "is_updatable": "CASE WHEN c.relkind = 'r' THEN 'YES' ELSE 'NO' END"}, owner="a"),
            r("information_schema.table_constraints", f"{s}.hd_con AS k", {
                "constraint_catalog": db, "constraint_schema": "k.hd_schema", "constraint_name": "k.conname",
                "table_catalog": db, "table_schema": "k.hd_schema", "table_name": "k.hd_table",
                "constraint_type": "CASE k.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' "
                                   "WHEN 'f' THEN 'FOREIGN KEY' ELSE 'CHECK' END",
                "is_deferrable": "'NO'", "initially_deferred": "'NO'", "enforced": "'YES'",
                "nulls_distinct": "CASE WHEN k.contype = 'u' THEN 'YES' END"}, owner="k", ref=True),
            r("information_schema.key_column_usage", f"""(SELECT k.*, unnest(k.column_names) AS column_name,
                unnest(generate_series(1, len(k.column_names))) AS pos FROM {s}.hd_con AS k
                WHERE k.contype IN ('p', 'u', 'f')) AS k""", {
                "constraint_catalog": db, "constraint_schema": "k.hd_schema", "constraint_name": "k.conname",
                "table_catalog": db, "table_schema": "k.hd_schema", "table_name": "k.hd_table",
                "column_name": "k.column_name", "ordinal_position": "k.pos",
                "position_in_unique_constraint": "CASE WHEN k.contype = 'f' THEN k.pos END"}, owner="k", ref=True),
            r("information_schema.referential_constraints", f"""{s}.hd_con AS k LEFT JOIN {s}.hd_con AS u
                ON u.conrelid = k.confrelid AND u.contype IN ('p', 'u')
                AND list_sort(list_transform(u.column_names, lambda x: lower(x)))
                    = list_sort(list_transform(k.ref_column_names, lambda x: lower(x)))
                WHERE k.contype = 'f'""", {
                "constraint_catalog": db, "constraint_schema": "k.hd_schema", "constraint_name": "k.conname",
                "unique_constraint_catalog": db, "unique_constraint_schema": "u.hd_schema",
                "unique_constraint_name": "u.conname", "match_option": "'NONE'", "update_rule": "'NO ACTION'",
                "delete_rule": "'NO ACTION'"}, owner="k", ref=True),
            r("information_schema.constraint_column_usage", f"""(SELECT k.*, unnest(CASE WHEN k.contype = 'f'
                THEN k.ref_column_names ELSE k.column_names END) AS column_name FROM {s}.hd_con AS k) AS k""", {
                "table_catalog": db, "table_schema": "k.hd_schema",
                "table_name": "CASE WHEN k.contype = 'f' THEN k.hd_ref_table ELSE k.hd_table END",
                "column_name": "k.column_name", "constraint_catalog": db, "constraint_schema": "k.hd_schema",
                "constraint_name": "k.conname"}, owner="k", ref=True),
            r("information_schema.check_constraints", f"{s}.hd_con AS k WHERE k.contype = 'c'", {
                "constraint_catalog": db, "constraint_schema": "k.hd_schema", "constraint_name": "k.conname",
                "check_clause": "k.check_expr"}, owner="k", ref=True),
            r("information_schema.sequences", f"{s}.hd_seq AS q", {
                "sequence_catalog": db, "sequence_schema": "q.schema_name", "sequence_name": "q.sequence_name",
                "data_type": "'bigint'", "numeric_precision": "64", "numeric_precision_radix": "2",
                "numeric_scale": "0", "start_value": "q.start_value", "minimum_value": "q.min_value",
                "maximum_value": "q.max_value", "increment": "q.increment_by",
                "cycle_option": "CASE WHEN q.cycle THEN 'YES' ELSE 'NO' END"}, owner="q"),
            r("information_schema.character_sets", "", {
                "character_set_name": "'UTF8'", "character_repertoire": "'UCS'", "form_of_use": "'UTF8'",
                "default_collate_catalog": db, "default_collate_schema": "'pg_catalog'",
                "default_collate_name": "'C'"}),
            r("information_schema.enabled_roles", "", {"role_name": owner}),
            r("information_schema.applicable_roles", "", {
                "grantee": owner, "role_name": owner, "is_grantable": "'NO'"}),
        ]
        return {name: sql for name, sql in zip(_POPULATED, views, strict=True)}

    # macros that read the catalog views (created last, after what they read); their own aliases are
    # __hd_ names, since a macro's argument is expanded in place (`p.oid` would bind to an inner `p`)

    def _lookup_macros(self) -> list[str]:
        s = SCHEMA
        m = f"CREATE OR REPLACE MACRO {s}."
        canon = (
            "CASE x WHEN 'integer' THEN 'int4' WHEN 'int' THEN 'int4' WHEN 'smallint' THEN 'int2' "
            "WHEN 'bigint' THEN 'int8' WHEN 'real' THEN 'float4' WHEN 'double precision' THEN 'float8' "
            "WHEN 'float' THEN 'float8' WHEN 'boolean' THEN 'bool' WHEN 'character varying' THEN 'varchar' "
            "WHEN 'character' THEN 'bpchar' WHEN 'char' THEN 'bpchar' WHEN '\"char\"' THEN 'char' "
            "WHEN 'decimal' THEN 'numeric' WHEN 'timestamp without time zone' THEN 'timestamp' "
            "WHEN 'timestamp with time zone' THEN 'timestamptz' WHEN 'time without time zone' THEN 'time' "
            "WHEN 'time with time zone' THEN 'timetz' WHEN 'bit varying' THEN 'varbit' ELSE x END"
        )
        return [
            # Reads the type_data table, not the hd_types view: views are re-bound at each use.
            m + f"format_type(t, md) AS CASE WHEN t IS NULL THEN NULL WHEN t = 0 THEN '-' ELSE coalesce((SELECT "
            f"any_value({s}.format_mod(coalesce(e.oid, d.oid), coalesce(e.display, d.display), md) "
            "|| CASE WHEN e.oid IS NULL THEN '' ELSE '[]' END) "
            f"FROM {s}.type_data AS d LEFT JOIN {s}.type_data AS e ON e.oid = d.typelem AND d.typcategory = 'A' "
            "AND d.typstorage <> 'p' WHERE d.oid = t), "
            "(SELECT any_value(type_name) FROM duckdb_types() WHERE type_oid = t AND logical_type = 'ENUM'), "
            "'???') END",
            m + f"type_name_canonical(s) AS (SELECT {canon} FROM (SELECT regexp_replace(regexp_replace("
            "lower(trim(s)), '^pg_catalog\\.', ''), '\\s*\\([^)]*\\)', '', 'g') AS x))",
            m + f"regtype_oid(s) AS CASE WHEN s IS NULL THEN NULL WHEN regexp_full_match(trim(s), '[0-9]+') "
            f"THEN CAST(trim(s) AS UINTEGER) ELSE (SELECT any_value(d.oid) FROM {s}.hd_types AS d WHERE "
            f"d.typname = CASE WHEN ends_with(trim(s), '[]') THEN '_' || {s}.type_name_canonical("
            f"trim(s)[1:-3]) ELSE {s}.type_name_canonical(s) END) END",
            m + f"regnamespace_oid(s) AS CASE WHEN regexp_full_match(trim(s), '[0-9]+') THEN "
            f"CAST(trim(s) AS UINTEGER) ELSE (SELECT any_value(n.oid) FROM {s}.hd_ns AS n WHERE n.nspname = "
            f"{s}.ident_part(s, 2)) END",
            m + f"regnamespace_name(o) AS coalesce((SELECT any_value({s}.quote_ident(n.nspname)) FROM {s}.hd_ns "
            "AS n WHERE n.oid = o), CAST(o AS VARCHAR))",
            m + f"regproc_name(o) AS coalesce((SELECT any_value(__hd_p.proname) FROM {s}.hd_proc AS __hd_p WHERE "
            "__hd_p.oid = o), CAST(o AS VARCHAR))",
            m + f"regrole_oid(s) AS CASE WHEN {s}.ident_part(s, 2) = {_lit(self.cfg.owner.lower())} OR "
            f"{s}.ident_part(s, 2) = {_lit(self.cfg.owner)} THEN CAST({OWNER_ROLE_OID} AS UINTEGER) END",
            m + f"current_setting(n) AS coalesce((SELECT any_value(g.setting) FROM {s}.settings AS g "
            "WHERE lower(g.name) = lower(n)), error('unrecognized configuration parameter \"' || n || '\"'))",
            m + "set_config(n, v, is_local) AS CASE WHEN lower(n) IN ('jit') THEN v ELSE error("
            "'set_config(''' || n || ''') is not supported by Hardened Duck; use SET') END",
            m + f"pg_function_is_visible(o) AS coalesce((SELECT any_value({s}.is_visible_schema(__hd_p.nspname)) "
            f"FROM {s}.hd_proc AS __hd_p WHERE __hd_p.oid = o), false)",
            m + f"pg_get_function_result(o) AS (SELECT any_value(CASE WHEN __hd_p.proretset THEN 'TABLE' "
            f"ELSE {s}.format_type(__hd_p.prorettype, NULL) END) FROM {s}.hd_proc AS __hd_p WHERE __hd_p.oid = o)",
            # Not list_transform: DuckDB binds no subquery (format_type's) inside a lambda.
            m + "pg_get_function_arguments(o) AS coalesce((SELECT string_agg(CASE WHEN __hd_a.variadic <> 0 "
            "AND __hd_a.i = __hd_a.k THEN 'VARIADIC ' ELSE '' END || __hd_a.n || ' ' "
            f"|| {s}.format_type(__hd_a.t, NULL), ', ' ORDER BY __hd_a.i) FROM (SELECT "
            "unnest(__hd_p.proargnames) AS n, unnest(__hd_p.proargtypes) AS t, "
            "generate_subscripts(__hd_p.proargnames, 1) AS i, len(__hd_p.proargnames) AS k, "
            f"__hd_p.provariadic AS variadic FROM {s}.hd_proc AS __hd_p WHERE __hd_p.oid = o) AS __hd_a), '')",
            m + f"pg_get_functiondef(o) AS (SELECT any_value('CREATE MACRO ' || {s}.quote_ident(__hd_p.nspname) "
            f"|| '.' || {s}.quote_ident(__hd_p.proname) || '(' || array_to_string(__hd_p.proargnames, ', ') "
            "|| ') AS ' || CASE WHEN __hd_p.proretset THEN 'TABLE ' ELSE '' END || __hd_p.prosrc) "
            f"FROM {s}.hd_proc AS __hd_p WHERE __hd_p.oid = o)",
            f"CREATE OR REPLACE VIEW {s}.pg_get_keywords AS SELECT word, catcode, catcode <> 'R' AS barelabel, "
            "CASE catcode WHEN 'U' THEN 'unreserved' WHEN 'C' THEN 'unreserved (cannot be function or type "
            "name)' WHEN 'T' THEN 'reserved (can be function or type name)' ELSE 'reserved' END AS catdesc, "
            f"CASE WHEN catcode <> 'R' THEN 'can be bare label' ELSE 'requires AS' END AS baredesc FROM {s}.keywords",
        ]


def _synthetic_oid(owner: str, ordinal: str) -> str:
    """An OID for an object DuckDB gives none: in [2^30, 2^31), above DuckDB's own OIDs and still a
    positive int4 for clients that read OIDs as signed integers."""
    return f"CAST(1073741824 + ({owner} % 262144) * {OID_STRIDE} + ({ordinal}) % {OID_STRIDE} AS UINTEGER)"


def _derived(typinput: str, suffix: str) -> str:
    """typoutput/typreceive/typsend follow PostgreSQL's naming convention from typinput."""
    return typinput[:-2] + suffix if typinput.endswith("in") else typinput


def _setting_type(value: str) -> str:
    if value in ("on", "off"):
        return "bool"
    return "integer" if value.lstrip("-").isdigit() else "string"


# DuckDB type names (element type of a column, upper case) -> PostgreSQL type OID, from the one type
# table the wire sends by (pgcompat/types/table.py): declared VARCHAR is character varying, DECIMAL(p,s)


# numeric, nested types json, anything else text.
_DUCK_BASE_TYPES = tuple(
    (duck, oid) for duck in DUCKDB_SCALARS if (oid := catalog_type_oid_for_duckdb(duck)) is not None
)

# pg_range: (range type, subtype, multirange type) for PostgreSQL's builtin range types.
_RANGES = ((3904, 23, 4451), (3906, 1700, 4532), (3908, 1114, 4533), (3910, 1184, 4534), (3912, 1082, 4535),
           (3926, 20, 4536))

# Catalog relations with a populated definition, in the order `_CatalogBuilder._populated` lists them.
_POPULATED = (
    "pg_class", "pg_namespace", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index", "pg_description",
    "pg_type", "pg_enum", "pg_range", "pg_am", "pg_database", "pg_tablespace", "pg_collation", "pg_language",
    "pg_roles", "pg_user", "pg_tables", "pg_views", "pg_indexes", "pg_sequence", "pg_sequences", "pg_proc",
    "pg_settings", "information_schema.information_schema_catalog_name", "information_schema.schemata",
    "information_schema.tables", "information_schema.views", "information_schema.columns",
    "information_schema.table_constraints", "information_schema.key_column_usage",
    "information_schema.referential_constraints", "information_schema.constraint_column_usage",
    "information_schema.check_constraints", "information_schema.sequences", "information_schema.character_sets",
    "information_schema.enabled_roles", "information_schema.applicable_roles",
)


def install_catalog(con: duckdb.DuckDBPyConnection, server_version: str, database_name: str, owner: str,
                    search_path: tuple[str, ...], version_text: str, settings: Mapping[str, str]) -> None:
    """Create or refresh the hd_pg schema on `con` (DuckDB's keywords are read from it)."""
    codes = {"reserved": "R", "unreserved": "U", "type_function": "T", "column_name": "C"}
    keywords = tuple(
        (word, codes.get(category, "U"))
        for word, category in con.execute(
            "SELECT keyword_name, keyword_category FROM duckdb_keywords() ORDER BY 1").fetchall()
    )
    cfg = _Settings(server_version, database_name, owner, search_path, version_text, settings, keywords)
    for statement in _CatalogBuilder(cfg).statements():
        con.execute(statement)
    insert_builtins(con, f"{SCHEMA}.builtin_proc", callable_builtins(con))
