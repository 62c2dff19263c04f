"""PostgreSQL's types, once: the pg_type rows the catalog serves, the subset the wire sends and decodes,
and how each DuckDB type maps to them.

Every other part asks this module: the wire's RowDescription and parameter casts (encoding, decoding), and the
pg_catalog views' pg_type rows and column types (catalog). The catalog describes a declared VARCHAR
column as `character varying`, as PostgreSQL's catalogs do, where the wire sends its values as text;
that one difference is `CATALOG_DESCRIBES_AS_VARCHAR`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# PostgreSQL 15 builtin types (scalar, pseudo, range, multirange) as initdb creates them in pg_catalog:
# oid typname typlen typbyval typtype typcategory typispreferred typdelim typelem typarray typinput
# typalign typstorage typcollation. Array types are derived from these rows (see builtin_types).
PG_TYPE_ROWS = """
16 bool 1 t b B t , 0 1000 boolin c p 0
17 bytea -1 f b U f , 0 1001 byteain i x 0
18 char 1 t b Z f , 0 1002 charin c p 0
19 name 64 f b S f , 18 1003 namein c p 950
20 int8 8 t b N f , 0 1016 int8in d p 0
21 int2 2 t b N f , 0 1005 int2in s p 0
22 int2vector -1 f b A f , 21 1006 int2vectorin i p 0
23 int4 4 t b N f , 0 1007 int4in i p 0
24 regproc 4 t b N f , 0 1008 regprocin i p 0
25 text -1 f b S t , 0 1009 textin i x 100
26 oid 4 t b N t , 0 1028 oidin i p 0
27 tid 6 f b U f , 0 1010 tidin s p 0
28 xid 4 t b U f , 0 1011 xidin i p 0
29 cid 4 t b U f , 0 1012 cidin i p 0
30 oidvector -1 f b A f , 26 1013 oidvectorin i p 0
32 pg_ddl_command 8 t p P f , 0 0 pg_ddl_command_in d p 0
114 json -1 f b U f , 0 199 json_in i x 0
142 xml -1 f b U f , 0 143 xml_in i x 0
194 pg_node_tree -1 f b Z f , 0 0 pg_node_tree_in i x 100
269 table_am_handler 4 t p P f , 0 0 table_am_handler_in i p 0
325 index_am_handler 4 t p P f , 0 0 index_am_handler_in i p 0
600 point 16 f b G f , 701 1017 point_in d p 0
601 lseg 32 f b G f , 600 1018 lseg_in d p 0
602 path -1 f b G f , 0 1019 path_in d x 0
603 box 32 f b G f ; 600 1020 box_in d p 0
604 polygon -1 f b G f , 0 1027 poly_in d x 0
628 line 24 f b G f , 701 629 line_in d p 0
650 cidr -1 f b I f , 0 651 cidr_in i m 0
700 float4 4 t b N f , 0 1021 float4in i p 0
701 float8 8 t b N t , 0 1022 float8in d p 0
705 unknown -2 f p X f , 0 0 unknownin c p 0
718 circle 24 f b G f , 0 719 circle_in d p 0
774 macaddr8 8 f b U f , 0 775 macaddr8_in i p 0
790 money 8 t b N f , 0 791 cash_in d p 0
829 macaddr 6 f b U f , 0 1040 macaddr_in i p 0
869 inet -1 f b I t , 0 1041 inet_in i m 0
1033 aclitem 12 f b U f , 0 1034 aclitemin i p 0
1042 bpchar -1 f b S f , 0 1014 bpcharin i x 100
1043 varchar -1 f b S f , 0 1015 varcharin i x 100
1082 date 4 t b D f , 0 1182 date_in i p 0
1083 time 8 t b D f , 0 1183 time_in d p 0
1114 timestamp 8 t b D f , 0 1115 timestamp_in d p 0
1184 timestamptz 8 t b D t , 0 1185 timestamptz_in d p 0
1186 interval 16 f b T t , 0 1187 interval_in d p 0
1266 timetz 12 f b D f , 0 1270 timetz_in d p 0
1560 bit -1 f b V f , 0 1561 bit_in i x 0
1562 varbit -1 f b V t , 0 1563 varbit_in i x 0
1700 numeric -1 f b N f , 0 1231 numeric_in i m 0
1790 refcursor -1 f b U f , 0 2201 textin i x 0
2202 regprocedure 4 t b N f , 0 2207 regprocedurein i p 0
2203 regoper 4 t b N f , 0 2208 regoperin i p 0
2204 regoperator 4 t b N f , 0 2209 regoperatorin i p 0
2205 regclass 4 t b N f , 0 2210 regclassin i p 0
2206 regtype 4 t b N f , 0 2211 regtypein i p 0
2249 record -1 f p P f , 0 2287 record_in d x 0
2275 cstring -2 f p P f , 0 1263 cstring_in c p 0
2276 any 4 t p P f , 0 0 any_in i p 0
2277 anyarray -1 f p P f , 0 0 anyarray_in d x 0
2278 void 4 t p P f , 0 0 void_in i p 0
2279 trigger 4 t p P f , 0 0 trigger_in i p 0
2280 language_handler 4 t p P f , 0 0 language_handler_in i p 0
2281 internal 8 t p P f , 0 0 internal_in d p 0
2283 anyelement 4 t p P f , 0 0 anyelement_in i p 0
2287 _record -1 f p P f , 2249 0 array_in d x 0
2776 anynonarray 4 t p P f , 0 0 anynonarray_in i p 0
2950 uuid 16 f b U f , 0 2951 uuid_in c p 0
2970 txid_snapshot -1 f b U f , 0 2949 txid_snapshot_in d x 0
3115 fdw_handler 4 t p P f , 0 0 fdw_handler_in i p 0
3220 pg_lsn 8 t b U f , 0 3221 pg_lsn_in d p 0
3310 tsm_handler 4 t p P f , 0 0 tsm_handler_in i p 0
3361 pg_ndistinct -1 f b Z f , 0 0 pg_ndistinct_in i x 100
3402 pg_dependencies -1 f b Z f , 0 0 pg_dependencies_in i x 100
3500 anyenum 4 t p P f , 0 0 anyenum_in i p 0
3614 tsvector -1 f b U f , 0 3643 tsvectorin i x 0
3615 tsquery -1 f b U f , 0 3645 tsqueryin i p 0
3642 gtsvector -1 f b U f , 0 3644 gtsvectorin i p 0
3734 regconfig 4 t b N f , 0 3735 regconfigin i p 0
3769 regdictionary 4 t b N f , 0 3770 regdictionaryin i p 0
3802 jsonb -1 f b U f , 0 3807 jsonb_in i x 0
3831 anyrange -1 f p P f , 0 0 anyrange_in d x 0
3838 event_trigger 4 t p P f , 0 0 event_trigger_in i p 0
3904 int4range -1 f r R f , 0 3905 range_in i x 0
3906 numrange -1 f r R f , 0 3907 range_in i x 0
3908 tsrange -1 f r R f , 0 3909 range_in d x 0
3910 tstzrange -1 f r R f , 0 3911 range_in d x 0
3912 daterange -1 f r R f , 0 3913 range_in i x 0
3926 int8range -1 f r R f , 0 3927 range_in d x 0
4072 jsonpath -1 f b U f , 0 4073 jsonpath_in i x 0
4089 regnamespace 4 t b N f , 0 4090 regnamespacein i p 0
4096 regrole 4 t b N f , 0 4097 regrolein i p 0
4191 regcollation 4 t b N f , 0 4192 regcollationin i p 0
4451 int4multirange -1 f m R f , 0 6150 multirange_in i x 0
4532 nummultirange -1 f m R f , 0 6151 multirange_in i x 0
4533 tsmultirange -1 f m R f , 0 6152 multirange_in d x 0
4534 tstzmultirange -1 f m R f , 0 6153 multirange_in d x 0
4535 datemultirange -1 f m R f , 0 6155 multirange_in i x 0
4536 int8multirange -1 f m R f , 0 6157 multirange_in d x 0
4537 anymultirange -1 f p P f , 0 0 anymultirange_in d x 0
4538 anycompatiblemultirange -1 f p P f , 0 0 anycompatiblemultirange_in d x 0
4600 pg_brin_bloom_summary -1 f b Z f , 0 0 brin_bloom_summary_in i x 100
4601 pg_brin_minmax_multi_summary -1 f b Z f , 0 0 brin_minmax_multi_summary_in i x 100
5017 pg_mcv_list -1 f b Z f , 0 0 pg_mcv_list_in i x 100
5038 pg_snapshot -1 f b U f , 0 5039 pg_snapshot_in d x 0
5069 xid8 8 t b U f , 0 271 xid8in d p 0
5077 anycompatible 4 t p P f , 0 0 anycompatible_in i p 0
5078 anycompatiblearray -1 f p P f , 0 0 anycompatiblearray_in d x 0
5079 anycompatiblenonarray 4 t p P f , 0 0 anycompatiblenonarray_in i p 0
5080 anycompatiblerange -1 f p P f , 0 0 anycompatiblerange_in d x 0
"""

# Every catalog relation this module answers for, with its PostgreSQL 15 OID, relkind and columns
# (name and PostgreSQL type, in order). The views are generated from this list, so their shape
# matches PostgreSQL by construction; relations without a populated definition in
# `_CatalogBuilder` are empty (PostgreSQL features DuckDB does not have).


@dataclass(frozen=True)
class BuiltinType:
    """One row of PostgreSQL's pg_type for a builtin type."""

    oid: int
    name: str
    typlen: int
    byval: bool
    typtype: str
    category: str
    preferred: bool
    delim: str
    elem: int
    array: int
    typinput: str
    align: str
    storage: str
    collation: int
    display: str  # what format_type() prints without a type modifier


# format_type() prints SQL-standard names for these, and the catalog name for every other type.
SQL_TYPE_NAMES = {
    "bool": "boolean", "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
    "float8": "double precision", "varchar": "character varying", "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone", "time": "time without time zone",
    "timetz": "time with time zone", "varbit": "bit varying", "char": '"char"',
}


def builtin_types() -> list[BuiltinType]:
    """PostgreSQL's builtin types: the rows of PG_TYPE_ROWS plus their array types."""
    base = []
    for line in PG_TYPE_ROWS.strip().splitlines():
        oid, name, typlen, byval, typtype, cat, pref, delim, elem, array, typinput, align, storage, coll = (
            line.split()
        )
        base.append(BuiltinType(
            int(oid), name, int(typlen), byval == "t", typtype, cat, pref == "t", delim, int(elem), int(array),
            typinput, align, storage, int(coll), SQL_TYPE_NAMES.get(name, name),
        ))
    known = {t.oid for t in base}
    arrays = [
        BuiltinType(t.array, "_" + t.name, -1, False, "b", "A", False, t.delim, t.oid, 0, "array_in",
                     "d" if t.align == "d" else "i", "x", t.collation, t.display + "[]")
        for t in base if t.array and t.array not in known
    ]
    return base + arrays


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL type as announced in RowDescription / ParameterDescription."""

    oid: int
    name: str
    size: int
    modifier: int = -1
    element: PgType | None = None


# --- the types the wire serves ------------------------------------------------------------------

# Each served type's oid, length and array type are its PG_TYPE_ROWS row; here only the DuckDB type a
# parameter declared as it is CAST to (None: no cast).
DUCKDB_CASTS: dict[str, str | None] = {
    "bool": "BOOLEAN",
    "bytea": "BLOB",
    "char": "VARCHAR",
    "name": "VARCHAR",
    "int8": "BIGINT",
    "int2": "SMALLINT",
    "int4": "INTEGER",
    "text": "VARCHAR",
    "oid": "UINTEGER",
    "json": "JSON",
    "float4": "FLOAT",
    "float8": "DOUBLE",
    "bpchar": "VARCHAR",
    "varchar": "VARCHAR",
    "date": "DATE",
    "time": "TIME",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMP WITH TIME ZONE",
    "interval": "INTERVAL",
    "timetz": "TIME WITH TIME ZONE",
    "bit": "BIT",
    "varbit": "BIT",
    # An unconstrained numeric has no DuckDB equivalent (DECIMAL has a fixed scale); the Decimal
    # value itself binds at its own precision, so no CAST is offered.
    "numeric": None,
    "uuid": "UUID",
    "jsonb": "JSON",
}

BUILTIN_TYPES = builtin_types()
TYPE_BY_NAME: dict[str, BuiltinType] = {t.name: t for t in BUILTIN_TYPES}

_SCALAR: dict[str, PgType] = {name: PgType(TYPE_BY_NAME[name].oid, name, TYPE_BY_NAME[name].typlen)
                              for name in DUCKDB_CASTS}
_ARRAY_OID: dict[int, int] = {TYPE_BY_NAME[name].oid: TYPE_BY_NAME[name].array for name in DUCKDB_CASTS}
_DUCKDB_CAST: dict[int, str | None] = {TYPE_BY_NAME[name].oid: duck for name, duck in DUCKDB_CASTS.items()}
WIRE_TYPE_BY_OID: dict[int, PgType] = {t.oid: t for t in _SCALAR.values()}
for _t in list(_SCALAR.values()):
    WIRE_TYPE_BY_OID[_ARRAY_OID[_t.oid]] = PgType(_ARRAY_OID[_t.oid], "_" + _t.name, -1, -1, _t)
ELEMENT_OF_ARRAY: dict[int, PgType] = {a.oid: a.element for a in WIRE_TYPE_BY_OID.values() if a.element is not None}

BOOL = _SCALAR["bool"]
BYTEA = _SCALAR["bytea"]
INT2 = _SCALAR["int2"]
INT4 = _SCALAR["int4"]
INT8 = _SCALAR["int8"]
TEXT = _SCALAR["text"]
JSON = _SCALAR["json"]
FLOAT4 = _SCALAR["float4"]
FLOAT8 = _SCALAR["float8"]
DATE = _SCALAR["date"]
TIME = _SCALAR["time"]
TIMESTAMP = _SCALAR["timestamp"]
TIMESTAMPTZ = _SCALAR["timestamptz"]
INTERVAL = _SCALAR["interval"]
TIMETZ = _SCALAR["timetz"]
VARBIT = _SCALAR["varbit"]
NUMERIC = _SCALAR["numeric"]
UUID = _SCALAR["uuid"]

MAX_NUMERIC_PRECISION = 1000


def numeric_type(precision: int, scale: int) -> PgType:
    """numeric(precision, scale), with the atttypmod PostgreSQL reports for it."""
    return PgType(NUMERIC.oid, "numeric", -1, ((precision << 16) | (scale & 0xFFFF)) + 4)


def array_of(element: PgType) -> PgType:
    """The array type over `element`; arrays of arrays are PostgreSQL multi-dimensional arrays."""
    if element.element is not None:
        return element
    base = WIRE_TYPE_BY_OID[_ARRAY_OID[element.oid]]
    return PgType(base.oid, base.name, -1, element.modifier, element)


def pg_type_by_oid(oid: int) -> PgType | None:
    """The type for a declared parameter OID; None for 0, `unknown` and types this server does not know."""
    return WIRE_TYPE_BY_OID.get(oid)


def duckdb_type_for_oid(oid: int) -> str | None:
    """The DuckDB type to CAST a parameter declared as `oid` to, or None when no cast should be added."""
    element = ELEMENT_OF_ARRAY.get(oid)
    if element is not None:
        inner = _DUCKDB_CAST.get(element.oid)
        return f"{inner}[]" if inner else None
    return _DUCKDB_CAST.get(oid)


# --- DuckDB and Arrow types -> PostgreSQL types ---------------------------------------------------

DUCKDB_SCALARS: dict[str, PgType] = {
    "BOOLEAN": BOOL, "BOOL": BOOL, "LOGICAL": BOOL,
    "TINYINT": INT2, "INT1": INT2, "SMALLINT": INT2, "INT2": INT2, "SHORT": INT2, "UTINYINT": INT2,
    "INTEGER": INT4, "INT": INT4, "INT4": INT4, "SIGNED": INT4, "USMALLINT": INT4,
    "BIGINT": INT8, "INT8": INT8, "LONG": INT8, "UINTEGER": INT8,
    "UBIGINT": NUMERIC, "HUGEINT": NUMERIC, "INT128": NUMERIC, "UHUGEINT": NUMERIC, "UINT128": NUMERIC,
    "VARINT": NUMERIC, "BIGNUM": NUMERIC,
    "FLOAT": FLOAT4, "FLOAT4": FLOAT4, "REAL": FLOAT4,
    "DOUBLE": FLOAT8, "FLOAT8": FLOAT8,
    "VARCHAR": TEXT, "TEXT": TEXT, "STRING": TEXT, "CHAR": TEXT, "BPCHAR": TEXT, "ENUM": TEXT,
    "BLOB": BYTEA, "BYTEA": BYTEA, "BINARY": BYTEA, "VARBINARY": BYTEA,
    "DATE": DATE,
    "TIME": TIME, "TIME_NS": TIME,
    "TIMESTAMP": TIMESTAMP, "DATETIME": TIMESTAMP, "TIMESTAMP_US": TIMESTAMP, "TIMESTAMP_S": TIMESTAMP,
    "TIMESTAMP_MS": TIMESTAMP, "TIMESTAMP_NS": TIMESTAMP,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMPTZ, "TIMESTAMPTZ": TIMESTAMPTZ,
    "TIME WITH TIME ZONE": TIMETZ, "TIMETZ": TIMETZ,
    "INTERVAL": INTERVAL,
    "UUID": UUID,
    "JSON": JSON, "STRUCT": JSON, "ROW": JSON, "MAP": JSON, "UNION": JSON, "VARIANT": JSON,
    "BIT": VARBIT, "BITSTRING": VARBIT,
}
_ARRAY_SUFFIX = re.compile(r"\[\d*\]$")
_DECIMAL_ARGS = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$")


def pg_type_for_duckdb(duckdb_type: object) -> PgType:
    """The PostgreSQL type a DuckDB type (a DuckDBPyType or its string) is sent as."""
    name = str(duckdb_type).strip()
    if len(name) >= 2 and name[0] == '"' and name[-1] == '"':  # DuckDB quotes the type named "NULL"
        name = name[1:-1]
    suffix = _ARRAY_SUFFIX.search(name)
    if suffix:
        return array_of(pg_type_for_duckdb(name[: suffix.start()]))
    base, _, args = name.partition("(")
    base = base.strip().upper()
    if base in ("DECIMAL", "NUMERIC"):
        match = _DECIMAL_ARGS.match(args.rstrip(")")) if args else None
        if not args:
            return numeric_type(18, 3)  # DuckDB's default DECIMAL
        if match:
            return numeric_type(int(match.group(1)), int(match.group(2) or 0))
        return NUMERIC
    return DUCKDB_SCALARS.get(base, TEXT)


# The catalog describes a column of these DuckDB types as varchar (PostgreSQL's catalogs show a
# declared string column as character varying); the wire sends their values as text.
CATALOG_DESCRIBES_AS_VARCHAR = frozenset({"VARCHAR"})


def catalog_type_oid_for_duckdb(base: str) -> int | None:
    """The pg_type OID the catalog gives a column of DuckDB base type `base` (upper case, no arguments)."""
    if base in CATALOG_DESCRIBES_AS_VARCHAR:
        return TYPE_BY_NAME["varchar"].oid
    pgtype = DUCKDB_SCALARS.get(base)
    return pgtype.oid if pgtype is not None else None
