"""Catalog queries BI tools send on connect and while browsing a schema, replayed by test_bi_connect.py.

Written from the tools' PostgreSQL drivers (each entry names the tool and the part of it that sends
the query); the schema browsed is `bi_probe`, which the test creates in the engine and in PostgreSQL.
`compare` names the columns whose values must be equal in both servers (None: the shape only, for
answers that list what one server has and the other has not, or OIDs, owners and settings).
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = "bi_probe"


@dataclass(frozen=True)
class BiQuery:
    """One query a tool sends, where it comes from, and what of its answer is compared."""

    tool: str
    source: str
    sql: str
    compare: tuple[str, ...] | None = None


_IN_SCHEMA = f"(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = '{SCHEMA}')"

BI_CONNECT_QUERIES = (
    # --- DBeaver (PostgreSQL plugin: PostgreDataSource.initialize, PostgreDatabase/PostgreSchema loaders)
    BiQuery("dbeaver", "PostgreDataSource: session schema and user", "SELECT current_schema(), session_user"),
    BiQuery("dbeaver", "PostgreDataSource: server settings",
            "SELECT name, setting FROM pg_catalog.pg_settings "
            "WHERE name IN ('standard_conforming_strings', 'server_encoding', 'client_encoding') ORDER BY name",
            ("name", "setting")),
    BiQuery("dbeaver", "PostgreDatabase: the connected database",
            "SELECT db.oid, db.* FROM pg_catalog.pg_database db WHERE datname = current_database()"),
    BiQuery("dbeaver", "PostgreDatabase.SchemaCache: schemas with comments",
            "SELECT n.oid, n.*, d.description FROM pg_catalog.pg_namespace n "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = n.oid AND d.objsubid = 0 "
            f"AND d.classoid = 'pg_namespace'::regclass WHERE n.nspname = '{SCHEMA}' ORDER BY nspname",
            ("nspname", "description")),
    BiQuery("dbeaver", "PostgreSchema.TableCache: relations of a schema",
            "SELECT c.oid, c.*, d.description, pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS partition_expr, "
            "pg_catalog.pg_get_partkeydef(c.oid) AS partition_key FROM pg_catalog.pg_class c "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.objsubid = 0 "
            f"AND d.classoid = 'pg_class'::regclass WHERE c.relnamespace = {_IN_SCHEMA} "
            "AND c.relkind NOT IN ('i', 'I', 'c') ORDER BY c.relname",
            ("relname", "relkind", "relnatts", "relhasindex", "description", "partition_expr", "partition_key")),
    BiQuery("dbeaver", "PostgreSchema.TableCache: columns of a schema's tables",
            "SELECT c.relname, a.*, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) AS def_value, "
            "dsc.description FROM pg_catalog.pg_attribute a INNER JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
            "LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum "
            "LEFT OUTER JOIN pg_catalog.pg_description dsc ON c.oid = dsc.objoid AND a.attnum = dsc.objsubid "
            f"WHERE NOT a.attisdropped AND c.relkind NOT IN ('i', 'I', 'c') AND c.relnamespace = {_IN_SCHEMA} "
            "AND a.attnum > 0 ORDER BY c.relname, a.attnum",
            ("relname", "attname", "atttypid", "attnum", "atttypmod", "attnotnull", "atthasdef", "def_value")),
    BiQuery("dbeaver", "PostgreSchema.ConstraintCache: keys of a schema's tables",
            "SELECT c.oid, c.*, t.relname AS tabrelname, rt.relname AS refrelname, d.description "
            "FROM pg_catalog.pg_constraint c INNER JOIN pg_catalog.pg_class t ON t.oid = c.conrelid "
            "LEFT OUTER JOIN pg_catalog.pg_class rt ON rt.oid = c.confrelid "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid = c.oid AND d.objsubid = 0 "
            f"AND d.classoid = 'pg_constraint'::regclass WHERE t.relnamespace = {_IN_SCHEMA} "
            "AND c.contype IN ('p', 'u', 'f') ORDER BY c.conname",
            ("conname", "contype", "tabrelname", "refrelname", "conkey", "confkey", "confupdtype", "confdeltype")),
    BiQuery("dbeaver", "PostgreSchema.IndexCache: indexes of a schema's tables",
            "SELECT i.*, i.indkey AS keys, c.relname, c.relnamespace, c.relam, tc.relname AS tabrelname, "
            "dsc.description FROM pg_catalog.pg_index i INNER JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "INNER JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid "
            "LEFT OUTER JOIN pg_catalog.pg_description dsc ON i.indexrelid = dsc.objoid "
            f"WHERE tc.relnamespace = {_IN_SCHEMA} ORDER BY c.relname",
            ("relname", "tabrelname", "indisunique", "indisprimary", "indnatts")),
    BiQuery("dbeaver", "PostgreDataSource: roles", "SELECT a.oid, a.* FROM pg_catalog.pg_roles a ORDER BY a.rolname"),
    BiQuery("dbeaver", "PostgreDataTypeCache: builtin types",
            "SELECT t.oid, t.*, c.relkind, format_type(nullif(t.typbasetype, 0), t.typtypmod) AS base_type_name, "
            "d.description FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid = t.typrelid "
            "LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid = d.objoid WHERE t.typname IS NOT NULL "
            "AND (c.relkind IS NULL OR c.relkind = 'c') AND t.typnamespace = 11 "
            "AND t.typname IN ('int4', 'int8', 'varchar', 'numeric', 'timestamptz', '_int4') ORDER BY t.oid",
            ("oid", "typname", "typlen", "typbyval", "typtype", "typcategory", "typelem", "typarray",
             "base_type_name")),
    # --- Metabase (postgres driver: describe-database over JDBC metadata, then its privilege check)
    BiQuery("metabase", "driver/postgres: schemas to sync",
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg_%' "
            f"AND nspname <> 'information_schema' AND nspname = '{SCHEMA}'", ("nspname",)),
    BiQuery("metabase", "driver/postgres: tables the user may select",
            "SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind, obj_description(c.oid) AS description, "
            "has_table_privilege(concat(quote_ident(n.nspname), '.', quote_ident(c.relname)), 'SELECT') AS selectable "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname = '{SCHEMA}' ORDER BY 1, 2",
            ("schema", "name", "kind", "description", "selectable")),
    BiQuery("metabase", "driver/postgres: the report time zone", "SELECT current_setting('TIMEZONE') AS zone"),
    BiQuery("metabase", "sql-jdbc: server version", "SELECT version()"),
    # --- Grafana (postgres datasource: table and column pickers of the query editor)
    BiQuery("grafana", "datasource/postgres: tables on the search path",
            "SELECT quote_ident(table_name) AS \"table\" FROM information_schema.tables "
            "WHERE table_schema = ANY (current_schemas(false)) ORDER BY 1"),
    BiQuery("grafana", "datasource/postgres: tables on the search_path setting",
            "SELECT quote_ident(table_name) AS \"table\" FROM information_schema.tables WHERE table_schema IN ("
            "SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END "
            "FROM generate_series(array_lower(string_to_array(current_setting('search_path'), ','), 1), "
            "array_upper(string_to_array(current_setting('search_path'), ','), 1)) AS i, "
            "string_to_array(current_setting('search_path'), ',') s) ORDER BY 1"),
    BiQuery("grafana", "datasource/postgres: tables of a schema",
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS \"table\" "
            f"FROM information_schema.tables WHERE table_schema = '{SCHEMA}' ORDER BY 1", ("table",)),
    BiQuery("grafana", "datasource/postgres: columns of a table",
            "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" FROM information_schema.columns "
            f"WHERE quote_ident(table_schema) = '{SCHEMA}' AND quote_ident(table_name) = 'parent' "
            "ORDER BY ordinal_position", ("column", "type")),
    # --- Tableau (PostgreSQL connector over psqlODBC: connect probes and SQLTables/SQLColumns)
    BiQuery("tableau", "connect: server version", "select version()"),
    BiQuery("tableau", "psqlODBC SQLTables: relations of a schema",
            "select relname, nspname, relkind from pg_catalog.pg_class c, pg_catalog.pg_namespace n "
            "where relkind in ('r', 'v', 'm', 'f', 'p') and nspname not in ('pg_catalog', 'information_schema', "
            f"'pg_toast', 'pg_temp_1') and n.oid = relnamespace and nspname = '{SCHEMA}' order by nspname, relname",
            ("relname", "nspname", "relkind")),
    BiQuery("tableau", "psqlODBC SQLColumns: columns of a table",
            "select n.nspname, c.relname, a.attname, a.atttypid, t.typname, a.attnum, a.attlen, a.atttypmod, "
            "a.attnotnull, c.relhasrules, c.relkind, c.oid, pg_get_expr(d.adbin, d.adrelid), "
            "case t.typtype when 'd' then t.typbasetype else 0 end, t.typtypmod, c.relhassubclass "
            "from (((pg_catalog.pg_class c inner join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            f"and c.relname like 'parent' and n.nspname like '{SCHEMA}') inner join pg_catalog.pg_attribute a "
            "on (not a.attisdropped) and a.attnum > 0 and a.attrelid = c.oid) inner join pg_catalog.pg_type t "
            "on t.oid = a.atttypid) left outer join pg_catalog.pg_attrdef d on a.atthasdef "
            "and d.adrelid = a.attrelid and d.adnum = a.attnum order by n.nspname, c.relname, attnum",
            ("nspname", "relname", "attname", "atttypid", "typname", "attnum", "attlen", "atttypmod", "attnotnull")),
)

# Tableau reads results through psqlODBC's declare/fetch mode: a cursor WITH HOLD in a transaction.
TABLEAU_CURSOR_SESSION = (
    "SET DateStyle = 'ISO'",
    "BEGIN",
    'declare "SQL_CUR0x1" cursor with hold for select relname, relkind from pg_catalog.pg_class c '
    f"join pg_catalog.pg_namespace n on n.oid = c.relnamespace where n.nspname = '{SCHEMA}' order by relname",
    'fetch 2048 in "SQL_CUR0x1"',
    'close "SQL_CUR0x1"',
    "COMMIT",
)
