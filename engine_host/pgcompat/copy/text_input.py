"""COPY FROM's text and csv values read by PostgreSQL's input rules, a column at a time.

DuckDB's VARCHAR casts accept text PostgreSQL refuses ('1.5' into an integer is rounded, ' 1e3'
into a numeric(5,2) fails with DuckDB's own message). So a column of one of those types is first
matched against its type's plain form in one vectorised pass (digits of a length that cannot
leave the type's range, a calendar date pyarrow parses, a hex UUID...): values in that form read
the same in PostgreSQL and DuckDB, and go to the engine untouched. Every other value goes through
the parameter decoder of its type (pgcompat/types/decoding.py, PostgreSQL's text input): refused
there as PostgreSQL refuses it, with the line and column as PostgreSQL's COPY context names them,
or accepted and handed to the engine in a form it reads the same way (' 1 ' as '1', 'yes' as 'true').
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.copy.parse import CopyRefused
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.parameter_format import ParameterFormatError
from engine_host.pgcompat.types.table import PgType

pc: Any = _typed_pc

_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"

# The plain form of each type's text: a value that matches reads the same in PostgreSQL and DuckDB,
# within range by its length alone (further checks below for calendar dates and numeric typmods).
_PLAIN: dict[str, str] = {
    "int2": r"^[+-]?[0-9]{1,4}$",
    "int4": r"^[+-]?[0-9]{1,9}$",
    "int8": r"^[+-]?[0-9]{1,18}$",
    "oid": r"^[0-9]{1,9}$",
    "float4": rf"^[+-]?{_NUMBER}(?:[eE][+-]?[0-9])?$",
    "float8": rf"^[+-]?{_NUMBER}(?:[eE][+-]?[0-9]{{1,2}})?$",
    "numeric": rf"^[+-]?{_NUMBER}$",
    "bool": r"^(?:t|f|true|false)$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "date": rf"^{_DATE}$",
    "time": rf"^{_CLOCK}$",
    "timestamp": rf"^{_DATE} {_CLOCK}$",
    "timestamptz": rf"^{_DATE} {_CLOCK}(?:[+-][0-9]{{2}}(?::?[0-9]{{2}})?)?$",
}
_FLOAT_LENGTH = 24  # with the exponent bound, a plain float of at most this many characters is in range
_CALENDAR = {"date", "timestamp", "timestamptz"}  # the day must exist: 2024-02-30 is PostgreSQL's 22008
_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)", re.IGNORECASE)

_DATETIME = {"date", "time", "timestamp", "timestamptz"}
_DATETIME_RANGE = re.compile(r"^date/time field value out of range for type [^:]+:")

CHECKED = frozenset(_PLAIN)


def checked_column(strings: pa.Array, pgtype: PgType, engine_type: str, name: str,
                   line_of: Callable[[int], int], table: str) -> pa.Array:
    """`strings` (PostgreSQL text forms, NULLs as null) checked by PostgreSQL's input rules for `pgtype`.

    Returns the strings the engine casts (values PostgreSQL accepts in another form rewritten in a
    form DuckDB reads the same); raises CopyRefused as PostgreSQL refuses the first bad value.
    """
    typmod = _DECIMAL.fullmatch(engine_type.strip()) if pgtype.name == "numeric" else None
    precision, scale = (int(typmod.group(1)), int(typmod.group(2))) if typmod else (None, None)
    plain = pc.match_substring_regex(strings, _plain_pattern(pgtype.name, precision, scale))
    if pgtype.name in ("float4", "float8"):
        plain = pc.and_kleene(plain, pc.less_equal(pc.utf8_length(strings), _FLOAT_LENGTH))
    if pgtype.name in _CALENDAR:
        plain = pc.and_kleene(plain, _day_exists(strings, plain))
    odd = pc.and_(pc.is_valid(strings), pc.invert(plain.fill_null(False)))  # NULLs are NULL in every type
    if not pc.any(odd).as_py():
        return strings
    values = strings.to_pylist()
    for i in np.flatnonzero(odd.to_numpy(zero_copy_only=False)).tolist():
        raw = values[i]
        assert raw is not None  # NULLs are never odd
        try:
            value = decode_parameter(raw.encode(), pgtype.oid, False)
            values[i] = _engine_text(value, precision, scale)
        except ParameterFormatError as exc:
            raise _refused(str(exc), pgtype, table, line_of(i), name, raw) from None
        except _NumericOverflow as exc:
            raise CopyRefused("22003", "HD_ERR_COPY_DATA",
                              f"numeric field overflow: {exc} (COPY {table}, line {line_of(i)}, column {name}: "
                              f'"{raw}")') from None
    return pa.array(values, pa.string())


_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _day_exists(strings: pa.Array, plain: pa.Array) -> pa.Array:
    """Whether each plain YYYY-MM-DD... names a day of the calendar (2024-02-30 is PostgreSQL's 22008)."""
    days = pc.if_else(plain.fill_null(False), pc.utf8_slice_codeunits(strings, 0, 10), "2000-01-01")
    try:
        pc.cast(days, pa.date32())  # one pass that refuses any day the calendar lacks: the usual case
        return pa.array(np.ones(len(strings), dtype=bool))
    except pa.ArrowInvalid:
        pass  # which ones, then

    def part(start: int, stop: int) -> np.ndarray:
        digits = pc.if_else(plain.fill_null(False), pc.utf8_slice_codeunits(strings, start, stop), "1")
        return pc.cast(digits, pa.int32()).to_numpy(zero_copy_only=False)

    year, month, day = part(0, 4), part(5, 7), part(8, 10)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    return pa.array(day <= _MONTH_DAYS[month] + (leap & (month == 2)))


def _plain_pattern(name: str, precision: int | None, scale: int | None) -> str:
    if name == "numeric" and precision is not None and scale is not None:
        whole, fraction = precision - scale, scale  # no rounding, no overflow: at most this many digits
        integer = f"0*[0-9]{{1,{whole}}}" if whole > 0 else "0+"
        if fraction == 0:
            return rf"^[+-]?{integer}\.?$"
        return rf"^[+-]?(?:{integer}(?:\.[0-9]{{0,{fraction}}})?|0*\.[0-9]{{1,{fraction}}})$"
    return _PLAIN[name]


class _NumericOverflow(ValueError):
    pass


def _engine_text(value: object, precision: int | None, scale: int | None) -> str:
    """A value PostgreSQL's input accepted, as text DuckDB's cast reads as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and precision is not None and scale is not None:
            rounded = value.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP,
                                     context=decimal.Context(prec=1000))
            if rounded.adjusted() >= precision - scale and rounded != 0:
                raise _NumericOverflow(f"a field with precision {precision}, scale {scale} must round to an "
                                       f"absolute value less than 10^{precision - scale}")
            return format(rounded, "f")
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _refused(message: str, pgtype: PgType, table: str, line: int, column: str, raw: str) -> CopyRefused:
    """PostgreSQL's refusal: 22003 out of range, 22008 a date/time field out of range, 22007 a bad date/time."""
    if message.startswith("date/time field value out of range"):
        sqlstate = "22008"
        message = _DATETIME_RANGE.sub("date/time field value out of range:", message)
    elif "out of range" in message:
        sqlstate = "22003"
    else:
        sqlstate = "22007" if pgtype.name in _DATETIME else "22P02"
    return CopyRefused(sqlstate, "HD_ERR_COPY_DATA", f'{message} (COPY {table}, line {line}, column {column}: "{raw}")')
