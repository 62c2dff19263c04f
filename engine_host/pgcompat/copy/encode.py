"""COPY TO STDOUT: Arrow batches to the CopyData payloads PostgreSQL 15 sends, in text, csv or binary.

Values are the type table's own text or binary forms (pgcompat/types/encoding.py); this module adds
only what COPY puts around them, vectorised over whole batches with Arrow compute:

- text: CopyAttributeOutText's escapes (backslash, \\b \\f \\n \\r \\t \\v, and the delimiter),
  NULL as the NULL string, one line per row;
- csv: CopyAttributeOutCSV's quoting (a value holding the delimiter, the quote, CR or LF, a value
  equal to the NULL string, a lone `\\.` in a one-column copy, and FORCE_QUOTE columns), with quote
  and escape characters escaped inside quotes;
- binary: a tuple is an int16 field count, then per field an int32 length (-1 for NULL) and the
  value's binary form; the 19-byte signature and header go with the first tuple, the int16 -1
  trailer in a message of its own.

Like PostgreSQL, each row is one CopyData payload; a header line is one of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _typed_pc

from engine_host.pgcompat.copy.parse import STAR, CopyOptions
from engine_host.pgcompat.types.encoding import encode_column
from engine_host.pgcompat.types.table import PgType

pc: Any = _typed_pc

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_HEADER = BINARY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
BINARY_TRAILER = b"\xff\xff"

# CopyAttributeOutText: control characters with a letter escape (others go out as they are).
_TEXT_ESCAPES = (("\b", "\\b"), ("\f", "\\f"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\v", "\\v"))

# A payload is one row's bytes, or many rows' payloads as one BinaryArray (framed together by the wire).
Payloads = bytes | pa.Array


class CopyEncoder:
    """Encodes one COPY TO's rows; `start`, `encode` for each batch, then `finish`."""

    def __init__(self, names: Sequence[str], types: Sequence[PgType], options: CopyOptions):
        self.names = list(names)
        self.types = list(types)
        self.options = options
        self._header_pending = options.binary
        if options.csv:
            forced = options.force_quote
            if forced == STAR:
                self._forced = set(range(len(self.names)))
            else:
                unknown = [c for c in forced if c not in self.names]
                if unknown:
                    raise KeyError(unknown[0])
                self._forced = {i for i, n in enumerate(self.names) if n in forced}

    def start(self) -> list[Payloads]:
        """The header line, when one was asked for (binary's header goes out with the first row)."""
        if not self.options.header or self.options.binary:
            return []
        names = pa.array(self.names, pa.string())
        if self.options.csv:
            # PostgreSQL quotes a header name by the same rules as a value (not by FORCE_QUOTE).
            cells = [self._csv_column(names.slice(i, 1), forced=False) for i in range(len(self.names))]
        else:
            cells = [self._text_column(names.slice(i, 1)) for i in range(len(self.names))]
        return [self._join(cells, 1)]

    def encode(self, batch: pa.RecordBatch) -> list[Payloads]:
        """The payloads of one batch's rows."""
        n = batch.num_rows
        if n == 0:
            return []
        if self.options.binary:
            rows = self._binary_rows(batch)
            if self._header_pending:
                self._header_pending = False
                first = BINARY_HEADER + rows[0].as_py()
                return [first, rows.slice(1)] if n > 1 else [first]
            return [rows]
        cells = []
        for i, pgtype in enumerate(self.types):
            values = encode_column(batch.column(i), pgtype, False).view(pa.string())
            cells.append(self._csv_column(values, forced=i in self._forced) if self.options.csv
                         else self._text_column(values))
        return [self._join(cells, n)]

    def finish(self) -> list[Payloads]:
        """What follows the last row: binary's trailer (with the header, when no row came)."""
        if not self.options.binary:
            return []
        header, self._header_pending = (BINARY_HEADER if self._header_pending else b""), False
        return [header + BINARY_TRAILER]

    # --- text and csv -------------------------------------------------------------------------------

    def _text_column(self, values: pa.Array) -> pa.Array:
        """CopyAttributeOutText over a column; NULL becomes the NULL string unescaped."""
        delimiter = self.options.delimiter
        out = values
        if pc.any(pc.match_substring(out, "\\")).as_py():
            out = pc.replace_substring(out, "\\", "\\\\")
        for char, escape in _TEXT_ESCAPES:
            if pc.any(pc.match_substring(out, char)).as_py():
                out = pc.replace_substring(out, char, escape)
        if delimiter not in "\b\f\n\r\t\v" and pc.any(pc.match_substring(out, delimiter)).as_py():
            out = pc.replace_substring(out, delimiter, "\\" + delimiter)
        return out.fill_null(self.options.null)

    def _csv_column(self, values: pa.Array, *, forced: bool) -> pa.Array:
        """CopyAttributeOutCSV over a column; NULL becomes the NULL string, never quoted."""
        inner: pa.Array
        o = self.options
        if forced:
            quote = pc.is_valid(values)
        else:
            quote = pc.equal(values, o.null)
            for char in {o.delimiter, o.quote, "\n", "\r"}:
                quote = pc.or_(quote, pc.match_substring(values, char))
            if len(self.names) == 1:
                quote = pc.or_(quote, pc.equal(values, "\\."))
        quote = quote.fill_null(False)
        if not pc.any(quote).as_py():
            return values.fill_null(o.null)
        inner = values
        if o.escape != o.quote and pc.any(pc.match_substring(inner, o.escape)).as_py():
            inner = pc.replace_substring(inner, o.escape, o.escape + o.escape)
        if pc.any(pc.match_substring(inner, o.quote)).as_py():
            inner = pc.replace_substring(inner, o.quote, o.escape + o.quote)
        quoted = pc.binary_join_element_wise(o.quote, inner, o.quote, "")
        return pc.if_else(quote, quoted, values).fill_null(o.null)

    def _join(self, cells: list[pa.Array], n: int) -> pa.Array:
        line: pa.Array
        if not cells:
            line = pa.array([""] * n, pa.string())
        else:
            line = cells[0] if len(cells) == 1 else pc.binary_join_element_wise(*cells, self.options.delimiter)
        return pc.binary_join_element_wise(line, pa.array(["\n"] * n, pa.string()), "").view(pa.binary())

    # --- binary -------------------------------------------------------------------------------------

    def _binary_rows(self, batch: pa.RecordBatch) -> pa.Array:
        """Each row's tuple: int16 field count, then per field its int32 length (-1: NULL) and bytes."""
        n = batch.num_rows
        pieces: list[pa.Array] = [_fixed(np.full(n, len(self.types), dtype=">i2").view(np.uint8).reshape(n, 2))]
        for i, pgtype in enumerate(self.types):
            values = encode_column(batch.column(i), pgtype, True)
            lengths = pc.binary_length(values).fill_null(-1).to_numpy(zero_copy_only=False).astype(">i4")
            pieces.append(_fixed(lengths.view(np.uint8).reshape(n, 4)))
            pieces.append(values.fill_null(b"") if values.null_count else values)
        binary = [p if p.type == pa.binary() else p.cast(pa.binary()) for p in pieces]
        return pc.binary_join_element_wise(*binary, b"")


def _fixed(matrix: np.ndarray) -> pa.Array:
    """An (n, w) uint8 matrix as a BinaryArray of n values of w bytes each."""
    n, width = matrix.shape
    data = pa.py_buffer(np.ascontiguousarray(matrix).tobytes())
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, data])
    return fixed.cast(pa.binary())
