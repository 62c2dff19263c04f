"""Types a result column is declared as where its values are strings: varchar, name, name[] and regtype.

DuckDB's results carry one string type (sent as text); the plan knows when PostgreSQL would declare
another (governance/result_types.py). varchar and name send the same bytes as text in both formats;
regtype's text form is the type's name and its binary form the type's OID (regtypesend is oidsend).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from engine_host.pgcompat.types.arrow_types import _is_string
from engine_host.pgcompat.types.buffers import _per_row, _unwrap, as_plain_binary
from engine_host.pgcompat.types.table import BUILTIN_TYPES, TEXT, TYPE_BY_NAME, WIRE_TYPE_BY_OID, PgType, array_of

VARCHAR = WIRE_TYPE_BY_OID[TYPE_BY_NAME["varchar"].oid]
NAME = WIRE_TYPE_BY_OID[TYPE_BY_NAME["name"].oid]
NAME_ARRAY = array_of(NAME)
REGTYPE = PgType(TYPE_BY_NAME["regtype"].oid, "regtype", TYPE_BY_NAME["regtype"].typlen)
_STRING_TYPES = frozenset({VARCHAR.oid, NAME.oid, REGTYPE.oid})

# regtype's output (format_type) for each builtin type, and back: the OID its binary form sends.
OID_BY_TYPE_NAME: dict[str, int] = {t.display: t.oid for t in BUILTIN_TYPES}


def varchar_type(length: int) -> PgType:
    """varchar(length), with the atttypmod PostgreSQL reports for it."""
    return PgType(VARCHAR.oid, VARCHAR.name, VARCHAR.size, length + 4)


def with_declared(natural: Sequence[PgType], declared: Sequence[PgType | None]) -> list[PgType]:
    """The types to announce: each declared type where the plan has one and the result's own type is text
    (text[] for name[]); the result's own type everywhere else, and for all columns when the counts differ."""
    if len(declared) != len(natural):
        return list(natural)
    return [_declared_or_natural(n, d) for n, d in zip(natural, declared, strict=True)]


def _declared_or_natural(natural: PgType, declared: PgType | None) -> PgType:
    if declared is None:
        return natural
    if declared.element is not None:
        element = natural.element
        return declared if element is not None and element.oid == TEXT.oid and (
            declared.element.oid in _STRING_TYPES) else natural
    return declared if natural.oid == TEXT.oid and declared.oid in _STRING_TYPES else natural


def enc_regtype(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    """regtype values (type names): the name itself in text format, its OID as a 4-byte integer in binary.

    A name that is no builtin type's sends OID 0 (InvalidOid), as regtypesend of an unresolved type would.
    """
    plain = _unwrap(arr)
    if not binary:
        return as_plain_binary(plain) if _is_string(plain.type) else _per_row(plain, lambda v: str(v).encode())
    return _per_row(plain, lambda v: OID_BY_TYPE_NAME.get(str(v), 0).to_bytes(4, "big"))
