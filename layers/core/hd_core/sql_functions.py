"""The DuckDB functions a client may call, reviewed by category; every other name is refused.

Built from `duckdb_functions()` of DuckDB 2.0.1 (core, icu, json and parquet statically linked).
Names are DuckDB's, lower case: the guard checks the DuckDB SQL our transpiler generates and
client-written unknown function names, which reach DuckDB as written. Each alias DuckDB registers is
its own row there, so each allowed alias is listed. A name is reviewed when it is allowed or in
`REFUSED`; `python -m hd_core.sql_functions --review` lists what an upgraded DuckDB adds, and a unit
test fails until each new name is placed.

Review rule: allowed only if the function computes a value from its arguments alone (or, for
`_CLOCK` and `_RANDOM`, from the clock or a random source) and reads nothing else: no files, catalog,
settings, variables, environment, logs, secrets, extensions, engine state, and no SQL text or
function name given as a string (that would run something this list never saw). When in doubt, out.

Pure data: no duckdb import at module level (hd_core also ships to Lambda without DuckDB).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- allowed, by category -------------------------------------------------------------------------

# Arithmetic, rounding, logarithms, trigonometry: numbers in, a number out.
_MATH = _words("""
    abs acos acosh add asin asinh atan atan2 atanh binom cbrt ceil ceiling cos cosh cot
    decimal_division degrees divide even exp factorial fdiv floor fmod gamma gcd
    greatest_common_divisor isfinite isinf isnan lcm least_common_multiple lgamma ln log log10 log2
    mod multiply nextafter pi pow power radians round round_even roundbankers sign signbit sin sinh
    sqrt subtract tan tanh trunc
""")

# Text: case, trimming, slicing, search, LIKE/regexp (RE2: linear time), similarity, size formatting,
# path-string helpers (string manipulation only, they never touch a file), and COLLATE (syntax).
_STRING = _words("""
    ascii bit_length char_length character_length chr collate concat concat_ws contains
    damerau_levenshtein editdist3 ends_with format_bytes formatreadabledecimalsize formatreadablesize
    hamming ilike_escape instr jaccard jaro_similarity jaro_winkler_similarity lcase left
    left_grapheme len length length_grapheme levenshtein like_escape lower ltrim mismatches
    nfc_normalize not_ilike_escape not_like_escape ord overlay parse_dirname parse_dirpath
    parse_filename parse_formatted_bytes parse_path path_join pg_size_pretty position prefix
    regexp_escape regexp_extract regexp_extract_all regexp_full_match regexp_matches regexp_replace
    regexp_split_to_array replace reverse right right_grapheme rtrim split split_part starts_with
    str_split str_split_regex string_split string_split_regex string_to_array strip_accents strlen
    strpos substr substring substring_grapheme suffix translate trim ucase unicode upper url_decode
    url_encode
""")

# Dates, times, timestamps and intervals from their arguments (ICU time-zone overloads included;
# they read the session's locked TimeZone, not the clock). EXTRACT is syntax.
_DATETIME = _words("""
    century date_add date_diff date_part date_sub date_trunc datediff datepart datesub datetrunc day
    dayname dayofmonth dayofweek dayofyear days_in_month decade epoch epoch_ms epoch_ns epoch_us era
    extract hour isodow isoyear julian last_day make_date make_time make_timestamp make_timestamp_ms
    make_timestamp_ns make_timestamptz microsecond millennium millisecond minute month monthname
    nanosecond normalized_interval quarter second strftime strptime time_bucket timezone
    timezone_hour timezone_minute to_centuries to_days to_decades to_hours to_microseconds
    to_millennia to_milliseconds to_minutes to_months to_quarters to_seconds to_timestamp to_weeks
    to_years try_strptime week weekday weekofyear year yearweek
""")

# The current date and time (age(x) is "now minus x"): safe, but a stored filter must not depend on them.
_CLOCK = _words("""
    age ago current_date current_localtime current_localtimestamp current_time current_timestamp
    get_current_time get_current_timestamp localtime localtimestamp now today transaction_timestamp
""")

# Random numbers and UUIDs: safe, not deterministic. (setseed changes session state: refused.)
_RANDOM = _words("gen_random_uuid random uuid uuidv4 uuidv7")

# Lists and fixed-size arrays: access, search, sort, set operations, vector distances, and DuckDB's
# list_<aggregate> macros (each a fixed aggregate over the list's own elements).
_LIST = _words("""
    array_append array_cat array_concat array_contains array_cosine_distance array_cosine_similarity
    array_cross_product array_distance array_distinct array_dot_product array_extract array_grade_up
    array_has array_has_all array_has_any array_indexof array_inner_product array_intersect
    array_length array_negative_dot_product array_negative_inner_product array_pop_back
    array_pop_front array_position array_prepend array_push_back array_push_front array_reverse
    array_reverse_sort array_select array_slice array_sort array_to_string
    array_to_string_comma_default array_unique array_value array_where array_zip flatten grade_up
    list_any_value list_append list_approx_count_distinct list_avg list_bit_and list_bit_or
    list_bit_xor list_bool_and list_bool_or list_cat list_concat list_contains list_cosine_distance
    list_cosine_similarity list_count list_distance list_distinct list_dot_product list_element
    list_entropy list_extract list_first list_grade_up list_has list_has_all list_has_any
    list_histogram list_indexof list_inner_product list_intersect list_kurtosis list_kurtosis_pop
    list_last list_mad list_max list_median list_min list_mode list_negative_dot_product
    list_negative_inner_product list_pack list_position list_prepend list_product list_reverse
    list_reverse_sort list_select list_sem list_skewness list_slice list_sort list_stddev_pop
    list_stddev_samp list_string_agg list_sum list_unique list_value list_var_pop list_var_samp
    list_where list_zip
""")

# List functions taking a lambda: the lambda is client SQL the guard sees, but its parameters read
# as columns to a row-filter check, so stored filters may not use them.
_LIST_LAMBDA = _words("""
    apply array_apply array_filter array_reduce array_transform filter invoke list_apply list_filter
    list_reduce list_transform reduce
""")

# Output size set by an argument (a count, width or format), or set-returning: fine in a query under
# the session's memory limit, never in a filter evaluated for every row of every query.
_GENERATORS = _words("""
    array_resize bar bitstring equi_width_bins format generate_series generate_subscripts list_resize
    lpad printf range regexp_split_to_table repeat rpad unnest
""")

# STRUCT, MAP, UNION and VARIANT values: build, access, merge (VARIANT reaches clients as json).
_NESTED = _words("""
    cardinality element_at map map_concat map_contains map_contains_entry map_contains_value
    map_entries map_extract map_extract_value map_from_entries map_keys map_values remap_struct row
    struct_concat struct_contains struct_extract struct_extract_at struct_has struct_indexof
    struct_insert struct_keys struct_pack struct_position struct_update struct_values union_extract
    union_tag union_value variant_array_length variant_comparator variant_contains variant_exists
    variant_extract variant_extract_string variant_keys variant_normalize variant_type variant_typeof
""")

# JSON values: parse, extract, build, transform. Not the json_*_sql / json_serialize_plan family,
# which turns SQL text into plans (REFUSED).
_JSON = _words("""
    array_to_json from_json from_json_strict json json_array json_array_length json_contains
    json_deep_merge json_exists json_extract json_extract_path json_extract_path_text
    json_extract_string json_insert json_keys json_merge_patch json_merge_patch_diff json_normalize
    json_object json_pretty json_quote json_remove json_replace json_set json_strip_nulls
    json_structure json_transform json_transform_strict json_type json_valid json_value row_to_json
    to_json
""")

# Bits, blobs, encodings, hashes and sort keys: a value in, its bytes or digest out (hash is not
# keyed; masking uses its own HMAC, not these).
_BITS_BLOBS_HASHES = _words("""
    base64 bin bit_count bit_position bitstring_byte_comparable create_sort_key decode encode
    from_base64 from_binary from_hex get_bit hash hex md5 md5_number md5_number_lower
    md5_number_upper octet_length set_bit sha1 sha256 timetz_byte_comparable to_base to_base64
    to_binary to_hex unbin unhex uuid_extract_timestamp uuid_extract_version xor
""")

# Conditionals, casts and type introspection over the argument's own type (CAST, TRY_CAST, COALESCE
# and IFNULL are syntax). Not get_type/make_type: TYPE values, and make_type resolves catalog names.
_CONDITIONAL_TYPES = _words("""
    alias can_cast_implicitly cast cast_to_type coalesce enum_code enum_first enum_last enum_range
    enum_range_boundary greatest if ifnull least nullif pg_typeof replace_type switch try_cast typeof
""")

# Operators DuckDB registers as function rows (arithmetic, comparison, bitwise, ||, LIKE's ~~, GLOB's
# ~~~ on strings, ->> for JSON, list containment and distances): the same value functions as above.
_OPERATORS = _words("""
    != !__postfix !~~ !~~* % & * ** + - ->> / // < <-> << <= <=> <@ = > >= >> @ @> ^ ^@ | || ~ ~~ ~~* ~~~
""") | {"is distinct from", "is not distinct from"}

# Aggregates over the rows a session may see (the rewrite filters and masks before they aggregate),
# including DuckDB's aggregate macros and GROUPING (syntax).
_AGGREGATES = _words("""
    any_value approx_count_distinct approx_quantile approx_top_k arbitrary arg_max arg_max_null
    arg_max_nulls_last arg_min arg_min_null arg_min_nulls_last argmax argmin array_agg avg bit_and
    bit_or bit_xor bitstring_agg bool_and bool_or corr count count_if count_star countif covar_pop
    covar_samp decimal_average entropy favg first fsum geomean geometric_mean group_concat grouping
    grouping_id histogram histogram_exact json_group_array json_group_object json_group_structure
    kahan_sum kurtosis kurtosis_pop last list listagg lttb mad max max_by mean median min min_by mode
    product quantile quantile_cont quantile_disc regr_avgx regr_avgy regr_count regr_intercept
    regr_r2 regr_slope regr_sxx regr_sxy regr_syy reservoir_quantile sem skewness stddev stddev_pop
    stddev_samp string_agg sum sumkahan var_pop var_samp variance variant_group_array
    variant_group_object wavg weighted_avg
""")

# Window functions over the same visible rows.
_WINDOWS = _words("""
    cume_dist dense_rank fill first_value lag last_value lead nth_value ntile percent_rank rank
    rank_dense row_number
""")

# Table functions generate rows from their arguments alone; every other table function reads something.
ALLOWED_TABLE_FUNCTIONS: frozenset[str] = _words("generate_series range unnest")

_CATEGORIES: dict[str, frozenset[str]] = {
    "math": _MATH,
    "string": _STRING,
    "datetime": _DATETIME,
    "clock": _CLOCK,
    "random": _RANDOM,
    "list": _LIST,
    "list_lambda": _LIST_LAMBDA,
    "generator": _GENERATORS,
    "nested": _NESTED,
    "json": _JSON,
    "bits_blobs_hashes": _BITS_BLOBS_HASHES,
    "conditional_types": _CONDITIONAL_TYPES,
    "operator": _OPERATORS,
    "aggregate": _AGGREGATES,
    "window": _WINDOWS,
}

ALLOWED_FUNCTIONS: frozenset[str] = frozenset().union(*_CATEGORIES.values())

# Deterministic scalar value functions whose result size follows their input: what a stored row
# filter, evaluated for every row of every query on its table, may call.
POLICY_EXPRESSION_FUNCTIONS: frozenset[str] = frozenset().union(
    _MATH, _STRING, _DATETIME, _LIST, _NESTED, _JSON, _BITS_BLOBS_HASHES, _CONDITIONAL_TYPES, _OPERATORS
)

# Allowed names DuckDB parses as syntax, so they have no duckdb_functions() row.
SYNTAX_FORMS: frozenset[str] = _words("""
    cast coalesce collate current_time current_timestamp extract grouping grouping_id ifnull
    localtime localtimestamp try_cast
""")

# PostgreSQL's session functions, which a client statement may name although DuckDB's own stay refused
# (they are in _CATALOG): for a PostgreSQL client the transpile step replaces each by the session's
# value as a literal (engine_host/pipeline/governance/pg_semantics.py), so DuckDB never calls them;
# in any other dialect the check of the generated SQL still refuses them.
SESSION_VALUE_FUNCTIONS: frozenset[str] = _words("""
    current_catalog current_database current_role current_schema current_schemas current_user
    session_user user
""")


# --- refused, by reason ---------------------------------------------------------------------------

# Read files, or parse or write file formats and paths the engine owns (the cache is ours, not the
# client's): the read_* family, scans, glob, CSV sniffing, parquet metadata, COPY internals.
_READS_FILES = _words("""
    __internal_json_copy_to_geojson __internal_json_copy_to_json arrow_scan arrow_scan_dumb
    copy_database glob hive_partition_component import_database json_copy_strftime_if_date
    json_copy_strftime_if_timestamp pandas_scan parquet_bloom_probe parquet_file_metadata
    parquet_full_metadata parquet_kv_metadata parquet_metadata parquet_page_index parquet_scan
    parquet_schema python_arrow_scan python_map_function read_blob read_csv read_csv_auto read_duckdb
    read_json read_json_auto read_json_objects read_json_objects_auto read_ndjson read_ndjson_auto
    read_ndjson_objects read_parquet read_single_csv_file read_single_json_file
    read_single_parquet_file read_text seq_scan sniff_csv variant_to_parquet_variant
""")

# Run SQL text, a serialized plan, or a function named by a string, out of the guard's sight
# (json_serialize_plan planned arbitrary SQL and read raw file bytes). list_aggregate and its aliases
# call any aggregate by name; the list_<aggregate> macros stay allowed.
_RUNS_SQL_TEXT = _words("""
    aggregate array_aggr array_aggregate histogram_values json_deserialize_sql
    json_execute_serialized_sql json_serialize_plan json_serialize_sql list_aggr list_aggregate query
    query_table sql_auto_complete to_aggregate_state
""")

# DuckDB's catalog, storage and configuration: the catalog layer answers the Postgres-facing ones
# (current_database, version, pg_get_*, has_*_privilege, ...) from our policies, never DuckDB.
_CATALOG = _words("""
    col_description collations current_catalog current_database current_role current_schema
    current_schemas current_user database_list database_size duckdb_approx_database_count
    duckdb_available_metrics duckdb_columns duckdb_connection_count duckdb_constraints
    duckdb_coordinate_systems duckdb_databases duckdb_dependencies duckdb_dialects
    duckdb_eviction_queues duckdb_extension_repositories duckdb_extensions duckdb_external_file_cache
    duckdb_external_resource_types duckdb_external_resources duckdb_functions
    duckdb_grammar_extensions duckdb_indexes duckdb_keywords duckdb_live_query_metrics
    duckdb_log_contexts duckdb_logs duckdb_logs_parsed duckdb_memory duckdb_optimizers
    duckdb_prepared_statements duckdb_profiling_settings duckdb_schemas duckdb_secret_type_parameters
    duckdb_secret_types duckdb_secrets duckdb_sequences duckdb_settings duckdb_table_sample
    duckdb_tables duckdb_temporary_files duckdb_triggers duckdb_types duckdb_variables duckdb_views
    extension_versions format_pg_type format_type functions get_block_size get_type
    has_any_column_privilege has_column_privilege has_database_privilege
    has_foreign_data_wrapper_privilege has_function_privilege has_language_privilege
    has_schema_privilege has_sequence_privilege has_server_privilege has_table_privilege
    has_tablespace_privilege icu_calendar_names in_search_path index_key make_type map_to_pg_oid
    map_type_id_to_pg_oid metadata_info obj_description pg_collation_is_visible
    pg_conversion_is_visible pg_function_is_visible pg_get_constraintdef pg_get_expr pg_get_viewdef
    pg_has_role pg_is_other_temp_schema pg_my_temp_schema pg_opclass_is_visible
    pg_operator_is_visible pg_opfamily_is_visible pg_table_is_visible pg_timezone_names
    pg_ts_config_is_visible pg_ts_dict_is_visible pg_ts_parser_is_visible pg_ts_template_is_visible
    pg_type_is_visible platform pragma_collations pragma_database_size pragma_metadata_info
    pragma_platform pragma_show pragma_storage_info pragma_table_info pragma_user_agent
    pragma_version session_user shobj_description show show_databases show_tables
    show_tables_expanded storage_info table_info user user_agent version
""")

# Settings, variables, environment, session and engine state, sequences, logs, secrets, extensions,
# external resources: what a session must neither read nor change.
_ENGINE_STATE = _words("""
    add_grammar_extension add_parquet_key checkpoint create_external_resource current_connection_id
    current_query current_query_id current_setting current_transaction_id currval
    deregister_external_resource destroy_external_resource disable_checkpoint_on_shutdown
    disable_logging disable_object_cache disable_optimizer disable_print_progress_bar disable_profile
    disable_profiling disable_progress_bar disable_verification disable_verify_parallelism
    enable_checkpoint_on_shutdown enable_logging enable_object_cache enable_optimizer
    enable_print_progress_bar enable_profile enable_profiling enable_progress_bar enable_verification
    force_checkpoint getenv getvariable inet_client_addr inet_client_port inet_server_addr
    inet_server_port install_extension load_extension nextval parse_duckdb_log_message
    pg_conf_load_time pg_postmaster_start_time register_external_resource
    register_external_resource_type remove_grammar_extension set_config setseed setval stats
    truncate_duckdb_logs txid_current vector_type verify_parallelism which_secret write_log
""")

# Raise a client-chosen error (our rewrite raises its own; a client's would forge engine messages)
# or hold a session's worker asleep.
_ERRORS_AND_SLEEP = _words("assert_true error pg_sleep sleep_ms")

# Engine internals: optimizer and compression helpers, raw aggregate states (crafted state blobs
# reach C++ that trusts them), internal-only aggregates and the UNPIVOT and histogram helpers.
_INTERNAL = _words("""
    __between __cast __internal_barrier __internal_compress_integral_ubigint
    __internal_compress_integral_uinteger __internal_compress_integral_usmallint
    __internal_compress_integral_utinyint __internal_compress_string_hugeint
    __internal_compress_string_ubigint __internal_compress_string_uhugeint
    __internal_compress_string_uinteger __internal_compress_string_usmallint
    __internal_compress_string_utinyint __internal_compressed_materialization_cast
    __internal_decompress_integral_bigint __internal_decompress_integral_hugeint
    __internal_decompress_integral_integer __internal_decompress_integral_smallint
    __internal_decompress_integral_ubigint __internal_decompress_integral_uhugeint
    __internal_decompress_integral_uinteger __internal_decompress_integral_usmallint
    __internal_decompress_string __internal_tablefilter_bloom_filter __internal_tablefilter_dynamic
    __internal_tablefilter_optional __internal_tablefilter_prefix_range
    __internal_tablefilter_selectivity_optional combine combine_aggr constant_or_null finalize
    is_histogram_other_bin sum_no_overflow unpivot_list variant_bytes_to_variant
""")

# Test and benchmark generators, and extensions we do not link (listed so linking one adds nothing).
_TEST_AND_EXTENSIONS = _words("""
    dbgen dsdgen repeat_row summary test_all_types test_vector_types tpcds tpcds_answers
    tpcds_queries tpch tpch_answers tpch_queries
""")

# In doubt. GEOMETRY: no Postgres type mapping in the wire layer yet, and st_geomfromwkb/geojson
# parse client bytes in young code. json_each/json_tree: table functions beyond the three allowed.
_IN_DOUBT = _words("""
    && __internal_compress_geometry_point __internal_decompress_geometry_point json_each json_tree
    st_asbinary st_asgeojson st_astext st_aswkb st_aswkt st_crs st_geomfromgeojson st_geomfromwkb
    st_intersects_extent st_setcrs vertex_extract
""")

# Per-locale collation functions: clients collate with the COLLATE syntax; these are its internals.
_COLLATION_LOCALES = _words("""
    aa af am ar ar_sa as az bal be bg blo bn bo br bs ca ceb chr cs cu cy da de de_at dsb dz ee el en
    en_us eo es et fa fa_af ff fi fil fo fr fr_ca fy ga gl gu ha haw he he_il hi hr hsb hu hy id id_id
    ig is it ja ka kk kl km kn ko kok ku ky lb lij lkt ln lo lt lv mk ml mn mr ms mt my nb nb_no ne nl
    nn no noaccent nso om or pa pa_in pl ps pt ro ru sa se sgs si sk sl smn sq sr sr_ba sr_me sr_rs
    ssy st sv sw ta te th tk tn to tr ug uk ur uz vi vo wae wo xh yi yo zh zh_cn zh_hk zh_mo zh_sg
    zh_tw zu
""")
_COLLATIONS = frozenset(
    {"icu_sort_key"}
    | {f"collate_{locale}" for locale in _COLLATION_LOCALES}
    | {f"icu_collate_{locale}" for locale in _COLLATION_LOCALES}
)

REFUSED: frozenset[str] = frozenset().union(
    _READS_FILES,
    _RUNS_SQL_TEXT,
    _CATALOG,
    _ENGINE_STATE,
    _ERRORS_AND_SLEEP,
    _INTERNAL,
    _TEST_AND_EXTENSIONS,
    _IN_DOUBT,
    _COLLATIONS,
)


# --- lookups --------------------------------------------------------------------------------------


def is_allowed_function(name: str) -> bool:
    """Whether a client may call the scalar, aggregate or window function `name` (any case)."""
    return name.lower() in ALLOWED_FUNCTIONS


def function_category(name: str) -> str | None:
    """The category an allowed function is listed under ("table" for table-only ones), else None."""
    lowered = name.lower()
    for category, names in _CATEGORIES.items():
        if lowered in names:
            return category
    return "table" if lowered in ALLOWED_TABLE_FUNCTIONS else None


def unreviewed(duckdb_names: Iterable[str]) -> list[str]:
    """DuckDB function names in no category and not refused: what an upgrade added, to review."""
    reviewed = ALLOWED_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS | REFUSED
    return sorted({name.lower() for name in duckdb_names} - reviewed)


def installed_function_names() -> frozenset[str]:
    """Every function name the installed DuckDB registers (lower case); imports duckdb on call."""
    import duckdb

    with duckdb.connect() as connection:
        rows = connection.execute("SELECT DISTINCT function_name FROM duckdb_functions()").fetchall()
    return frozenset(str(row[0]).lower() for row in rows)


def main(argv: list[str] | None = None) -> int:
    """`--review`: print names the installed DuckDB has that nobody reviewed; exit 1 if any."""
    parser = argparse.ArgumentParser(prog="python -m hd_core.sql_functions", description=main.__doc__)
    parser.add_argument("--review", action="store_true", required=True)
    parser.parse_args(argv)
    installed = installed_function_names()
    new = unreviewed(installed)
    gone = sorted((ALLOWED_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS) - SYNTAX_FORMS - installed)
    for name in new:
        print(f"unreviewed: {name}")
    for name in gone:
        print(f"allowed but no longer in DuckDB: {name}")
    if not new and not gone:
        print(f"all {len(installed)} DuckDB function names are reviewed")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
