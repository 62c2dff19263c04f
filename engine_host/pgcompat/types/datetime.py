"""date, time, timetz, timestamp, timestamptz and interval: encoders and parameter decoders."""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from engine_host.pgcompat.types.buffers import (
    _INT32_MAX,
    _INT64_MAX,
    _INT64_MIN,
    _U8,
    _ZERO,
    _buffer,
    _cast,
    _digits,
    _from_fixed,
    _from_matrix,
    _opaque_name,
    _packed,
    _primitive,
    _rare_rows,
    _replace_rows,
    _unwrap,
    _validity,
)
from engine_host.pgcompat.types.parameter_format import ParameterFormatError, _bad, _binary_length, _utf8
from engine_host.pgcompat.types.table import PgType

# Days and microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
_PG_EPOCH_DAYS = 10_957
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
_US_PER_DAY = 86_400_000_000


def _civil(days: Any) -> tuple[Any, Any, Any]:
    """(year, month, day) of days since 1970-01-01 in the proleptic Gregorian calendar (year 0 = 1 BC).

    Works alike on one Python int and on an int64 NumPy array (element-wise).
    """
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 - 12 * (mp >= 10)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _date_matrix(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'YYYY-MM-DD' for every row, and which rows have a 4-digit AD year (the others need the fallback)."""
    year, month, day = _civil(days)
    ordinary = (year >= 1) & (year <= 9999)
    n = len(days)
    mat = np.empty((n, 10), dtype=_U8)
    mat[:, 0:4] = _digits(np.clip(year, 0, 9999), 4)
    mat[:, 4] = mat[:, 7] = ord("-")
    mat[:, 5:7] = _digits(month, 2)
    mat[:, 8:10] = _digits(day, 2)
    return mat, ordinary


def _time_of_day_matrix(us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'HH:MM:SS[.ffffff]' with trailing fractional zeros removed (as PostgreSQL prints), and lengths."""
    n = len(us)
    seconds, fraction = np.divmod(us.astype(np.int64), 1_000_000)
    seconds = seconds.astype(np.int32)
    minutes, second = np.divmod(seconds, 60)
    hour, minute = np.divmod(minutes, 60)
    mat = np.empty((n, 15), dtype=_U8)
    mat[:, 0:2] = _digits(hour, 2)
    mat[:, 2] = mat[:, 5] = ord(":")
    mat[:, 3:5] = _digits(minute, 2)
    mat[:, 6:8] = _digits(second, 2)
    mat[:, 8] = ord(".")
    mat[:, 9:15] = _digits(fraction, 6)
    significant = mat[:, 9:15] != _ZERO
    last = 5 - significant[:, ::-1].argmax(axis=1)  # index of the last non-zero fractional digit
    lengths = np.where(significant.any(axis=1), 10 + last, 8)
    return mat, lengths


_DATE_INFINITY = 2**31 - 1
_DATE_NINFINITY_DUCKDB = -(2**31 - 1)
_DATE_NINFINITY_PG = -(2**31)


def _enc_date(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _cast(_unwrap(arr), pa.date32(), "date")
    valid = _validity(plain)
    days = _primitive(plain, "<i4").astype(np.int64)
    pos_inf = days == _DATE_INFINITY
    neg_inf = days <= _DATE_NINFINITY_DUCKDB
    if binary:
        pg = np.where(pos_inf, _DATE_INFINITY, np.where(neg_inf, _DATE_NINFINITY_PG, days - _PG_EPOCH_DAYS))
        return _from_fixed(pg.astype(">i4"), valid)
    mat, ordinary = _date_matrix(days)
    encoded = _from_matrix(mat, np.full(len(days), 10, dtype=np.int64), valid)
    rare = _rare_rows(~ordinary, valid)
    return _replace_rows(encoded, rare, [_date_text(int(days[i])) for i in rare])


def _date_parts_text(days: int) -> tuple[str, bool]:
    """'YYYY-MM-DD' (at least four year digits) and whether the date is BC, for any day number."""
    year, month, day = _civil(days)
    bc = year <= 0
    # % formats these several times faster than an f-string with format specs (a per-value hot path).
    return "%04d-%02d-%02d" % ((1 - year) if bc else year, month, day), bc  # noqa: UP031 - speed


def _date_text(days: int) -> bytes:
    if days >= _DATE_INFINITY:
        return b"infinity"
    if days <= _DATE_NINFINITY_DUCKDB:
        return b"-infinity"
    text, bc = _date_parts_text(days)
    return (text + (" BC" if bc else "")).encode()


_TIME_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}


def _to_us(raw: Any, unit: str) -> Any:
    """Microseconds of a time, timestamp or duration count in `unit` (an int or an int64 array; ns floored)."""
    return raw // 1000 if unit == "ns" else raw * _TIME_UNITS[unit]


def _time_us(plain: pa.Array) -> np.ndarray:
    """Microseconds since midnight of a time32/time64 array (nanoseconds truncated)."""
    raw = _primitive(plain, "<i4" if pa.types.is_time32(plain.type) else "<i8").astype(np.int64)
    return _to_us(raw, plain.type.unit)


def _time_us_values(plain: pa.Array) -> list[int | None]:
    """Microseconds since midnight of each value of a time32/time64 array, as Python ints (None for nulls)."""
    t: Any = plain.type
    raw = plain.view(pa.int32() if pa.types.is_time32(t) else pa.int64()).to_pylist()
    return [None if r is None else _to_us(r, t.unit) for r in raw]


def _clock_text(us: int) -> str:
    """'HH:MM:SS[.ffffff]' of non-negative microseconds, trailing fractional zeros dropped (as PostgreSQL prints)."""
    seconds, fraction = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    # % formats these several times faster than an f-string with format specs (a per-value hot path).
    if fraction:
        return ("%02d:%02d:%02d.%06d" % (hours, minute, second, fraction)).rstrip("0")  # noqa: UP031 - speed
    return "%02d:%02d:%02d" % (hours, minute, second)  # noqa: UP031 - speed


def _enc_time(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    if not pa.types.is_time(plain.type):
        plain = _cast(plain, pa.time64("us"), "time")
    valid = _validity(plain)
    us = _time_us(plain)
    if binary:
        return _from_fixed(us.astype(">i8"), valid)
    mat, lengths = _time_of_day_matrix(us)
    return _from_matrix(mat, lengths, valid)


def _timestamp_us(raw: Any, unit: str) -> tuple[Any, Any, Any]:
    """Microseconds since the Unix epoch of raw timestamp counts, and whether each is DuckDB's +/-infinity.

    `raw` is one Python int or an int64 NumPy array (then the three results are arrays).
    """
    return _to_us(raw, unit), raw == _INT64_MAX, raw <= _INT64_MIN + 1


def _enc_timestamp(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    with_tz = pgtype.name == "timestamptz"
    plain = _unwrap(arr)
    if not pa.types.is_timestamp(plain.type):
        plain = _cast(plain, pa.timestamp("us", "UTC" if with_tz else None), pgtype.name)
    valid = _validity(plain)
    us, pos_inf, neg_inf = _timestamp_us(_primitive(plain, "<i8").astype(np.int64), plain.type.unit)
    if binary:
        pg = np.where(pos_inf, _INT64_MAX, np.where(neg_inf, _INT64_MIN, us - _PG_EPOCH_US))
        return _from_fixed(pg.astype(">i8"), valid)
    finite = ~(pos_inf | neg_inf)
    safe_us = np.where(finite, us, 0)
    days = np.floor_divide(safe_us, _US_PER_DAY)
    date_mat, ordinary = _date_matrix(days)
    time_mat, time_len = _time_of_day_matrix(safe_us - days * _US_PER_DAY)
    n = len(us)
    mat = np.zeros((n, 10 + 1 + 15 + 3), dtype=_U8)
    mat[:, 0:10] = date_mat
    mat[:, 10] = ord(" ")
    mat[:, 11:26] = time_mat
    lengths = 11 + time_len
    if with_tz:
        rows = np.arange(n)[:, None]
        mat[rows, lengths[:, None] + np.arange(3)[None, :]] = np.frombuffer(b"+00", dtype=_U8)
        lengths = lengths + 3
    encoded = _from_matrix(mat, lengths, valid)
    rare = _rare_rows(~(ordinary & finite), valid)
    return _replace_rows(encoded, rare, [_timestamp_text(int(us[i]), bool(pos_inf[i]), bool(neg_inf[i]), with_tz)
                                         for i in rare])


def _timestamp_text(us: int, pos_inf: bool, neg_inf: bool, with_tz: bool) -> bytes:
    if pos_inf:
        return b"infinity"
    if neg_inf:
        return b"-infinity"
    days, tod = divmod(us, _US_PER_DAY)
    date_text, bc = _date_parts_text(days)
    return f"{date_text} {_clock_text(tod)}{'+00' if with_tz else ''}{' BC' if bc else ''}".encode()


def _enc_timetz(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    return pa.array(_timetz_values(arr, binary, pgtype), pa.binary())


def _timetz_values(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None]:
    """timetz is encoded value by value whatever the batch size (DuckDB's packed layout has no Arrow kernel)."""
    opaque = _opaque_name(arr)
    plain = _unwrap(arr)
    if opaque == "time_tz" or pa.types.is_fixed_size_binary(plain.type):
        values = [None if v is None else _duckdb_timetz(v) for v in plain.to_pylist()]
    else:
        # DuckDB's default Arrow export drops the offset of TIME WITH TIME ZONE; the local time
        # is all there is, sent with offset +00.
        if not pa.types.is_time(plain.type):
            plain = _cast(plain, pa.time64("us"), "time with time zone")
        values = [None if us is None else (us, 0) for us in _time_us_values(plain)]
    return [None if v is None else _timetz_bytes(v[0], v[1], binary) for v in values]


_TIMETZ_MAX_OFFSET = 16 * 60 * 60 - 1


def _duckdb_timetz(raw: bytes) -> tuple[int, int]:
    """(microseconds, UTC offset in seconds) of DuckDB's packed dtime_tz_t."""
    bits = int.from_bytes(raw, "little")
    return bits >> 24, _TIMETZ_MAX_OFFSET - (bits & 0xFFFFFF)


def _timetz_bytes(us: int, offset: int, binary: bool) -> bytes:
    if binary:
        return struct.pack("!qi", us, -offset)
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    zone = f"{sign}{hours:02d}"
    if minutes or seconds:
        zone += f":{minutes:02d}"
    if seconds:
        zone += f":{seconds:02d}"
    return (_clock_text(us) + zone).encode()


def _enc_interval(arr: pa.Array, binary: bool, pgtype: PgType) -> pa.Array:
    plain = _unwrap(arr)
    valid = _validity(plain)
    n = len(plain)
    if pa.types.is_duration(plain.type):
        raw = _primitive(plain, "<i8").astype(np.int64)
        us = _to_us(raw, plain.type.unit)
        months = np.zeros(n, dtype=np.int64)
        days = np.zeros(n, dtype=np.int64)
    elif plain.type == pa.month_day_nano_interval():
        parts = np.frombuffer(_buffer(plain, 1), dtype=[("months", "<i4"), ("days", "<i4"), ("ns", "<i8")],
                              count=n, offset=plain.offset * 16) if n else np.zeros(0, dtype=[
                                  ("months", "<i4"), ("days", "<i4"), ("ns", "<i8")])
        months = parts["months"].astype(np.int64)
        days = parts["days"].astype(np.int64)
        # DuckDB stores microseconds; PostgreSQL keeps no finer unit, so truncate toward zero.
        us = _ns_to_us_toward_zero(parts["ns"].astype(np.int64))
    else:
        raise pa.ArrowInvalid(f"cannot send {arr.type} values as interval")
    if binary:
        record = np.empty(n, dtype=[("us", ">i8"), ("days", ">i4"), ("months", ">i4")])
        record["us"], record["days"], record["months"] = us, days, months
        return _from_fixed(record, valid)
    return pa.array([None if valid is not None and not valid[i] else
                     interval_text(int(months[i]), int(days[i]), int(us[i])).encode() for i in range(n)], pa.binary())


def _ns_to_us_toward_zero(ns: Any) -> Any:
    """Nanoseconds (an int or an int64 array) to microseconds, truncated toward zero."""
    return ns // 1000 + ((ns % 1000 != 0) & (ns < 0))


def interval_text(months: int, days: int, us: int) -> str:
    """An interval as PostgreSQL prints it with IntervalStyle=postgres."""
    years = int(months / 12)  # C division: truncation toward zero
    mons = months - years * 12
    parts: list[str] = []
    before = False  # the previous field was negative (PostgreSQL then shows '+' on the next positive one)
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value == 0:
            continue
        parts.append(f"{'+' if before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
        before = value < 0
    if not parts or us != 0:
        sign = "-" if us < 0 else ("+" if before else "")
        parts.append(sign + _clock_text(abs(us)))
    return " ".join(parts)

_PACK_I8 = struct.Struct(">q").pack


def _small_date(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_date32(plain.type):
        return None
    days: list[int | None] = plain.view(pa.int32()).to_pylist()
    if not binary:
        return [None if d is None else _date_text(d) for d in days]
    return _packed([None if d is None else _INT32_MAX if d == _DATE_INFINITY else
                    _DATE_NINFINITY_PG if d <= _DATE_NINFINITY_DUCKDB else d - _PG_EPOCH_DAYS for d in days],
                   ">i", -(2**31), _INT32_MAX)


def _small_time(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_time(plain.type):
        return None
    values = _time_us_values(plain)
    if binary:
        return _packed(values, ">q", _INT64_MIN, _INT64_MAX)
    if any(us is not None and not 0 <= us <= _US_PER_DAY for us in values):
        return None
    return [None if us is None else _clock_text(us).encode() for us in values]


def _small_timestamp(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    if not pa.types.is_timestamp(plain.type):
        return None
    with_tz = pgtype.name == "timestamptz"
    unit = plain.type.unit
    out: list[bytes | None] = []
    for raw in plain.view(pa.int64()).to_pylist():
        if raw is None:
            out.append(None)
            continue
        us, pos_inf, neg_inf = _timestamp_us(raw, unit)
        pg = _INT64_MAX if pos_inf else _INT64_MIN if neg_inf else us - _PG_EPOCH_US
        if not (_INT64_MIN <= us <= _INT64_MAX and _INT64_MIN <= pg <= _INT64_MAX):
            return None  # wraps around in the kernel's int64 arithmetic; leave that to it
        out.append(_PACK_I8(pg) if binary else _timestamp_text(us, pos_inf, neg_inf, with_tz))
    return out


def _small_interval(arr: pa.Array, binary: bool, pgtype: PgType) -> list[bytes | None] | None:
    plain = _unwrap(arr)
    t = plain.type
    parts: list[tuple[int, int, int] | None]
    if pa.types.is_duration(t):
        parts = [None if r is None else (0, 0, _to_us(r, t.unit)) for r in plain.view(pa.int64()).to_pylist()]
    elif t == pa.month_day_nano_interval():
        parts = [None if v is None else (v.months, v.days, _ns_to_us_toward_zero(v.nanoseconds))
                 for v in plain.to_pylist()]
    else:
        return None
    if any(p is not None and not _INT64_MIN <= p[2] <= _INT64_MAX for p in parts):
        return None
    if binary:
        return [None if p is None else struct.pack(">qii", p[2], p[1], p[0]) for p in parts]
    return [None if p is None else interval_text(*p).encode() for p in parts]



_UTC = dt.UTC
_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_EPOCH_DATETIME = dt.datetime(2000, 1, 1)


_DATE_RE = r"(?P<year>\d{4,})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
_TIME_RE = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
_ZONE_RE = r"(?P<zone>[zZ]|UTC|GMT|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)"
_DATE_TEXT = re.compile(rf"^\s*{_DATE_RE}(?:[ T]+{_TIME_RE}\s*{_ZONE_RE}?)?(?P<bc>\s+BC)?\s*$", re.IGNORECASE)
_TIMESTAMP_TEXT = re.compile(rf"^\s*{_DATE_RE}(?:[ T]+{_TIME_RE})?\s*{_ZONE_RE}?(?P<bc>\s+BC)?\s*$", re.IGNORECASE)
_TIME_TEXT = re.compile(rf"^\s*{_TIME_RE}\s*{_ZONE_RE}?\s*$", re.IGNORECASE)
_SPECIAL_DATES = ("infinity", "-infinity", "+infinity")


def _fraction_us(fraction: str | None) -> int:
    if not fraction:
        return 0
    # PostgreSQL rounds to microseconds; so does this (half away from zero on the 7th digit).
    return int(Decimal("0." + fraction).quantize(Decimal("0.000001"), rounding="ROUND_HALF_UP") * 1_000_000)


def _relative_day(word: str) -> dt.date | None:
    today = dt.datetime.now(_UTC).date()
    return {"today": today, "tomorrow": today + dt.timedelta(days=1), "yesterday": today - dt.timedelta(days=1),
            "epoch": dt.date(1970, 1, 1)}.get(word)


def _text_date(data: bytes) -> object:
    text = _utf8(data, "date")
    word = text.strip().lower()
    if word in _SPECIAL_DATES:
        return word.lstrip("+")  # Python dates have no infinity; DuckDB casts the string
    relative = _relative_day(word)
    if relative is not None:
        return relative
    match = _DATE_TEXT.match(text)
    if not match:
        raise _bad("date", text)
    return _make_date(match, text, "date")


def _make_date(match: re.Match[str], text: str, type_name: str) -> object:
    year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
    bc = bool(match["bc"])
    out_of_range = ParameterFormatError(f'date/time field value out of range for type {type_name}: "{text.strip()}"')
    if year == 0:
        raise out_of_range
    try:
        # 2000 is a leap year, so this validates month and day for years Python cannot hold.
        check = dt.date(2000 if year > 9999 or bc else year, month, day)
    except ValueError:
        raise out_of_range from None
    if bc or year > 9999:
        if month == 2 and day == 29 and not _is_leap(1 - year if bc else year):
            raise out_of_range
        # Python's date cannot hold these; DuckDB parses its own spelling of them.
        return _duckdb_date_literal(_days_from_civil(match))
    return check


def _days_from_civil(match: re.Match[str]) -> int:
    """Days since 1970-01-01 of a matched (possibly BC or 5-digit-year) date."""
    year = int(match["year"])
    if match["bc"]:
        year = 1 - year
    month, day = int(match["month"]), int(match["day"])
    # Howard Hinnant's days_from_civil, valid for any proleptic Gregorian year.
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _duckdb_date_literal(days: int) -> str:
    """A date DuckDB parses, for days Python's date cannot hold ('0044-03-15 (BC)', '10000-01-01')."""
    text, bc = _date_parts_text(days)
    return text + (" (BC)" if bc else "")


def _duckdb_timestamp_literal(us: int, with_tz: bool) -> str:
    """A timestamp DuckDB parses for instants beyond Python's datetime (DuckDB puts '(BC)' after the date)."""
    days, tod = divmod(us, _US_PER_DAY)
    return f"{_duckdb_date_literal(days)} {_clock_text(tod)}{'+00' if with_tz else ''}"


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _time_parts(match: re.Match[str], text: str, type_name: str) -> int:
    hour, minute = int(match["hour"]), int(match["minute"])
    second = int(match["second"] or 0)
    us = _fraction_us(match["fraction"])
    total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + us
    if minute > 59 or second > 60 or total > _US_PER_DAY:
        raise ParameterFormatError(f'date/time field value out of range for type {type_name}: "{text.strip()}"')
    return total


def _zone_offset(zone: str | None) -> int | None:
    """UTC offset in seconds of a zone suffix, or None when there is none."""
    if not zone:
        return None
    if zone.upper() in ("Z", "UTC", "GMT"):
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    if len(digits) <= 2:
        hours, minutes, seconds = int(digits), 0, 0
    else:
        head = len(digits) - (4 if len(digits) > 4 else 2)
        hours = int(digits[:head])
        minutes = int(digits[head: head + 2])
        seconds = int(digits[head + 2:] or 0)
    return sign * (hours * 3600 + minutes * 60 + seconds)


def _text_time(data: bytes) -> object:
    text = _utf8(data, "time without time zone")
    match = _TIME_TEXT.match(text)
    if not match:
        raise _bad("time without time zone", text)
    us = _time_parts(match, text, "time without time zone")
    if us == _US_PER_DAY:
        return "24:00:00"
    return _time_from_us(us)


def _time_from_us(us: int, tz: dt.tzinfo | None = None) -> dt.time:
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro, tzinfo=tz)


def _text_timetz(data: bytes) -> object:
    text = _utf8(data, "time with time zone")
    match = _TIME_TEXT.match(text)
    if not match:
        raise _bad("time with time zone", text)
    us = _time_parts(match, text, "time with time zone")
    if us == _US_PER_DAY:
        raise ParameterFormatError(f'date/time field value out of range for type time with time zone: "{text}"')
    return _timetz_literal(us, _zone_offset(match["zone"]) or 0)


def _timetz_literal(us: int, offset: int) -> str:
    """A TIME WITH TIME ZONE literal for DuckDB, which rejects Python times with negative UTC offsets."""
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{_time_from_us(us).isoformat()}{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"


def _text_timestamp(with_tz: bool) -> Callable[[bytes], object]:
    type_name = "timestamp with time zone" if with_tz else "timestamp without time zone"

    def decode(data: bytes) -> object:
        text = _utf8(data, type_name)
        word = text.strip().lower()
        if word in _SPECIAL_DATES:
            return word.lstrip("+")
        if word == "now":
            now = dt.datetime.now(_UTC)
            return now if with_tz else now.replace(tzinfo=None)
        relative = _relative_day(word)
        if relative is not None:
            midnight = dt.datetime.combine(relative, dt.time())
            return midnight.replace(tzinfo=_UTC) if with_tz else midnight
        match = _TIMESTAMP_TEXT.match(text)
        if not match:
            raise _bad(type_name, text)
        day = _make_date(match, text, type_name)
        us = _time_parts(match, text, type_name) if match["hour"] else 0
        offset = _zone_offset(match["zone"]) if with_tz else None  # timestamp ignores a zone, as PG does
        if isinstance(day, str):  # beyond Python's datetime: a literal DuckDB parses
            offset_us = (offset or 0) * 1_000_000
            return _duckdb_timestamp_literal(_days_from_civil(match) * _US_PER_DAY + us - offset_us, with_tz)
        assert isinstance(day, dt.date)
        value = dt.datetime.combine(day, dt.time()) + dt.timedelta(microseconds=us)
        if not with_tz:
            return value
        value = value.replace(tzinfo=dt.timezone(dt.timedelta(seconds=offset or 0)))
        return value.astimezone(_UTC)

    return decode


_INTERVAL_UNITS: dict[str, tuple[str, int]] = {}
for _names, _field, _factor in (
    (("microsecond", "microseconds", "us", "usec", "usecs", "useconds"), "us", 1),
    (("millisecond", "milliseconds", "ms", "msec", "msecs", "mseconds"), "us", 1_000),
    (("second", "seconds", "s", "sec", "secs"), "us", 1_000_000),
    (("minute", "minutes", "m", "min", "mins"), "us", 60_000_000),
    (("hour", "hours", "h", "hr", "hrs"), "us", 3_600_000_000),
    (("day", "days", "d"), "days", 1),
    (("week", "weeks", "w"), "days", 7),
    (("month", "months", "mon", "mons"), "months", 1),
    (("year", "years", "y", "yr", "yrs"), "months", 12),
    (("decade", "decades"), "months", 120),
    (("century", "centuries"), "months", 1200),
    (("millennium", "millennia", "millenniums"), "months", 12000),
):
    for _name in _names:
        _INTERVAL_UNITS[_name] = (_field, _factor)

_INTERVAL_TOKEN = re.compile(
    r"\s*(?:(?P<clock>[+-]?\d+:\d+(?::\d+(?:\.\d*)?)?)"
    r"|(?P<yearmonth>[+-]?\d+-\d+)(?![\d.:])"
    r"|(?P<number>[+-]?(?:\d+\.?\d*|\.\d+))\s*(?P<unit>[a-zA-Z]+)?"
    r"|(?P<ago>ago\b))",
)
_ISO_INTERVAL = re.compile(
    r"^P(?:(?P<Y>-?[\d.]+)Y)?(?:(?P<M>-?[\d.]+)M)?(?:(?P<W>-?[\d.]+)W)?(?:(?P<D>-?[\d.]+)D)?"
    r"(?:T(?:(?P<h>-?[\d.]+)H)?(?:(?P<m>-?[\d.]+)M)?(?:(?P<s>-?[\d.]+)S)?)?$",
)


def parse_interval(text: str) -> tuple[int, int, int]:
    """(months, days, microseconds) of a PostgreSQL interval literal (postgres, verbose or ISO 8601 style)."""
    source = text.strip()
    if not source:
        raise ValueError("empty interval")
    months: Decimal = Decimal(0)
    days: Decimal = Decimal(0)
    us: Decimal = Decimal(0)

    def add(field: str, amount: Decimal) -> None:
        nonlocal months, days, us
        # Fractions spill downward as PostgreSQL does: months into 30-day days, days into 24-hour days.
        if field == "months":
            whole = int(amount)
            months += whole
            amount = (amount - whole) * 30
            field = "days"
        if field == "days":
            whole = int(amount)
            days += whole
            amount = (amount - whole) * _US_PER_DAY
            field = "us"
        us += amount

    iso = _ISO_INTERVAL.match(source.upper()) if source[:1] in "pP" else None
    if iso:
        for key, iso_field, multiplier in (("Y", "months", 12), ("M", "months", 1), ("W", "days", 7), ("D", "days", 1),
                                   ("h", "us", 3_600_000_000), ("m", "us", 60_000_000), ("s", "us", 1_000_000)):
            value = iso.group(key)
            if value is not None:
                add(iso_field, Decimal(value) * multiplier)
        return int(months), int(days), int(us.to_integral_value())
    if source.startswith("@"):
        source = source[1:]
    tokens: list[re.Match[str]] = []
    position = 0
    while source[position:].strip():
        match = _INTERVAL_TOKEN.match(source, position)
        if not match or match.end() == position:
            raise ValueError(text)
        tokens.append(match)
        position = match.end()
    negate = False
    seen = False
    for index, match in enumerate(tokens):
        if match["ago"]:
            negate = True
        elif match["clock"]:
            clock = match["clock"]
            sign = -1 if clock.startswith("-") else 1
            pieces = clock.lstrip("+-").split(":")
            hours, minutes = int(pieces[0]), int(pieces[1])
            seconds = Decimal(pieces[2]) if len(pieces) > 2 else Decimal(0)
            if minutes > 59 or seconds >= 60:
                raise ValueError(text)
            add("us", sign * ((hours * 60 + minutes) * 60 + seconds) * 1_000_000)
        elif match["yearmonth"]:  # SQL-standard year-month literal, '1-2' is 1 year 2 months
            sign = -1 if match["yearmonth"].startswith("-") else 1
            years, months_part = match["yearmonth"].lstrip("+-").split("-")
            if int(months_part) > 11:
                raise ValueError(text)
            add("months", Decimal(sign * (int(years) * 12 + int(months_part))))
        else:
            number = Decimal(match["number"])
            unit = match["unit"]
            if unit is None:
                # A bare number is seconds, except right before a time of day ('3 04:05:06'), where it is days.
                followed_by_clock = index + 1 < len(tokens) and tokens[index + 1]["clock"] is not None
                unit = "day" if followed_by_clock else "second"
            unit = unit.lower()
            if unit not in _INTERVAL_UNITS:
                raise ValueError(text)
            field, factor = _INTERVAL_UNITS[unit]
            add(field, number * Decimal(factor))
        seen = True
    if not seen:
        raise ValueError(text)
    sign = -1 if negate else 1
    return sign * int(months), sign * int(days), sign * int(us.to_integral_value())


def _interval_value(months: int, days: int, us: int) -> object:
    """A timedelta when the interval has no months (exact); else a string DuckDB casts exactly."""
    if months == 0:
        return dt.timedelta(days=days, microseconds=us)
    return f"{months} months {days} days {us} microseconds"


def _text_interval(data: bytes) -> object:
    text = _utf8(data, "interval")
    try:
        months, days, us = parse_interval(text)
    except (ValueError, ArithmeticError):
        raise _bad("interval", text) from None
    _check_interval_range(months, days, us)
    return _interval_value(months, days, us)


def _check_interval_range(months: int, days: int, us: int) -> None:
    if not (-(2**31) <= months < 2**31 and -(2**31) <= days < 2**31 and _INT64_MIN <= us <= _INT64_MAX):
        raise ParameterFormatError("interval out of range")


def _binary_date(data: bytes) -> object:
    _binary_length(data, 4, "date")
    days = struct.unpack("!i", data)[0]
    if days == _DATE_INFINITY:
        return "infinity"
    if days == _DATE_NINFINITY_PG:
        return "-infinity"
    try:
        return _PG_EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        return _duckdb_date_literal(days + _PG_EPOCH_DAYS)


def _binary_time(data: bytes) -> object:
    _binary_length(data, 8, "time without time zone")
    us = struct.unpack("!q", data)[0]
    if not 0 <= us <= _US_PER_DAY:
        raise ParameterFormatError("time out of range")
    return "24:00:00" if us == _US_PER_DAY else _time_from_us(us)


def _binary_timetz(data: bytes) -> object:
    _binary_length(data, 12, "time with time zone")
    us, zone = struct.unpack("!qi", data)
    if not 0 <= us < _US_PER_DAY or not -_TIMETZ_MAX_OFFSET <= zone <= _TIMETZ_MAX_OFFSET:
        raise ParameterFormatError("time with time zone out of range")
    return _timetz_literal(us, -zone)


def _binary_timestamp(with_tz: bool) -> Callable[[bytes], object]:
    type_name = "timestamp with time zone" if with_tz else "timestamp without time zone"

    def decode(data: bytes) -> object:
        _binary_length(data, 8, type_name)
        us = struct.unpack("!q", data)[0]
        if us == _INT64_MAX:
            return "infinity"
        if us == _INT64_MIN:
            return "-infinity"
        try:
            value = _PG_EPOCH_DATETIME + dt.timedelta(microseconds=us)
        except OverflowError:
            return _duckdb_timestamp_literal(us + _PG_EPOCH_US, with_tz)
        return value.replace(tzinfo=_UTC) if with_tz else value

    return decode


def _binary_interval(data: bytes) -> object:
    _binary_length(data, 16, "interval")
    us, days, months = struct.unpack("!qii", data)
    return _interval_value(months, days, us)
