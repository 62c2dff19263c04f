"""How catalog functions are answered: inline subqueries, constants, hd_pg macros, session values."""

from __future__ import annotations

import re

from sqlglot import exp

from engine_host.pgcompat.catalog.relations import SCHEMA
from engine_host.pgcompat.catalog.rewrite.nodes import _literal_int

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
    "to_regrole": 1, "_pg_expandarray": 1,
}
_MACRO_NAMES = {"pg_get_function_identity_arguments": "pg_get_function_arguments", "to_regtype": "regtype_oid",
                "to_regnamespace": "regnamespace_oid", "to_regrole": "regrole_oid"}

_SESSION_USER = "__hd_session_user"
_SESSION_SETTING = "__hd_session_setting"
_SESSION_PID = "__hd_session_pid"

_INT4 = range(-(2**31), 2**31)


def int4_series(func: exp.Expr) -> exp.Expr | None:
    """`generate_series(1, 32)` with integer bounds, typed integer as PostgreSQL types it.

    DuckDB's generate_series is bigint-only; pgjdbc's getImportedKeys reads KEY_SEQ from
    `generate_series(1, 32) pos(n)`, and PostgreSQL answers it as int4. None when any bound is not
    an int4 literal (PostgreSQL then picks bigint or numeric, and so does DuckDB).
    """
    bounds = [func.args.get(key) for key in ("start", "end", "step")] if isinstance(
        func, exp.GenerateSeries | exp.ExplodingGenerateSeries) else list(func.expressions)
    given = [b for b in bounds if b is not None]
    values = [_literal_int(b) for b in given]
    if not given or any(v is None or v not in _INT4 for v in values):
        return None
    series = exp.Anonymous(this="generate_series", expressions=[b.copy() for b in given])
    return exp.Unnest(expressions=[exp.Cast(this=series, to=exp.DataType.build("INTEGER[]", dialect="duckdb"))])
