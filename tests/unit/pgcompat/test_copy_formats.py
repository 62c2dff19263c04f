"""COPY's formats: what the encoder writes, the decoder reads back, whatever the chunking."""

from __future__ import annotations

import pyarrow as pa
import pytest

from engine_host.pgcompat.copy import decode as decode_module
from engine_host.pgcompat.copy.decode import CopyDecoder
from engine_host.pgcompat.copy.encode import BINARY_HEADER, CopyEncoder
from engine_host.pgcompat.copy.parse import CopyOptions, CopyRefused, parse_copy
from engine_host.pgcompat.types.table import pg_type_for_duckdb

TYPES = [pg_type_for_duckdb("INTEGER"), pg_type_for_duckdb("VARCHAR")]
BATCH = pa.record_batch([pa.array([1, None, 3, *range(4, 40)], pa.int32()),
                         pa.array(["a\tb\\c\nd", None, ""] + [f"v{i}" for i in range(4, 40)], pa.string())],
                        names=["id", "label"])


def _payloads(options: CopyOptions) -> list[bytes]:
    encoder = CopyEncoder(["id", "label"], TYPES, options)
    out: list[bytes] = []
    for part in encoder.start() + encoder.encode(BATCH) + encoder.finish():
        out.extend([part] if isinstance(part, bytes) else part.to_pylist())
    return out


def test_text_escapes_and_nulls_as_postgres_writes_them():
    rows = _payloads(CopyOptions())
    assert rows[:3] == [b"1\ta\\tb\\\\c\\nd\n", b"\\N\t\\N\n", b"3\t\n"]


def test_csv_quotes_values_that_need_it_and_the_empty_string():
    rows = _payloads(parse_copy("COPY t TO STDOUT (FORMAT csv, HEADER)").options)
    assert rows[:4] == [b"id,label\n", b'1,"a\tb\\c\nd"\n', b",\n", b'3,""\n']


def test_binary_header_goes_with_the_first_row_and_the_trailer_alone():
    rows = _payloads(CopyOptions(format="binary"))
    assert rows[0].startswith(BINARY_HEADER) and rows[-1] == b"\xff\xff"
    assert rows[1] == b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff"  # two NULL fields


@pytest.mark.parametrize("statement", ["COPY t FROM STDIN", "COPY t FROM STDIN (FORMAT csv, HEADER)",
                                       "COPY t FROM STDIN (FORMAT binary)"])
@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_decoder_reads_back_what_the_encoder_wrote_in_any_pieces(statement, piece, monkeypatch):
    monkeypatch.setattr(decode_module, "CHUNK_BYTES", 64)  # many chunks, rows split across CopyData
    options = parse_copy(statement).options
    data = b"".join(_payloads(CopyOptions(**{**options.__dict__})))
    decoder = CopyDecoder(["id", "label"], TYPES, options)
    chunks = []
    for start in range(0, len(data), piece):
        if (got := decoder.feed(data[start:start + piece])) is not None:
            chunks.append(got)
    if (got := decoder.finish()) is not None:
        chunks.append(got)
    ids = [v for chunk in chunks for v in chunk[0].to_pylist()]
    labels = [v for chunk in chunks for v in chunk[1].to_pylist()]
    assert [None if v is None else int(v) for v in ids] == BATCH.column(0).to_pylist()
    assert labels == BATCH.column(1).to_pylist()


def test_a_short_row_is_refused_with_22P04():
    decoder = CopyDecoder(["id", "label"], TYPES, CopyOptions())
    with pytest.raises(CopyRefused) as raised:
        decoder.feed(b"1\n")
        decoder.finish()
    assert raised.value.sqlstate == "22P04" and "label" in raised.value.message


def test_end_of_data_marker_ends_the_text_input():
    decoder = CopyDecoder(["id", "label"], TYPES, CopyOptions())
    decoder.feed(b"1\tx\n\\.\n2\ty\n")
    columns = decoder.finish()
    assert columns is not None and columns[0].to_pylist() == ["1"]
