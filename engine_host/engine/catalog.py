"""PostgreSQL catalog and introspection queries, answered from DuckDB's own catalog.

Postgres clients learn about a database by querying `pg_catalog` and `information_schema`: psql's
`\\d` family, SQLAlchemy's inspector, psycopg's `TypeInfo`, asyncpg's type introspection, JDBC tools
such as DBeaver. DuckDB's built-in `pg_catalog` views are too thin for them (no PG type OIDs, no
`format_type` with PG names, no constraint or index definitions, DuckDB-internal schemas mixed in),
so this module is the one place that answers those queries. It is one place on purpose: a later
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
"""

from __future__ import annotations

import platform
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import traverse_scope
from sqlglot.tokens import TokenType

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.engine.views import PARQUET_VIEW_MARKERS
from engine_host.pgcompat.types.table import (
    BUILTIN_TYPES,
    DUCKDB_SCALARS,
    JSON,
    NUMERIC,
    TEXT,
    TYPE_BY_NAME,
    catalog_type_oid_for_duckdb,
)

SCHEMA = "hd_pg"
PG_CATALOG_OID = 11
INFORMATION_SCHEMA_OID = 13207
OWNER_ROLE_OID = 10
DATABASE_OID = 16384
HEAP_AM_OID = 2
BTREE_AM_OID = 403
# Objects DuckDB has no OID for (constraints, the indexes behind PRIMARY KEY/UNIQUE, column
# defaults, enum labels) get one derived from their owner's OID and an ordinal (`_synthetic_oid`):
# stable while the owner exists, and never equal to an OID DuckDB hands out.
OID_STRIDE = 4096

Visibility = Callable[[str, str], bool] | Collection[tuple[str, str]]

# Schemas of the served database that are machinery, not user data.
_INTERNAL_SCHEMAS = (SCHEMA, "pg_catalog", "information_schema")


def _user_scope(alias: str = "") -> str:
    """SQL condition selecting user objects of the served (data) catalog from a duckdb_*() function."""
    q = f"{alias}." if alias else ""
    internal = ", ".join(f"'{s}'" for s in _INTERNAL_SCHEMAS)
    return f"{q}database_name = '{DATA_CATALOG}' AND {q}schema_name NOT IN ({internal})"


_USER_SCOPE = _user_scope()

# Visibility columns carried by views built from user relations; never shown to clients.
_OWNER_COLUMNS = ("hd_schema", "hd_table")
_REF_COLUMNS = ("hd_ref_table",)


_CATALOG_COLUMNS = """
pg_aggregate 2600 r
    aggfnoid regproc, aggkind char, aggnumdirectargs int2, aggtransfn regproc, aggfinalfn regproc,
    aggcombinefn regproc, aggserialfn regproc, aggdeserialfn regproc, aggmtransfn regproc,
    aggminvtransfn regproc, aggmfinalfn regproc, aggfinalextra bool, aggmfinalextra bool, aggfinalmodify
    char, aggmfinalmodify char, aggsortop oid, aggtranstype oid, aggtransspace int4, aggmtranstype oid,
    aggmtransspace int4, agginitval text, aggminitval text
pg_am 2601 r
    oid oid, amname name, amhandler regproc, amtype char
pg_amop 2602 r
    oid oid, amopfamily oid, amoplefttype oid, amoprighttype oid, amopstrategy int2, amoppurpose char,
    amopopr oid, amopmethod oid, amopsortfamily oid
pg_amproc 2603 r
    oid oid, amprocfamily oid, amproclefttype oid, amprocrighttype oid, amprocnum int2, amproc regproc
pg_attrdef 2604 r
    oid oid, adrelid oid, adnum int2, adbin pg_node_tree
pg_attribute 1249 r
    attrelid oid, attname name, atttypid oid, attstattarget int4, attlen int2, attnum int2, attndims
    int4, attcacheoff int4, atttypmod int4, attbyval bool, attalign char, attstorage char,
    attcompression char, attnotnull bool, atthasdef bool, atthasmissing bool, attidentity char,
    attgenerated char, attisdropped bool, attislocal bool, attinhcount int4, attcollation oid, attacl
    aclitem[], attoptions text[], attfdwoptions text[], attmissingval anyarray
pg_auth_members 1261 r
    roleid oid, member oid, grantor oid, admin_option bool
pg_available_extensions 12081 v
    name name, default_version text, installed_version text, comment text
pg_cast 2605 r
    oid oid, castsource oid, casttarget oid, castfunc oid, castcontext char, castmethod char
pg_class 1259 r
    oid oid, relname name, relnamespace oid, reltype oid, reloftype oid, relowner oid, relam oid,
    relfilenode oid, reltablespace oid, relpages int4, reltuples float4, relallvisible int4,
    reltoastrelid oid, relhasindex bool, relisshared bool, relpersistence char, relkind char, relnatts
    int2, relchecks int2, relhasrules bool, relhastriggers bool, relhassubclass bool, relrowsecurity
    bool, relforcerowsecurity bool, relispopulated bool, relreplident char, relispartition bool,
    relrewrite oid, relfrozenxid xid, relminmxid xid, relacl aclitem[], reloptions text[], relpartbound
    pg_node_tree
pg_collation 3456 r
    oid oid, collname name, collnamespace oid, collowner oid, collprovider char, collisdeterministic
    bool, collencoding int4, collcollate text, collctype text, colliculocale text, collversion text
pg_constraint 2606 r
    oid oid, conname name, connamespace oid, contype char, condeferrable bool, condeferred bool,
    convalidated bool, conrelid oid, contypid oid, conindid oid, conparentid oid, confrelid oid,
    confupdtype char, confdeltype char, confmatchtype char, conislocal bool, coninhcount int4,
    connoinherit bool, conkey int2[], confkey int2[], conpfeqop oid[], conppeqop oid[], conffeqop oid[],
    confdelsetcols int2[], conexclop oid[], conbin pg_node_tree
pg_conversion 2607 r
    oid oid, conname name, connamespace oid, conowner oid, conforencoding int4, contoencoding int4,
    conproc regproc, condefault bool
pg_database 1262 r
    oid oid, datname name, datdba oid, encoding int4, datlocprovider char, datistemplate bool,
    datallowconn bool, datconnlimit int4, datfrozenxid xid, datminmxid xid, dattablespace oid,
    datcollate text, datctype text, daticulocale text, datcollversion text, datacl aclitem[]
pg_default_acl 826 r
    oid oid, defaclrole oid, defaclnamespace oid, defaclobjtype char, defaclacl aclitem[]
pg_depend 2608 r
    classid oid, objid oid, objsubid int4, refclassid oid, refobjid oid, refobjsubid int4, deptype char
pg_description 2609 r
    objoid oid, classoid oid, objsubid int4, description text
pg_enum 3501 r
    oid oid, enumtypid oid, enumsortorder float4, enumlabel name
pg_event_trigger 3466 r
    oid oid, evtname name, evtevent name, evtowner oid, evtfoid oid, evtenabled char, evttags text[]
pg_extension 3079 r
    oid oid, extname name, extowner oid, extnamespace oid, extrelocatable bool, extversion text,
    extconfig oid[], extcondition text[]
pg_foreign_data_wrapper 2328 r
    oid oid, fdwname name, fdwowner oid, fdwhandler oid, fdwvalidator oid, fdwacl aclitem[], fdwoptions
    text[]
pg_foreign_server 1417 r
    oid oid, srvname name, srvowner oid, srvfdw oid, srvtype text, srvversion text, srvacl aclitem[],
    srvoptions text[]
pg_foreign_table 3118 r
    ftrelid oid, ftserver oid, ftoptions text[]
pg_index 2610 r
    indexrelid oid, indrelid oid, indnatts int2, indnkeyatts int2, indisunique bool, indnullsnotdistinct
    bool, indisprimary bool, indisexclusion bool, indimmediate bool, indisclustered bool, indisvalid
    bool, indcheckxmin bool, indisready bool, indislive bool, indisreplident bool, indkey int2vector,
    indcollation oidvector, indclass oidvector, indoption int2vector, indexprs pg_node_tree, indpred
    pg_node_tree
pg_indexes 12043 v
    schemaname name, tablename name, indexname name, tablespace name, indexdef text
pg_inherits 2611 r
    inhrelid oid, inhparent oid, inhseqno int4, inhdetachpending bool
pg_init_privs 3394 r
    objoid oid, classoid oid, objsubid int4, privtype char, initprivs aclitem[]
pg_language 2612 r
    oid oid, lanname name, lanowner oid, lanispl bool, lanpltrusted bool, lanplcallfoid oid, laninline
    oid, lanvalidator oid, lanacl aclitem[]
pg_locks 12073 v
    locktype text, database oid, relation oid, page int4, tuple int2, virtualxid text, transactionid
    xid, classid oid, objid oid, objsubid int2, virtualtransaction text, pid int4, mode text, granted
    bool, fastpath bool, waitstart timestamptz
pg_matviews 12038 v
    schemaname name, matviewname name, matviewowner name, tablespace name, hasindexes bool, ispopulated
    bool, definition text
pg_namespace 2615 r
    oid oid, nspname name, nspowner oid, nspacl aclitem[]
pg_opclass 2616 r
    oid oid, opcmethod oid, opcname name, opcnamespace oid, opcowner oid, opcfamily oid, opcintype oid,
    opcdefault bool, opckeytype oid
pg_operator 2617 r
    oid oid, oprname name, oprnamespace oid, oprowner oid, oprkind char, oprcanmerge bool, oprcanhash
    bool, oprleft oid, oprright oid, oprresult oid, oprcom oid, oprnegate oid, oprcode regproc, oprrest
    regproc, oprjoin regproc
pg_opfamily 2753 r
    oid oid, opfmethod oid, opfname name, opfnamespace oid, opfowner oid
pg_partitioned_table 3350 r
    partrelid oid, partstrat char, partnatts int2, partdefid oid, partattrs int2vector, partclass
    oidvector, partcollation oidvector, partexprs pg_node_tree
pg_policy 3256 r
    oid oid, polname name, polrelid oid, polcmd char, polpermissive bool, polroles oid[], polqual
    pg_node_tree, polwithcheck pg_node_tree
pg_proc 1255 r
    oid oid, proname name, pronamespace oid, proowner oid, prolang oid, procost float4, prorows float4,
    provariadic oid, prosupport regproc, prokind char, prosecdef bool, proleakproof bool, proisstrict
    bool, proretset bool, provolatile char, proparallel char, pronargs int2, pronargdefaults int2,
    prorettype oid, proargtypes oidvector, proallargtypes oid[], proargmodes char[], proargnames text[],
    proargdefaults pg_node_tree, protrftypes oid[], prosrc text, probin text, prosqlbody pg_node_tree,
    proconfig text[], proacl aclitem[]
pg_publication 6104 r
    oid oid, pubname name, pubowner oid, puballtables bool, pubinsert bool, pubupdate bool, pubdelete
    bool, pubtruncate bool, pubviaroot bool
pg_publication_namespace 6237 r
    oid oid, pnpubid oid, pnnspid oid
pg_publication_rel 6106 r
    oid oid, prpubid oid, prrelid oid, prqual pg_node_tree, prattrs int2vector
pg_range 3541 r
    rngtypid oid, rngsubtype oid, rngmultitypid oid, rngcollation oid, rngsubopc oid, rngcanonical
    regproc, rngsubdiff regproc
pg_rewrite 2618 r
    oid oid, rulename name, ev_class oid, ev_type char, ev_enabled char, is_instead bool, ev_qual
    pg_node_tree, ev_action pg_node_tree
pg_roles 12000 v
    rolname name, rolsuper bool, rolinherit bool, rolcreaterole bool, rolcreatedb bool, rolcanlogin
    bool, rolreplication bool, rolconnlimit int4, rolpassword text, rolvaliduntil timestamptz,
    rolbypassrls bool, rolconfig text[], oid oid
pg_seclabel 3596 r
    objoid oid, classoid oid, objsubid int4, provider text, label text
pg_sequence 2224 r
    seqrelid oid, seqtypid oid, seqstart int8, seqincrement int8, seqmax int8, seqmin int8, seqcache
    int8, seqcycle bool
pg_sequences 12048 v
    schemaname name, sequencename name, sequenceowner name, data_type regtype, start_value int8,
    min_value int8, max_value int8, increment_by int8, cycle bool, cache_size int8, last_value int8
pg_settings 12104 v
    name text, setting text, unit text, category text, short_desc text, extra_desc text, context text,
    vartype text, source text, min_val text, max_val text, enumvals text[], boot_val text, reset_val
    text, sourcefile text, sourceline int4, pending_restart bool
pg_shdescription 2396 r
    objoid oid, classoid oid, description text
pg_shseclabel 3592 r
    objoid oid, classoid oid, provider text, label text
pg_stat_activity 12222 v
    datid oid, datname name, pid int4, leader_pid int4, usesysid oid, usename name, application_name
    text, client_addr inet, client_hostname text, client_port int4, backend_start timestamptz,
    xact_start timestamptz, query_start timestamptz, state_change timestamptz, wait_event_type text,
    wait_event text, state text, backend_xid xid, backend_xmin xid, query_id int8, query text,
    backend_type text
pg_stat_all_tables 12142 v
    relid oid, schemaname name, relname name, seq_scan int8, seq_tup_read int8, idx_scan int8,
    idx_tup_fetch int8, n_tup_ins int8, n_tup_upd int8, n_tup_del int8, n_tup_hot_upd int8, n_live_tup
    int8, n_dead_tup int8, n_mod_since_analyze int8, n_ins_since_vacuum int8, last_vacuum timestamptz,
    last_autovacuum timestamptz, last_analyze timestamptz, last_autoanalyze timestamptz, vacuum_count
    int8, autovacuum_count int8, analyze_count int8, autoanalyze_count int8
pg_stat_database 12266 v
    datid oid, datname name, numbackends int4, xact_commit int8, xact_rollback int8, blks_read int8,
    blks_hit int8, tup_returned int8, tup_fetched int8, tup_inserted int8, tup_updated int8, tup_deleted
    int8, conflicts int8, temp_files int8, temp_bytes int8, deadlocks int8, checksum_failures int8,
    checksum_last_failure timestamptz, blk_read_time float8, blk_write_time float8, session_time float8,
    active_time float8, idle_in_transaction_time float8, sessions int8, sessions_abandoned int8,
    sessions_fatal int8, sessions_killed int8, stats_reset timestamptz
pg_stat_user_tables 12161 v
    relid oid, schemaname name, relname name, seq_scan int8, seq_tup_read int8, idx_scan int8,
    idx_tup_fetch int8, n_tup_ins int8, n_tup_upd int8, n_tup_del int8, n_tup_hot_upd int8, n_live_tup
    int8, n_dead_tup int8, n_mod_since_analyze int8, n_ins_since_vacuum int8, last_vacuum timestamptz,
    last_autovacuum timestamptz, last_analyze timestamptz, last_autoanalyze timestamptz, vacuum_count
    int8, autovacuum_count int8, analyze_count int8, autoanalyze_count int8
pg_statio_user_tables 12179 v
    relid oid, schemaname name, relname name, heap_blks_read int8, heap_blks_hit int8, idx_blks_read
    int8, idx_blks_hit int8, toast_blks_read int8, toast_blks_hit int8, tidx_blks_read int8,
    tidx_blks_hit int8
pg_statistic_ext 3381 r
    oid oid, stxrelid oid, stxname name, stxnamespace oid, stxowner oid, stxstattarget int4, stxkeys
    int2vector, stxkind char[], stxexprs pg_node_tree
pg_tables 12033 v
    schemaname name, tablename name, tableowner name, tablespace name, hasindexes bool, hasrules bool,
    hastriggers bool, rowsecurity bool
pg_tablespace 1213 r
    oid oid, spcname name, spcowner oid, spcacl aclitem[], spcoptions text[]
pg_timezone_names 12126 v
    name text, abbrev text, utc_offset interval, is_dst bool
pg_transform 3576 r
    oid oid, trftype oid, trflang oid, trffromsql regproc, trftosql regproc
pg_trigger 2620 r
    oid oid, tgrelid oid, tgparentid oid, tgname name, tgfoid oid, tgtype int2, tgenabled char,
    tgisinternal bool, tgconstrrelid oid, tgconstrindid oid, tgconstraint oid, tgdeferrable bool,
    tginitdeferred bool, tgnargs int2, tgattr int2vector, tgargs bytea, tgqual pg_node_tree, tgoldtable
    name, tgnewtable name
pg_ts_config 3602 r
    oid oid, cfgname name, cfgnamespace oid, cfgowner oid, cfgparser oid
pg_type 1247 r
    oid oid, typname name, typnamespace oid, typowner oid, typlen int2, typbyval bool, typtype char,
    typcategory char, typispreferred bool, typisdefined bool, typdelim char, typrelid oid, typsubscript
    regproc, typelem oid, typarray oid, typinput regproc, typoutput regproc, typreceive regproc, typsend
    regproc, typmodin regproc, typmodout regproc, typanalyze regproc, typalign char, typstorage char,
    typnotnull bool, typbasetype oid, typtypmod int4, typndims int4, typcollation oid, typdefaultbin
    pg_node_tree, typdefault text, typacl aclitem[]
pg_user 12014 v
    usename name, usesysid oid, usecreatedb bool, usesuper bool, userepl bool, usebypassrls bool, passwd
    text, valuntil timestamptz, useconfig text[]
pg_user_mapping 1418 r
    oid oid, umuser oid, umserver oid, umoptions text[]
pg_views 12028 v
    schemaname name, viewname name, viewowner name, definition text
information_schema.applicable_roles 13236 v
    grantee name, role_name name, is_grantable varchar
information_schema.character_sets 13250 v
    character_set_catalog name, character_set_schema name, character_set_name name, character_repertoire
    name, form_of_use name, default_collate_catalog name, default_collate_schema name,
    default_collate_name name
information_schema.check_constraints 13260 v
    constraint_catalog name, constraint_schema name, constraint_name name, check_clause varchar
information_schema.columns 13295 v
    table_catalog name, table_schema name, table_name name, column_name name, ordinal_position int4,
    column_default varchar, is_nullable varchar, data_type varchar, character_maximum_length int4,
    character_octet_length int4, numeric_precision int4, numeric_precision_radix int4, numeric_scale
    int4, datetime_precision int4, interval_type varchar, interval_precision int4, character_set_catalog
    name, character_set_schema name, character_set_name name, collation_catalog name, collation_schema
    name, collation_name name, domain_catalog name, domain_schema name, domain_name name, udt_catalog
    name, udt_schema name, udt_name name, scope_catalog name, scope_schema name, scope_name name,
    maximum_cardinality int4, dtd_identifier name, is_self_referencing varchar, is_identity varchar,
    identity_generation varchar, identity_start varchar, identity_increment varchar, identity_maximum
    varchar, identity_minimum varchar, identity_cycle varchar, is_generated varchar,
    generation_expression varchar, is_updatable varchar
information_schema.constraint_column_usage 13300 v
    table_catalog name, table_schema name, table_name name, column_name name, constraint_catalog name,
    constraint_schema name, constraint_name name
information_schema.enabled_roles 13325 v
    role_name name
information_schema.information_schema_catalog_name 13227 v
    catalog_name name
information_schema.key_column_usage 13329 v
    constraint_catalog name, constraint_schema name, constraint_name name, table_catalog name,
    table_schema name, table_name name, column_name name, ordinal_position int4,
    position_in_unique_constraint int4
information_schema.parameters 13334 v
    specific_catalog name, specific_schema name, specific_name name, ordinal_position int4,
    parameter_mode varchar, is_result varchar, as_locator varchar, parameter_name name, data_type
    varchar, character_maximum_length int4, character_octet_length int4, character_set_catalog name,
    character_set_schema name, character_set_name name, collation_catalog name, collation_schema name,
    collation_name name, numeric_precision int4, numeric_precision_radix int4, numeric_scale int4,
    datetime_precision int4, interval_type varchar, interval_precision int4, udt_catalog name,
    udt_schema name, udt_name name, scope_catalog name, scope_schema name, scope_name name,
    maximum_cardinality int4, dtd_identifier name, parameter_default varchar
information_schema.referential_constraints 13339 v
    constraint_catalog name, constraint_schema name, constraint_name name, unique_constraint_catalog
    name, unique_constraint_schema name, unique_constraint_name name, match_option varchar, update_rule
    varchar, delete_rule varchar
information_schema.routines 13377 v
    specific_catalog name, specific_schema name, specific_name name, routine_catalog name,
    routine_schema name, routine_name name, routine_type varchar, module_catalog name, module_schema
    name, module_name name, udt_catalog name, udt_schema name, udt_name name, data_type varchar,
    character_maximum_length int4, character_octet_length int4, character_set_catalog name,
    character_set_schema name, character_set_name name, collation_catalog name, collation_schema name,
    collation_name name, numeric_precision int4, numeric_precision_radix int4, numeric_scale int4,
    datetime_precision int4, interval_type varchar, interval_precision int4, type_udt_catalog name,
    type_udt_schema name, type_udt_name name, scope_catalog name, scope_schema name, scope_name name,
    maximum_cardinality int4, dtd_identifier name, routine_body varchar, routine_definition varchar,
    external_name varchar, external_language varchar, parameter_style varchar, is_deterministic varchar,
    sql_data_access varchar, is_null_call varchar, sql_path varchar, schema_level_routine varchar,
    max_dynamic_result_sets int4, is_user_defined_cast varchar, is_implicitly_invocable varchar,
    security_type varchar, to_sql_specific_catalog name, to_sql_specific_schema name,
    to_sql_specific_name name, as_locator varchar, created timestamptz, last_altered timestamptz,
    new_savepoint_level varchar, is_udt_dependent varchar, result_cast_from_data_type varchar,
    result_cast_as_locator varchar, result_cast_char_max_length int4, result_cast_char_octet_length
    int4, result_cast_char_set_catalog name, result_cast_char_set_schema name, result_cast_char_set_name
    name, result_cast_collation_catalog name, result_cast_collation_schema name,
    result_cast_collation_name name, result_cast_numeric_precision int4,
    result_cast_numeric_precision_radix int4, result_cast_numeric_scale int4,
    result_cast_datetime_precision int4, result_cast_interval_type varchar,
    result_cast_interval_precision int4, result_cast_type_udt_catalog name, result_cast_type_udt_schema
    name, result_cast_type_udt_name name, result_cast_scope_catalog name, result_cast_scope_schema name,
    result_cast_scope_name name, result_cast_maximum_cardinality int4, result_cast_dtd_identifier name
information_schema.schemata 13382 v
    catalog_name name, schema_name name, schema_owner name, default_character_set_catalog name,
    default_character_set_schema name, default_character_set_name name, sql_path varchar
information_schema.sequences 13386 v
    sequence_catalog name, sequence_schema name, sequence_name name, data_type varchar,
    numeric_precision int4, numeric_precision_radix int4, numeric_scale int4, start_value varchar,
    minimum_value varchar, maximum_value varchar, increment varchar, cycle_option varchar
information_schema.table_constraints 13411 v
    constraint_catalog name, constraint_schema name, constraint_name name, table_catalog name,
    table_schema name, table_name name, constraint_type varchar, is_deferrable varchar,
    initially_deferred varchar, enforced varchar, nulls_distinct varchar
information_schema.table_privileges 13416 v
    grantor name, grantee name, table_catalog name, table_schema name, table_name name, privilege_type
    varchar, is_grantable varchar, with_hierarchy varchar
information_schema.tables 13425 v
    table_catalog name, table_schema name, table_name name, table_type varchar,
    self_referencing_column_name name, reference_generation varchar, user_defined_type_catalog name,
    user_defined_type_schema name, user_defined_type_name name, is_insertable_into varchar, is_typed
    varchar, commit_action varchar
information_schema.triggers 13440 v
    trigger_catalog name, trigger_schema name, trigger_name name, event_manipulation varchar,
    event_object_catalog name, event_object_schema name, event_object_table name, action_order int4,
    action_condition varchar, action_statement varchar, action_orientation varchar, action_timing
    varchar, action_reference_old_table name, action_reference_new_table name, action_reference_old_row
    name, action_reference_new_row name, created timestamptz
information_schema.views 13483 v
    table_catalog name, table_schema name, table_name name, view_definition varchar, check_option
    varchar, is_updatable varchar, is_insertable_into varchar, is_trigger_updatable varchar,
    is_trigger_deletable varchar, is_trigger_insertable_into varchar
"""


# --- static data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RelationSpec:
    """A catalog relation as PostgreSQL 15 defines it: OID, kind and ordered (column, type) pairs."""

    qualified: str
    oid: int
    kind: str
    columns: tuple[tuple[str, str], ...]

    @property
    def schema(self) -> str:
        return "information_schema" if self.qualified.startswith("information_schema.") else "pg_catalog"

    @property
    def relname(self) -> str:
        return self.qualified.rsplit(".", 1)[-1]

    @property
    def view(self) -> str:
        """Name of the view in the hd_pg schema that answers for this relation."""
        return ("is_" if self.schema == "information_schema" else "") + self.relname


def _relation_specs() -> dict[str, _RelationSpec]:
    specs: dict[str, _RelationSpec] = {}
    head: list[str] = []
    columns: list[str] = []

    def flush() -> None:
        if head:
            pairs = tuple(
                (item.split(" ", 1)[0], item.split(" ", 1)[1].strip())
                for item in " ".join(columns).split(", ")
            )
            specs[head[0]] = _RelationSpec(head[0], int(head[1]), head[2], pairs)

    for line in _CATALOG_COLUMNS.strip("\n").splitlines():
        if line.startswith(" "):
            columns.append(line.strip())
        else:
            flush()
            head, columns = line.split(), []
    flush()
    return specs


_TYPES = BUILTIN_TYPES
_TYPE_BY_NAME = TYPE_BY_NAME
_SPECS = _relation_specs()
_SPEC_BY_VIEW = {spec.view: spec for spec in _SPECS.values()}

# How each PostgreSQL column type of the catalogs is stored in the DuckDB views.
_DUCK_TYPES = {
    "oid": "UINTEGER", "xid": "UINTEGER", "name": "VARCHAR", "text": "VARCHAR", "char": "VARCHAR",
    "varchar": "VARCHAR", "regproc": "VARCHAR", "regtype": "VARCHAR", "pg_node_tree": "VARCHAR",
    "aclitem": "VARCHAR", "inet": "VARCHAR", "anyarray": "VARCHAR", "int2": "SMALLINT", "int4": "INTEGER",
    "int8": "BIGINT", "float4": "FLOAT", "float8": "DOUBLE", "bool": "BOOLEAN", "timestamptz": "TIMESTAMPTZ",
    "interval": "INTERVAL", "bytea": "BLOB", "int2vector": "SMALLINT[]", "oidvector": "UINTEGER[]",
}


def _duck_type(pg_type: str) -> str:
    if pg_type.endswith("[]"):
        return _DUCK_TYPES[pg_type[:-2]] + "[]"
    return _DUCK_TYPES[pg_type]


def _pg_type_oid(pg_type: str) -> int:
    if pg_type.endswith("[]"):
        return _TYPE_BY_NAME["_" + pg_type[:-2]].oid
    return _TYPE_BY_NAME[pg_type].oid


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


# --- the hd_pg schema ------------------------------------------------------------------------------


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
            SELECT {_synthetic_oid('c.table_oid', 'c.ord')} AS oid, c.constraint_name AS conname,
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
                    ELSE 'CHECK (' || k.check_expr || ')' END AS condef
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
            v + f"""hd_proc AS
            SELECT CAST(f.function_oid AS UINTEGER) AS oid, f.function_name AS proname,
                CAST(s.oid AS UINTEGER) AS pronamespace, f.function_type = 'table_macro' AS proretset,
                CAST(len(f.parameters) AS SMALLINT) AS pronargs, f.parameters AS proargnames,
                f.macro_definition AS prosrc, s.schema_name AS nspname
            FROM duckdb_functions() AS f JOIN duckdb_schemas() AS s
                ON s.database_name = f.database_name AND s.schema_name = f.schema_name
            WHERE NOT f.internal AND {_user_scope('f')}""",
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
                "contypid": "0", "conindid": "CASE WHEN k.contype IN ('p', 'u') THEN k.oid ELSE 0 END",
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
                "proowner": str(OWNER_ROLE_OID), "prolang": "14", "procost": "100", "prorows": "0",
                "provariadic": "0", "prosupport": "'-'", "prokind": "'f'", "prosecdef": "false",
                "proleakproof": "false", "proisstrict": "false", "proretset": "p.proretset",
                "provolatile": "'v'", "proparallel": "'u'", "pronargs": "p.pronargs", "pronargdefaults": "0",
                "prorettype": "CASE WHEN p.proretset THEN 2249 ELSE 2283 END",
                "proargtypes": "list_transform(p.proargnames, lambda x: 2283)", "proargnames": "p.proargnames",
                "prosrc": "p.prosrc"}),
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

    # macros that read the catalog views (created last, after what they read)

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
            m + f"regproc_name(o) AS coalesce((SELECT any_value(p.proname) FROM {s}.hd_proc AS p WHERE "
            "p.oid = o), CAST(o AS VARCHAR))",
            m + f"regrole_oid(s) AS CASE WHEN {s}.ident_part(s, 2) = {_lit(self.cfg.owner.lower())} OR "
            f"{s}.ident_part(s, 2) = {_lit(self.cfg.owner)} THEN CAST({OWNER_ROLE_OID} AS UINTEGER) END",
            m + f"current_setting(n) AS coalesce((SELECT any_value(g.setting) FROM {s}.settings AS g "
            "WHERE lower(g.name) = lower(n)), error('unrecognized configuration parameter \"' || n || '\"'))",
            m + "set_config(n, v, is_local) AS CASE WHEN lower(n) IN ('jit') THEN v ELSE error("
            "'set_config(''' || n || ''') is not supported by Hardened Duck; use SET') END",
            m + f"pg_function_is_visible(o) AS coalesce((SELECT any_value({s}.is_visible_schema(p.nspname)) "
            f"FROM {s}.hd_proc AS p WHERE p.oid = o), false)",
            m + f"pg_get_function_result(o) AS (SELECT any_value(CASE WHEN p.proretset THEN 'TABLE' "
            f"ELSE 'anyelement' END) FROM {s}.hd_proc AS p WHERE p.oid = o)",
            m + f"pg_get_function_arguments(o) AS (SELECT any_value(array_to_string(list_transform("
            f"p.proargnames, lambda x: x || ' anyelement'), ', ')) FROM {s}.hd_proc AS p WHERE p.oid = o)",
            m + f"pg_get_functiondef(o) AS (SELECT any_value('CREATE MACRO ' || {s}.quote_ident(p.nspname) || '.' "
            f"|| {s}.quote_ident(p.proname) || '(' || array_to_string(p.proargnames, ', ') || ') AS ' || "
            f"CASE WHEN p.proretset THEN 'TABLE ' ELSE '' END || p.prosrc) FROM {s}.hd_proc AS p WHERE p.oid = o)",
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

# Which views carry visibility columns, and which of those also carry a referenced table.
_OWNED_VIEWS = {
    "pg_class", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index", "pg_description", "pg_tables",
    "pg_views", "pg_indexes", "pg_sequence", "pg_sequences", "is_tables", "is_views", "is_columns",
    "is_table_constraints", "is_key_column_usage", "is_referential_constraints", "is_constraint_column_usage",
    "is_check_constraints", "is_sequences", "hd_con_base", "hd_con", "hd_idx_base", "hd_idx", "hd_viewdef",
    "hd_rel", "hd_att", "hd_desc", "hd_seq",
}
_REF_VIEWS = {
    "pg_constraint", "is_table_constraints", "is_key_column_usage", "is_referential_constraints",
    "is_constraint_column_usage", "is_check_constraints", "hd_con_base", "hd_con",
}


# --- recognising and rewriting catalog queries ----------------------------------------------------

# Words without which a statement cannot be a catalog query. Checked on the raw text before any
# parsing, so ordinary SQL (the overwhelming majority) costs a few substring searches: plain `in`
# tests on the lower-cased text first (about 1 us), the regex (10x slower) only when one hits.
_HINT_WORDS = (
    "pg_", "information_schema", "version", "current_", "session_user", "reg", "oid", "format_type",
    "_description", "_privilege", "txid_", "inet_", "set_config",
)
_CATALOG_HINT = re.compile(
    r"pg_|information_schema|version\s*\(|current_(?:schema|database|user|role|catalog|setting)|session_user"
    r"|\breg(?:class|type|proc|procedure|namespace|role|oper|operator|config|dictionary|collation)\b"
    r"|\boid\b|format_type|_description\s*\(|_privilege\s*\(|txid_|inet_(?:server|client)|set_config"
    r"|to_reg",
    re.IGNORECASE,
)

# DuckDB functions a catalog query must never smuggle in: they read files, other queries,
# the environment or DuckDB's own unfiltered catalog. Such statements are left to the guard.
_DENIED_FUNCTION = re.compile(
    r"^(?:read_\w*|glob|query|query_table|getenv|duckdb_\w*|pragma_\w*|sniff_\w*|parquet_\w*|iceberg_\w*"
    r"|delta_\w*|which_secret|load_\w*|install_\w*|checkpoint|force_checkpoint|set_variable|getvariable"
    r"|stats|summary|sql_auto_complete|json_execute_serialized_sql|from_substrait\w*|get_substrait\w*"
    r"|test_\w*|enable_\w*|disable_\w*|current_query|error|txid_snapshot\w*)$"
)

# Functions (besides any pg_* name) that make a statement a catalog query.
_CATALOG_FUNCTIONS = frozenset({
    "version", "current_database", "current_catalog", "current_schema", "current_schemas", "current_user",
    "session_user", "current_role", "current_setting", "set_config", "format_type", "obj_description",
    "col_description", "shobj_description", "txid_current", "inet_server_addr", "inet_server_port",
    "inet_client_addr", "inet_client_port", "to_regclass", "to_regtype", "to_regproc", "to_regnamespace",
    "to_regrole", "getdatabaseencoding", "has_table_privilege", "has_schema_privilege",
    "has_database_privilege", "has_column_privilege", "has_any_column_privilege", "has_function_privilege",
    "has_sequence_privilege", "has_language_privilege", "has_tablespace_privilege",
    "has_foreign_data_wrapper_privilege", "has_server_privilege", "has_type_privilege",
})

# Set-returning functions allowed in the FROM clause of a catalog query.
_TABLE_FUNCTIONS = frozenset({
    "generate_series", "unnest", "pg_get_keywords", "pg_show_all_settings", "pg_partition_ancestors",
    "generate_subscripts",
})

# sqlglot node classes (by name) for functions this module answers, mapped to the PostgreSQL name.
_TYPED_FUNCTIONS = {
    "CurrentDatabase": "current_database", "CurrentCatalog": "current_catalog", "CurrentVersion": "version",
    "CurrentUser": "current_user", "SessionUser": "session_user", "CurrentRole": "current_role",
    "CurrentSchemas": "current_schemas", "ArraySize": "array_length", "ExplodingGenerateSeries": "generate_series",
    "GenerateSeries": "generate_series", "Explode": "unnest", "Unnest": "unnest",
}

# int2vector/oidvector columns: PostgreSQL subscripts them from 0, DuckDB lists from 1.
_ZERO_BASED = frozenset({
    "indkey", "indclass", "indcollation", "indoption", "proargtypes", "stxkeys", "partattrs", "partclass",
    "partcollation", "prattrs", "tgattr",
})

# PostgreSQL type names in casts -> DuckDB types (reg* types are handled separately).
_CAST_TYPES = {
    "oid": "UINTEGER", "xid": "UINTEGER", "cid": "UINTEGER", "xid8": "UBIGINT", "tid": "VARCHAR",
    "name": "VARCHAR", "char": "VARCHAR", "text": "VARCHAR", "varchar": "VARCHAR", "bpchar": "VARCHAR",
    "pg_node_tree": "VARCHAR", "aclitem": "VARCHAR", "sql_identifier": "VARCHAR", "character_data": "VARCHAR",
    "yes_or_no": "VARCHAR", "inet": "VARCHAR", "cidr": "VARCHAR", "anyarray": "VARCHAR", "unknown": "VARCHAR",
    "regoper": "VARCHAR", "regoperator": "VARCHAR", "regconfig": "VARCHAR", "regdictionary": "VARCHAR",
    "regcollation": "VARCHAR", "int2": "SMALLINT", "int4": "INTEGER", "int8": "BIGINT", "float4": "FLOAT",
    "float8": "DOUBLE", "bool": "BOOLEAN", "cardinal_number": "INTEGER", "time_stamp": "TIMESTAMPTZ",
    "timestamptz": "TIMESTAMPTZ", "numeric": "DECIMAL(38, 10)", "int2vector": "SMALLINT[]",
    "oidvector": "UINTEGER[]", "json": "JSON", "jsonb": "JSON",
}
_REG_TYPES = frozenset({"regclass", "regtype", "regproc", "regprocedure", "regnamespace", "regrole"})
_TEXT_TYPES = frozenset({"text", "varchar", "name", "char", "bpchar", "character varying"})

_OPERATORS: dict[str, Callable[[exp.Expr, exp.Expr], exp.Expr]] = {
    "~": lambda a, b: exp.RegexpLike(this=a, expression=b),
    "~*": lambda a, b: exp.RegexpILike(this=a, expression=b),
    "!~": lambda a, b: exp.Not(this=exp.RegexpLike(this=a, expression=b)),
    "!~*": lambda a, b: exp.Not(this=exp.RegexpILike(this=a, expression=b)),
    "~~": lambda a, b: exp.Like(this=a, expression=b),
    "!~~": lambda a, b: exp.Not(this=exp.Like(this=a, expression=b)),
    "~~*": lambda a, b: exp.ILike(this=a, expression=b),
    "!~~*": lambda a, b: exp.Not(this=exp.ILike(this=a, expression=b)),
    "=": lambda a, b: exp.EQ(this=a, expression=b),
    "<>": lambda a, b: exp.NEQ(this=a, expression=b),
    "!=": lambda a, b: exp.NEQ(this=a, expression=b),
    "<": lambda a, b: exp.LT(this=a, expression=b),
    "<=": lambda a, b: exp.LTE(this=a, expression=b),
    ">": lambda a, b: exp.GT(this=a, expression=b),
    ">=": lambda a, b: exp.GTE(this=a, expression=b),
    "||": lambda a, b: exp.DPipe(this=a, expression=b),
}

# Functions answered by an inline subquery over catalog views (so visibility applies to them too).
# `__hd_argN` stands for the Nth argument. Every inner source is a subquery whose columns are renamed
# `__hd_*`, so an unqualified argument such as `pg_get_constraintdef(oid)` still binds to the
# caller's `oid` and can never be captured by a column of the inner relation.
_CLASS = f"(SELECT oid AS __hd_oid, relname AS __hd_relname, relnamespace AS __hd_nsp FROM {SCHEMA}.pg_class)"
_NAMESPACE = f"(SELECT oid AS __hd_oid, nspname AS __hd_nspname FROM {SCHEMA}.pg_namespace)"
_RELATION_NAMES = f"{_CLASS} AS __hd_c JOIN {_NAMESPACE} AS __hd_n ON __hd_n.__hd_oid = __hd_c.__hd_nsp"
_TEMPLATES = {
    "regclass_oid": f"""CASE WHEN regexp_full_match(CAST(__hd_arg0 AS VARCHAR), '\\s*[0-9]+\\s*')
        THEN CAST(trim(CAST(__hd_arg0 AS VARCHAR)) AS UINTEGER)
        ELSE (SELECT arg_min(__hd_c.__hd_oid, CASE WHEN __hd_n.__hd_nspname = 'pg_catalog' THEN 0 ELSE 1 END)
            FROM {_RELATION_NAMES}
            WHERE __hd_c.__hd_relname = {SCHEMA}.ident_part(CAST(__hd_arg0 AS VARCHAR), 2)
            AND coalesce(__hd_n.__hd_nspname = {SCHEMA}.ident_part(CAST(__hd_arg0 AS VARCHAR), 1),
                         {SCHEMA}.is_visible_schema(__hd_n.__hd_nspname))) END""",
    "regclass_name": f"""coalesce((SELECT any_value({SCHEMA}.qualified_name(__hd_n.__hd_nspname, __hd_c.__hd_relname))
        FROM {_RELATION_NAMES} WHERE __hd_c.__hd_oid = __hd_arg0), CAST(__hd_arg0 AS VARCHAR))""",
    "pg_table_is_visible": f"""(SELECT any_value({SCHEMA}.is_visible_schema(__hd_n.__hd_nspname))
        FROM {_RELATION_NAMES} WHERE __hd_c.__hd_oid = __hd_arg0)""",
    "obj_description": f"""(SELECT any_value(__hd_d.__hd_text) FROM (SELECT objoid AS __hd_oid, objsubid AS __hd_sub,
        description AS __hd_text FROM {SCHEMA}.pg_description) AS __hd_d
        WHERE __hd_d.__hd_oid = __hd_arg0 AND __hd_d.__hd_sub = 0)""",
    "col_description": f"""(SELECT any_value(__hd_d.__hd_text) FROM (SELECT objoid AS __hd_oid, objsubid AS __hd_sub,
        description AS __hd_text FROM {SCHEMA}.pg_description) AS __hd_d
        WHERE __hd_d.__hd_oid = __hd_arg0 AND __hd_d.__hd_sub = __hd_arg1)""",
    "pg_get_viewdef": f"""(SELECT any_value(__hd_v.__hd_text) FROM (SELECT oid AS __hd_oid, definition AS __hd_text
        FROM {SCHEMA}.hd_viewdef) AS __hd_v WHERE __hd_v.__hd_oid = __hd_arg0)""",
    "pg_get_constraintdef": f"""(SELECT any_value(__hd_k.__hd_text) FROM (SELECT oid AS __hd_oid, condef AS __hd_text
        FROM {SCHEMA}.hd_con) AS __hd_k WHERE __hd_k.__hd_oid = __hd_arg0)""",
    "pg_get_indexdef": f"""(SELECT any_value(CASE WHEN coalesce(__hd_arg1, 0) = 0 THEN __hd_i.__hd_text
        ELSE __hd_i.__hd_exprs[__hd_arg1] END) FROM (SELECT oid AS __hd_oid, indexdef AS __hd_text,
        exprs AS __hd_exprs FROM {SCHEMA}.hd_idx) AS __hd_i WHERE __hd_i.__hd_oid = __hd_arg0)""",
}
_TEMPLATE_ARG = re.compile(r"^__hd_arg(\d)$")

# Constant answers: PostgreSQL function name -> DuckDB SQL for the result (arguments ignored).
_CONSTANTS = {
    "pg_is_in_recovery": "false", "pg_relation_is_publishable": "false", "pg_is_other_temp_schema": "false",
    "pg_has_role": "true", "pg_type_is_visible": "true", "pg_collation_is_visible": "true",
    "pg_opclass_is_visible": "true", "pg_opfamily_is_visible": "true", "pg_operator_is_visible": "true",
    "pg_conversion_is_visible": "true", "pg_ts_config_is_visible": "true", "pg_ts_dict_is_visible": "true",
    "pg_ts_parser_is_visible": "true", "pg_ts_template_is_visible": "true", "pg_my_temp_schema": "0",
    "getdatabaseencoding": "'UTF8'", "pg_client_encoding": "'UTF8'",
    "shobj_description": "CAST(NULL AS VARCHAR)", "pg_get_triggerdef": "CAST(NULL AS VARCHAR)",
    "pg_get_ruledef": "CAST(NULL AS VARCHAR)", "pg_get_partkeydef": "CAST(NULL AS VARCHAR)",
    "pg_get_partition_constraintdef": "CAST(NULL AS VARCHAR)",
    "pg_get_statisticsobjdef": "CAST(NULL AS VARCHAR)",
    "pg_get_statisticsobjdef_columns": "CAST(NULL AS VARCHAR)", "pg_get_serial_sequence": "CAST(NULL AS VARCHAR)",
    "pg_tablespace_location": "''", "pg_table_size": "CAST(NULL AS BIGINT)",
    "pg_relation_size": "CAST(NULL AS BIGINT)", "pg_total_relation_size": "CAST(NULL AS BIGINT)",
    "pg_indexes_size": "CAST(NULL AS BIGINT)", "pg_database_size": "CAST(NULL AS BIGINT)",
    "inet_server_addr": "CAST(NULL AS VARCHAR)", "inet_client_addr": "CAST(NULL AS VARCHAR)",
    "inet_server_port": "CAST(NULL AS INTEGER)", "inet_client_port": "CAST(NULL AS INTEGER)",
}

# Functions answered by a macro of the hd_pg schema with the same arguments (extra ones dropped).
_MACROS = {
    "format_type": 2, "pg_get_userbyid": 1, "pg_encoding_to_char": 1, "pg_size_pretty": 1, "quote_ident": 1,
    "set_config": 3, "pg_function_is_visible": 1, "pg_get_function_result": 1, "pg_get_function_arguments": 1,
    "pg_get_function_identity_arguments": 1, "pg_get_functiondef": 1, "to_regtype": 1, "to_regnamespace": 1,
    "to_regrole": 1,
}
_MACRO_NAMES = {"pg_get_function_identity_arguments": "pg_get_function_arguments", "to_regtype": "regtype_oid",
                "to_regnamespace": "regnamespace_oid", "to_regrole": "regrole_oid"}

_SESSION_USER = "__hd_session_user"
_SESSION_SETTING = "__hd_session_setting"
_SESSION_PID = "__hd_session_pid"


@dataclass
class _Translation:
    """A catalog query rewritten for DuckDB, before session values and visibility are applied."""

    tree: exp.Expr
    session_dependent: bool
    parameter_types: dict[int, int] = field(default_factory=dict)
    plain_sql: str | None = None


@dataclass
class _Classification:
    catalog_tables: dict[int, _RelationSpec] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    has_marker: bool = False


def _func_name(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    for cls in type(node).__mro__:
        if cls.__name__ in _TYPED_FUNCTIONS:
            return _TYPED_FUNCTIONS[cls.__name__]
    return None


def _sql_function_name(node: exp.Func) -> str:
    """The DuckDB-level name of any function node, for the deny list."""
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return node.sql_name().lower()


def _cast_target(to: exp.Expr) -> str | None:
    """The PostgreSQL name of a cast's target type when sqlglot does not model it, else None."""
    if isinstance(to, exp.ObjectIdentifier):
        return to.name.lower()
    if not isinstance(to, exp.DataType):
        return None
    if to.this == exp.DType.ARRAY and to.expressions:
        inner = _cast_target(to.expressions[0])
        return inner + "[]" if inner else None
    if to.this == exp.DType.USERDEFINED:
        kind = to.args.get("kind")
        if isinstance(kind, exp.Dot):
            name = kind.expression.name
        elif isinstance(kind, exp.Identifier):
            name = kind.name
        else:
            name = str(kind or "")
        name = name.lower().rsplit(".", 1)[-1]
        return name[3:] if name.startswith("hd_") else name
    return None


def _is_text_cast(node: exp.Expr) -> bool:
    if not isinstance(node, exp.Cast):
        return False
    target = _cast_target(node.to)
    if target is not None:
        return target in _TEXT_TYPES
    return node.to.this in (exp.DType.TEXT, exp.DType.VARCHAR, exp.DType.NAME, exp.DType.CHAR,
                            exp.DType.NCHAR, exp.DType.NVARCHAR, exp.DType.BPCHAR)


def _in_output_position(node: exp.Expr) -> bool:
    """True where PostgreSQL would print a reg* value (as a name) rather than compare it (as an OID)."""
    if node.parent is not None and _is_text_cast(node.parent):
        return True
    while isinstance(node.parent, exp.Alias | exp.Paren):
        node = node.parent
    return isinstance(node.parent, exp.Select) and node.arg_key == "expressions"


def _pg_array_items(text: str) -> list[str | None] | None:
    """Elements of a one-dimensional PostgreSQL array literal such as '{a,"b c",NULL}'."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    body, items, current, quoted, escaped, was_quoted = text[1:-1], [], [], False, False, False
    if not body.strip():
        return []
    for ch in body:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, was_quoted = not quoted, True
        elif ch == "," and not quoted:
            item = "".join(current).strip() if not was_quoted else "".join(current)
            items.append(None if item.upper() == "NULL" and not was_quoted else item)
            current, was_quoted = [], False
        elif ch in "{}" and not quoted:
            return None  # nested arrays are not used by catalog clients
        else:
            current.append(ch)
    item = "".join(current).strip() if not was_quoted else "".join(current)
    items.append(None if item.upper() == "NULL" and not was_quoted else item)
    return items


def _array_literal(text: str) -> exp.Expr | None:
    items = _pg_array_items(text)
    if items is None:
        return None
    return exp.Array(expressions=[exp.null() if i is None else exp.Literal.string(i) for i in items])


def _parameters(node: exp.Expr) -> set[str]:
    return {p.sql() for p in node.find_all(exp.Parameter, exp.Placeholder)}


def _call(name: str, *args: exp.Expr, schema: str | None = None) -> exp.Expr:
    call = exp.Anonymous(this=name, expressions=list(args))
    if schema:
        return exp.Dot(this=exp.to_identifier(schema), expression=call)
    return call


def _length(arr: exp.Expr) -> exp.Expr:
    return _call("len", arr.copy())


def _zero_based(node: exp.Expr) -> bool:
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    return isinstance(node, exp.Column) and node.name.lower() in _ZERO_BASED


def _pg_column_name(node: exp.Expr) -> tuple[str | None, int]:
    """The output column name PostgreSQL gives an unaliased select item, with the strength its
    FigureColname rules give it (2 = a real name, 1 = a type name fallback, 0 = none)."""
    if isinstance(node, exp.Column):
        return node.name, 2
    if isinstance(node, exp.Cast):
        name, strength = _pg_column_name(node.this)
        if strength > 1:
            return name, strength
        return _cast_target(node.to) or node.to.sql("postgres").lower(), 1
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select) and node.this.expressions:
        first = node.this.expressions[0]
        return (first.alias, 2) if isinstance(first, exp.Alias) else _pg_column_name(first)
    if isinstance(node, exp.Case):
        default = node.args.get("default")
        name, strength = _pg_column_name(default) if default is not None else (None, 0)
        return (name, strength) if strength > 1 else ("case", 1)
    if isinstance(node, exp.Paren):
        return _pg_column_name(node.this)
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        return _pg_column_name(node.expression)
    if isinstance(node, exp.Array):
        return "array", 2
    if isinstance(node, exp.Func):
        name = _func_name(node)
        if name is None:
            match = re.match(r"[A-Za-z_]\w*", node.sql("postgres"))
            name = match.group(0) if match else None
        return (name.lower(), 2) if name else (None, 0)
    return None, 0


class _Translator:
    """Recognises catalog queries and turns them into DuckDB SQL over the hd_pg views (thread-safe)."""

    def __init__(self, responder: CatalogResponder):
        self._r = responder
        self.templates = {name: sqlglot.parse_one(sql, read="duckdb") for name, sql in _TEMPLATES.items()}
        self._unqualified = {spec.relname for spec in _SPECS.values() if spec.schema == "pg_catalog"}

    # classification

    def classify(self, tree: exp.Expr) -> _Classification | None:
        """What the statement reads; None if it reads anything that is not the catalog."""
        try:
            scopes = traverse_scope(tree)
        except (SqlglotError, KeyError, ValueError, TypeError, AttributeError, RecursionError):
            return None  # sqlglot cannot scope it, so it is nothing we answer
        cte_refs = {
            id(table) for scope in scopes for table in scope.tables
            if not table.args.get("db") and table.name in scope.cte_sources
        }
        found = _Classification()
        for table in tree.find_all(exp.Table):
            if id(table) in cte_refs:
                continue
            if isinstance(table.this, exp.Func):
                name = _func_name(table.this)
                if name not in _TABLE_FUNCTIONS:
                    return None
                found.has_marker = found.has_marker or bool(name and name.startswith("pg_"))
                continue
            catalog = table.catalog
            if catalog and catalog.lower() != self._r.database_name.lower():
                return None
            db = table.db.lower()
            name = table.name if table.this.args.get("quoted") else table.name.lower()
            if db == "pg_catalog" or (not db and name in self._unqualified):
                key = name
            elif db == "information_schema":
                key = f"information_schema.{name}"
            else:
                return None  # a user relation: never answered here
            spec = _SPECS.get(key)
            if spec is None:
                found.unsupported.append(f"{db or 'pg_catalog'}.{name}")
            else:
                found.catalog_tables[id(table)] = spec
        for func in tree.find_all(exp.Func):
            sql_name = _sql_function_name(func)
            if _DENIED_FUNCTION.match(sql_name):
                return None
            name = _func_name(func) or sql_name
            if name in _CATALOG_FUNCTIONS or name.startswith("pg_"):
                found.has_marker = True
        for cast in tree.find_all(exp.Cast):
            target = _cast_target(cast.to)
            if target and target.rstrip("[]") in _REG_TYPES | {"oid"}:
                found.has_marker = True
        if not (found.catalog_tables or found.unsupported or found.has_marker):
            return None
        return found

    # translation

    def translate(self, tree: exp.Expr, found: _Classification) -> _Translation:
        if found.unsupported:
            names = ", ".join(sorted(set(found.unsupported)))
            message = f"catalog relation {names} is not available in Hardened Duck"
            return _Translation(sqlglot.parse_one(f"SELECT error({_lit(message)})", read="duckdb"), False)
        return _QueryRewrite(self._r, self.templates, found.catalog_tables).run(tree)


class _QueryRewrite:
    """The AST transformation of one catalog query (one instance per query: it carries state)."""

    def __init__(self, responder: CatalogResponder, templates: Mapping[str, exp.Expr],
                 catalog_tables: Mapping[int, _RelationSpec]):
        self._r = responder
        self._templates = templates
        self._catalog_tables = catalog_tables
        self._session_dependent = False

    def run(self, tree: exp.Expr) -> _Translation:
        parameter_types = _parameter_types(tree)
        self._name_outputs(tree)
        # Children before parents, so each handler sees already-translated arguments but the
        # original parent (which decides e.g. whether a ::regclass is printed or compared).
        for node in reversed(list(tree.walk(bfs=False))):
            self._rewrite(node)
        return _Translation(tree, self._session_dependent, parameter_types)

    def _name_outputs(self, tree: exp.Expr) -> None:
        """Give unaliased select items the column name PostgreSQL would (clients read them by name)."""
        select = tree
        while isinstance(select, exp.SetOperation):
            select = select.this
        if not isinstance(select, exp.Select):
            return
        for item in list(select.expressions):
            if isinstance(item, exp.Alias | exp.Star | exp.Column) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            ):
                continue
            # Re-parent rather than copy: classification refers to the original table nodes.
            alias = exp.Alias(alias=exp.to_identifier(_pg_column_name(item)[0] or "?column?", quoted=True))
            item.replace(alias)
            alias.set("this", item)

    def _rewrite(self, node: exp.Expr) -> None:
        if isinstance(node, exp.Table):
            self._table(node)
        elif isinstance(node, exp.Column):
            self._column(node)
        elif isinstance(node, exp.Dot):
            if isinstance(node.this, exp.Identifier) and node.this.name.lower() == "pg_catalog":
                node.replace(node.expression)
        elif isinstance(node, exp.Collate):
            node.replace(node.this)  # PostgreSQL collation names mean nothing to DuckDB
        elif isinstance(node, exp.Operator):
            self._operator(node)
        elif isinstance(node, exp.Cast):
            self._cast(node)
        elif isinstance(node, exp.Bracket):
            self._subscript(node)
        elif isinstance(node, exp.EQ | exp.NEQ | exp.Coalesce):
            self._array_literal_operands(node)
        if isinstance(node, exp.Func) and not isinstance(node.parent, exp.Table):
            self._function(node)

    # relations

    def _table(self, table: exp.Table) -> None:
        if isinstance(table.this, exp.Func):
            self._table_function(table)
            return
        spec = self._catalog_tables.get(id(table))
        if spec is None:
            return
        alias = table.alias or spec.relname
        table.set("catalog", None)
        table.set("db", exp.to_identifier(SCHEMA))
        table.set("this", exp.to_identifier(spec.view))
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))

    def _table_function(self, table: exp.Table) -> None:
        func = table.this
        name = _func_name(func)
        alias = table.args.get("alias")
        table.set("db", None)
        table.set("catalog", None)
        if name in ("pg_get_keywords", "pg_show_all_settings"):
            view = "pg_get_keywords" if name == "pg_get_keywords" else "pg_settings"
            table.set("this", exp.to_identifier(view))
            table.set("db", exp.to_identifier(SCHEMA))
            if not alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(name)))
            return
        if name == "pg_partition_ancestors":
            # No partitioning in DuckDB: a relation's only ancestor is itself.
            args = func.expressions
            columns = [c.name for c in (alias.columns if alias else [])] or ["relid"]
            select = exp.select(exp.alias_(self._regclass_oid(args[0]), columns[0]))
            if table.args.get("ordinality"):
                select = select.select(exp.alias_(exp.Literal.number(1), columns[1] if len(columns) > 1 else "n"))
            new_alias = exp.TableAlias(this=exp.to_identifier(alias.name if alias else name))
            table.replace(exp.Subquery(this=select, alias=new_alias))
            return
        if name == "generate_subscripts":
            low, high = self._subscript_bounds(func)
            table.set("this", _call("generate_series", low, high))
        if alias is not None and not alias.columns:
            # PostgreSQL names the single column of `FROM f(...) AS x` x as well; DuckDB would not.
            alias.set("columns", [alias.this.copy()])

    def _column(self, column: exp.Column) -> None:
        if column.args.get("db") and column.db.lower() in ("pg_catalog", "information_schema"):
            column.set("db", None)
            column.set("catalog", None)
        elif not column.table and not column.this.args.get("quoted") and column.name.lower() == "current_role":
            column.replace(self._session_user())

    # expressions

    def _operator(self, node: exp.Operator) -> None:
        op = str(node.args.get("operator") or "").strip()
        op = op.split(".", 1)[1] if op.lower().startswith("pg_catalog.") else op
        build = _OPERATORS.get(op)
        if build is not None:
            node.replace(exp.Paren(this=build(node.this, node.expression)))

    def _cast(self, cast: exp.Cast) -> None:
        target = _cast_target(cast.to)
        if target is None:
            literal = cast.this
            if cast.to.this == exp.DType.ARRAY and isinstance(literal, exp.Literal) and literal.is_string:
                array = _array_literal(literal.name)
                if array is not None:
                    cast.set("this", array)
            return
        value = cast.this
        base = target[:-2] if target.endswith("[]") else target
        if base in _REG_TYPES and not target.endswith("[]"):
            cast.replace(self._reg_cast(base, value, _in_output_position(cast)))
            return
        duck = _CAST_TYPES.get(base) or ("UINTEGER" if base in _REG_TYPES else None)
        if duck is None:
            return
        if isinstance(value, exp.Literal) and value.is_string and target.endswith("[]"):
            array = _array_literal(value.name)
            if array is not None:
                cast.set("this", array)
        cast.set("to", exp.DataType.build(duck + ("[]" if target.endswith("[]") else ""), dialect="duckdb"))

    def _regclass_oid(self, value: exp.Expr) -> exp.Expr:
        """The OID a relation name or number stands for; numbers need no catalog lookup."""
        if _holds_oid(value):
            return self._uint(value)
        return self._template("regclass_oid", value)

    def _reg_cast(self, kind: str, value: exp.Expr, as_name: bool) -> exp.Expr:
        """`value::regclass` and friends: an OID where compared, a name where printed."""
        holds_oid = _holds_oid(value)
        if kind == "regclass":
            oid = self._regclass_oid(value)
            return self._template("regclass_name", oid) if as_name else oid
        if kind == "regtype":
            oid = self._uint(value) if holds_oid else _call("regtype_oid", _varchar(value), schema=SCHEMA)
            return _call("format_type", oid, exp.null(), schema=SCHEMA) if as_name else oid
        if kind == "regnamespace":
            oid = self._uint(value) if holds_oid else _call("regnamespace_oid", _varchar(value), schema=SCHEMA)
            return _call("regnamespace_name", oid, schema=SCHEMA) if as_name else oid
        if kind == "regrole":
            oid = self._uint(value) if holds_oid else _call("regrole_oid", _varchar(value), schema=SCHEMA)
            return _call("pg_get_userbyid", oid, schema=SCHEMA) if as_name else oid
        # regproc/regprocedure: catalog columns of these types already hold names.
        if isinstance(value, exp.Literal) and value.is_string:
            return exp.Literal.string(re.sub(r"(?i)^pg_catalog\.", "", value.name))
        if isinstance(value, exp.Column) and value.name.lower().endswith("oid"):
            return _call("regproc_name", self._uint(value), schema=SCHEMA)
        return _varchar(value)

    def _uint(self, value: exp.Expr) -> exp.Expr:
        return exp.Cast(this=value, to=exp.DataType.build("UINTEGER", dialect="duckdb"))

    def _subscript(self, node: exp.Bracket) -> None:
        if not _zero_based(node.this) or len(node.expressions) != 1:
            return
        index = node.expressions[0]
        value = _literal_int(index)
        # sqlglot stores PostgreSQL literal subscripts shifted to 0-based; other expressions as written.
        position = exp.Literal.number(value + 2) if value is not None else exp.Add(
            this=exp.Paren(this=index.copy()), expression=exp.Literal.number(1))
        node.replace(_call("list_extract", node.this.copy(), position))

    def _array_literal_operands(self, node: exp.Expr) -> None:
        """`conkey = '{1}'` and `coalesce(a, '{}')`: PostgreSQL array literals DuckDB cannot cast."""
        operands = node.expressions if isinstance(node, exp.Coalesce) else [node.this, node.expression]
        if isinstance(node, exp.Coalesce):
            operands = [node.this, *operands]
        if all(isinstance(o, exp.Literal) and o.is_string for o in operands):
            return
        for operand in operands:
            if isinstance(operand, exp.Literal) and operand.is_string:
                array = _array_literal(operand.name)
                if array is not None:
                    operand.replace(array)

    def _subscript_bounds(self, func: exp.Expr) -> tuple[exp.Expr, exp.Expr]:
        args = func.expressions if isinstance(func, exp.Anonymous) else [func.this, func.expression]
        arr, dim = args[0], args[1] if len(args) > 1 else exp.Literal.number(1)
        offset = 0 if _zero_based(arr) else 1
        high = exp.Case(ifs=[exp.If(
            this=exp.EQ(this=dim.copy(), expression=exp.Literal.number(1)),
            true=exp.Add(this=_length(arr), expression=exp.Literal.number(offset - 1)),
        )])
        return exp.Literal.number(offset), high

    # functions

    def _function(self, node: exp.Func) -> None:
        name = _func_name(node)
        if name is None:
            return
        args = list(node.expressions) if isinstance(node, exp.Anonymous) else [
            a for a in (node.args.get("this"), node.args.get("expression")) if isinstance(a, exp.Expr)
        ]
        new = self._answer(name, node, args)
        if new is None:
            return
        lost = [a for a in args if _parameters(a) - _parameters(new)]
        if lost:
            # Every $n must stay in the statement or the client's Bind no longer matches it.
            keep = exp.and_(*[exp.NullSafeEQ(this=a.copy(), expression=a.copy()) for a in lost])
            new = exp.Case(ifs=[exp.If(this=keep, true=new)])
        node.replace(new)

    def _answer(self, name: str, node: exp.Func, args: list[exp.Expr]) -> exp.Expr | None:
        r = self._r
        if name == "version":
            return exp.Literal.string(r.version_text)
        if name in ("current_database", "current_catalog"):
            return exp.Literal.string(r.database_name)
        if name in ("current_user", "session_user", "current_role", "user", "getpgusername"):
            return self._session_user()
        if name == "current_schemas":
            implicit = bool(args) and isinstance(args[0], exp.Boolean) and args[0].this
            schemas = (["pg_catalog"] if implicit else []) + list(r.search_path)
            return exp.Array(expressions=[exp.Literal.string(s) for s in schemas])
        if name == "current_setting":
            if args and isinstance(args[0], exp.Literal) and args[0].is_string:
                self._session_dependent = True
                return _call(_SESSION_SETTING, args[0].copy())
            return _call("current_setting", args[0].copy(), schema=SCHEMA) if args else None
        if name == "pg_backend_pid":
            self._session_dependent = True
            return _call(_SESSION_PID)
        if name in ("txid_current", "pg_current_xact_id"):
            return _call("txid_current")
        if name in ("pg_postmaster_start_time", "pg_conf_load_time"):
            return exp.Cast(this=exp.Literal.string(r.started_at), to=exp.DataType.build("TIMESTAMPTZ"))
        if name in _CONSTANTS:
            return sqlglot.parse_one(_CONSTANTS[name], read="duckdb")
        if name.startswith("pg_stat_get_"):
            return exp.Cast(this=exp.null(), to=exp.DataType.build("BIGINT"))  # no statistics collector
        if name.startswith("has_") and name.endswith("_privilege"):
            return exp.true()  # what a session may see is decided by the visibility filter
        if name == "pg_get_expr":
            return _varchar(args[0]) if args else None
        if name in _TEMPLATES:
            if name == "pg_get_indexdef" and len(args) < 2:
                args = [args[0], exp.Literal.number(0)]
            if name in ("pg_get_viewdef", "obj_description") and args and not isinstance(args[0], exp.Column):
                args = [self._regclass_oid(args[0]), *args[1:]]
            return self._template(name, *args)
        if name == "to_regclass":
            return self._regclass_oid(args[0]) if args else None
        if name in _MACROS:
            wanted = _MACROS[name]
            call_args = [a.copy() for a in args[:wanted]]
            while len(call_args) < wanted:
                call_args.append(exp.null())
            return _call(_MACRO_NAMES.get(name, name), *call_args, schema=SCHEMA)
        if name in ("json_build_object", "jsonb_build_object"):
            return _call("json_object", *[a.copy() for a in args])
        if name in ("array_upper", "array_lower", "array_length", "cardinality", "array_ndims"):
            return self._array_bound(name, args)
        if name == "generate_subscripts":
            low, high = self._subscript_bounds(node)
            return exp.Unnest(expressions=[_call("generate_series", low, high)])
        if name == "pg_partition_ancestors":
            return exp.Unnest(expressions=[exp.Array(expressions=[self._regclass_oid(args[0])])])
        if name == "pg_partition_root":
            return self._regclass_oid(args[0])
        return None

    def _array_bound(self, name: str, args: list[exp.Expr]) -> exp.Expr:
        arr = args[0]
        offset = 0 if _zero_based(arr) else 1
        if name == "cardinality":
            return _length(arr)
        non_empty: exp.Expr = exp.GT(this=_length(arr), expression=exp.Literal.number(0))
        if len(args) > 1:
            non_empty = exp.and_(exp.EQ(this=args[1].copy(), expression=exp.Literal.number(1)), non_empty)
        value: exp.Expr
        if name == "array_upper":
            value = exp.Add(this=_length(arr), expression=exp.Literal.number(offset - 1))
        elif name == "array_lower":
            value = exp.Literal.number(offset)
        elif name == "array_ndims":
            value = exp.Literal.number(1)
        else:
            value = _length(arr)
        return exp.Case(ifs=[exp.If(this=non_empty, true=value)])

    def _template(self, name: str, *args: exp.Expr) -> exp.Expr:
        tree = self._templates[name].copy()
        for column in list(tree.find_all(exp.Column)):
            match = _TEMPLATE_ARG.match(column.name)
            if match and not column.table:
                column.replace(args[int(match.group(1))].copy())
        return exp.Paren(this=tree)

    def _session_user(self) -> exp.Expr:
        self._session_dependent = True
        return _call(_SESSION_USER)


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
        pg_type = _TYPE_BY_NAME.get(base)
        if pg_type is None or base in _REG_TYPES:
            continue
        number = _literal_int(cast.this.this)
        if number is not None:
            found.setdefault(number, pg_type.array if array else pg_type.oid)
    return found


def _holds_oid(value: exp.Expr) -> bool:
    """An OID column or a number (psql sends OIDs as string literals such as '16390')."""
    if isinstance(value, exp.Column):
        return True
    if isinstance(value, exp.Literal):
        return not value.is_string or value.name.strip().isdigit()
    return False


def _varchar(value: exp.Expr) -> exp.Expr:
    return exp.Cast(this=value.copy(), to=exp.DataType.build("VARCHAR"))


def _literal_int(node: exp.Expr) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.name)
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        inner = _literal_int(node.this)
        return -inner if inner is not None else None
    return None


def parseable_catalog_text(sql: str) -> str:
    """The text of a catalog query as this module parses it (see `_patch_array_casts`)."""
    return _patch_array_casts(sql)


def _patch_array_casts(sql: str) -> str:
    """Rename `oid[]`, `regtype[]`... in casts so sqlglot parses them (it reads `oid[` as a subscript).

    Works on tokens, not text patterns, so string literals and comments are never touched.
    """
    if "[]" not in sql:
        return sql
    try:
        tokens = sqlglot.Dialect.get_or_raise("postgres").tokenize(sql)
    except SqlglotError:
        return sql
    edits = [
        tok.start for i, tok in enumerate(tokens[:-2])
        if tok.token_type == TokenType.OBJECT_IDENTIFIER
        and tokens[i + 1].token_type == TokenType.L_BRACKET and tokens[i + 2].token_type == TokenType.R_BRACKET
    ]
    for start in reversed(edits):
        sql = sql[:start] + "hd_" + sql[start:]
    return sql


# --- the public API ----------------------------------------------------------------------------------


class CatalogResponder:
    """Recognises PostgreSQL catalog queries and answers them with DuckDB SQL over the hd_pg schema."""

    _CACHE_SIZE = 512

    def __init__(self, server_version: str = "15.8", database_name: str = "hd", *, owner: str = "hd",
                 search_path: Sequence[str] = ("main",), settings: Mapping[str, str] | None = None) -> None:
        """`settings` are the server's setting defaults reported by pg_settings and current_setting()."""
        self.server_version = server_version
        self.database_name = database_name
        self.owner = owner
        self.search_path = tuple(search_path)
        arch = platform.machine() or "x86_64"
        vendor = "pc" if arch in ("x86_64", "i686") else "unknown"
        self.version_text = (
            f"PostgreSQL {server_version} (Hardened Duck, DuckDB v{duckdb.__version__}) "
            f"on {arch}-{vendor}-linux-gnu, 64-bit"
        )
        self.started_at = datetime.now(UTC).isoformat(sep=" ")
        self._settings = {**self._default_settings(), **(settings or {})}
        self._translator = _Translator(self)
        self._cache: OrderedDict[str, _Translation | None] = OrderedDict()
        self._lock = threading.Lock()
        self._names_cursor: duckdb.DuckDBPyConnection | None = None
        self._names_lock = threading.Lock()

    def _default_settings(self) -> dict[str, str]:
        major, _, minor = self.server_version.partition(".")
        return {
            "server_version": self.server_version,
            "server_version_num": f"{int(major):d}{int(minor or 0):04d}",
            "server_encoding": "UTF8", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
            "IntervalStyle": "postgres", "TimeZone": "UTC", "integer_datetimes": "on",
            "standard_conforming_strings": "on", "max_identifier_length": "63", "max_index_keys": "32",
            "block_size": "8192", "default_table_access_method": "heap", "jit": "off",
            "transaction_isolation": "repeatable read", "default_transaction_isolation": "repeatable read",
            "transaction_read_only": "off", "default_transaction_read_only": "off", "application_name": "",
            "search_path": '"$user", public', "lc_collate": "C", "lc_ctype": "C", "max_connections": "100",
            "is_superuser": "off", "bytea_output": "hex", "extra_float_digits": "1", "statement_timeout": "0",
            "row_security": "on", "default_tablespace": "", "data_checksums": "off",
        }

    # installation

    def install(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create or refresh the hd_pg schema; run once at startup, before the database is locked down."""
        codes = {"reserved": "R", "unreserved": "U", "type_function": "T", "column_name": "C"}
        keywords = tuple(
            (word, codes.get(category, "U"))
            for word, category in con.execute(
                "SELECT keyword_name, keyword_category FROM duckdb_keywords() ORDER BY 1").fetchall()
        )
        cfg = _Settings(self.server_version, self.database_name, self.owner, self.search_path, self.version_text,
                        self._settings, keywords)
        for statement in _CatalogBuilder(cfg).statements():
            con.execute(statement)
        self._names_cursor = con.cursor()

    # answering

    def rewrite(self, sql: str, *, visible: Visibility | None = None, user: str | None = None,
                settings: Mapping[str, str] | None = None, backend_pid: int | None = None) -> str | None:
        """DuckDB SQL answering `sql` if it is a catalog query, else None.

        `visible` restricts the answer to those (schema, table) relations; `user`, `settings` and
        `backend_pid` are the session's values for current_user, current_setting() and
        pg_backend_pid().
        """
        lowered = sql.lower()
        if not any(word in lowered for word in _HINT_WORDS) or not _CATALOG_HINT.search(sql):
            return None
        translation = self._translation(sql)
        if translation is None:
            return None
        pairs = None if visible is None else self._visible_pairs(visible)
        if pairs is None and not translation.session_dependent:
            if translation.plain_sql is None:
                translation.plain_sql = self._finish(translation.tree, None, None, None, None)
            return translation.plain_sql
        return self._finish(translation.tree, pairs, user, settings, backend_pid)

    def parameter_types(self, sql: str) -> dict[int, int]:
        """PostgreSQL type OIDs a catalog query casts its parameters to (`{n: oid}` for `$n::type`).

        DuckDB infers other types for some of them (`$1::oid[]` becomes UINTEGER[], sent as int8[]),
        and asyncpg, which asks the server for parameter types, only encodes oid[] and text[]
        arrays natively; describing such parameters with these OIDs keeps its type introspection
        working. Empty when `sql` is not a catalog query.
        """
        lowered = sql.lower()
        if not any(word in lowered for word in _HINT_WORDS) or not _CATALOG_HINT.search(sql):
            return {}
        translation = self._translation(sql)
        return dict(translation.parameter_types) if translation is not None else {}

    def _translation(self, sql: str) -> _Translation | None:
        with self._lock:
            if sql in self._cache:
                self._cache.move_to_end(sql)
                return self._cache[sql]
        translation = self._translate(sql)
        with self._lock:
            self._cache[sql] = translation
            if len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
        return translation

    def _translate(self, sql: str) -> _Translation | None:
        try:
            statements = [s for s in sqlglot.parse(_patch_array_casts(sql), read="postgres") if s is not None]
        except SqlglotError:
            return None
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            return None
        tree = statements[0]
        found = self._translator.classify(tree)
        if found is None:
            return None
        return self._translator.translate(tree, found)

    def _finish(self, tree: exp.Expr, pairs: list[tuple[str, str]] | None, user: str | None,
                settings: Mapping[str, str] | None, backend_pid: int | None) -> str:
        tree = tree.copy()
        for call in list(tree.find_all(exp.Anonymous)):
            if call.name == _SESSION_USER:
                call.replace(exp.Literal.string(user or self.owner))
            elif call.name == _SESSION_PID:
                call.replace(exp.Literal.number(backend_pid or 0))
            elif call.name == _SESSION_SETTING:
                name = call.expressions[0].name
                value = _lookup_setting(settings, name)
                call.replace(exp.Literal.string(value) if value is not None
                             else _call("current_setting", call.expressions[0].copy(), schema=SCHEMA))
        self._wrap_visible(tree, pairs)
        return tree.sql(dialect="duckdb")

    def _wrap_visible(self, tree: exp.Expr, pairs: list[tuple[str, str]] | None) -> None:
        """Replace each catalog view carrying owners by a subquery hiding (and filtering on) them."""
        for table in list(tree.find_all(exp.Table)):
            if table.db != SCHEMA or table.name not in _OWNED_VIEWS:
                continue
            hidden = list(_OWNER_COLUMNS) + (list(_REF_COLUMNS) if table.name in _REF_VIEWS else [])
            inner = exp.Select(expressions=[exp.Star(except_=[exp.column(c) for c in hidden])]).from_(
                exp.Table(this=exp.to_identifier(table.name), db=exp.to_identifier(SCHEMA)))
            if pairs is not None:
                inner = inner.where(_visibility_condition(pairs, table.name in _REF_VIEWS))
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
            table.replace(exp.Subquery(this=inner, alias=alias.copy()))

    def _visible_pairs(self, visible: Visibility) -> list[tuple[str, str]]:
        if not callable(visible):
            return sorted(set(visible))
        if self._names_cursor is None:
            raise RuntimeError("CatalogResponder.install() must run before rewrite() can evaluate visibility")
        with self._names_lock:
            names = self._names_cursor.execute(
                f"SELECT schema_name, table_name FROM duckdb_tables() WHERE {_USER_SCOPE} "
                f"UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND {_USER_SCOPE} "
                f"UNION ALL SELECT schema_name, sequence_name FROM duckdb_sequences() WHERE {_USER_SCOPE}"
            ).fetchall()
        return sorted({(schema, name) for schema, name in names if visible(schema, name)})


def _visibility_condition(pairs: list[tuple[str, str]], with_ref: bool) -> exp.Expr:
    def member(table_column: str) -> exp.Expr:
        if not pairs:
            return exp.false()
        return exp.In(
            this=exp.Tuple(expressions=[exp.column("hd_schema"), exp.column(table_column)]),
            expressions=[exp.Tuple(expressions=[exp.Literal.string(s), exp.Literal.string(t)]) for s, t in pairs],
        )

    condition: exp.Expr = exp.or_(exp.column("hd_schema").is_(exp.null()), member("hd_table"))
    if with_ref:
        ref_ok = exp.or_(exp.column("hd_ref_table").is_(exp.null()), member("hd_ref_table"))
        condition = exp.and_(exp.Paren(this=condition), exp.Paren(this=ref_ok))
    return condition


def _lookup_setting(settings: Mapping[str, str] | None, name: str) -> str | None:
    if not settings:
        return None
    lowered = name.lower()
    for key, value in settings.items():
        if key.lower() == lowered:
            return value
    return None

