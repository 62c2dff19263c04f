"""PostgreSQL's rules for the values of two kinds of settings: durations with units, and identifier lists.

Durations (`statement_timeout`, `lock_timeout`, the idle timeouts) are integers of milliseconds that
PostgreSQL reads with a unit (`'1.5s'`, `'2min'`, `'250us'`, `'0x10'`) and shows in the largest unit
that divides them (`60000` -> `1min`); `parse_duration` and `show_duration` follow guc.c's
`parse_int` and `_ShowOption`, refusals and hints included. `search_path` is a list of identifiers
(`SplitIdentifierString`): quoted names keep their case, `"$user"` stands for the session's user.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import duckdb

INT_MAX = 2**31 - 1

# guc.c's memory-free time units for a setting whose base unit is ms, largest first.
_MS_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1))
_MS_INPUT_UNITS = {**dict(_MS_UNITS), "us": 0.001}
# The duration settings sessions may set, whose base unit is the millisecond.
DURATION_SETTINGS = frozenset({
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout",
})
UNITS_HINT = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'

_STRTOL = re.compile(r"\s*[+-]?(?:0[xX][0-9a-fA-F]+|[1-9][0-9]*|0[0-7]*)")
_STRTOD = re.compile(r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE)


class InvalidSetting(ValueError):
    """A value PostgreSQL refuses for a setting: the message and hint it gives."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def _c_integer(text: str) -> int:
    sign = -1 if text.lstrip().startswith("-") else 1
    digits = text.strip().lstrip("+-")
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits[2:], 16)
    if digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits)


def parse_duration(name: str, value: str, *, minimum: int = 0, maximum: int = INT_MAX) -> int:
    """Milliseconds of a duration setting's value, read as PostgreSQL's parse_int reads it (C strtol/strtod)."""

    def invalid(hint: str | None = None) -> InvalidSetting:
        return InvalidSetting(f'invalid value for parameter "{name}": "{value}"', hint)

    number: float
    match = _STRTOL.match(value)
    end = match.end() if match else 0
    number = _c_integer(match.group()) if match else 0
    if value[end:end + 1] in (".", "e", "E") or (match and abs(number) > 2**63 - 1):
        match = _STRTOD.match(value)
        end = match.end() if match else 0
        number = float(match.group()) if match else 0
    if match is None or math.isnan(number):
        raise invalid()
    rest = value[end:].strip()
    if rest:
        multiplier = _MS_INPUT_UNITS.get(rest)
        if multiplier is None:
            raise invalid(UNITS_HINT)
        number = number * multiplier
    if math.isinf(number) or abs(number) > INT_MAX + 0.5:
        raise invalid("Value exceeds integer range.")
    result = round(number)  # C rint(): halves go to the even neighbour, as Python's round()
    if result > INT_MAX or result < -INT_MAX - 1:
        raise invalid("Value exceeds integer range.")
    if not minimum <= result <= maximum:
        raise InvalidSetting(f'{result} ms is outside the valid range for parameter "{name}" ({minimum} .. {maximum})')
    return int(result)


def show_duration(milliseconds: int) -> str:
    """A duration as SHOW prints it: the largest unit that divides it, a bare number when not positive."""
    if milliseconds <= 0:
        return str(milliseconds)
    for unit, size in _MS_UNITS:
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"  # not reached: every integer is a whole number of ms


# --- identifier lists (search_path) --------------------------------------------------------------


def split_identifiers(name: str, value: str) -> list[str]:
    """The identifiers of a list setting, as SplitIdentifierString reads them (unquoted ones lower-cased)."""
    names: list[str] = []
    i, n = 0, len(value)
    while i < n and value[i].isspace():
        i += 1
    if i == n:
        return names  # an empty list is allowed
    while True:
        if i < n and value[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                close = value.find('"', i)
                if close < 0:
                    raise _list_syntax(name, value)
                chars.append(value[i:close])
                i = close + 1
                if value[i:i + 1] != '"':
                    break
                chars.append('"')
                i += 1
            ident = "".join(chars)  # `""` names no schema, and PostgreSQL accepts it (SET search_path = '')
        else:
            start = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            ident = value[start:i].lower()
            if not ident:
                raise _list_syntax(name, value)
        names.append(ident)
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return names
        if value[i] != ",":
            raise _list_syntax(name, value)
        i += 1
        while i < n and value[i].isspace():
            i += 1


def _list_syntax(name: str, value: str) -> InvalidSetting:
    return InvalidSetting(f'invalid value for parameter "{name}": "{value}"', "List syntax is invalid.")


@lru_cache(maxsize=1)
def _keywords() -> frozenset[str]:
    """Keywords quote_identifier must quote (all but the unreserved ones); DuckDB's grammar is PostgreSQL's."""
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'").fetchall()
    return frozenset(word for (word,) in rows)


def quote_identifier(ident: str) -> str:
    """PostgreSQL's quote_identifier: bare only for lower-case plain words that are not keywords."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", ident) and ident not in _keywords():
        return ident
    return '"' + ident.replace('"', '""') + '"'


def join_identifiers(idents: Sequence[str]) -> str:
    """A list setting's value as PostgreSQL shows it after SET (GUC_LIST_QUOTE)."""
    return ", ".join(quote_identifier(i) for i in idents)


@dataclass(frozen=True)
class SearchPath:
    """A session's search_path with `"$user"` expanded: the schemas unqualified names are looked up in."""

    schemas: tuple[str, ...]

    @classmethod
    def of(cls, value: str, user: str) -> SearchPath:
        """The path a `search_path` value names for `user` (a bad value names no schema, as PG ignores it)."""
        try:
            names = split_identifiers("search_path", value)
        except InvalidSetting:
            names = []
        expanded: list[str] = []
        for ident in names:
            schema = user if ident == "$user" else ident
            if schema not in expanded:
                expanded.append(schema)
        return cls(tuple(expanded))

    def existing(self, schemas: Sequence[str] | frozenset[str]) -> tuple[str, ...]:
        """The schemas of the path that exist, in order (what current_schemas(false) answers)."""
        return tuple(s for s in self.schemas if s in schemas)
