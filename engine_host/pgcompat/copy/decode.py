"""COPY FROM STDIN: CopyData bytes in text, csv or binary to Arrow columns, a bounded chunk at a time.

Input arrives in pieces that split rows anywhere. A decoder keeps the incomplete tail and hands
back whole rows once at least CHUNK_BYTES have come (or at the end), so a load of any size holds
one chunk in memory. Text and csv rows are split by pyarrow.csv (vectorised); text's backslash
escapes are undone only in the values that hold one. Values come out as strings the engine casts
to the column's type where DuckDB reads PostgreSQL's text form the same way (numbers, dates,
times, timestamps, uuids, booleans, text, json); other types (bytea, arrays, intervals, bit
strings) and every binary-format value go through the type table's parameter decoders
(pgcompat/types/decoding.py), which already read exactly what PostgreSQL sends.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc
import pyarrow.csv as pacsv

from engine_host.pgcompat.copy.binary_rows import field_width, split_rows, vectorised_column
from engine_host.pgcompat.copy.encode import BINARY_SIGNATURE
from engine_host.pgcompat.copy.parse import CopyOptions, CopyRefused
from engine_host.pgcompat.copy.text_input import CHECKED, checked_column
from engine_host.pgcompat.types.decoding import decode_parameter
from engine_host.pgcompat.types.parameter_format import ParameterFormatError
from engine_host.pgcompat.types.table import PgType

pc: Any = _typed_pc

CHUNK_BYTES = 4 * 1024 * 1024

# Types whose text the engine casts: those in text_input.CHECKED once checked by PostgreSQL's input rules,
# the others (text, json) as they are.
_CAST_IN_ENGINE = frozenset({
    "int2", "int4", "int8", "oid", "float4", "float8", "numeric", "text", "varchar", "bpchar", "name", "char",
    "date", "time", "timestamp", "timestamptz", "uuid", "json", "jsonb", "bool",
})


def bad_copy_data(message: str, hint: str | None = None) -> CopyRefused:
    return CopyRefused("22P04", "HD_ERR_COPY_DATA", message, hint)


class CopyDecoder:
    """Turns the bytes of one COPY FROM into chunks of rows: one Arrow array per column."""

    def __init__(self, names: Sequence[str], types: Sequence[PgType], options: CopyOptions, *,
                 engine_types: Sequence[str] = (), table: str = "stdin"):
        self.names = list(names)
        self.types = list(types)
        self.engine_types = list(engine_types) or [t.name for t in self.types]  # DECIMAL(p,s): numeric's typmod
        self.table = table
        self.options = options
        self._buffer = bytearray()
        self._ended = False  # an end marker (text/csv `\.`, binary trailer) was read: the rest is ignored
        self._header_left = options.header and not options.binary
        self._binary_header_read = False
        self._widths = [field_width(t) for t in self.types]
        self.lines = 0

    def feed(self, data: bytes) -> list[pa.Array] | None:
        """Add input; whole rows once a chunk's worth is buffered, else None."""
        if self._ended:
            return None
        self._buffer += data
        if len(self._buffer) < CHUNK_BYTES:
            return None
        return self._take(final=False)

    def finish(self) -> list[pa.Array] | None:
        """The rows still buffered at CopyDone; 22P04 if the input ends inside a row."""
        if self._ended and not self._buffer:
            return None
        return self._take(final=True)

    def _take(self, *, final: bool) -> list[pa.Array] | None:
        if self.options.binary:
            return self._take_binary(final)
        return self._take_lines(final)

    # --- text and csv ----------------------------------------------------------------------------

    def _take_lines(self, final: bool) -> list[pa.Array] | None:
        buffer = self._buffer
        end = len(buffer) if final else self._record_end(buffer)
        if end <= 0:
            return None
        chunk = bytes(buffer[:end])
        del buffer[:end]
        marker = _END_MARKER.search(chunk) if b"\\." in chunk else None  # a regex scan only where one may be
        if marker is not None:  # `\.` alone on a line ends the data
            chunk = chunk[:marker.start() + (1 if chunk[marker.start():marker.start() + 1] == b"\n" else 0)]
            self._ended = True
            buffer.clear()
        if self._header_left:
            newline = chunk.find(b"\n")
            header, chunk = (chunk, b"") if newline == -1 else (chunk[:newline], chunk[newline + 1:])
            self._header_left = False
            self.lines += 1
            if self.options.header_match:
                self._match_header(header)
        if not chunk.strip(b"\r\n") and not chunk:
            return None
        if final and chunk and not chunk.endswith(b"\n"):
            chunk += b"\n"
        if not chunk:
            return None
        columns = self._csv(chunk) if self.options.csv else self._text(chunk)
        self.lines += len(columns[0]) if columns else chunk.count(b"\n")
        return columns

    def _record_end(self, buffer: bytearray) -> int:
        """Where the last whole row of `buffer` ends (0: none yet)."""
        if not self.options.csv:
            return buffer.rfind(b"\n") + 1
        data = np.frombuffer(buffer, dtype=np.uint8)
        newlines = np.flatnonzero(data == 10)
        if len(newlines) == 0:
            return 0
        quote, escape = ord(self.options.quote), ord(self.options.escape)
        if quote == escape:  # a doubled quote keeps the count even: outside quotes where the count is even
            inside = np.cumsum(data == quote)[newlines] % 2 == 1
            outside = newlines[~inside]
            return int(outside[-1]) + 1 if len(outside) else 0
        last, quoted, i = 0, False, 0
        raw = bytes(buffer)
        while i < len(raw):
            c = raw[i]
            if quoted and c == escape and i + 1 < len(raw):
                i += 2
                continue
            if c == quote:
                quoted = not quoted
            elif c == 10 and not quoted:
                last = i + 1
            i += 1
        return last

    def _match_header(self, header: bytes) -> None:
        line = header.rstrip(b"\r").decode("utf-8", "replace")
        if self.options.csv:
            row = pacsv.read_csv(io.BytesIO(line.encode() + b"\n"), read_options=self._read_options(),
                                 parse_options=self._csv_parse(), convert_options=self._all_strings(False))
            got = [row.column(i)[0].as_py() for i in range(row.num_columns)]
        else:
            got = [_unescape(v) for v in line.split(self.options.delimiter)]
        if len(got) != len(self.names):
            raise bad_copy_data(f"wrong number of fields in header line: got {len(got)}, expected {len(self.names)}")
        for i, (name, expected) in enumerate(zip(got, self.names, strict=True)):
            if name != expected:
                raise bad_copy_data(f'column name mismatch in header line field {i + 1}: got "{name}", '
                                    f'expected "{expected}"')

    def _read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(column_names=[f"c{i}" for i in range(len(self.names))], use_threads=False,
                                 block_size=CHUNK_BYTES * 2)

    def _csv_parse(self) -> pacsv.ParseOptions:
        o = self.options
        return pacsv.ParseOptions(delimiter=o.delimiter, quote_char=o.quote, double_quote=o.escape == o.quote,
                                  escape_char=o.escape if o.escape != o.quote else False,
                                  newlines_in_values=True, ignore_empty_lines=False)

    def _all_strings(self, nulls: bool) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(column_types={f"c{i}": pa.string() for i in range(len(self.names))},
                                    null_values=[self.options.null] if nulls else [],
                                    strings_can_be_null=nulls, quoted_strings_can_be_null=False)

    def _csv(self, chunk: bytes) -> list[pa.Array]:
        table = self._read(chunk, self._csv_parse(), self._all_strings(True))
        out = []
        for i, name in enumerate(self.names):
            column = table.column(i).combine_chunks()
            if name in self.options.force_not_null:
                column = column.fill_null(self.options.null)
            if name in self.options.force_null:
                column = pc.if_else(pc.equal(column, self.options.null), pa.nulls(len(column), pa.string()), column)
            out.append(self._typed(column, i))
        return out

    def _text(self, chunk: bytes) -> list[pa.Array]:
        delimiter = self.options.delimiter.encode()
        escapes = b"\\" in chunk
        if (escapes and b"\\" + delimiter in chunk) or (b"\r" in chunk and b"\r" in chunk.replace(b"\r\n", b"")):
            return self._text_by_row(chunk)
        parse = pacsv.ParseOptions(delimiter=self.options.delimiter, quote_char=False, double_quote=False,
                                   escape_char=False, newlines_in_values=False, ignore_empty_lines=False)
        table = self._read(chunk, parse, self._all_strings(False))
        out = []
        for i in range(len(self.names)):
            raw = table.column(i).combine_chunks()
            values = raw
            if escapes:  # only a chunk holding a backslash needs a look at each value
                escaped = pc.match_substring(raw, "\\")
                if pc.any(escaped).as_py():
                    values = _unescape_where(raw, escaped)
            column = values
            if escapes or "\\" not in self.options.null:  # a NULL marker needs its backslash, if it has one
                is_null = pc.equal(raw, self.options.null)
                if pc.any(is_null).as_py():
                    column = pc.if_else(is_null, pa.nulls(len(values), pa.string()), values)
            out.append(self._typed(column, i))
        return out

    def _text_by_row(self, chunk: bytes) -> list[pa.Array]:
        """Rows with an escaped delimiter or a lone CR: split in Python (rare)."""
        delimiter = self.options.delimiter
        lines = chunk.decode("utf-8", "strict").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        split = re.compile(r"(?<!\\)(?:\\\\)*" + re.escape(delimiter))
        columns: list[list[str | None]] = [[] for _ in self.names]
        for number, line in enumerate(lines, start=self.lines + 1):
            line = line.removesuffix("\r")
            if "\r" in line:
                raise bad_copy_data(f"literal carriage return found in data (line {number})",
                                    'Use "\\r" to represent carriage return.')
            fields, start = [], 0
            for m in split.finditer(line):
                fields.append(line[start:m.end() - len(delimiter)])
                start = m.end()
            fields.append(line[start:])
            self._check_width(len(fields), number)
            for i, value in enumerate(fields):
                columns[i].append(None if value == self.options.null else _unescape(value))
        return [self._typed(pa.array(values, pa.string()), i) for i, values in enumerate(columns)]

    def _check_width(self, got: int, line: int) -> None:
        if got < len(self.names):
            raise bad_copy_data(f'missing data for column "{self.names[got]}" (line {line})')
        if got > len(self.names):
            raise bad_copy_data(f"extra data after last expected column (line {line})")

    def _read(self, chunk: bytes, parse: pacsv.ParseOptions, convert: pacsv.ConvertOptions) -> pa.Table:
        try:
            return pacsv.read_csv(io.BytesIO(chunk), read_options=self._read_options(), parse_options=parse,
                                  convert_options=convert)
        except pa.ArrowInvalid as exc:
            m = re.search(r"Expected (\d+) columns, got (\d+)", str(exc))
            if m is not None:
                expected, got = int(m.group(1)), int(m.group(2))
                if got < expected:
                    raise bad_copy_data(f'missing data for column "{self.names[got]}"') from None
                raise bad_copy_data("extra data after last expected column") from None
            if "UTF8" in str(exc) or "utf" in str(exc).lower():
                raise _not_utf8() from None
            raise bad_copy_data("malformed COPY data (unterminated quoted field?)") from None

    def _typed(self, strings: pa.Array, i: int) -> pa.Array:
        """A column of PostgreSQL text forms as the engine receives it (strings, or decoded values)."""
        pgtype = self.types[i]
        if pgtype.element is None and pgtype.name in CHECKED:
            first = self.lines + 1
            return checked_column(strings, pgtype, self.engine_types[i], self.names[i], lambda row: first + row,
                                  self.table)
        if pgtype.element is None and pgtype.name in _CAST_IN_ENGINE:
            return strings
        values = []
        for value in strings.to_pylist():
            values.append(None if value is None else self._decode(value.encode(), pgtype, False, i))
        return _python_array(values)

    def _decode(self, raw: bytes, pgtype: PgType, binary: bool, i: int) -> object:
        try:
            return decode_parameter(raw, pgtype.oid, binary)
        except ParameterFormatError as exc:
            raise CopyRefused("22P02", "HD_ERR_COPY_DATA", f'column "{self.names[i]}": {exc}') from None

    # --- binary --------------------------------------------------------------------------------------

    def _take_binary(self, final: bool) -> list[pa.Array] | None:
        data = self._buffer
        pos = 0
        if not self._binary_header_read:
            if len(data) < 19:
                if final:
                    raise bad_copy_data("COPY file signature not recognized")
                return None
            if bytes(data[:11]) != BINARY_SIGNATURE:
                raise bad_copy_data("COPY file signature not recognized")
            flags, extension = struct.unpack_from("!iI", data, 11)
            if flags & 0x10000:
                raise bad_copy_data("COPY with OIDs is not supported")
            if len(data) < 19 + extension:
                return None
            pos = 19 + extension
            self._binary_header_read = True
        snapshot = bytes(data)  # numpy reads an immutable copy; the bytearray stays resizable
        rows = split_rows(snapshot, pos, self._widths)
        columns: list[pa.Array] = []
        if rows.count:
            for i in range(len(self.types)):
                column = vectorised_column(snapshot, rows.offsets[i], rows.lengths[i], self.types[i])
                if column is None:
                    column = self._exact_column(snapshot, rows.offsets[i], rows.lengths[i], i)
                columns.append(column)
            pos = rows.end
        pos, rest = self._binary_rows_exactly(snapshot, pos)
        del data[:pos]
        if final and data:
            raise bad_copy_data("unexpected EOF in COPY data")
        if rest and rest[0]:  # rows the vectorised split left (it stops where a row is not well formed)
            if columns:
                rest = [c.to_pylist() + values for c, values in zip(columns, rest, strict=True)]
            return [_python_array(values) for values in rest]
        return columns or None

    def _exact_column(self, data: bytes, offsets: np.ndarray, lengths: np.ndarray, i: int) -> pa.Array:
        """One column of split rows, decoded value by value (types and values the vectorised reader leaves)."""
        pgtype = self.types[i]
        return _python_array([None if size < 0 else self._decode(data[at:at + size], pgtype, True, i)
                              for at, size in zip(offsets.tolist(), lengths.tolist(), strict=True)])

    def _binary_rows_exactly(self, data: bytes, pos: int) -> tuple[int, list[list[object]]]:
        """Rows from `pos` read one value at a time: the trailer, a row cut short, or PostgreSQL's refusal."""
        count = len(self.types)
        columns: list[list[object]] = [[] for _ in range(count)]
        n = len(data)
        unpack_short, unpack_int = struct.Struct("!h").unpack_from, struct.Struct("!i").unpack_from
        while pos + 2 <= n:
            fields = unpack_short(data, pos)[0]
            if fields == -1:
                self._ended = True
                return n, columns
            if fields != count:
                raise bad_copy_data(f"row field count is {fields}, expected {count}")
            at = pos + 2
            values: list[object] = []
            for i in range(count):
                if at + 4 > n:
                    break
                size = unpack_int(data, at)[0]
                at += 4
                if size == -1:
                    values.append(None)
                    continue
                if size < 0:
                    raise bad_copy_data("invalid field size")
                if at + size > n:
                    break
                values.append(self._decode(data[at:at + size], self.types[i], True, i))
                at += size
            if len(values) < count:
                break  # the row continues in the next CopyData
            for i, value in enumerate(values):
                columns[i].append(value)
            pos = at
        return pos, columns


def _not_utf8() -> CopyRefused:
    return CopyRefused("22021", "HD_ERR_COPY_DATA", 'invalid byte sequence for encoding "UTF8"')


_END_MARKER = re.compile(rb"(?:^|\n)\\\.\r?(?:\n|$)")
_TEXT_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_LETTERS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape(value: str) -> str:
    """CopyReadAttributesText's de-escaping: \\b \\f \\n \\r \\t \\v, octal, \\x hex, else the character.

    Octal and hex escapes are bytes, as in PostgreSQL: `\\303\\251` is the two bytes of UTF-8 é, and a
    value whose bytes are not valid UTF-8 (or hold NUL) is refused with 22021, as PostgreSQL refuses it.
    """
    if "\\" not in value:
        return value

    def one(m: re.Match[bytes]) -> bytes:
        octal, hexa, other = m.groups()
        if octal is not None:
            return bytes([int(octal, 8) & 0xFF])
        if hexa is not None:
            return bytes([int(hexa, 16)])
        return _LETTERS.get(other, other)

    raw = _TEXT_ESCAPE.sub(one, value.encode())
    if b"\x00" in raw:
        raise CopyRefused("22021", "HD_ERR_COPY_DATA", 'invalid byte sequence for encoding "UTF8": 0x00')
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8() from None


def _unescape_where(raw: pa.Array, escaped: pa.Array) -> pa.Array:
    values = raw.to_pylist()
    for i in np.flatnonzero(escaped.fill_null(False).to_numpy(zero_copy_only=False)):
        value = values[i]
        if value is not None:  # an escaped value is never NULL (NULL is its own marker); checked for the type
            values[i] = _unescape(value)
    return pa.array(values, pa.string())


def _python_array(values: list[object]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):  # e.g. numeric Infinity
        return pa.array([None if v is None else str(v) for v in values], pa.string())
