"""PostgreSQL catalog and introspection queries, answered from DuckDB's own catalog.

Postgres clients learn about a database by querying `pg_catalog` and `information_schema`: psql's
`\\d` family, SQLAlchemy's inspector, psycopg's `TypeInfo`, asyncpg's type introspection, JDBC tools
such as DBeaver. DuckDB's built-in `pg_catalog` views are too thin for them (no PG type OIDs, no
`format_type` with PG names, no constraint or index definitions, DuckDB-internal schemas mixed in),
so this package is the one place that answers those queries. It is one place on purpose: a later
stage filters every answer by what the session may see, and that filter must cover everything.

How it works
------------
`CatalogResponder.install(con)` creates a schema `hd_pg` in DuckDB's default catalog, before it is locked
down: a PostgreSQL-shaped view for every catalog relation listed in `_CATALOG_COLUMNS` (same column
names, order and equivalent types as PostgreSQL 15), built from `duckdb_tables()`,
`duckdb_columns()`, `duckdb_constraints()`, `duckdb_indexes()`... plus static data for what DuckDB
lacks (PostgreSQL's builtin types with their real OIDs, `pg_am`, `pg_range`, roles, settings).

`CatalogResponder.rewrite(sql)` decides whether a statement is a catalog query and, if so, returns
DuckDB SQL answering it. A cheap text check rejects ordinary SQL in about a microsecond; only
statements mentioning catalog words are parsed (sqlglot, PostgreSQL dialect, exactly one
statement). The statement is a catalog query only if it reads at least one catalog object
(`pg_catalog.*`, `information_schema.*`, unqualified `pg_*` relations, catalog functions such as
`version()` or `format_type`, `::regclass` casts) and **no other relation**: a statement that also
reads a user table is never answered here, so user data cannot bypass the governance stages by
riding along with a catalog query. The AST is then transformed (relations -> `hd_pg` views,
`OPERATOR(pg_catalog.~)` -> regex match, `COLLATE pg_catalog.default` dropped, `reg*`/`oid` casts ->
lookups, `ARRAY[...]`, `'{a,b}'` array literals, int2vector subscripts, set-returning helpers) and
generated as DuckDB SQL. Parameter placeholders (`$1`...) are kept, each one still referenced.

Visibility: every view built from user relations carries the owning `(schema, table)` in hidden
columns; every reference to such a view becomes `(SELECT * EXCLUDE (hidden) FROM view WHERE ...)`.
`rewrite(sql, visible=...)` takes a predicate `(schema, table) -> bool` or a collection of visible
pairs and restricts pg_class, pg_attribute, pg_constraint, pg_index, pg_description, pg_tables,
pg_views, pg_indexes, pg_sequence(s), the information_schema views and the functions that look
objects up by OID (`pg_get_viewdef`, `obj_description`, `'x'::regclass`...) to those relations.
Relations created after the list was taken (e.g. in the session's open transaction) are hidden,
which fails closed. Foreign keys pointing at a hidden table are hidden with it. Schemas stay listed.

Supported clients (each covered by tests/integration/test_catalog.py)
- psql 15: `\\d`, `\\dt`, `\\dt schema.*`, `\\d table`, `\\d schema.table`, `\\d+`, `\\dt+`, `\\dv`, `\\di`,
  `\\dn`, `\\l`, `\\du`, `\\df` (user macros).
- SQLAlchemy 2 (psycopg): version/schema probes and the inspector (tables, views, columns, primary,
  foreign, unique and check constraints, indexes, comments, view definitions, sequences).
- psycopg 3 `TypeInfo`/`RangeInfo` lookups; asyncpg's type introspection for builtin OIDs.
- DBeaver / pgjdbc style probes: version(), current_schema(), current_database(), current_user,
  session_user, pg_get_keywords(), pg_database, pg_namespace, pg_type, pg_settings, pg_tablespace,
  txid_current(), pg_backend_pid(), inet_server_addr(), pg_is_in_recovery(),
  pg_postmaster_start_time(), obj_description().

Known limits
- The served database is the data catalog (`hd_data`, engine/duckdb_engine.py), reported under the
  name clients connected to; other attached databases are not listed.
  Schemas keep their DuckDB names (`main` is not renamed `public`); the search path used for
  "visible" objects is the constructor's `search_path` (default `main`).
- Types: DuckDB types map to the nearest PostgreSQL type (VARCHAR -> character varying, HUGEINT
  and UBIGINT -> numeric, unsigned integers -> the next wider integer, TIMESTAMP_NS -> timestamp,
  STRUCT/MAP/UNION -> json, ENUM -> text, as the wire sends them; one type table,
  engine_host/pgcompat/types/table.py). VARCHAR length limits are not kept by DuckDB, so none is shown.
- Index access methods are reported as btree (DuckDB's ART has btree semantics); primary key and
  unique constraints are backed by synthetic index rows. Index columns have no pg_attribute rows.
- Always empty: triggers, rules, policies, inheritance, publications, extensions, statistics
  objects, pg_stat_* views, pg_locks. Sizes (pg_table_size & co.) are NULL. `set_config` only
  accepts settings with no effect (jit); use SET.
- `'name'::regclass` for an unknown name yields NULL rather than raising an error.
- Catalog relations not in `_CATALOG_COLUMNS` (e.g. pg_stat_statements) answer with an error.
- Result columns typed "char", name, regproc... are VARCHAR in DuckDB, and every OID column (and
  only those) is UINTEGER / UINTEGER[]; the wire layer decides the PostgreSQL type it reports.
  asyncpg needs two things from it to introspect types it has no builtin codec for (int4[] and
  most other arrays): `$1` of its introspection query described as oid[] (`parameter_types()`
  returns it) and UINTEGER/UINTEGER[] result columns of catalog answers described and encoded as
  oid/oid[]; otherwise asyncpg recurses on its own introspection query.
- View definitions are DuckDB's SQL text; for views over files (read_parquet) they show paths.

Layout: `relations.py` (the catalog relations PostgreSQL defines and which views carry owners),
`views.py` (the DDL of the hd_pg schema), `rewrite/` (recognising and rewriting catalog queries),
`responder.py` (`CatalogResponder`, the entry the pipeline uses).
"""

from engine_host.pgcompat.catalog.responder import CatalogResponder, Visibility
from engine_host.pgcompat.catalog.rewrite.recognise import parseable_catalog_text

__all__ = ["CatalogResponder", "Visibility", "parseable_catalog_text"]
