"""The catalog and the wire read one type table: a column's pg_catalog type is the type its values are sent as.

The one deliberate difference: a declared VARCHAR column is `character varying` in the catalog (as
PostgreSQL's catalogs show it) while its values are sent as text.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pytest

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.pgcompat.catalog import CatalogResponder
from engine_host.pgcompat.types.arrow_types import pg_type_for_arrow
from engine_host.pgcompat.types.table import TYPE_BY_NAME, WIRE_TYPE_BY_OID, pg_type_for_duckdb

COLUMNS = {
    "c_bool": "BOOLEAN", "c_tiny": "TINYINT", "c_small": "SMALLINT", "c_int": "INTEGER", "c_big": "BIGINT",
    "c_utiny": "UTINYINT", "c_usmall": "USMALLINT", "c_uint": "UINTEGER", "c_ubig": "UBIGINT",
    "c_huge": "HUGEINT", "c_float": "FLOAT", "c_double": "DOUBLE", "c_dec": "DECIMAL(10,2)",
    "c_varchar": "VARCHAR", "c_blob": "BLOB", "c_date": "DATE", "c_time": "TIME", "c_ts": "TIMESTAMP",
    "c_ts_s": "TIMESTAMP_S", "c_ts_ms": "TIMESTAMP_MS", "c_ts_ns": "TIMESTAMP_NS", "c_tstz": "TIMESTAMPTZ",
    "c_timetz": "TIMETZ", "c_interval": "INTERVAL", "c_uuid": "UUID", "c_json": "JSON", "c_bit": "BIT",
    "c_struct": "STRUCT(a INTEGER, b VARCHAR)", "c_map": "MAP(VARCHAR, INTEGER)", "c_enum": "ENUM('x', 'y')",
    "c_ints": "INTEGER[]", "c_texts": "VARCHAR[]", "c_dates": "DATE[]",
}
DESCRIBED_AS_VARCHAR = {"c_varchar": "varchar", "c_texts": "_varchar"}


@dataclass
class Served:
    con: duckdb.DuckDBPyConnection
    responder: CatalogResponder

    def catalog(self, sql: str) -> list[tuple]:
        """Answer `sql` as the server answers a catalog query."""
        rewritten = self.responder.rewrite(sql)
        assert rewritten is not None
        return self.con.execute(rewritten).fetchall()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"ATTACH ':memory:' AS {DATA_CATALOG}; USE {DATA_CATALOG}")
    con.execute("CREATE TABLE main.every_type (" + ", ".join(f"{n} {t}" for n, t in COLUMNS.items()) + ")")
    con.execute("USE memory")
    responder = CatalogResponder(server_version="15.8", database_name="hd", owner="hd")
    responder.install(con)
    con.execute("SET arrow_lossless_conversion = true")  # as the engine exports results
    yield Served(con, responder)
    con.close()


def test_every_type_the_wire_sends_is_a_pg_type_row_with_the_same_oid_length_and_array(
        served: Served) -> None:
    rows = {oid: (name, typlen, array) for oid, name, typlen, array in served.catalog(
        "SELECT oid, typname, typlen, typarray FROM pg_catalog.pg_type")}

    for oid, wire in WIRE_TYPE_BY_OID.items():
        assert oid in rows, wire.name
        name, typlen, array = rows[oid]
        assert name == wire.name
        if wire.element is None:
            assert typlen == wire.size == TYPE_BY_NAME[name].typlen
            assert WIRE_TYPE_BY_OID[array].element == wire


def test_a_columns_catalog_type_is_the_type_the_wire_sends_its_values_as(served: Served) -> None:
    con = served.con
    catalog = dict(served.catalog("SELECT a.attname, t.typname FROM pg_catalog.pg_attribute a "
                                   "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
                                   "WHERE a.attrelid = 'main.every_type'::regclass AND a.attnum > 0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = con.execute(f"SELECT * FROM {DATA_CATALOG}.main.every_type").to_arrow_table().schema
    relation = con.sql(f"SELECT * FROM {DATA_CATALOG}.main.every_type")
    declared = dict(zip(relation.columns, relation.types, strict=True))

    for column in COLUMNS:
        sent = pg_type_for_arrow(schema.field(column).type)
        assert pg_type_for_duckdb(declared[column]).oid == sent.oid, column  # RowDescription, either way
        assert catalog[column] == DESCRIBED_AS_VARCHAR.get(column, sent.name), column
