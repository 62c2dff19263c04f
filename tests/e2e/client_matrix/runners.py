"""One runner per client: runs a case on one side (the engine host or PostgreSQL) and normalises the answer.

Each runner holds one connection per side for the whole module; a case's setup, statement, check and
teardown run on that same connection, in that order, so session state (SET, BEGIN, PREPARE) carries.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pg8000.dbapi
import pg8000.native
import psycopg

from tests.e2e.client_matrix.cases import DEMO_SCHEMAS, Case, Kind
from tests.e2e.client_matrix.outcome import Outcome, Result

Side = Literal["engine", "pg"]
SIDES: tuple[Side, ...] = ("engine", "pg")

_PLACEHOLDER = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class Endpoint:
    """Where one side listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    tls: bool

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(host=self.host, port=self.port, user=self.user, password=self.password,
                                              dbname=self.dbname, sslmode="require" if self.tls else "disable",
                                              connect_timeout=10)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the dev host's self-signed certificate; verification is tested in test_tls
        return ctx


# --- placeholders and COPY data ------------------------------------------------------------------


def positional(sql: str, params: Sequence[Any], marker: str) -> tuple[str, tuple[Any, ...]]:
    """`$n` placeholders as `%s`-style markers (psycopg, pg8000 dbapi), with the parameters in marker order.

    Without parameters the statement goes as written (`$1` inside PREPARE is the server's, not the client's).
    """
    if not params:
        return sql, ()
    order = [int(n) for n in _PLACEHOLDER.findall(sql)]
    return _PLACEHOLDER.sub(lambda _: marker, sql.replace("%", "%%")), tuple(params[n - 1] for n in order)


def named(sql: str, params: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """`$n` placeholders as `(:pn)` (pg8000 native, SQLAlchemy text()); parenthesised because SQLAlchemy takes
    `:p1::integer` for a literal colon, not a bind followed by a cast."""
    if not params:
        return sql, {}
    return _PLACEHOLDER.sub(lambda m: f"(:p{m.group(1)})", sql), {f"p{i}": v for i, v in enumerate(params, 1)}


def copy_data(rows: Sequence[tuple[Any, ...]], copy_format: str) -> bytes:
    """Rows in COPY's text or CSV format (NULL as \\N in text, as an unquoted empty field in CSV)."""
    if copy_format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
        return out.getvalue().encode()
    escape = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    lines = ("\t".join("\\N" if v is None else str(v).translate(escape) for v in row) for row in rows)
    return "".join(line + "\n" for line in lines).encode()


def copy_statement(case: Case, table: str) -> str:
    """The COPY a case stands for: its query or table out to STDOUT, or its table in from STDIN."""
    source = case.sql.replace("{t}", table)
    if case.kind is Kind.COPY_IN:
        return f"COPY {source} FROM STDIN (FORMAT {case.copy_format})"
    target = source if " " not in source else f"({source})"
    return f"COPY {target} TO STDOUT (FORMAT {case.copy_format})"


def copy_result(data: bytes, copy_format: str) -> Result:
    """COPY output as rows: one per line for text and CSV, the whole stream as one value for binary."""
    if copy_format == "binary":
        return Result(rows=((data,),))
    return Result(rows=tuple((line,) for line in data.decode().splitlines()))


def unpack(qualified: str) -> tuple[str, str]:
    schema, _, name = qualified.partition(".")
    return schema, name


# --- the runner shape ------------------------------------------------------------------------------


class Runner:
    """A client: its name, the case kinds it can run, and whether it binds parameters."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[Kind]] = frozenset({Kind.QUERY})
    binds: ClassVar[bool] = True

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        self.endpoints = endpoints

    @classmethod
    def supports(cls, case: Case) -> bool:
        return (case.kind in cls.kinds and (cls.binds or not case.params)
                and (case.clients is None or cls.name in case.clients))

    def run(self, side: Side, case: Case, table: str) -> Outcome:
        """Setup, the statement (and check), then teardown and the table's drop, on one side's connection."""
        sub: Callable[[str], str] = lambda sql: sql.replace("{t}", table)  # noqa: E731
        states = tuple(self.statement(side, sub(step), ()).sqlstate for step in case.setup)
        try:
            results = [self.perform(side, case, table)]
            if case.check is not None:
                results.append(self.statement(side, sub(case.check), ()))
        finally:
            cleanup = (*case.teardown, *((f"DROP TABLE IF EXISTS {table}",) if case.writes else ()))
            for step in cleanup:
                self.statement(side, sub(step), ())
        return Outcome(states, tuple(results))

    def perform(self, side: Side, case: Case, table: str) -> Result:
        """The case's own action; QUERY is a statement, other kinds are overridden where supported."""
        assert case.kind is Kind.QUERY, f"{self.name} was handed a {case.kind} case"
        return self.statement(side, case.sql.replace("{t}", table), case.params)

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        raise NotImplementedError

    def close(self) -> None:
        """Close both sides' connections."""


# --- psql ---------------------------------------------------------------------------------------------

_PSQL_SEPARATOR = "\x1f"
_PSQL_ERROR = re.compile(r"^psql:<stdin>:(\d+): ERROR:\s+([0-9A-Z]{5})", re.MULTILINE)


class PsqlSession:
    """One long-lived psql process reading a script from its stdin.

    Each compared statement's output goes to a file of its own (`\\o file`), and `\\warn` writes a mark
    to stderr, which psql does not buffer: once the mark is read, every line before it has run and its
    output file is closed. Errors are told apart by the script line psql names on stderr.
    """

    def __init__(self, endpoint: Endpoint, scratch: Path) -> None:
        env = {**os.environ, "PGPASSWORD": endpoint.password, "PGSSLMODE": "require" if endpoint.tls else "disable",
               "PGCONNECT_TIMEOUT": "10"}
        self.process = subprocess.Popen(
            ["psql", "-X", "-A", "-F", _PSQL_SEPARATOR, "-v", "VERBOSITY=sqlstate", "-h", endpoint.host,
             "-p", str(endpoint.port), "-U", endpoint.user, "-d", endpoint.dbname, "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.scratch = scratch
        self.lines_sent = 0
        self.marks = 0

    def run(self, lines: Sequence[str]) -> tuple[int, str]:
        """Send script lines; returns the line number before the first of them and psql's stderr for them."""
        assert self.process.stdin is not None and self.process.stderr is not None
        self.marks += 1
        mark = f"matrix-mark-{self.marks}"
        base = self.lines_sent
        script = [*lines, f"\\warn {mark}"]
        self.process.stdin.write(("\n".join(script) + "\n").encode())
        self.process.stdin.flush()
        self.lines_sent += len(script)
        errors = []
        while (line := self.process.stderr.readline()) and line.decode(errors="replace").strip() != mark:
            errors.append(line.decode(errors="replace"))
        if not line:
            raise RuntimeError("psql exited: " + "".join(errors))
        return base, "".join(errors)

    def output_file(self, name: str) -> Path:
        return self.scratch / name

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)


class PsqlRunner(Runner):
    """The psql binary, `-X -A -F`, one session per side; each statement's output compared as text, line by line."""

    name = "psql"
    kinds = frozenset({Kind.QUERY, Kind.COPY_OUT, Kind.COPY_IN, Kind.META})
    binds = False

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        super().__init__(endpoints)
        self.scratch = tempfile.TemporaryDirectory(prefix="hd-matrix-psql-")
        self.sessions = {side: PsqlSession(e, Path(self.scratch.name) / side) for side, e in endpoints.items()}
        for session in self.sessions.values():
            session.scratch.mkdir()

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.scratch.cleanup()

    def run(self, side: Side, case: Case, table: str) -> Outcome:
        session = self.sessions[side]
        sub: Callable[[str], str] = lambda sql: " ".join(sql.replace("{t}", table).split())  # noqa: E731
        steps = [sub(s) + ";" for s in case.setup]
        compared = [self._main_line(case, table, session.scratch)] + ([sub(case.check) + ";"] if case.check else [])
        cleanup = [sub(s) + ";" for s in case.teardown] + ([f"DROP TABLE IF EXISTS {table};"] if case.writes else [])
        outputs = [session.output_file(f"out-{i}") for i in range(len(compared))]
        lines = ["\\o /dev/null", *steps]
        compared_lines = []
        for statement, output in zip(compared, outputs, strict=True):
            lines.append(f"\\o {output}")
            lines.append(statement)
            compared_lines.append(len(lines))
        lines += ["\\o /dev/null", *cleanup, "\\o"]
        base, err = session.run(lines)
        failed = {int(line) - base: state for line, state in _PSQL_ERROR.findall(err)}
        states = tuple(failed.get(2 + i) for i in range(len(steps)))
        results = []
        for i, (line, output) in enumerate(zip(compared_lines, outputs, strict=True)):
            data = output.read_bytes()
            if (state := failed.get(line)) is not None:
                results.append(Result(sqlstate=state, message=err.strip()))
            elif case.kind is Kind.COPY_OUT and i == 0:
                results.append(copy_result(data, case.copy_format))
            else:
                rows = tuple(tuple(line.split(_PSQL_SEPARATOR)) for line in data.decode().splitlines())
                results.append(Result(rows=rows))
        return Outcome(states, tuple(results))

    @staticmethod
    def _main_line(case: Case, table: str, scratch: Path) -> str:
        if case.kind is Kind.COPY_OUT:
            return "\\copy" + copy_statement(case, table).removeprefix("COPY")
        if case.kind is Kind.COPY_IN:
            source = scratch / "rows"
            source.write_bytes(copy_data(case.rows, case.copy_format))
            return f"\\copy {table} FROM '{source}' (FORMAT {case.copy_format})"
        if case.kind is Kind.META:
            return case.sql
        return " ".join(case.sql.replace("{t}", table).split()) + ";"


# --- psycopg 3 -------------------------------------------------------------------------------------


def _psycopg_result(cur: psycopg.Cursor[Any]) -> Result:
    if cur.description is None:
        return Result()
    return Result(columns=tuple(c.name for c in cur.description), types=tuple(c.type_code for c in cur.description),
                  rows=tuple(tuple(r) for r in cur.fetchall()))


def _psycopg_error(error: psycopg.Error) -> Result:
    position = error.diag.statement_position
    return Result(sqlstate=error.sqlstate or "?????", message=str(error).splitlines()[0] if str(error) else "",
                  position=int(position) if position else None)


class PsycopgRunner(Runner):
    """psycopg 3, text results and `%t` (text) parameters; executemany and COPY through cursor.copy()."""

    name = "psycopg-text"
    kinds = frozenset({Kind.QUERY, Kind.EXECUTEMANY, Kind.COPY_OUT, Kind.COPY_IN})
    binary = False
    marker = "%t"

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        super().__init__(endpoints)
        self.conns = {side: psycopg.connect(e.conninfo(), autocommit=True) for side, e in endpoints.items()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def _bound(self, sql: str, params: Sequence[Any]) -> tuple[str, tuple[Any, ...] | None]:
        return positional(sql, params, self.marker) if params else (sql, None)

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        query, values = self._bound(sql, params)
        try:
            with self.conns[side].cursor(binary=self.binary) as cur:
                cur.execute(query, values)
                return _psycopg_result(cur)
        except psycopg.Error as error:
            return _psycopg_error(error)

    def perform(self, side: Side, case: Case, table: str) -> Result:
        try:
            if case.kind is Kind.EXECUTEMANY:
                query, _ = self._bound(case.sql.replace("{t}", table), case.rows[0])
                with self.conns[side].cursor(binary=self.binary) as cur:
                    cur.executemany(query, [positional(case.sql, row, self.marker)[1] for row in case.rows])
                return Result()
            if case.kind is Kind.COPY_OUT:
                return self._copy_out(side, case, table)
            if case.kind is Kind.COPY_IN:
                return self._copy_in(side, case, table)
        except psycopg.Error as error:
            return _psycopg_error(error)
        return super().perform(side, case, table)

    def _copy_out(self, side: Side, case: Case, table: str) -> Result:
        with self.conns[side].cursor() as cur, cur.copy(copy_statement(case, table)) as copy:
            data = b"".join(bytes(block) for block in copy)
        return copy_result(data, case.copy_format)

    def _copy_in(self, side: Side, case: Case, table: str) -> Result:
        with self.conns[side].cursor() as cur:
            with cur.copy(copy_statement(case, table)) as copy:
                if case.copy_format == "text":
                    for row in case.rows:
                        copy.write_row(row)
                else:
                    copy.write(copy_data(case.rows, case.copy_format))
            return Result(rows=((cur.rowcount,),))


class PsycopgBinaryRunner(PsycopgRunner):
    """psycopg 3 with binary results and `%b` (binary) parameters."""

    name = "psycopg-binary"
    binary = True
    marker = "%b"


class PsycopgPipelineRunner(PsycopgRunner):
    """psycopg 3 in pipeline mode: each statement (and executemany) inside conn.pipeline()."""

    name = "psycopg-pipeline"
    kinds = frozenset({Kind.QUERY, Kind.EXECUTEMANY})
    marker = "%s"

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        query, values = self._bound(sql, params)
        conn = self.conns[side]
        try:
            with conn.pipeline() as pipeline, conn.cursor() as cur:
                cur.execute(query, values)
                pipeline.sync()
                return _psycopg_result(cur)
        except psycopg.Error as error:
            return _psycopg_error(error)

    def perform(self, side: Side, case: Case, table: str) -> Result:
        if case.kind is not Kind.EXECUTEMANY:
            return super().perform(side, case, table)
        conn = self.conns[side]
        query, _ = self._bound(case.sql.replace("{t}", table), case.rows[0])
        try:
            with conn.pipeline(), conn.cursor() as cur:
                cur.executemany(query, [positional(case.sql, row, self.marker)[1] for row in case.rows])
            return Result()
        except psycopg.Error as error:
            return _psycopg_error(error)


class PsycopgServerCursorRunner(PsycopgRunner):
    """psycopg 3 server-side (named) cursors: DECLARE, then FETCH in pages of 7 rows."""

    name = "psycopg-server-cursor"
    kinds = frozenset({Kind.QUERY})

    @classmethod
    def supports(cls, case: Case) -> bool:
        return super().supports(case) and case.returns_rows

    def perform(self, side: Side, case: Case, table: str) -> Result:
        conn = self.conns[side]
        query, values = self._bound(case.sql.replace("{t}", table), case.params)
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            if idle:
                with conn.transaction():
                    return self._fetch_all(conn, query, values)
            return self._fetch_all(conn, query, values)
        except psycopg.Error as error:
            return _psycopg_error(error)

    @staticmethod
    def _fetch_all(conn: psycopg.Connection[Any], query: str, values: tuple[Any, ...] | None) -> Result:
        with conn.cursor(name="matrix_cursor") as cur:
            cur.itersize = 7
            cur.execute(query, values)
            assert cur.description is not None
            rows = tuple(tuple(r) for r in cur)
            return Result(columns=tuple(c.name for c in cur.description),
                          types=tuple(c.type_code for c in cur.description), rows=rows)


# --- asyncpg ----------------------------------------------------------------------------------------


def _asyncpg_error(error: Exception) -> Result:
    position = getattr(error, "position", None)
    return Result(sqlstate=getattr(error, "sqlstate", None) or "?????", message=str(error),
                  position=int(position) if position else None)


class AsyncpgRunner(Runner):
    """asyncpg's conn.fetch() (records carry names, not types), executemany, copy_from_query/copy_to_table."""

    name = "asyncpg-fetch"
    kinds = frozenset({Kind.QUERY, Kind.EXECUTEMANY, Kind.COPY_OUT, Kind.COPY_IN})

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        import asyncpg

        super().__init__(endpoints)
        self.loop = asyncio.new_event_loop()
        self.conns = {
            side: self.loop.run_until_complete(asyncpg.connect(
                host=e.host, port=e.port, user=e.user, password=e.password, database=e.dbname,
                ssl=e.ssl_context() or False))
            for side, e in endpoints.items()
        }

    def close(self) -> None:
        for conn in self.conns.values():
            self.loop.run_until_complete(conn.close())
        self.loop.close()

    def _await(self, work: Any) -> Result:
        import asyncpg

        try:
            result: Result = self.loop.run_until_complete(work)
            return result
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            return _asyncpg_error(error)

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        return self._await(self._fetch(side, sql, params))

    async def _fetch(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        records = await self.conns[side].fetch(sql, *params)
        columns = tuple(records[0].keys()) if records else ()
        return Result(columns=columns, rows=tuple(tuple(r.values()) for r in records))

    def perform(self, side: Side, case: Case, table: str) -> Result:
        conn = self.conns[side]
        if case.kind is Kind.EXECUTEMANY:
            return self._await(self._executemany(conn, case.sql.replace("{t}", table), case.rows))
        if case.kind is Kind.COPY_OUT:
            return self._await(self._copy_out(conn, case))
        if case.kind is Kind.COPY_IN:
            return self._await(self._copy_in(conn, case, table))
        return super().perform(side, case, table)

    @staticmethod
    async def _executemany(conn: Any, sql: str, rows: Sequence[tuple[Any, ...]]) -> Result:
        await conn.executemany(sql, rows)
        return Result()

    @staticmethod
    async def _copy_out(conn: Any, case: Case) -> Result:
        sink = io.BytesIO()
        if " " in case.sql:
            await conn.copy_from_query(case.sql, output=sink, format=case.copy_format)
        else:
            schema, name = unpack(case.sql)
            await conn.copy_from_table(name, schema_name=schema, output=sink, format=case.copy_format)
        return copy_result(sink.getvalue(), case.copy_format)

    @staticmethod
    async def _copy_in(conn: Any, case: Case, table: str) -> Result:
        schema, name = unpack(table)
        status = await conn.copy_to_table(name, schema_name=schema, source=io.BytesIO(copy_data(case.rows,
                                          case.copy_format)), format=case.copy_format)
        return Result(rows=((status,),))


class AsyncpgPreparedRunner(AsyncpgRunner):
    """asyncpg prepared statements: conn.prepare(), get_attributes() for types; copy_records_to_table."""

    name = "asyncpg-prepared"
    kinds = frozenset({Kind.QUERY, Kind.COPY_IN})

    async def _fetch(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        statement = await self.conns[side].prepare(sql)
        records = await statement.fetch(*params)
        attributes = statement.get_attributes()
        return Result(columns=tuple(a.name for a in attributes), types=tuple(a.type.oid for a in attributes),
                      rows=tuple(tuple(r.values()) for r in records))

    @staticmethod
    async def _copy_in(conn: Any, case: Case, table: str) -> Result:
        schema, name = unpack(table)
        status = await conn.copy_records_to_table(name, schema_name=schema, records=list(case.rows))
        return Result(rows=((status,),))


class AsyncpgCursorRunner(AsyncpgRunner):
    """asyncpg cursors: a prepared statement's cursor read in pages of 7 inside a transaction."""

    name = "asyncpg-cursor"
    kinds = frozenset({Kind.QUERY})

    @classmethod
    def supports(cls, case: Case) -> bool:
        return super().supports(case) and case.returns_rows

    def perform(self, side: Side, case: Case, table: str) -> Result:
        return self._await(self._paged(self.conns[side], case.sql.replace("{t}", table), case.params))

    @staticmethod
    async def _paged(conn: Any, sql: str, params: Sequence[Any]) -> Result:
        async def read() -> Result:
            statement = await conn.prepare(sql)
            cursor = await statement.cursor(*params)
            rows: list[tuple[Any, ...]] = []
            while page := await cursor.fetch(7):
                rows.extend(tuple(r.values()) for r in page)
            attributes = statement.get_attributes()
            return Result(columns=tuple(a.name for a in attributes), types=tuple(a.type.oid for a in attributes),
                          rows=tuple(rows))

        if conn.is_in_transaction():
            return await read()
        async with conn.transaction():
            return await read()


# --- pg8000 -------------------------------------------------------------------------------------------


def _pg8000_error(error: Exception) -> Result:
    fields = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    position = fields.get("P")
    return Result(sqlstate=fields.get("C", "?????"), message=fields.get("M", str(error)),
                  position=int(position) if position else None)


class Pg8000NativeRunner(Runner):
    """pg8000.native: `:name` parameters, conn.columns for names and type OIDs, COPY through stream=."""

    name = "pg8000-native"
    kinds = frozenset({Kind.QUERY, Kind.COPY_OUT, Kind.COPY_IN})

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        super().__init__(endpoints)
        self.conns = {side: pg8000.native.Connection(e.user, password=e.password, host=e.host, port=e.port,
                                                     database=e.dbname, ssl_context=e.ssl_context())
                      for side, e in endpoints.items()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        conn = self.conns[side]
        query, values = named(sql, params)
        try:
            rows = conn.run(query, **values)
        except pg8000.native.DatabaseError as error:
            return _pg8000_error(error)
        if conn.columns is None:
            return Result()
        return Result(columns=tuple(c["name"] for c in conn.columns),
                      types=tuple(c["type_oid"] for c in conn.columns), rows=tuple(tuple(r) for r in rows or ()))

    def perform(self, side: Side, case: Case, table: str) -> Result:
        conn = self.conns[side]
        try:
            if case.kind is Kind.COPY_OUT:
                sink = io.BytesIO()
                conn.run(copy_statement(case, table), stream=sink)
                return copy_result(sink.getvalue(), case.copy_format)
            if case.kind is Kind.COPY_IN:
                conn.run(copy_statement(case, table), stream=io.BytesIO(copy_data(case.rows, case.copy_format)))
                return Result(rows=((conn.row_count,),))
        except pg8000.native.DatabaseError as error:
            return _pg8000_error(error)
        return super().perform(side, case, table)


class Pg8000DbapiRunner(Runner):
    """pg8000.dbapi: `%s` parameters, cursor.description, executemany; autocommit like the other runners."""

    name = "pg8000-dbapi"
    kinds = frozenset({Kind.QUERY, Kind.EXECUTEMANY})

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        super().__init__(endpoints)
        self.conns = {side: pg8000.dbapi.connect(e.user, password=e.password, host=e.host, port=e.port,
                                                 database=e.dbname, ssl_context=e.ssl_context())
                      for side, e in endpoints.items()}
        for conn in self.conns.values():
            conn.autocommit = True

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        query, values = positional(sql, params, "%s")
        cur = self.conns[side].cursor()
        try:
            cur.execute(query, values)
        except pg8000.dbapi.DatabaseError as error:
            return _pg8000_error(error)
        if cur.description is None:
            return Result()
        return Result(columns=tuple(d[0] for d in cur.description), types=tuple(d[1] for d in cur.description),
                      rows=tuple(tuple(r) for r in cur.fetchall()))

    def perform(self, side: Side, case: Case, table: str) -> Result:
        if case.kind is not Kind.EXECUTEMANY:
            return super().perform(side, case, table)
        query, _ = positional(case.sql.replace("{t}", table), case.rows[0], "%s")
        try:
            self.conns[side].cursor().executemany(query, [positional(case.sql, r, "%s")[1] for r in case.rows])
        except pg8000.dbapi.DatabaseError as error:
            return _pg8000_error(error)
        return Result()


# --- SQLAlchemy 2 and pandas ----------------------------------------------------------------------


def _sqlalchemy_engine(endpoint: Endpoint) -> Any:
    import sqlalchemy as sa

    url = sa.URL.create("postgresql+psycopg", username=endpoint.user, password=endpoint.password,
                        host=endpoint.host, port=endpoint.port, database=endpoint.dbname)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT",
                            connect_args={"sslmode": "require" if endpoint.tls else "disable"})


def _sqlalchemy_error(error: Exception) -> Result:
    original = getattr(error, "orig", None)
    if isinstance(original, psycopg.Error):
        return _psycopg_error(original)
    return Result(sqlstate="?????", message=str(error))


class SqlAlchemyRunner(Runner):
    """SQLAlchemy 2 Core over psycopg: text() with `:pn` binds, one Connection per side."""

    name = "sqlalchemy"

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        super().__init__(endpoints)
        self.engines = {side: _sqlalchemy_engine(e) for side, e in endpoints.items()}
        self.conns = {side: engine.connect() for side, engine in self.engines.items()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        for engine in self.engines.values():
            engine.dispose()

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        import sqlalchemy as sa

        query, values = named(sql, params)
        try:
            result = self.conns[side].execute(sa.text(query), values)
        except sa.exc.DBAPIError as error:
            return _sqlalchemy_error(error)
        if not result.returns_rows:
            return Result()
        description = result.cursor.description
        return Result(columns=tuple(result.keys()), types=tuple(d[1] for d in description),
                      rows=tuple(tuple(r) for r in result.all()))


class PandasRunner(SqlAlchemyRunner):
    """pandas over SQLAlchemy 2: read_sql of a query and of a table, to_sql then read back; dtypes compared."""

    name = "pandas"
    kinds = frozenset({Kind.READ_SQL, Kind.READ_SQL_TABLE, Kind.TO_SQL})

    def perform(self, side: Side, case: Case, table: str) -> Result:
        import pandas as pd
        import sqlalchemy as sa

        conn = self.conns[side]
        try:
            if case.kind is Kind.READ_SQL:
                query, values = named(case.sql, case.params)
                return _frame_result(pd.read_sql(sa.text(query), conn, params=values))
            if case.kind is Kind.READ_SQL_TABLE:
                schema, name = unpack(case.sql)
                return _frame_result(pd.read_sql_table(name, conn, schema=schema))
            schema, name = unpack(table)
            frame = pd.DataFrame.from_records(list(case.rows), columns=list(case.columns))
            frame.to_sql(name, conn, schema=schema, index=False)
            return _frame_result(pd.read_sql(sa.text(f"SELECT * FROM {table} ORDER BY 1"), conn))
        except sa.exc.DBAPIError as error:
            conn.rollback()
            return _sqlalchemy_error(error)

    @classmethod
    def supports(cls, case: Case) -> bool:
        return case.kind in cls.kinds and (case.clients is None or cls.name in case.clients)

    def run(self, side: Side, case: Case, table: str) -> Outcome:
        if case.kind is not Kind.TO_SQL:
            return super().run(side, case, table)
        try:
            return Outcome((), (self.perform(side, case, table),))
        finally:
            self.statement(side, f"DROP TABLE IF EXISTS {table}", ())


def _frame_result(frame: Any) -> Result:
    import pandas as pd

    cells = frame.astype(object).where(pd.notna(frame), None)
    return Result(columns=tuple(str(c) for c in frame.columns), types=tuple(str(t) for t in frame.dtypes),
                  rows=tuple(tuple(r) for r in cells.itertuples(index=False, name=None)))


# --- pgcli ----------------------------------------------------------------------------------------------


class PgcliRunner(Runner):
    """pgcli's PGExecute: run() for statements and backslash commands (pgspecial), and its completion metadata."""

    name = "pgcli"
    kinds = frozenset({Kind.QUERY, Kind.META, Kind.CATALOG})
    binds = False

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        from pgcli.pgexecute import PGExecute
        from pgspecial.main import PGSpecial

        super().__init__(endpoints)
        self.executors = {side: PGExecute(dsn=e.conninfo()) for side, e in endpoints.items()}
        self.special = PGSpecial()

    def close(self) -> None:
        for executor in self.executors.values():
            executor.conn.close()

    def statement(self, side: Side, sql: str, params: Sequence[Any]) -> Result:
        return self._run(side, sql, special=False)

    def _run(self, side: Side, sql: str, *, special: bool) -> Result:
        executor = self.executors[side]
        try:
            _title, cur, headers, status, *_ = next(executor.run(sql, pgspecial=self.special if special else None))
        except psycopg.Error as error:
            return _psycopg_error(error)
        if cur is None:
            return Result(rows=((status,),))
        if isinstance(cur, psycopg.Cursor):
            assert cur.description is not None
            return Result(columns=tuple(headers), types=tuple(c.type_code for c in cur.description),
                          rows=tuple(tuple(r) for r in cur.fetchall()))
        return Result(columns=tuple(headers or ()), rows=tuple(tuple(r) for r in cur))

    def perform(self, side: Side, case: Case, table: str) -> Result:
        if case.kind is Kind.META:
            return self._run(side, case.sql, special=True)
        if case.kind is Kind.CATALOG:
            return self._catalog(side, case.sql)
        return super().perform(side, case, table)

    def _catalog(self, side: Side, what: str) -> Result:
        """One of PGExecute's completion listings, limited to the demo's schemas (the rest is each server's own)."""
        executor = self.executors[side]
        try:
            listing = list(getattr(executor, what)())
        except psycopg.Error as error:
            return _psycopg_error(error)
        if what == "schemata":
            rows = [(name,) for name in listing if not name.startswith("pg_") and name != "information_schema"]
        elif what == "search_path":
            rows = [(name,) for name in listing]
        else:
            rows = [tuple(r) for r in listing if r[0] in DEMO_SCHEMAS]
        return Result(rows=tuple(rows))


RUNNERS: tuple[type[Runner], ...] = (
    PsqlRunner, PsycopgRunner, PsycopgBinaryRunner, PsycopgPipelineRunner, PsycopgServerCursorRunner,
    AsyncpgRunner, AsyncpgPreparedRunner, AsyncpgCursorRunner, Pg8000NativeRunner, Pg8000DbapiRunner,
    SqlAlchemyRunner, PandasRunner, PgcliRunner,
)
