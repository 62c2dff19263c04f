"""COPY FROM STDIN benchmark: N typed rows into the engine host over the wire vs DuckDB in-process, side by side.

Run from the repository root:  .venv/bin/python -m bench.copy_load [--rows 1000000]

Starts `hd dev --demo --insecure-plaintext` in a temporary directory, creates a table of a few typed
columns (bigint, integer, double, numeric(12,2), text, timestamp) as the acme admin, and loads the same
N rows three ways, each timed on its own:

- psycopg 3 `cursor.copy("COPY ... FROM STDIN (FORMAT binary)")` with `set_types`, rows written with write_row;
- psycopg 3 `cursor.copy("COPY ... FROM STDIN")` in text format, the same rows pre-rendered as lines;
- in-process DuckDB: `INSERT INTO t SELECT * FROM arrow_table` from an Arrow table of the same rows
  (no wire, no governance: the floor the engine is measured against);
- the client's own floor: the same two psycopg COPYs against a server that answers the protocol and
  discards every CopyData (what psycopg and the socket cost before any server work).

It prints rows/s for each and the ratio of each COPY to the in-process insert, and checks that each
load stored N rows (a short load fails the run rather than report a rate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa

from tests.harness import start_engine_host

COLUMNS = "id bigint, qty integer, ratio double precision, amount numeric(12,2), label text, created timestamp"
TYPES = ["int8", "int4", "float8", "numeric", "text", "timestamp"]
BLOCK = 50_000


@dataclass
class Result:
    name: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _rows(start: int, count: int) -> list[tuple[object, ...]]:
    base = dt.datetime(2024, 1, 1)
    return [(i, i % 1000, i / 7, decimal.Decimal(i % 100000) / 100, f"label {i % 977}",
             base + dt.timedelta(seconds=i)) for i in range(start, start + count)]


def _text_block(rows: list[tuple[object, ...]]) -> bytes:
    return "".join(f"{a}\t{b}\t{c!r}\t{d}\t{e}\t{f.isoformat(' ')}\n" for a, b, c, d, e, f in rows).encode()


def _discarding_server() -> tuple[socket.socket, int]:
    """A PostgreSQL protocol server that accepts any login and any COPY FROM STDIN, and keeps nothing."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        def read(n: int) -> bytes:
            data = bytearray()
            while len(data) < n:
                part = conn.recv(min(n - len(data), 1 << 20))
                if not part:
                    raise ConnectionError
                data += part
            return bytes(data)

        def send(kind: bytes, body: bytes) -> None:
            conn.sendall(kind + struct.pack("!i", len(body) + 4) + body)

        with conn:
            read(struct.unpack("!i", read(4))[0] - 4)  # StartupMessage
            send(b"R", struct.pack("!i", 0))
            for name, value in (("server_version", "15.0"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
                                ("integer_datetimes", "on"), ("standard_conforming_strings", "on")):
                send(b"S", name.encode() + b"\0" + value.encode() + b"\0")
            send(b"K", struct.pack("!ii", 1, 1))
            send(b"Z", b"I")
            try:
                while True:
                    kind = read(1)
                    body = read(struct.unpack("!i", read(4))[0] - 4)
                    if kind == b"X":
                        return
                    if kind == b"Q":
                        binary = b"binary" in body.lower()
                        formats = struct.pack("!h", int(binary)) * len(TYPES)
                        send(b"G", struct.pack("!bh", int(binary), len(TYPES)) + formats)
                    elif kind == b"c":
                        send(b"C", b"COPY 0\0")
                        send(b"Z", b"I")
            except ConnectionError:
                return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def _prepared_copy(total: int, *, binary: bool) -> Callable[[psycopg.Cursor[Any], str], float]:
    """The rows built (text payloads encoded) before timing starts; the returned call COPYs them into a table
    through a cursor and gives the seconds it took. The engine and the discarding server get the same bytes."""
    blocks = [(_rows(s, min(BLOCK, total - s))) for s in range(0, total, BLOCK)]
    payloads = [] if binary else [_text_block(b) for b in blocks]

    def send(cur: psycopg.Cursor[Any], table: str) -> float:
        started = time.perf_counter()
        with cur.copy(f"COPY {table} FROM STDIN {'(FORMAT binary)' if binary else ''}") as copy:
            if binary:
                copy.set_types(TYPES)
                for block in blocks:
                    for row in block:
                        copy.write_row(row)
            for payload in payloads:
                copy.write(payload)
        return time.perf_counter() - started

    return send


def _client_floor(port: int, total: int, *, binary: bool) -> Result:
    """psycopg's COPY of the same rows to the discarding server: the client and socket cost alone."""
    send = _prepared_copy(total, binary=binary)
    with psycopg.connect(f"host=127.0.0.1 port={port} user=x dbname=x sslmode=disable", autocommit=True) as conn:
        with conn.cursor() as cur:
            seconds = send(cur, "t")
    return Result(f"client floor: the same COPY ({'binary' if binary else 'text'}) to a discarding server", total,
                  seconds)


def _copy(dsn: str, table: str, total: int, *, binary: bool) -> Result:
    send = _prepared_copy(total, binary=binary)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {table}")
        seconds = send(cur, table)
        stored = cur.execute(f"SELECT count(*) FROM {table}").fetchone()
    if stored != (total,):
        raise SystemExit(f"COPY ({'binary' if binary else 'text'}) stored {stored}, expected {total}")
    return Result(f"COPY FROM STDIN ({'binary' if binary else 'text'}, psycopg)", total, seconds)


def _in_process(total: int) -> Result:
    rows = _rows(0, total)
    arrow_table = pa.table({name: [r[i] for r in rows] for i, name in
                            enumerate(["id", "qty", "ratio", "amount", "label", "created"])})
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE t (id BIGINT, qty INTEGER, ratio DOUBLE, amount DECIMAL(12,2), label VARCHAR, "
                "created TIMESTAMP)")
    con.register("arrow_table", arrow_table)
    started = time.perf_counter()
    con.execute("INSERT INTO t SELECT * FROM arrow_table")
    seconds = time.perf_counter() - started
    assert con.execute("SELECT count(*) FROM t").fetchone() == (total,)
    con.close()
    return Result("DuckDB in-process INSERT ... SELECT * FROM arrow_table", total, seconds)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per load (default 1,000,000)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hd-copy-bench-") as state:
        host = start_engine_host(Path(state), "--demo", "--insecure-plaintext")
        try:
            dsn = host.demo_dsn("acme-admin")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE TABLE crm.copy_bench ({COLUMNS})")
            results = [_copy(dsn, "crm.copy_bench", options.rows, binary=True),
                       _copy(dsn, "crm.copy_bench", options.rows, binary=False)]
        finally:
            host.stop()
    listener, port = _discarding_server()
    try:
        results += [_client_floor(port, options.rows, binary=True), _client_floor(port, options.rows, binary=False)]
    finally:
        listener.close()
    floor = _in_process(options.rows)
    results.append(floor)
    print(f"{options.rows:,} rows of ({COLUMNS})")
    for result in results:
        ratio = floor.rate / result.rate if result.rate else float("inf")
        print(f"  {result.name:<68} {result.seconds:8.2f} s {result.rate:>12,.0f} rows/s"
              f"   in-process is {ratio:,.1f}x faster")
    return results


if __name__ == "__main__":
    main()
