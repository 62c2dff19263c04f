"""Moved to engine_host.pgcompat.types (one module per type family); re-exported here until importers move."""

from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.buffers import as_plain_binary
from engine_host.pgcompat.types.datetime import interval_text, parse_interval
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.encoding import SMALL_BATCH_ROWS, encode_column
from engine_host.pgcompat.types.numeric import float_text, numeric_send
from engine_host.pgcompat.types.parameter_format import ParameterFormatError
from engine_host.pgcompat.types.table import PgType, duckdb_type_for_oid, pg_type_by_oid, pg_type_for_duckdb

__all__ = [
    "SMALL_BATCH_ROWS",
    "ParameterFormatError",
    "PgType",
    "as_plain_binary",
    "decode_parameter",
    "duckdb_type_for_oid",
    "encode_column",
    "float_text",
    "interval_text",
    "numeric_send",
    "parse_interval",
    "pg_type_by_oid",
    "pg_type_for_arrow",
    "pg_type_for_duckdb",
]
