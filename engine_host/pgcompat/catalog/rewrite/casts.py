"""PostgreSQL type names in casts and the DuckDB types they become."""

from __future__ import annotations

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
