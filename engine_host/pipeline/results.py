"""What a statement hands back to the wire layer: columns, a row source and a command tag."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from engine_host.engine.duckdb_engine import EngineSession, ResultStream
from engine_host.pgcompat.types.table import PgType


def format_code(formats: Sequence[int], index: int) -> int:
    """The format (0 text, 1 binary) of value `index`: none listed means text, one applies to all."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


@dataclass(frozen=True)
class ResultColumn:
    """One result column: its name and the Postgres type it is sent as."""

    name: str
    pgtype: PgType


class RowSource:
    """Reads a result in pieces of at most N rows, keeping the remainder of a batch for the next read."""

    def __init__(self, stream: ResultStream, on_close: Callable[[], None] | None = None):
        self._stream = stream
        self._pending: pa.RecordBatch | None = None
        self._done = False
        self._on_close = on_close

    @property
    def exhausted(self) -> bool:
        return self._done

    def read(self, limit: int | None = None) -> pa.RecordBatch | None:
        """Up to `limit` rows (None: one whole batch), or None once the result is used up. Blocking."""
        if self._done:
            return None
        batch = self._pending
        self._pending = None
        while batch is None or batch.num_rows == 0:
            batch = self._stream.next_batch()
            if batch is None:
                self.close()
                return None
        if limit is not None and batch.num_rows > limit:
            self._pending = batch.slice(limit)
            batch = batch.slice(0, limit)
        return batch

    def at_end(self) -> bool:
        """Whether no rows remain, reading one batch ahead if needed. Blocking."""
        if self._done:
            return True
        while self._pending is None or self._pending.num_rows == 0:
            self._pending = self._stream.next_batch()
            if self._pending is None:
                self.close()
                return True
        return False

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._pending = None
            self._stream.close()
            if self._on_close is not None:
                self._on_close()


@dataclass
class Outcome:
    """The result of executing one statement."""

    tag: str
    columns: list[ResultColumn] | None = None
    rows: RowSource | None = None
    # "SELECT", "INSERT 0", "FETCH"...: the tag is `f"{row_tag} {count}"` once the rows are sent.
    row_tag: str | None = None
    notices: list[str] = field(default_factory=list)
    parameter_status: list[tuple[str, str]] = field(default_factory=list)

    def command_tag(self, rows_sent: int) -> str:
        return f"{self.row_tag} {rows_sent}" if self.row_tag else self.tag


@dataclass
class SqlCursor:
    """A cursor opened with DECLARE: its own DuckDB connection, so FETCH can interleave with other statements."""

    name: str
    columns: list[ResultColumn]
    rows: RowSource
    engine: EngineSession
    binary: bool = False

    def close(self) -> None:
        self.rows.close()
        self.engine.close()
